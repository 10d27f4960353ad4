"""ESRGAN-family upscaler models from models/ESRGAN: recognised by shape, loaded safely, run in tiles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from webui.engine.request import GenerationError
from webui.engine.upscale import Upscalers, upscale
from webui.model_manager.state_dict import CheckpointError
from webui.model_manager.upscaler_models import load_upscaler_model, read_upscaler_tensors
from webui.tools.tiny_upscaler import main as tiny_upscaler_main
from webui.tools.tiny_upscaler import write_tiny_compact, write_tiny_esrgan

SUFFIX = {"safetensors": ".safetensors", "pth": ".pth"}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Convs this small gain nothing from threads, and on a busy shared CPU spinning threads stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(width: int, height: int) -> Image.Image:
    """Gradients and a fine diagonal pattern: every tile sees different, structured content."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) % 17 * 15], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _mark(path: str) -> None:
    Path(path).write_text("the pickle ran code")


class _Armed:
    """Unpickling this calls `_mark`: what a malicious .pth does with something worse."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _mark, (self.marker,)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("layout", ["new", "old"])
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_rrdbnet_loads_from_both_layouts_and_formats(tmp_path: Path, layout: str, fmt: str, scale: int):
    path = write_tiny_esrgan(tmp_path / f"tiny-{layout}{SUFFIX[fmt]}", layout, scale, fmt)
    model = load_upscaler_model(path)
    assert (model.architecture, model.scale, model.name) == ("RRDBNet", scale, path.stem)
    result = model.upscale(_image(13, 9))  # odd sides: pixel-unshuffle models pad and crop
    assert result.mode == "RGB"
    assert result.size == (13 * scale, 9 * scale)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_compact_loads_from_both_formats(tmp_path: Path, fmt: str, scale: int):
    path = write_tiny_compact(tmp_path / f"compact{SUFFIX[fmt]}", scale, fmt)
    model = load_upscaler_model(path)
    assert (model.architecture, model.scale) == ("SRVGGNetCompact", scale)
    image = _image(13, 9)
    result = model.upscale(image)
    assert result.size == (13 * scale, 9 * scale)
    # It predicts a residual over a nearest-neighbour upscale, so the input still shows through.
    nearest = _pixels(image.resize(result.size, Image.Resampling.NEAREST))
    assert np.corrcoef(_pixels(result).ravel(), nearest.ravel())[0, 1] > 0.5


def test_release_containers_are_unwrapped(tmp_path: Path):
    rrdb = write_tiny_esrgan(tmp_path / "x4plus.pth", "new")
    compact = write_tiny_compact(tmp_path / "general-x4v3.pth")
    assert set(torch.load(rrdb, weights_only=True)) == {"params_ema"}
    assert set(torch.load(compact, weights_only=True)) == {"params"}
    assert "conv_first.weight" in read_upscaler_tensors(rrdb)
    assert "body.0.weight" in read_upscaler_tensors(compact)


@pytest.mark.parametrize("scale", [2, 4])
def test_old_and_new_layouts_of_the_same_weights_give_identical_images(tmp_path: Path, scale: int):
    new = load_upscaler_model(write_tiny_esrgan(tmp_path / "new.safetensors", "new", scale, seed=7))
    old = load_upscaler_model(write_tiny_esrgan(tmp_path / "old.pth", "old", scale, seed=7))
    other_seed = load_upscaler_model(write_tiny_esrgan(tmp_path / "other.pth", "old", scale, seed=8))
    image = _image(21, 17)
    assert np.array_equal(_pixels(new.upscale(image)), _pixels(old.upscale(image)))
    assert not np.array_equal(_pixels(new.upscale(image)), _pixels(other_seed.upscale(image)))


def test_old_layout_keys_are_the_original_esrgan_ones(tmp_path: Path):
    tensors = read_upscaler_tensors(write_tiny_esrgan(tmp_path / "old.pth", "old", 4))
    assert {"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight", "model.1.sub.1.weight"} <= set(tensors)
    assert {"model.3.weight", "model.6.weight", "model.8.weight", "model.10.weight"} <= set(tensors)


def test_pixel_unshuffle_x2_model(tmp_path: Path):
    path = write_tiny_esrgan(tmp_path / "x2plus.safetensors", "new", 2)
    assert read_upscaler_tensors(path)["conv_first.weight"].shape[1] == 12
    model = load_upscaler_model(path)
    assert model.scale == 2 and model.multiple == 2
    assert model.upscale(_image(15, 11)).size == (30, 22)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_tiled_equals_untiled(tmp_path: Path, fmt: str):
    """Several tiles on both axes; the cross-fade leaves at most float rounding (one level) behind."""
    image = _image(120, 90)
    for path in (
        write_tiny_compact(tmp_path / f"compact{SUFFIX[fmt]}", 4, fmt),
        write_tiny_esrgan(tmp_path / f"rrdb{SUFFIX[fmt]}", "old", 4, fmt),
        write_tiny_esrgan(tmp_path / f"rrdb-x2{SUFFIX[fmt]}", "new", 2, fmt),
    ):
        model = load_upscaler_model(path)
        whole = model.upscale(image, tile=0)
        tiled = model.upscale(image, tile=48, overlap=16)
        assert tiled.size == whole.size == (120 * model.scale, 90 * model.scale)
        difference = np.abs(_pixels(tiled) - _pixels(whole))
        assert difference.max() <= 1, path.name
        assert difference.mean() < 0.05, path.name


def test_tiles_cut_without_overlap_do_show(tmp_path: Path):
    """The check above has teeth: with no overlap, zero padding at the cuts changes the seams."""
    model = load_upscaler_model(write_tiny_esrgan(tmp_path / "rrdb.safetensors", "new", 4))
    image = _image(96, 48)
    difference = np.abs(
        _pixels(model.upscale(image, tile=48, overlap=0)) - _pixels(model.upscale(image, tile=0))
    )
    assert difference.max() > 4


def test_alpha_is_kept_and_resized_with_lanczos(tmp_path: Path):
    model = load_upscaler_model(write_tiny_compact(tmp_path / "compact.safetensors", 2))
    image = _image(20, 14)
    alpha = Image.fromarray((np.arange(20 * 14).reshape(14, 20) % 256).astype(np.uint8))
    image.putalpha(alpha)
    result = model.upscale(image)
    assert result.mode == "RGBA" and result.size == (40, 28)
    expected = alpha.resize((40, 28), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(result.getchannel("A")), np.asarray(expected))
    rgb = model.upscale(image.convert("RGB"))
    assert np.array_equal(np.asarray(result.convert("RGB")), np.asarray(rgb))


def test_greyscale_input_comes_back_rgb(tmp_path: Path):
    model = load_upscaler_model(write_tiny_compact(tmp_path / "compact.safetensors", 2))
    result = model.upscale(_image(10, 8).convert("L"))
    assert (result.mode, result.size) == ("RGB", (20, 16))


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pth"
    tensors = read_upscaler_tensors(write_tiny_compact(tmp_path / "compact.safetensors"))
    torch.save({"params": tensors, "extra": _Armed(marker)}, path)
    # The file is really armed: an ordinary unpickle runs the code.
    with path.open("rb") as handle:
        torch.load(handle, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"evil\.pth.*refused"):
        load_upscaler_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_truncated_file_is_a_checkpoint_error_naming_it(tmp_path: Path, fmt: str):
    path = write_tiny_esrgan(tmp_path / f"broken{SUFFIX[fmt]}", "new", 4, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"broken{SUFFIX[fmt]}.*truncated or corrupt"):
        load_upscaler_model(path)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_unknown_state_dict_names_the_file_and_the_supported_architectures(tmp_path: Path, fmt: str):
    path = tmp_path / f"swinir{SUFFIX[fmt]}"
    tensors = {"conv_first.weight": torch.zeros(8, 3, 3, 3), "layers.0.attn.qkv.weight": torch.zeros(24, 8)}
    if fmt == "safetensors":
        save_file(tensors, path)
    else:
        torch.save({"params": tensors}, path)
    with pytest.raises(CheckpointError, match=rf"swinir{SUFFIX[fmt]}.*RRDBNet.*SRVGGNetCompact"):
        load_upscaler_model(path)


def test_weights_that_do_not_fit_the_shape_are_refused(tmp_path: Path):
    tensors = read_upscaler_tensors(write_tiny_esrgan(tmp_path / "x4.safetensors", "new"))
    del tensors["conv_hr.bias"]
    tensors["conv_body.weight"] = torch.zeros(8, 5, 3, 3)
    save_file(tensors, tmp_path / "damaged.safetensors")
    with pytest.raises(CheckpointError, match=r"damaged\.safetensors.*RRDBNet.*conv_hr\.bias"):
        load_upscaler_model(tmp_path / "damaged.safetensors")


def test_other_file_types_and_missing_files_are_refused(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        load_upscaler_model(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match=r"gone\.pth: no such file"):
        load_upscaler_model(tmp_path / "gone.pth")


@pytest.fixture
def esrgan_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ESRGAN"
    write_tiny_esrgan(folder / "R-ESRGAN 4x+.pth", "new", 4)
    write_tiny_esrgan(folder / "4x-UltraSharp.pth", "old", 4)
    write_tiny_compact(folder / "sub" / "realesr-general-x4v3.safetensors", 4)
    write_tiny_compact(folder / "x2-compact.safetensors", 2)
    write_tiny_compact(folder / "x2-compact.pth", 2)  # same stem: listed by its file name
    (folder / "readme.txt").write_text("not a model")
    return folder


def test_upscalers_lists_plain_then_model_names(esrgan_dir: Path):
    upscalers = Upscalers(esrgan_dir)
    assert upscalers.names() == [
        "None",
        "Lanczos",
        "Nearest",
        "4x-UltraSharp",
        "R-ESRGAN 4x+",
        "realesr-general-x4v3",
        "x2-compact",
        "x2-compact.pth",
    ]
    assert upscalers.model_files()["x2-compact"].suffix == ".safetensors"
    assert Upscalers(esrgan_dir / "missing").names() == ["None", "Lanczos", "Nearest"]
    assert upscalers.loaded_names() == []  # listing loads nothing


def test_upscalers_upscale_by_factor_and_to_exact_size(esrgan_dir: Path):
    upscalers = Upscalers(esrgan_dir)
    image = _image(24, 18)
    assert upscalers.upscale(image, "R-ESRGAN 4x+", scale=2).size == (48, 36)
    assert upscalers.upscale(image, "4x-UltraSharp", scale=2.5).size == (60, 45)
    assert upscalers.upscale(image, "realesr-general-x4v3", size=(50, 20)).size == (50, 20)
    assert upscalers.upscale(image, "realesr-general-x4v3", size=(50, 20), crop=False).size == (50, 20)
    assert upscalers.upscale(image, "Lanczos", size=(31, 17)).size == (31, 17)


def test_a_smaller_model_runs_again_until_the_factor_is_reached(esrgan_dir: Path):
    upscalers = Upscalers(esrgan_dir)
    image = _image(12, 10)
    model = upscalers.model("x2-compact")
    twice = model.upscale(model.upscale(image))
    result = upscalers.upscale(image, "x2-compact", scale=4)
    assert np.array_equal(_pixels(result), _pixels(twice))
    # 3x: a second pass on a shrunk input lands just above the target, then Lanczos takes it down.
    assert upscalers.upscale(image, "x2-compact", scale=3).size == (36, 30)


def test_upscalers_keep_the_last_used_models_only(esrgan_dir: Path):
    upscalers = Upscalers(esrgan_dir, max_loaded=2)
    image = _image(8, 8)
    for name in ("R-ESRGAN 4x+", "4x-UltraSharp", "x2-compact", "4x-UltraSharp"):
        upscalers.upscale(image, name, scale=2)
    assert upscalers.loaded_names() == ["x2-compact", "4x-UltraSharp"]
    assert upscalers.model("4x-UltraSharp") is upscalers.model("4x-UltraSharp")
    upscalers.unload()
    assert upscalers.loaded_names() == []


def test_refresh_finds_new_files_and_forgets_removed_ones(esrgan_dir: Path):
    upscalers = Upscalers(esrgan_dir)
    upscalers.model("x2-compact")
    write_tiny_compact(esrgan_dir / "new-one.safetensors", 2)
    (esrgan_dir / "R-ESRGAN 4x+.pth").unlink()
    assert "new-one" not in upscalers.names()
    upscalers.refresh()
    assert "new-one" in upscalers.names() and "R-ESRGAN 4x+" not in upscalers.names()
    assert upscalers.loaded_names() == []


def test_unknown_and_broken_upscalers_name_the_field(esrgan_dir: Path):
    upscalers = Upscalers(esrgan_dir)
    image = _image(8, 8)
    with pytest.raises(GenerationError, match=r"'ESRGAN 9x'.*Lanczos.*R-ESRGAN 4x\+") as unknown:
        upscalers.upscale(image, "ESRGAN 9x", scale=2)
    assert unknown.value.field == "upscaler_1"
    with pytest.raises(GenerationError) as second:
        upscalers.blend(image, "Lanczos", "nope", 0.5, scale=2)
    assert second.value.field == "upscaler_2"
    (esrgan_dir / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    upscalers.refresh()
    with pytest.raises(CheckpointError, match=r"broken\.safetensors") as broken:
        upscalers.upscale(image, "broken", scale=2)
    assert broken.value.field == "upscaler_1"


def test_blend_mixes_a_model_with_a_plain_upscaler(esrgan_dir: Path):
    upscalers = Upscalers(esrgan_dir)
    image = _image(16, 12)
    model = upscalers.upscale(image, "R-ESRGAN 4x+", scale=2)
    nearest = upscalers.upscale(image, "Nearest", scale=2)
    mixed = upscalers.blend(image, "R-ESRGAN 4x+", "Nearest", 0.5, scale=2)
    assert np.array_equal(np.asarray(mixed), np.asarray(Image.blend(model, nearest, 0.5)))


def test_without_a_folder_only_the_plain_resamplers_are_offered():
    image = _image(10, 6)
    assert Upscalers().names() == ["None", "Lanczos", "Nearest"]
    assert upscale(image, "Lanczos", scale=2).size == (20, 12)
    assert Upscalers().blend(image, "Nearest", "Lanczos", 0.3, size=(15, 15)).size == (15, 15)
    with pytest.raises(GenerationError, match="R-ESRGAN") as error:
        upscale(image, "R-ESRGAN 4x+", scale=2)
    assert error.value.field == "upscaler_1"


def test_tiny_upscaler_command_writes_a_loadable_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "tiny.pth"
    tiny_upscaler_main(["esrgan", "--layout", "old", "--scale", "2", str(out)])
    assert "wrote" in capsys.readouterr().out
    assert load_upscaler_model(out).scale == 2


def test_code_nested_inside_the_weights_of_a_pt_is_refused_too(tmp_path: Path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "nested.pt"
    with path.open("wb") as handle:
        torch.save({"params_ema": {"conv_first.weight": torch.zeros(1), "x": _Armed(marker)}}, handle)
    with pytest.raises(CheckpointError, match=r"nested\.pt"):
        read_upscaler_tensors(path)
    assert not marker.exists()
