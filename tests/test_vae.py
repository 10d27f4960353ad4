"""VAE override: a file from models/VAE, the checkpoint's sidecar, or the checkpoint's own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import CPU
from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest
from webui.model_manager.load import load_model
from webui.model_manager.state_dict import CheckpointError
from webui.model_manager.vae import AUTOMATIC, BUILT_IN, resolve_vae_file, swap_vae
from webui.tools.tiny_checkpoint import write_tiny_vae

REQUEST = GenerationRequest(prompt="a quiet harbour", steps=2, width=64, height=64, seed=11)


def _image_bytes(model) -> bytes:
    return Engine(model).generate(REQUEST).images[0].tobytes()


def test_swap_to_a_vae_file_and_back_restores_the_image_exactly(tiny_dir: Path, tmp_path: Path) -> None:
    model = load_model(tiny_dir / "tiny-sd15.safetensors", CPU, torch.float32)
    original = _image_bytes(model)
    vae_file = write_tiny_vae(tmp_path / "clear.safetensors", seed=7)
    assert swap_vae(model, vae_file) and model.vae_path == vae_file
    assert _image_bytes(model) != original
    expected = load_file(str(vae_file))["decoder.conv_out.weight"].float()
    assert torch.equal(model.vae.decoder.conv_out.weight, expected)
    assert not swap_vae(model, vae_file)  # already in place: nothing reloaded
    assert swap_vae(model, None) and model.vae_path is None
    assert _image_bytes(model) == original


def test_vae_keeps_the_checkpoints_scaling_factor(tiny_dir: Path, tmp_path: Path) -> None:
    model = load_model(tiny_dir / "tiny-sdxl.safetensors", CPU, torch.float32)
    swap_vae(model, write_tiny_vae(tmp_path / "v.safetensors"))
    assert model.vae.config.scaling_factor == pytest.approx(0.13025)


def test_a_vae_that_does_not_fit_is_refused_and_the_old_one_kept(tiny_dir: Path, tmp_path: Path) -> None:
    model = load_model(tiny_dir / "tiny-sd15.safetensors", CPU, torch.float32)
    vae_file = write_tiny_vae(tmp_path / "odd.safetensors")
    tensors = load_file(str(vae_file))
    tensors["decoder.conv_out.weight"] = torch.zeros(3, 16, 3, 3)
    save_file(tensors, str(vae_file))
    before = model.vae
    with pytest.raises(CheckpointError, match="odd.safetensors"):
        swap_vae(model, vae_file)
    assert model.vae is before and model.vae_path is None


def test_choices_resolve_to_files(tmp_path: Path) -> None:
    checkpoint = tmp_path / "dreamy.safetensors"
    checkpoint.write_bytes(b"")
    named = {"clear": tmp_path / "VAE" / "clear.safetensors"}
    assert resolve_vae_file(AUTOMATIC, checkpoint, named) is None
    sidecar = tmp_path / "dreamy.vae.safetensors"
    sidecar.write_bytes(b"")
    assert resolve_vae_file(AUTOMATIC, checkpoint, named) == sidecar
    assert resolve_vae_file(BUILT_IN, checkpoint, named) is None
    assert resolve_vae_file("clear", checkpoint, named) == named["clear"]
    assert resolve_vae_file("clear.safetensors", checkpoint, named) == named["clear"]  # A1111 clients' form
    with pytest.raises(CheckpointError, match="unknown VAE 'murky'"):
        resolve_vae_file("murky", checkpoint, named)
