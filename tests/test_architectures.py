"""Architectures are registered data: detection, loading and the engine follow the description."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from webui.engine.noise import image_noise
from webui.engine.preview import linear_preview
from webui.model_manager.archs import (
    Arch,
    DenoisingFamily,
    architecture,
    architectures,
    diffusers_folder_architecture,
    match_text_encoders,
)
from webui.model_manager.embeddings import Embedding
from webui.model_manager.lora import lora_arch_from_shapes
from webui.model_manager.state_dict import read_tensor_shapes

WEBUI = Path(__file__).resolve().parents[1] / "webui"
TINY_ARCH = {
    "sd15": Arch.SD1,
    "sd15-inpaint": Arch.SD1,
    "sd2": Arch.SD2,
    "sd2-v": Arch.SD2,
    "sdxl": Arch.SDXL,
}


def test_every_arch_is_registered_once_with_a_family_and_a_latent_format() -> None:
    described = architectures()
    assert sorted(a.arch.value for a in described) == sorted(arch.value for arch in Arch)
    for entry in described:
        assert architecture(entry.arch) is entry
        assert architecture(entry.arch.value) is entry  # the stored name works too
        assert entry.family is (DenoisingFamily.FLOW if entry.arch is Arch.SD3 else DenoisingFamily.UNET)
        # A linear preview map has a row per channel, or is absent (the VAE draws previews).
        assert len(entry.latent.preview_factors) in (0, entry.latent.channels)
        assert all(len(row) == 3 for row in entry.latent.preview_factors)


@pytest.mark.parametrize("tiny", sorted(TINY_ARCH))
def test_a_loaded_model_takes_its_facts_from_its_description(tiny_model, tiny: str) -> None:
    model = tiny_model(tiny)
    described = architecture(TINY_ARCH[tiny])
    assert model.architecture is described
    assert model.vae.config.scaling_factor == pytest.approx(described.latent.scaling_factor)
    assert model.unet.config.sample_size == described.sample_size(model.spec.prediction_type)
    assert len(model.text_encoders) == len(described.text_encoders)
    pads = [tokenizer.pad_token for tokenizer in model.tokenizers]
    assert pads == ["!" if slot.pad_with_exclamation else "<|endoftext|>" for slot in described.text_encoders]
    assert (model.unet.config.addition_embed_type == "text_time") is described.size_conditioning


def test_sd2_768_is_sized_and_upcast_as_its_description_says(tiny_model) -> None:
    model = tiny_model("sd2-v")
    assert model.unet.config.sample_size == 96  # 768 pixels
    assert model.unet.config.upcast_attention is True
    assert tiny_model("sd2").unet.config.upcast_attention is False


def test_text_encoder_prefixes_pick_the_architecture(tiny_dir: Path) -> None:
    for tiny, arch in TINY_ARCH.items():
        keys = read_tensor_shapes(tiny_dir / f"tiny-{tiny}.safetensors").tensors
        assert match_text_encoders(keys)[0] is architecture(arch)
    refiner_like = ["conditioner.embedders.1.model.token_embedding.weight"]
    described, why = match_text_encoders(refiner_like)
    assert described is None and "refiner" in why
    assert match_text_encoders(["model.diffusion_model.x"]) == (
        None,
        "it has a UNet but no text encoder we know",
    )


def test_diffusers_folders_are_told_apart_by_their_encoders() -> None:
    assert diffusers_folder_architecture(1, "quick_gelu").arch is Arch.SD1
    assert diffusers_folder_architecture(1, "gelu").arch is Arch.SD2
    assert diffusers_folder_architecture(2, "quick_gelu").arch is Arch.SDXL
    assert diffusers_folder_architecture(4, "gelu") is None


def test_noise_and_previews_follow_the_latent_format() -> None:
    assert image_noise(1, 8, 8, channels=16).shape == (1, 16, 8, 8)
    latents = torch.zeros((1, 4, 8, 8))
    # A zero latent shows the format's bias: grey for SD 1.x, SDXL's tint for SDXL.
    for arch in (Arch.SD1, Arch.SDXL):
        pixel = linear_preview(latents, arch)[0].getpixel((0, 0))
        expected = [(bias + 1) * 127.5 for bias in architecture(arch).latent.preview_bias]
        assert max(abs(p - e) for p, e in zip(pixel, expected)) <= 1


def test_lora_and_embedding_widths_come_from_the_descriptions() -> None:
    for described in architectures():
        width = described.context_width
        shapes = {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (
                4,
                width,
            )
        }
        assert lora_arch_from_shapes(shapes) is described.arch
    assert lora_arch_from_shapes({"lora_te2_text_model_x.lora_down.weight": (4, 1280)}) is Arch.SDXL
    assert Embedding("e", (torch.zeros(2, 768),)).arch is Arch.SD1
    assert Embedding("e", (torch.zeros(2, 1024),)).arch is Arch.SD2
    assert Embedding("e", (torch.zeros(2, 768), torch.zeros(2, 1280))).arch is Arch.SDXL
    assert Embedding("e", (torch.zeros(2, 333),)).arch is None


def test_engine_and_loader_do_not_test_for_one_architecture() -> None:
    """`if arch is Arch.SDXL` belongs in the description: outside archs/, only LoRA layout
    guesses for files whose widths no released model has may name an architecture."""
    allowed = {"model_manager/lora.py"}
    # Looking a description up by name, `architecture(Arch.SD1)`, is what the rule asks for.
    pattern = re.compile(r"(?<!architecture\()\bArch\.(SD1|SD2|SDXL)\b")
    offenders = []
    for folder in ("engine", "model_manager"):
        for path in (WEBUI / folder).rglob("*.py"):
            relative = path.relative_to(WEBUI).as_posix()
            if relative.startswith("model_manager/archs/") or relative in allowed:
                continue
            text = path.read_text(encoding="utf-8")
            offenders += [f"{relative}: {m.group(0)}" for m in pattern.finditer(text)]
    assert offenders == []
