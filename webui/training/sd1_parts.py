"""Build trainable SD 1.x components, and write them as a single-file checkpoint.

The configs follow the loader's reading of a file (see model_manager.detect): 8 UNet heads,
32 norm groups, 64-wide CLIP heads, `quick_gelu`. So a model trained here and saved through
the LDM exporters loads back through the ordinary loader into exactly these modules.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from webui.model_manager.detect import CLIP_HEAD_WIDTH, GROUP_NORM_GROUPS, SD1_TEXT_PREFIX, SD1_UNET_HEADS
from webui.model_manager.ldm_export import hf_clip_to_ldm, unet_to_ldm, vae_to_ldm

CLIP_VOCAB_SIZE = 49408  # the real CLIP vocabulary, so the shipped tokenizer works unchanged
TEXT_LENGTH = 77
SD1_LATENT_SCALE = 0.18215  # what the loader multiplies SD 1.x latents by


@dataclass(frozen=True)
class TinySD1Shape:
    """The sizes of a from-scratch SD 1.x model; the defaults are the demo model's."""

    text_width: int = 64
    text_layers: int = 3
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_attention: tuple[bool, ...] = (True, True, False)  # cross-attention per level
    unet_layers: int = 1
    vae_channels: tuple[int, ...] = (32, 32, 64, 64)  # four levels: the usual 8x downsampling

    def __post_init__(self) -> None:
        for channels in (*self.unet_channels, *self.vae_channels):
            if channels % GROUP_NORM_GROUPS or channels % SD1_UNET_HEADS:
                raise ValueError(f"channel counts must be multiples of {GROUP_NORM_GROUPS}, got {channels}")
        if self.text_width % CLIP_HEAD_WIDTH and self.text_width > CLIP_HEAD_WIDTH:
            raise ValueError(f"text_width must be a multiple of {CLIP_HEAD_WIDTH}, got {self.text_width}")
        if len(self.unet_attention) != len(self.unet_channels):
            raise ValueError("unet_attention needs one flag per UNet level")

    def describe(self) -> dict[str, object]:
        return asdict(self)


def build_text_encoder(shape: TinySD1Shape) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=shape.text_width,
        intermediate_size=4 * shape.text_width,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=max(1, shape.text_width // CLIP_HEAD_WIDTH),
        max_position_embeddings=TEXT_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=shape.text_width,
    )
    return CLIPTextModel(config)


def unet_config(shape: TinySD1Shape, in_channels: int = 4) -> dict[str, object]:
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in shape.unet_attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(shape.unet_attention)]
    return {
        "sample_size": 64,
        "in_channels": in_channels,
        "out_channels": 4,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": list(shape.unet_channels),
        "layers_per_block": shape.unet_layers,
        "cross_attention_dim": shape.text_width,
        "attention_head_dim": SD1_UNET_HEADS,
        "norm_num_groups": GROUP_NORM_GROUPS,
    }


def build_unet(shape: TinySD1Shape) -> UNet2DConditionModel:
    return UNet2DConditionModel(**unet_config(shape))


def vae_config(shape: TinySD1Shape) -> dict[str, object]:
    levels = len(shape.vae_channels)
    return {
        "block_out_channels": list(shape.vae_channels),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": GROUP_NORM_GROUPS,
        "scaling_factor": SD1_LATENT_SCALE,
    }


def build_vae(shape: TinySD1Shape) -> AutoencoderKL:
    return AutoencoderKL(**vae_config(shape))


@torch.no_grad()
def rescale_vae_latents(vae: AutoencoderKL, factor: float) -> None:
    """Make the encoder's latents `factor` times larger without changing any decoded image.

    SD 1.x files carry no latent scale of their own (the loader assumes 0.18215), so a VAE
    trained here is rescaled until its scaled latents have unit variance, as the UNet expects.
    """
    channels = vae.config.latent_channels
    quant, post = vae.quant_conv, vae.post_quant_conv
    quant.weight[:channels] *= factor
    quant.bias[:channels] *= factor
    quant.bias[channels:] += 2.0 * float(torch.log(torch.tensor(factor)))  # log-variance
    post.weight /= factor


def sd1_state_dict(
    unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """All tensors in the single-file LDM layout of an SD 1.x checkpoint."""
    tensors = hf_clip_to_ldm(text_encoder.state_dict(), SD1_TEXT_PREFIX)
    tensors |= unet_to_ldm(unet.state_dict(), dict(unet.config))
    tensors |= vae_to_ldm(vae.state_dict(), dict(vae.config))
    return {key: value.detach().to("cpu", dtype).contiguous() for key, value in tensors.items()}


def save_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write a .safetensors file so that a crash leaves the previous file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path
