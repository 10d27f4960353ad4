"""The app's services and the command line: demo model, saved files, infotext, watermark, errors."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from PIL import Image

from webui.cli import main as cli_main
from webui.engine.request import GenerationError, GenerationRequest
from webui.model_manager.state_dict import CheckpointError
from webui.outputs import parse_infotext, read_infotext, read_watermark
from webui.settings import Settings
from webui.studio import Studio


def _all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_generate_saves_png_with_infotext_hash_and_watermark(tiny_dir: Path, tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", ckpt_dir / "fox.safetensors")
    studio = Studio(Settings.for_data_dir(tmp_path))
    assert not studio.models.demo_mode
    request = GenerationRequest(
        prompt="a fox, red", negative_prompt="dull", steps=3, width=256, height=256, seed=9
    )
    result = studio.generate(request)
    path = result.paths[0]
    assert path.relative_to(tmp_path / "outputs").parts[0] == "txt2img-images"
    assert path.name == "00000-9.png"
    parsed = parse_infotext(read_infotext(path))
    expected_hash = hashlib.sha256((ckpt_dir / "fox.safetensors").read_bytes()).hexdigest()[:10]
    assert parsed.prompt == "a fox, red" and parsed.negative_prompt == "dull"
    assert parsed.params["Model hash"] == expected_hash and parsed.params["Model"] == "fox"
    assert parsed.params["Seed"] == "9" and parsed.params["Size"] == "256x256"
    with Image.open(path) as saved:
        assert read_watermark(saved.convert("RGB")) == b"SDwebui"


def test_watermark_can_be_turned_off(tiny_dir: Path, tmp_path: Path) -> None:
    studio = Studio(
        Settings.for_data_dir(tmp_path, ckpt=str(tiny_dir / "tiny-sd15.safetensors"), watermark=False)
    )
    result = studio.generate(GenerationRequest(prompt="x", steps=2, width=256, height=256, seed=3))
    with Image.open(result.paths[0]) as saved:
        assert saved.convert("RGB").tobytes() == result.images[0].tobytes()


def test_failed_requests_leave_nothing_in_outputs(tiny_dir: Path, tmp_path: Path) -> None:
    studio = Studio(Settings.for_data_dir(tmp_path, ckpt=str(tiny_dir / "tiny-sd15.safetensors")))
    with pytest.raises(GenerationError):
        studio.generate(GenerationRequest(prompt="x", width=65))
    with pytest.raises(GenerationError):
        studio.generate(GenerationRequest(prompt="x", sampler_name="nope", width=64, height=64))
    assert _all_files(tmp_path / "outputs") == []


def test_switching_to_a_broken_checkpoint_keeps_the_working_one(tiny_dir: Path, tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", ckpt_dir / "a-good.safetensors")
    (ckpt_dir / "b-broken.safetensors").write_bytes(b"\x00" * 100)
    studio = Studio(Settings.for_data_dir(tmp_path))
    studio.models.select_checkpoint("a-good")
    with pytest.raises(CheckpointError, match="b-broken.safetensors"):
        studio.models.select_checkpoint("b-broken")
    assert studio.models.current_checkpoint() == "a-good"
    assert studio.generate(GenerationRequest(prompt="x", steps=2, width=64, height=64)).images
    with pytest.raises(CheckpointError, match="unknown checkpoint 'nope'"):
        studio.models.select_checkpoint("nope")


def test_cli_txt2img_writes_images_and_prints_infotext(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(tiny_dir / "tiny-sdxl.safetensors")
    code = cli_main(
        ["txt2img", "--data-dir", str(tmp_path), "--ckpt", ckpt, "-p", "a boat", "--steps", "2"]
        + ["--width", "64", "--height", "64", "--seed", "5", "--batch-size", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert [p.name for p in _all_files(tmp_path / "outputs")] == ["00000-5.png", "00001-6.png"]
    assert "Seed: 5" in out and "Model: tiny-sdxl" in out


def test_cli_img2img_with_mask(tiny_dir: Path, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), "teal").save(tmp_path / "in.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (10, 10, 30, 30))
    mask.save(tmp_path / "mask.png")
    code = cli_main(
        ["img2img", "--data-dir", str(tmp_path), "--ckpt", str(tiny_dir / "tiny-sd15-inpaint.safetensors")]
        + ["-p", "a door", "--steps", "2", "--width", "64", "--height", "64"]
        + ["--init-image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png")]
    )
    assert code == 0
    saved = _all_files(tmp_path / "outputs")
    assert len(saved) == 1 and saved[0].parent.parent.name == "img2img-images"
    assert "Mask blur: 4" in read_infotext(saved[0])


def test_cli_bad_input_exits_2_with_a_message_and_writes_nothing(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(tiny_dir / "tiny-sd15.safetensors")
    code = cli_main(["txt2img", "--data-dir", str(tmp_path), "--ckpt", ckpt, "-p", "x", "--width", "100"])
    assert code == 2 and "width must be a multiple of 8" in capsys.readouterr().err
    (tmp_path / "junk.png").write_text("not an image")
    code = cli_main(
        [
            "img2img",
            "--data-dir",
            str(tmp_path),
            "--ckpt",
            ckpt,
            "-p",
            "x",
            "--init-image",
            str(tmp_path / "junk.png"),
        ]
    )
    assert code == 2 and "not a readable image" in capsys.readouterr().err
    assert _all_files(tmp_path / "outputs") == []
