"""Issue 22 without a browser: a quiet stop, what the checkout ignores, the page's model lines."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_stopping_with_a_page_open_logs_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from fastapi import FastAPI

    from webui.server import uvicorn_config

    uvicorn_config(FastAPI(), "127.0.0.1", 0)
    errors = logging.getLogger("uvicorn.error")
    errors.addHandler(caplog.handler)  # uvicorn's loggers do not propagate to the root's
    try:
        with caplog.at_level(logging.INFO, logger="uvicorn.error"):
            # What uvicorn logs for each event stream it cancels when the graceful shutdown times out.
            try:
                raise asyncio.CancelledError("Task cancelled, timeout graceful shutdown exceeded")
            except asyncio.CancelledError as cancelled:
                errors.error("Exception in ASGI application\n", exc_info=cancelled)
            errors.error("Cancel %s running task(s), timeout graceful shutdown exceeded", 2)
            errors.error("Exception in ASGI application\n", exc_info=ValueError("a real bug"))
    finally:
        errors.removeHandler(caplog.handler)
    shown = [(record.levelname, record.getMessage(), record.exc_info) for record in caplog.records]
    assert not any(info and isinstance(info[1], asyncio.CancelledError) for _, _, info in shown)
    assert ("INFO", "closed the connections of pages still open", None) in shown
    assert any(info and isinstance(info[1], ValueError) for _, _, info in shown), "real errors stay"


def test_files_the_page_writes_into_the_checkout_are_ignored() -> None:
    listed = subprocess.run(
        ["git", "check-ignore", "--no-index", "settings.json", "styles.csv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.stdout.split() == ["settings.json", "styles.csv"]


def test_an_uploaded_black_mask_is_called_empty() -> None:
    from webui.engine.request import GenerationError
    from webui.ui.masks import image_and_mask

    picture = Image.new("RGB", (64, 64), "gray")
    editor = {"background": picture, "layers": [], "composite": picture}
    with pytest.raises(GenerationError, match="uploaded mask is empty"):
        image_and_mask(editor, Image.new("L", (64, 64), 0))
    with pytest.raises(GenerationError, match="paint over"):
        image_and_mask(editor, None)


def test_a_small_model_moves_at_mb_per_second_not_zero_gb() -> None:
    from webui.model_manager.cache import ModelEvent, Tier
    from webui.ui.model_status import event_text

    event = ModelEvent("load", "tiny", Tier.DISK, Tier.RAM, 11_000_000, 0.2, 0.0, "cpu")
    assert event_text(event) == "loaded tiny from disk to RAM: 11.0 MB in 0.20 s (55 MB/s)"
    big = ModelEvent("move", "xl", Tier.RAM, Tier.VRAM, 6_940_000_000, 0.31, 0.0, "cuda")
    assert event_text(big) == "moved xl from RAM to cuda: 6.94 GB in 0.31 s (22.4 GB/s)"
