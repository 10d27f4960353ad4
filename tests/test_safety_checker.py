"""The optional safety checker: off by default, a clear error without weights, flagged images
blurred before anything shows or saves them, and a note in the result, the job and the API."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.http_helpers import decode_png, served_without_login
from webui.engine.request import GenerationRequest
from webui.model_manager.safety_checker import blur
from webui.model_manager.state_dict import CheckpointError
from webui.settings import Settings, app_parser
from webui.studio import Studio
from webui.tools.tiny_safety_checker import write_tiny_safety_checker

REQUEST = GenerationRequest(prompt="a red kite", steps=2, width=64, height=64, seed=9, batch_size=2)


@pytest.fixture
def data_dir(tiny_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", folder / "tiny.safetensors")
    return tmp_path


def _studio(data_dir: Path, **overrides: object) -> Studio:
    return Studio(Settings.for_data_dir(data_dir, watermark=False, **overrides))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _detail(image: Image.Image) -> float:
    """Mean difference between neighbouring pixels: what a blur takes away."""
    pixels = _pixels(image)
    return float(np.abs(np.diff(pixels, axis=1)).mean())


def test_it_is_off_by_default_and_on_with_the_flag(tmp_path: Path) -> None:
    assert Settings.for_data_dir(tmp_path).safety_checker is False
    args = app_parser().parse_args(["--data-dir", str(tmp_path), "--safety-checker"])
    assert Settings.from_args(args).safety_checker is True


def test_without_weights_the_start_stops_with_where_to_put_them(data_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"safety_checker holds no safety checker.*config\.json"):
        _studio(data_dir, safety_checker=True)


def test_flagged_images_are_blurred_before_they_are_saved(data_dir: Path) -> None:
    plain = _studio(data_dir).generate(REQUEST, save=False)
    write_tiny_safety_checker(data_dir / "models" / "safety_checker", flag="all")
    studio = _studio(data_dir, safety_checker=True)
    result = studio.generate(REQUEST)
    assert len(result.images) == 2
    for original, shown, path in zip(plain.images, result.images, result.paths):
        assert np.array_equal(_pixels(shown), _pixels(blur(original)))
        assert _detail(shown) < _detail(original) / 2
        with Image.open(path) as saved:  # the file on disk is the blurred one
            assert np.array_equal(_pixels(saved), _pixels(shown))
    assert result.warnings == [
        "image 1 (seed 9) was flagged by the safety checker and blurred",
        "image 2 (seed 10) was flagged by the safety checker and blurred",
    ]
    assert studio._preview_period() == 0  # nothing unscreened shows, previews included


def test_images_it_does_not_flag_are_untouched(data_dir: Path) -> None:
    plain = _studio(data_dir).generate(REQUEST, save=False)
    write_tiny_safety_checker(data_dir / "models" / "safety_checker", flag="none")
    result = _studio(data_dir, safety_checker=True).generate(REQUEST, save=False)
    for original, shown in zip(plain.images, result.images):
        assert np.array_equal(_pixels(shown), _pixels(original))
    assert result.warnings == []


def test_the_api_answer_and_the_job_status_carry_the_note(data_dir: Path) -> None:
    write_tiny_safety_checker(data_dir / "models" / "safety_checker", flag="all")
    studio = _studio(data_dir, safety_checker=True, device="cpu", precision="fp32")
    with served_without_login(studio) as url, httpx.Client(base_url=url, timeout=120) as client:
        answer = client.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "a red kite", "steps": 2, "width": 64, "height": 64, "seed": 9},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "flagged by the safety checker" in body["info"]
        image = decode_png(body["images"][0])
        assert _detail(image) < 10
        jobs = client.get("/api/v1/jobs").json()
        assert any("flagged by the safety checker" in " ".join(job["warnings"]) for job in jobs)
