"""Loading checkpoints: detection from tensors, exact weights, offline, and refusing bad files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest
from webui.model_manager.detect import Arch
from webui.model_manager.facts import FileFactsCache
from webui.model_manager.ldm_export import hf_clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm
from webui.model_manager.load import load_model
from webui.model_manager.registry import ModelFolders, ModelKind, ModelRegistry
from webui.model_manager.state_dict import CheckpointError, read_state_dict
from webui.model_manager.tokenizer import build_clip_tokenizer
from webui.tools.tiny_checkpoint import build_tiny_state_dict
from webui.tools.tiny_checkpoint import main as tiny_main

from .conftest import CPU

EXPECTED = {
    "sd15": (Arch.SD1, "epsilon", False, 32),
    "sd15-inpaint": (Arch.SD1, "epsilon", True, 32),
    "sd2": (Arch.SD2, "epsilon", False, 32),
    "sd2-v": (Arch.SD2, "v_prediction", False, 32),
    "sdxl": (Arch.SDXL, "epsilon", False, 64),
}


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_architecture_and_config_come_from_the_tensors(tiny_model, arch: str) -> None:
    model = tiny_model(arch)
    expected_arch, prediction, inpainting, context = EXPECTED[arch]
    assert model.arch is expected_arch
    assert model.spec.prediction_type == prediction
    assert model.spec.is_inpainting is inpainting
    assert model.unet.config.in_channels == (9 if inpainting else 4)
    assert model.unet.config.cross_attention_dim == context
    assert list(model.unet.config.block_out_channels) == [32, 64]
    assert model.vae.config.scaling_factor == (0.13025 if arch == "sdxl" else 0.18215)
    if arch == "sdxl":
        assert list(model.unet.config.transformer_layers_per_block) == [1, 2]
        assert model.unet.config.addition_time_embed_dim == 8
        assert [type(e).__name__ for e in model.text_encoders] == [
            "CLIPTextModel",
            "CLIPTextModelWithProjection",
        ]
    if arch.startswith("sd2"):
        # The file holds 3 OpenCLIP blocks; SD2 conditions on the penultimate, so 2 are built.
        assert model.text_encoders[0].config.num_hidden_layers == 2
        assert model.tokenizers[0].pad_token_id == 0


def test_detection_ignores_the_file_name(tiny_dir: Path, tmp_path: Path) -> None:
    misleading = tmp_path / "sdxl_base_1.0_inpainting.safetensors"
    misleading.write_bytes((tiny_dir / "tiny-sd15.safetensors").read_bytes())
    model = load_model(misleading, CPU, torch.float32)
    assert model.arch is Arch.SD1 and not model.spec.is_inpainting


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
def test_loaded_weights_equal_the_file_bit_for_bit(tiny_model, arch: str) -> None:
    """Export the loaded modules back to the LDM layout: every tensor must match the file."""
    model = tiny_model(arch)
    original = build_tiny_state_dict(arch)
    exported = unet_to_ldm(model.unet.state_dict(), dict(model.unet.config))
    exported |= vae_to_ldm(model.vae.state_dict(), dict(model.vae.config))
    for spec, encoder in zip(model.spec.text_encoders, model.text_encoders):
        to_ldm = hf_clip_to_ldm if spec.layout == "hf" else open_clip_to_ldm
        exported |= to_ldm(encoder.state_dict(), spec.prefix)
    dropped = {k for k in original if k not in exported}
    if arch == "sd2":  # the unused last OpenCLIP block and projection
        assert dropped and all(".resblocks.2." in k or k.endswith("text_projection") for k in dropped)
    else:
        assert not dropped
    for key, value in exported.items():
        assert torch.equal(value.to(torch.float16), original[key]), key


def test_tokenizer_is_the_real_clip_vocabulary_offline(no_network: list[object]) -> None:
    tokenizer = build_clip_tokenizer(pad_with_exclamation=False)
    ids = tokenizer("a photo of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert len(tokenizer) == 49408
    padded = build_clip_tokenizer(pad_with_exclamation=True)("hi", padding="max_length", max_length=5)
    assert padded.input_ids == [49406, 1883, 49407, 0, 0]
    assert no_network == []


def test_loading_and_generating_open_no_connection(tiny_dir: Path, no_network: list[object]) -> None:
    for arch in ("sd15", "sdxl"):
        model = load_model(tiny_dir / f"tiny-{arch}.safetensors", CPU, torch.float32)
        result = Engine(model).generate(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1))
        assert result.images[0].size == (64, 64)
    assert no_network == []


def test_diffusers_folder_gives_the_same_images_as_the_single_file(tiny_model, tmp_path: Path) -> None:
    model = tiny_model("sd15")
    folder = tmp_path / "tiny-diffusers"
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    model.text_encoders[0].save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    folders = ModelFolders.under(tmp_path, [tmp_path])
    registry = ModelRegistry(folders, FileFactsCache(tmp_path / "cache.json"))
    assert [c.name for c in registry.files(ModelKind.CHECKPOINT)] == ["tiny-diffusers"]
    from_folder = load_model(folder, CPU, torch.float32)
    request = GenerationRequest(prompt="a boat", steps=3, width=64, height=64, seed=5)
    expected = Engine(model).generate(request).images[0]
    assert from_folder.arch is Arch.SD1
    assert Engine(from_folder).generate(request).images[0].tobytes() == expected.tobytes()


def test_yaml_beside_the_checkpoint_overrides_prediction_type(tiny_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "my-sd2.safetensors"
    path.write_bytes((tiny_dir / "tiny-sd2.safetensors").read_bytes())
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    model = load_model(path, CPU, torch.float32)
    assert model.spec.prediction_type == "v_prediction"
    assert model.unet.config.upcast_attention is True


def test_truncated_safetensors_is_refused_clearly(tiny_dir: Path, tmp_path: Path) -> None:
    data = (tiny_dir / "tiny-sd15.safetensors").read_bytes()
    path = tmp_path / "broken.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="broken.safetensors.*truncated or corrupt"):
        load_model(path, CPU, torch.float32)


def test_text_file_named_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.safetensors"
    path.write_text("not a model")
    with pytest.raises(CheckpointError, match="notes.safetensors"):
        read_state_dict(path)


def test_safetensors_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(path))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint"):
        load_model(path, CPU, torch.float32)


def test_tensors_that_do_not_fit_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    state = read_state_dict(tiny_dir / "tiny-sd15.safetensors").tensors
    key = "model.diffusion_model.out.2.bias"
    state[key] = torch.zeros(7, dtype=torch.float16)
    path = tmp_path / "mangled.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="mangled.safetensors: the UNet tensors do not fit"):
        load_model(path, CPU, torch.float32)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_code_running_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"x": _RunsCode(marker)}}))
    with pytest.raises(CheckpointError, match="evil.ckpt: refused to load: this pickle tries to run code"):
        load_model(path, CPU, torch.float32)
    assert not marker.exists()


def test_weights_only_ckpt_loads(tiny_dir: Path, tmp_path: Path) -> None:
    tensors = read_state_dict(tiny_dir / "tiny-sd15.safetensors").tensors
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": tensors, "global_step": 1}, path)
    assert load_model(path, CPU, torch.float32).arch is Arch.SD1


def test_hash_is_sha256_prefix_and_cached(tiny_dir: Path, tmp_path: Path) -> None:
    import hashlib

    path = tiny_dir / "tiny-sd15.safetensors"
    cache = FileFactsCache(tmp_path / "cache.json")
    assert cache.short_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert str(path.resolve()) in (tmp_path / "cache.json").read_text()


def test_tiny_checkpoint_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.safetensors"
    tiny_main(["--arch", "sd2-v", str(out)])
    assert "sd2-v" in capsys.readouterr().out
    assert out.stat().st_size < 8_000_000
    assert read_state_dict(out).tensors.keys() == build_tiny_state_dict("sd2-v").keys()
