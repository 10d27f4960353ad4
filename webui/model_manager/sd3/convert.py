"""Stability-layout SD 3.x tensors -> the state dicts of diffusers' and transformers' modules.

diffusers' own single-file converters do the renaming (MMDiT, VAE, CLIP, T5); this adds what
they leave to their hub configs: CLIP-L's identity projection, T5's tied embedding and fp8
weights (plain float8_e4m3fn, or ComfyUI's "scaled fp8" with one scale per weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_sd3_t5_checkpoint_to_diffusers,
    convert_sd3_transformer_checkpoint_to_diffusers,
)

from webui.model_manager.sd3.spec import T5_PREFIX, TRANSFORMER_PREFIX, VAE_PREFIX, ClipSpec, T5Spec

# Buffers some exporters save that today's modules rebuild themselves.
_IGNORED_CLIP_KEYS = ("text_model.embeddings.position_ids", "logit_scale")
# ComfyUI's scaled-fp8 files: a marker tensor, and per weight `X.scale_weight` (and `X.scale_input`).
SCALED_FP8_MARKER = "scaled_fp8"
_SCALE_WEIGHT = ".scale_weight"
_SCALE_INPUT = ".scale_input"
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def convert_transformer(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD3Transformer2DModel weights from the MMDiT's keys (with or without `model.diffusion_model.`)."""
    # diffusers' converter pops what it converts from the dict it is given: give it its own.
    own = {
        key: value
        for key, value in tensors.items()
        if not key.startswith(("first_stage_model.", "text_encoders."))
    }
    return convert_sd3_transformer_checkpoint_to_diffusers(own)


def convert_vae(tensors: Mapping[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights from LDM-layout VAE keys (with or without `first_stage_model.`)."""
    own = {
        key: value
        for key, value in tensors.items()
        if not key.startswith((TRANSFORMER_PREFIX, "text_encoders."))
    }
    if not any(key.startswith(VAE_PREFIX) for key in own) and any(
        key.startswith("encoder.down_blocks.") for key in own
    ):
        return own  # already in diffusers' layout
    return convert_ldm_vae_checkpoint(own, config)


def convert_clip(tensors: Mapping[str, torch.Tensor], spec: ClipSpec) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection weights (`text_model.…`, `text_projection.weight`).

    SD 3 conditions on CLIP-L's pooled output as it is, unprojected (Stability's reference
    code; its files hold no projection for CLIP-L, and diffusers puts identity there). A
    stand-alone clip_l.safetensors often carries OpenAI's projection: it is set aside for the
    same identity, so that both routes give the same conditioning."""
    inner = {key: value for key, value in tensors.items() if key.startswith(spec.prefix)}
    weights = convert_ldm_clip_checkpoint(inner, remove_prefix=spec.prefix) if spec.prefix else dict(inner)
    weights = {key: value for key, value in weights.items() if key not in _IGNORED_CLIP_KEYS}
    if spec.role == "clip_l" or "text_projection.weight" not in weights:
        weights["text_projection.weight"] = torch.eye(spec.width)
    return weights


def convert_t5(
    tensors: Mapping[str, torch.Tensor], spec: T5Spec, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """T5EncoderModel weights, fp8 ones turned into `dtype`; both names of its one embedding."""
    inner = {key: value for key, value in tensors.items() if key.startswith(spec.prefix)}
    if spec.prefix == T5_PREFIX:
        weights = convert_sd3_t5_checkpoint_to_diffusers(inner)
    else:
        weights = {key[len(spec.prefix) :]: value for key, value in inner.items()}
    weights = dequantize_fp8(weights, dtype)
    embedding = weights.get("shared.weight", weights.get("encoder.embed_tokens.weight"))
    weights["shared.weight"] = weights["encoder.embed_tokens.weight"] = embedding
    return weights


def dequantize_fp8(weights: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """fp8 tensors as `dtype`; in scaled-fp8 files each weight times its `scale_weight`.

    The product is taken in fp32 before rounding to `dtype`, so an fp16 model gets the weight
    the file means, not a product rounded twice."""
    scales = {
        key.removesuffix(_SCALE_WEIGHT): value
        for key, value in weights.items()
        if key.endswith(_SCALE_WEIGHT)
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if key == SCALED_FP8_MARKER or key.endswith((_SCALE_WEIGHT, _SCALE_INPUT)):
            continue
        scale = scales.get(key.removesuffix(".weight")) if key.endswith(".weight") else None
        if scale is not None:
            value = value.to(torch.float32) * scale.to(torch.float32)
        if value.dtype in _FP8_DTYPES or scale is not None:
            value = value.to(dtype)
        out[key] = value
    return out
