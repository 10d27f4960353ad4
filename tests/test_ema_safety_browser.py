"""The page with a full-EMA checkpoint and the safety checker on: the Models tab shows and
changes which weights a checkpoint uses, and txt2img says that it blurred a flagged image."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from tests.browser_helpers import (
    BROWSER_MARKS,
    generate_and_wait,
    offline_page,
    open_tab,
    serve_app,
    small_job,
    wait_for_text,
)
from webui.model_manager.detect import UNET_PREFIX
from webui.model_manager.ema import ema_tensors
from webui.settings import Settings
from webui.studio import Studio
from webui.tools.tiny_checkpoint import build_tiny_state_dict
from webui.tools.tiny_safety_checker import write_tiny_safety_checker

pytestmark = BROWSER_MARKS


@pytest.fixture
def served(tmp_path: Path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    raw = build_tiny_state_dict("sd15", seed=0)
    averaged = {k: v + 0.05 for k, v in raw.items() if k.startswith(UNET_PREFIX)}
    save_file(raw | ema_tensors(averaged, 0.9999, 10), str(folder / "full-ema.safetensors"))
    write_tiny_safety_checker(tmp_path / "models" / "safety_checker", flag="all")
    studio = Studio(Settings.for_data_dir(tmp_path, watermark=False, safety_checker=True))
    with serve_app(studio) as app:
        yield app


def test_the_models_tab_switches_weights_and_txt2img_notes_the_blur(browser, served) -> None:
    with offline_page(browser, served.url) as page:
        small_job(page, "txt2img", "a red kite")
        infotext = generate_and_wait(page)
        assert "Weights: EMA" in infotext
        wait_for_text(page, "txt2img-error", "flagged by the safety checker and blurred")

        open_tab(page, "Models")
        wait_for_text(page, "models-table", "EMA weights")
        box = page.locator("#models-ema input[type=checkbox]")
        assert box.is_checked()
        box.uncheck()
        wait_for_text(page, "models-status", "full-ema will use its raw weights")
        wait_for_text(page, "models-table", "raw weights (has EMA)")
        assert served.studio.settings.ema_choices == {"full-ema": False}

        open_tab(page, "txt2img")
        page.locator("#txt2img-seed input[type=number]").fill("99")
        assert "Weights: raw" in generate_and_wait(page)
