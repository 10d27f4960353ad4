"""Issue 21, item 5: LyCORIS LoHa and LoKr networks load as peft adapters and compute LyCORIS's delta."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest
from webui.model_manager.load import LoadedModel, load_model
from webui.model_manager.lora import LoraError, activate_loras
from webui.tools.tiny_lycoris import write_tiny_lycoris
from webui.tools.tiny_networks import write_tiny_lora

CPU = torch.device("cpu")
# A UNet attention projection and a text encoder layer the tiny files cover.
UNET_LAYER = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lycoris")
    write_tiny_lycoris("loha", folder / "loha.safetensors")
    write_tiny_lycoris("lokr", folder / "lokr.safetensors")
    write_tiny_lora("sd15", folder / "lora.safetensors")
    return folder


@pytest.fixture
def model(tiny_dir: Path) -> LoadedModel:
    return load_model(tiny_dir / "tiny-sd15.safetensors", CPU, torch.float32)


def _layer_key(tensors: dict[str, torch.Tensor]) -> str:
    return "lora_unet_" + UNET_LAYER.replace(".", "_")


def _expected_delta(kind: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """LyCORIS's own formula for the layer's weight change, from the file's tensors."""
    t = {
        k.rpartition(".")[2]: v.float() for k, v in tensors.items() if k.startswith(_layer_key(tensors) + ".")
    }
    if kind == "loha":
        rank = t["hada_w1_b"].shape[0]
        return (
            (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * float(t["alpha"]) / rank
        )
    w2 = t["lokr_w2_a"] @ t["lokr_w2_b"] if "lokr_w2_a" in t else t["lokr_w2"]
    scale = float(t["alpha"]) / t["lokr_w2_a"].shape[1] if "lokr_w2_a" in t else 1.0
    return torch.kron(t["lokr_w1"], w2) * scale


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_a_layer_computes_lycoris_delta_at_the_tags_weight(
    kind: str, files: Path, model: LoadedModel
) -> None:
    path = files / f"{kind}.safetensors"
    tensors = load_file(str(path))
    layer = model.unet.get_submodule(UNET_LAYER)
    base = layer.weight.detach().clone()
    x = torch.randn(3, base.shape[1], generator=torch.Generator().manual_seed(0))
    plain = torch.nn.functional.linear(x, base, layer.bias)
    activate_loras(model, [(kind, path, 0.5)])
    wrapped = model.unet.get_submodule(UNET_LAYER)
    with torch.no_grad():
        got = wrapped(x)
    expected = plain + 0.5 * torch.nn.functional.linear(x, _expected_delta(kind, tensors))
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    activate_loras(model, [])  # off: the exact original computation
    with torch.no_grad():
        assert torch.equal(model.unet.get_submodule(UNET_LAYER)(x), plain)


def _pixels(engine: Engine, prompt: str) -> np.ndarray:
    request = GenerationRequest(prompt=prompt, steps=2, width=64, height=64, seed=4)
    return np.asarray(engine.generate(request).images[0], dtype=np.int16)


def test_loha_lokr_and_lora_together_in_jobs_and_switched_off_exactly(
    files: Path, model: LoadedModel
) -> None:
    engine = Engine(model, loras={name: files / f"{name}.safetensors" for name in ("loha", "lokr", "lora")})
    plain = _pixels(engine, "a red fox")
    loha = _pixels(engine, "a red fox <lora:loha:1>")
    lokr = _pixels(engine, "a red fox <lora:lokr:1>")
    every = _pixels(engine, "a red fox <lora:loha:1> <lora:lokr:1> <lora:lora:1>")
    assert not np.array_equal(plain, loha) and not np.array_equal(plain, lokr)
    assert not np.array_equal(loha, lokr) and not np.array_equal(every, loha)
    assert np.array_equal(_pixels(engine, "a red fox <lora:loha:1>"), loha)  # reused, same result
    assert np.array_equal(_pixels(engine, "a red fox"), plain)


def test_tucker_layers_and_files_for_another_model_are_refused_by_name(
    files: Path, model: LoadedModel, tmp_path: Path
) -> None:
    tensors = load_file(str(files / "loha.safetensors"))
    key = _layer_key(tensors)
    save_file({**tensors, f"{key}.hada_t1": torch.zeros(2, 2, 1, 1)}, str(tmp_path / "tucker.safetensors"))
    with pytest.raises(LoraError, match="Tucker"):
        activate_loras(model, [("tucker", tmp_path / "tucker.safetensors", 1.0)])
    renamed = {k.replace("mid_block", "mid_block_7"): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "other.safetensors"))
    with pytest.raises(LoraError, match="no such layer"):
        activate_loras(model, [("other", tmp_path / "other.safetensors", 1.0)])
    # A failed load leaves nothing behind: the model computes as before.
    layer = model.unet.get_submodule(UNET_LAYER)
    x = torch.randn(2, model.unet.get_submodule(UNET_LAYER).in_features)
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
