"""LoRAs and embeddings that cannot be used: listed with the reason, and a prompt naming one
fails with that reason and the name (never a crash, a black image or "unknown")."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from webui.engine.generate import Engine
from webui.engine.request import GenerationError, GenerationRequest
from webui.model_manager.load import load_model
from webui.model_manager.registry import ModelKind
from webui.settings import Settings
from webui.studio import Studio
from webui.tools.tiny_networks import write_tiny_embedding, write_tiny_lora

CPU = torch.device("cpu")
_DOWN = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
_UP = _DOWN.replace("lora_down", "lora_up")
_ALPHA = _DOWN.replace("lora_down.weight", "alpha")


def _request(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, steps=2, width=64, height=64, seed=3)


@pytest.fixture(scope="module")
def good_lora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    path = write_tiny_lora("sd15", tmp_path_factory.mktemp("lora") / "good.safetensors")
    return load_file(path)


def _changed(tensors: dict[str, torch.Tensor], key: str, value: torch.Tensor | None) -> dict:
    changed = {k: v for k, v in tensors.items() if k != key}
    if value is not None:
        changed[key] = value.contiguous()
    return changed


# name -> (how the file is damaged, what the reason says)
BROKEN_LORAS = {
    "nan": (lambda t: _changed(t, _UP, torch.full_like(t[_UP], float("nan"))), "NaN"),
    "inf": (lambda t: _changed(t, _DOWN, torch.full_like(t[_DOWN], float("inf"))), "infinite"),
    "rank": (lambda t: _changed(t, _UP, t[_UP][:, :2]), "ranks 4 (down) and 2 (up)"),
    "flat": (lambda t: _changed(t, _DOWN, t[_DOWN].flatten()), "not matrices"),
    "half": (lambda t: _changed(t, _UP, None), "no up projection"),
    "alpha": (lambda t: _changed(t, _ALPHA, torch.ones(3)), "not one"),
    "ints": (lambda t: _changed(t, _UP, t[_UP].to(torch.int32)), "not floating point"),
}


@pytest.mark.parametrize("damage", sorted(BROKEN_LORAS))
def test_a_broken_lora_is_refused_with_its_name_and_the_model_stays_clean(
    damage: str, good_lora: dict, tiny_dir: Path, tmp_path: Path
) -> None:
    change, reason = BROKEN_LORAS[damage]
    path = tmp_path / f"{damage}.safetensors"
    save_file(change(good_lora), str(path))
    model = load_model(tiny_dir / "tiny-sd15.safetensors", CPU, torch.float32)
    engine = Engine(model, loras={damage: path})
    plain = engine.generate(_request("a fox"))
    expected = rf"LoRA '{damage}' could not be used: .*{re.escape(reason)}"
    with pytest.raises(GenerationError, match=expected) as refused:
        engine.generate(_request(f"a fox <lora:{damage}:1>"))
    assert refused.value.field == "prompt"
    after = engine.generate(_request("a fox"))
    assert after.images[0].tobytes() == plain.images[0].tobytes()


@pytest.fixture
def library(tmp_path: Path, tiny_dir: Path, good_lora: dict) -> Path:
    """A data folder with a good LoRA and embedding beside broken ones."""
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", checkpoints / "tiny.safetensors")
    loras = tmp_path / "models" / "Lora"
    loras.mkdir(parents=True)
    save_file(good_lora, str(loras / "ink.safetensors"))
    save_file(BROKEN_LORAS["rank"][0](good_lora), str(loras / "skewed.safetensors"))
    (loras / "noise.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    embeddings = tmp_path / "embeddings"
    write_tiny_embedding("sd15", embeddings / "style-x.safetensors")
    save_file({"emb_params": torch.full((2, 32), float("nan"))}, str(embeddings / "style.safetensors"))
    save_file({"emb_params": torch.ones(2, 2, 32)}, str(embeddings / "cube.safetensors"))
    return tmp_path


def test_refused_networks_are_listed_and_a_prompt_naming_one_gets_the_reason(library: Path) -> None:
    studio = Studio(Settings.for_data_dir(library, watermark=False, device="cpu", precision="fp32"))
    refused = {(f.kind, f.name): f.error or "" for f in studio.models.registry.unusable()}
    assert "ranks 4 (down) and 2 (up)" in refused[(ModelKind.LORA, "skewed")]
    assert "corrupt" in refused[(ModelKind.LORA, "noise")]
    assert "NaN" in refused[(ModelKind.EMBEDDING, "style")]
    assert "shape (2, 2, 32)" in refused[(ModelKind.EMBEDDING, "cube")]

    for prompt, message in [
        ("a fox <lora:noise:1>", "LoRA 'noise' could not be used: not a readable .safetensors file"),
        ("a fox <lora:Skewed:0.5>", "LoRA 'Skewed' could not be used: .*ranks"),
        ("a fox in style", "embedding 'style' could not be used: its vectors contain NaN"),
        ("a CUBE of ice", "embedding 'cube' could not be used: vectors of shape"),
    ]:
        with pytest.raises(GenerationError, match=message):
            studio.generate(_request(prompt))
    # Good networks work, also beside a refused name that is part of a longer usable one.
    result = studio.generate(_request("a fox in style-x <lora:ink:0.5>"))
    assert 'TI hashes: "style-x: ' in result.infotexts[0] and "<lora:ink:0.5>" in result.infotexts[0]
    with pytest.raises(GenerationError, match="unknown LoRA 'nowhere'"):
        studio.generate(_request("a fox <lora:nowhere:1>"))
