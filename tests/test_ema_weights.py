"""CompVis EMA weights: found, loaded by choice (default, --no-ema, per checkpoint), written by
the merger and the trainer in CompVis's layout, and named in the infotext."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.conftest import CPU
from webui.engine.request import GenerationRequest
from webui.model_manager.detect import UNET_PREFIX
from webui.model_manager.ema import EMA_DECAY_KEY, EMA_UPDATES_KEY, ema_key, ema_tensors, select_weights
from webui.model_manager.load import load_model
from webui.model_manager.merge import MergeMethod, MergeRecipe, merge_checkpoints
from webui.model_manager.registry import ModelKind
from webui.model_manager.state_dict import CheckpointError
from webui.outputs import parse_infotext
from webui.settings import Settings
from webui.studio import Studio
from webui.tools.tiny_checkpoint import build_tiny_state_dict
from webui.training.checkpoint_export import trained_checkpoint_tensors

REQUEST = GenerationRequest(prompt="a red kite", steps=3, width=64, height=64, seed=5)


def _averaged(raw: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """EMA copies of the UNet's tensors that differ from the raw ones."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: value + 0.05 * torch.randn(value.shape, generator=generator)
        for key, value in raw.items()
        if key.startswith(UNET_PREFIX)
    }


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """`full-ema` holds raw weights and different EMA ones; `raw` and `ema` hold one set each."""
    raw = build_tiny_state_dict("sd15", seed=0)
    averaged = _averaged(raw)
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    paths = {name: folder / f"{name}.safetensors" for name in ("full-ema", "raw", "ema")}
    save_file(raw | ema_tensors(averaged, 0.9999, 1234), str(paths["full-ema"]))
    save_file(raw, str(paths["raw"]))
    save_file(raw | averaged, str(paths["ema"]))
    return paths


def _studio(data_dir: Path, **overrides: object) -> Studio:
    return Studio(Settings.for_data_dir(data_dir, watermark=False, **overrides))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _image(studio: Studio, checkpoint: str) -> tuple[np.ndarray, dict[str, object]]:
    result = studio.generate(REQUEST, checkpoint=checkpoint, save=False)
    return _pixels(result.images[0]), parse_infotext(result.infotexts[0]).params


def test_the_layout_is_compvis_litema() -> None:
    assert ema_key("model.diffusion_model.input_blocks.0.0.weight") == (
        "model_ema.diffusion_modelinput_blocks00weight"
    )
    assert ema_key("model.diffusion_model.out.2.bias") == "model_ema.diffusion_modelout2bias"


def test_the_registry_and_the_api_listing_say_which_files_have_ema(files: dict[str, Path]) -> None:
    studio = _studio(files["raw"].parents[2])
    by_name = {file.name: file for file in studio.models.registry.files(ModelKind.CHECKPOINT)}
    assert by_name["full-ema"].has_ema and not by_name["raw"].has_ema and not by_name["ema"].has_ema
    assert studio.models.uses_ema(by_name["full-ema"]) and not studio.models.uses_ema(by_name["raw"])


def test_loading_takes_the_ema_weights_unless_told_otherwise(files: dict[str, Path]) -> None:
    stored = load_file(str(files["full-ema"]))
    key, name = "model.diffusion_model.out.2.weight", "conv_out.weight"
    with_ema = load_model(files["full-ema"], CPU, torch.float32)
    without = load_model(files["full-ema"], CPU, torch.float32, use_ema=False)
    assert torch.equal(with_ema.unet.state_dict()[name], stored[ema_key(key)])
    assert torch.equal(without.unet.state_dict()[name], stored[key])
    assert (with_ema.uses_ema, with_ema.weights_label) == (True, "EMA")
    assert (without.uses_ema, without.weights_label) == (False, "raw")
    plain = load_model(files["raw"], CPU, torch.float32)
    assert (plain.uses_ema, plain.weights_label) == (False, None)


def test_images_follow_the_choice_default_flag_and_per_checkpoint(files: dict[str, Path]) -> None:
    data_dir = files["raw"].parents[2]
    studio = _studio(data_dir)
    ema_reference, _ = _image(studio, "ema")
    raw_reference, _ = _image(studio, "raw")
    assert np.abs(ema_reference - raw_reference).max() > 0  # the two weight sets draw differently

    by_default, params = _image(studio, "full-ema")
    assert np.array_equal(by_default, ema_reference)
    assert params["Weights"] == "EMA"

    # The Models tab's choice for this checkpoint alone: the cached EMA model is rebuilt raw.
    studio.apply_settings(replace(studio.settings, ema_choices={"full-ema": False}))
    chosen_raw, params = _image(studio, "full-ema")
    assert np.array_equal(chosen_raw, raw_reference)
    assert params["Weights"] == "raw"

    flagged = _studio(data_dir, use_ema=False)  # --no-ema
    no_ema, params = _image(flagged, "full-ema")
    assert np.array_equal(no_ema, raw_reference)
    assert params["Weights"] == "raw"
    _, params = _image(flagged, "raw")
    assert "Weights" not in params  # files with one set of weights say nothing


def test_the_no_ema_flag_and_the_saved_choice_reach_the_settings(tmp_path: Path) -> None:
    from webui.settings import app_parser
    from webui.settings_file import SettingsFile

    args = app_parser().parse_args(["--data-dir", str(tmp_path), "--no-ema"])
    assert Settings.from_args(args).use_ema is False
    file = SettingsFile(tmp_path / "settings.json")
    file.save(Settings.for_data_dir(tmp_path, ema_choices={"sd/full-ema": False}))
    assert file.load()["ema_choices"] == {"sd/full-ema": False}
    with pytest.raises(ValueError, match="ema choices"):
        Settings.for_data_dir(tmp_path, ema_choices={"x": "yes"})


def test_incomplete_or_misshapen_ema_weights_are_refused_by_name(files: dict[str, Path]) -> None:
    tensors = load_file(str(files["full-ema"]))
    missing = dict(tensors)
    del missing[ema_key("model.diffusion_model.out.2.weight")]
    with pytest.raises(CheckpointError, match=r"x\.safetensors: its EMA weights are incomplete .*--no-ema"):
        select_weights(missing, True, "x.safetensors")
    assert select_weights(missing, False, "x.safetensors").keys() == load_file(str(files["raw"])).keys()
    misshapen = dict(tensors)
    misshapen[ema_key("model.diffusion_model.out.2.bias")] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="has shape"):
        select_weights(misshapen, True, "x.safetensors")


def test_the_merger_merges_what_each_model_samples_with(files: dict[str, Path], tmp_path: Path) -> None:
    recipe = MergeRecipe(
        files["full-ema"], files["ema"], None, MergeMethod.WEIGHTED_SUM, 0.5, "mix", save_dtype="fp32"
    )
    merged = load_file(str(merge_checkpoints(recipe, tmp_path / "out")))
    a, b = load_file(str(files["full-ema"])), load_file(str(files["ema"]))
    key = "model.diffusion_model.out.2.weight"
    # Raw weights blend raw with raw; EMA weights blend A's EMA with B's only weights.
    torch.testing.assert_close(merged[key], a[key] * 0.5 + b[key] * 0.5)
    torch.testing.assert_close(merged[ema_key(key)], a[ema_key(key)] * 0.5 + b[key] * 0.5)
    assert float(merged[EMA_DECAY_KEY]) == pytest.approx(0.9999)
    assert int(merged[EMA_UPDATES_KEY]) == 1234
    assert {k for k in merged if k.startswith("model_ema.")} == {k for k in a if k.startswith("model_ema.")}

    plain = MergeRecipe(files["raw"], files["ema"], None, MergeMethod.WEIGHTED_SUM, 0.5, "plain")
    assert not any(k.startswith("model_ema.") for k in load_file(str(merge_checkpoints(plain, tmp_path))))


def test_a_fine_tune_drops_the_base_files_stale_ema_weights(files: dict[str, Path]) -> None:
    model = load_model(files["full-ema"], CPU, torch.float32)
    with torch.no_grad():
        model.unet.conv_out.weight.add_(1.0)  # "training"
    tensors = trained_checkpoint_tensors(model, load_file(str(files["full-ema"])))
    assert not any(key.startswith("model_ema.") for key in tensors)
    reloaded = load_model_from(tensors, files["full-ema"].parent / "tuned.safetensors")
    torch.testing.assert_close(reloaded.unet.conv_out.weight, model.unet.conv_out.weight, atol=1e-2, rtol=0)


def load_model_from(tensors: dict[str, torch.Tensor], path: Path):
    save_file(tensors, str(path))
    return load_model(path, CPU, torch.float32)


def test_a_model_trained_with_ema_is_written_with_both_weight_sets(tmp_path: Path) -> None:
    from webui.training.denoiser_trainer import DenoiserTrainOptions
    from webui.training.progress import TrainingHooks
    from webui.training.scratch import ScratchRecipe, shapes_data, train_tiny_model
    from webui.training.sd1_parts import TinySD1Shape
    from webui.training.vae_trainer import VaeTrainOptions

    recipe = ScratchRecipe(
        seed=3,
        image_size=32,
        shape=TinySD1Shape(
            text_width=32,
            text_layers=1,
            unet_channels=(32, 32),
            unet_attention=(True, False),
            vae_channels=(32, 32),
        ),
        vae=VaeTrainOptions(steps=1, batch_size=2, crop=32, mixed_precision=False),
        denoiser=DenoiserTrainOptions(steps=2, batch_size=2, warmup_steps=1, ema_decay=0.5),
    )
    out = tmp_path / "scratch.safetensors"
    train_tiny_model(out, tmp_path / "work", recipe, shapes_data(3, 8, 32), TrainingHooks(), [], {})
    tensors = load_file(str(out))
    assert int(tensors[EMA_UPDATES_KEY]) == 2
    key = "model.diffusion_model.out.2.weight"
    assert not torch.equal(tensors[key], tensors[ema_key(key)])
    with_ema = load_model(out, CPU, torch.float32)
    raw = load_model(out, CPU, torch.float32, use_ema=False)
    assert with_ema.uses_ema and not raw.uses_ema
    assert torch.equal(with_ema.unet.conv_out.weight, tensors[ema_key(key)].float())
    assert torch.equal(raw.unet.conv_out.weight, tensors[key].float())


def test_the_models_route_says_which_weights_each_file_uses(files: dict[str, Path]) -> None:
    import httpx

    from tests.http_helpers import served_without_login

    with served_without_login(_studio(files["raw"].parents[2], ema_choices={"ema": False})) as url:
        listed = httpx.get(f"{url}/api/v1/models", timeout=30).json()
    weights = {entry["name"]: entry["ema_weights"] for entry in listed}
    assert weights == {"full-ema": True, "raw": None, "ema": None}
