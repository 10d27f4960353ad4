"""Tell a checkpoint's architecture and derive every component config from its tensors.

Nothing here looks at file names: the keys say which parts exist and the shapes give
channel counts, depths and widths, so a tiny test checkpoint goes through exactly the
code path of a real multi-GB one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from webui.model_manager.archs import Arch, Architecture, TextEncoderSlot, architecture, match_text_encoders
from webui.model_manager.state_dict import CheckpointError
from webui.model_manager.tokenizer import MAX_LENGTH

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Single-file text encoder prefixes, for the tools that write checkpoints.
SD1_TEXT_PREFIX = architecture(Arch.SD1).text_encoders[0].prefix
SD2_TEXT_PREFIX = architecture(Arch.SD2).text_encoders[0].prefix
SDXL_TEXT1_PREFIX, SDXL_TEXT2_PREFIX = (slot.prefix for slot in architecture(Arch.SDXL).text_encoders)
# CompVis EMA buffers of the UNet: `model_ema.diffusion_model<key without dots>` (see ema.py).
EMA_UNET_PREFIX = "model_ema.diffusion_model"

# The training schedule shared by SD 1.x, 2.x and SDXL.
TRAIN_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
# CLIP text transformers of all three families use 64-wide attention heads.
CLIP_HEAD_WIDTH = 64
# Every family tokenizes with CLIP's vocabulary: token ids go up to 49407 (end of text).
CLIP_VOCAB_SIZE = 49408
GROUP_NORM_GROUPS = 32
SD1_UNET_HEADS = architecture(Arch.SD1).unet_heads


@dataclass(frozen=True)
class TextEncoderSpec:
    prefix: str
    layout: str  # "hf" (OpenAI CLIP in transformers' layout) or "openclip"
    config: dict[str, Any]
    with_projection: bool
    drop_last_layer: bool  # SD2 conditions on the penultimate OpenCLIP layer
    pad_with_exclamation: bool  # OpenCLIP tokenizers pad with "!" (id 0)


@dataclass(frozen=True)
class ModelSpec:
    arch: Arch
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    text_encoders: tuple[TextEncoderSpec, ...]
    prediction_type: str  # "epsilon" or "v_prediction"
    is_inpainting: bool
    has_ema: bool = False  # the file also holds CompVis EMA weights of its UNet (see ema.py)
    label: str = ""  # the architecture's own name for the variant ("SD 3.5 Medium"); "" : arch's

    @property
    def architecture(self) -> Architecture:
        return architecture(self.arch)

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return {**TRAIN_SCHEDULE, "prediction_type": self.prediction_type}

    @property
    def kind(self) -> str:
        """A short human label such as "SD 2.x v-prediction inpainting"."""
        parts = [self.label or self.arch.label]
        if self.prediction_type == "v_prediction":
            parts.append("v-prediction")
        if self.is_inpainting:
            parts.append("inpainting")
        return " ".join(parts)


def detect_model(tensors: dict[str, torch.Tensor], metadata: dict[str, str], name: str) -> ModelSpec:
    """Identify a single-file LDM-layout checkpoint; raise CheckpointError for anything else."""
    # The reading below takes the tensors it expects at the shapes it expects; a damaged or
    # hand-edited file breaks those expectations, and that must be a reason, not a crash.
    try:
        return _detect(tensors, metadata, name)
    except KeyError as error:
        raise CheckpointError(f"{name}: a tensor the model needs is missing: {error}") from error
    except (IndexError, StopIteration, TypeError, ValueError, ZeroDivisionError) as error:
        if isinstance(error, CheckpointError):
            raise
        detail = f": {error}" if str(error) else ""
        raise CheckpointError(
            f"{name}: a tensor is missing or has a shape no Stable Diffusion model has{detail}"
        ) from error


def _detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str], name: str) -> ModelSpec:
    unet = _strip(tensors, UNET_PREFIX)
    if "input_blocks.0.0.weight" not in unet:
        raise CheckpointError(
            f"{name}: not a Stable Diffusion checkpoint (no UNet under '{UNET_PREFIX}'); "
            "LoRA, VAE and embedding files go in their own folders"
        )
    context_dim = _cross_attention_width(unet)
    described, why_not = match_text_encoders(tensors)
    if described is None:
        raise CheckpointError(f"{name}: unknown checkpoint kind: {why_not}")
    arch = described.arch
    encoders = tuple(_text_encoder_spec(tensors, slot) for slot in described.text_encoders)
    for encoder in encoders:
        _check_token_tables(encoder.config, name)
    text_width = sum(spec.config["hidden_size"] for spec in encoders)
    if context_dim != text_width:
        raise CheckpointError(
            f"{name}: UNet cross-attention width {context_dim} "
            f"does not match the text encoder width {text_width}"
        )
    in_channels = unet["input_blocks.0.0.weight"].shape[1]
    if in_channels not in (4, 9):
        raise CheckpointError(
            f"{name}: UNet takes {in_channels} input channels; "
            "only 4 (normal) and 9 (inpainting) are supported"
        )
    prediction_type = _prediction_type(tensors, metadata)
    pooled_dim = encoders[-1].config.get("projection_dim") if described.size_conditioning else None
    unet_config = _unet_config(unet, described, pooled_dim, prediction_type)
    vae_config = _vae_config(_strip(tensors, VAE_PREFIX), described, name)
    return ModelSpec(
        arch, unet_config, vae_config, encoders, prediction_type, in_channels == 9, has_ema(tensors)
    )


def _check_token_tables(config: dict[str, Any], name: str) -> None:
    """A text encoder with fewer token or position rows than the tokenizer fills would fail on
    the first prompt; say so now."""
    if config["vocab_size"] < CLIP_VOCAB_SIZE:
        raise CheckpointError(
            f"{name}: its text encoder knows {config['vocab_size']} tokens, "
            f"CLIP's tokenizer uses {CLIP_VOCAB_SIZE}"
        )
    if config["max_position_embeddings"] < MAX_LENGTH:
        raise CheckpointError(
            f"{name}: its text encoder takes {config['max_position_embeddings']} positions, "
            f"prompts need {MAX_LENGTH}"
        )


def has_ema(keys: Iterable[str]) -> bool:
    """Whether a checkpoint's keys include CompVis EMA weights of its UNet (see ema.py)."""
    return any(key.startswith(EMA_UNET_PREFIX) for key in keys)


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def _count(keys: list[str] | dict[str, Any], pattern: str) -> int:
    """Number of distinct indices matched by the `(\\d+)` group of `pattern`."""
    regex = re.compile(pattern)
    return len({match.group(1) for key in keys if (match := regex.match(key))})


def _cross_attention_width(unet: dict[str, torch.Tensor]) -> int:
    for key in sorted(unet):
        if key.endswith("attn2.to_k.weight"):
            return int(unet[key].shape[1])
    raise CheckpointError("the UNet has no cross-attention layers")


def _prediction_type(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    # A `v_pred` marker tensor is the community convention for v-prediction files;
    # SAI's modelspec metadata may say it too. A same-named .yaml overrides both (see load.py).
    if "v_pred" in tensors:
        return "v_prediction"
    declared = metadata.get("modelspec.prediction_type", "").lower()
    if declared in ("v", "v_prediction"):
        return "v_prediction"
    return "epsilon"


def _text_encoder_spec(tensors: dict[str, torch.Tensor], slot: TextEncoderSlot) -> TextEncoderSpec:
    if slot.layout == "hf":
        return _hf_clip_spec(tensors, slot.prefix)
    return _openclip_spec(
        tensors, slot.prefix, with_projection=slot.with_projection, drop_last_layer=slot.drop_last_layer
    )


def _hf_clip_spec(tensors: dict[str, torch.Tensor], prefix: str) -> TextEncoderSpec:
    inner = _strip(tensors, prefix)
    # Old files omit the `text_model.` level; the loader adds it back.
    base = "text_model." if "text_model.embeddings.token_embedding.weight" in inner else ""
    token = inner[f"{base}embeddings.token_embedding.weight"]
    hidden = int(token.shape[1])
    config = {
        "vocab_size": int(token.shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(inner[f"{base}encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": _count(inner, rf"{base}encoder\.layers\.(\d+)\."),
        "num_attention_heads": max(1, hidden // CLIP_HEAD_WIDTH),
        "max_position_embeddings": int(inner[f"{base}embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": "quick_gelu",
        "projection_dim": hidden,
    }
    return TextEncoderSpec(prefix, "hf", config, False, False, False)


def _openclip_spec(
    tensors: dict[str, torch.Tensor], prefix: str, *, with_projection: bool, drop_last_layer: bool
) -> TextEncoderSpec:
    inner = _strip(tensors, prefix)
    token = inner["token_embedding.weight"]
    hidden = int(token.shape[1])
    layers = _count(inner, r"transformer\.resblocks\.(\d+)\.")
    config = {
        "vocab_size": int(token.shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(inner["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "num_hidden_layers": layers - 1 if drop_last_layer else layers,
        "num_attention_heads": max(1, hidden // CLIP_HEAD_WIDTH),
        "max_position_embeddings": int(inner["positional_embedding"].shape[0]),
        "hidden_act": "gelu",
        "projection_dim": int(inner["text_projection"].shape[1]) if "text_projection" in inner else hidden,
    }
    return TextEncoderSpec(prefix, "openclip", config, with_projection, drop_last_layer, True)


def _unet_config(
    unet: dict[str, torch.Tensor], described: Architecture, pooled_dim: int | None, prediction_type: str
) -> dict[str, Any]:
    levels = _unet_levels(unet)
    block_out = [level[0][0] for level in levels]
    down_attn = [any(has_attn for _, has_attn, _ in level) for level in levels]
    down_depth = [max((depth for _, _, depth in level), default=1) or 1 for level in levels]
    layers_per_block = len(levels[0])
    up_attn, up_depth = _unet_up_levels(unet, len(levels), layers_per_block)
    mid_depth = _count(unet, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    if mid_depth and mid_depth != down_depth[-1]:
        raise CheckpointError(f"UNet middle block depth {mid_depth} differs from its deepest level's")
    proj_in = next(value for key, value in unet.items() if key.endswith(".proj_in.weight"))
    context_dim = _cross_attention_width(unet)

    config: dict[str, Any] = {
        "sample_size": described.sample_size(prediction_type),
        "in_channels": int(unet["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(unet["out.2.weight"].shape[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        "block_out_channels": block_out,
        "layers_per_block": layers_per_block,
        "cross_attention_dim": context_dim,
        "attention_head_dim": described.unet_heads or [max(1, c // CLIP_HEAD_WIDTH) for c in block_out],
        "use_linear_projection": proj_in.ndim == 2,
        "transformer_layers_per_block": down_depth if described.transformer_depth_per_level else 1,
        "norm_num_groups": GROUP_NORM_GROUPS,
        "upcast_attention": described.upcast_attention_for_v and prediction_type == "v_prediction",
    }
    if up_depth != list(reversed(down_depth)) and described.transformer_depth_per_level:
        config["reverse_transformer_layers_per_block"] = up_depth
    if "label_emb.0.0.weight" in unet:
        adm_in = int(unet["label_emb.0.0.weight"].shape[1])
        if pooled_dim is None or (adm_in - pooled_dim) % 6:
            raise CheckpointError(f"cannot split the UNet's {adm_in} size/crop conditioning inputs")
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(adm_in - pooled_dim) // 6,
            projection_class_embeddings_input_dim=adm_in,
        )
    return config


def _unet_levels(unet: dict[str, torch.Tensor]) -> list[list[tuple[int, bool, int]]]:
    """(channels, has attention, transformer depth) of each res block, grouped by resolution."""
    levels: list[list[tuple[int, bool, int]]] = [[]]
    count = _count(unet, r"input_blocks\.(\d+)\.")
    for index in range(1, count):
        block = f"input_blocks.{index}"
        if f"{block}.0.op.weight" in unet:
            levels.append([])
            continue
        channels = int(unet[f"{block}.0.out_layers.3.weight"].shape[0])
        depth = _count(unet, rf"{block}\.1\.transformer_blocks\.(\d+)\.")
        levels[-1].append((channels, f"{block}.1.proj_in.weight" in unet, depth))
    if any(len(level) != len(levels[0]) for level in levels):
        raise CheckpointError("UNet levels have different numbers of res blocks")
    return levels


def _unet_up_levels(
    unet: dict[str, torch.Tensor], level_count: int, layers_per_block: int
) -> tuple[list[bool], list[int]]:
    per_level = layers_per_block + 1
    attn, depth = [], []
    for level in range(level_count):
        blocks = [f"output_blocks.{level * per_level + i}" for i in range(per_level)]
        attn.append(any(f"{b}.1.proj_in.weight" in unet for b in blocks))
        depth.append(max(_count(unet, rf"{b}\.1\.transformer_blocks\.(\d+)\.") for b in blocks) or 1)
    return attn, depth


def _vae_config(vae: dict[str, torch.Tensor], described: Architecture, name: str) -> dict[str, Any]:
    if "decoder.conv_in.weight" not in vae:
        raise CheckpointError(f"{name}: the checkpoint has no VAE under '{VAE_PREFIX}'")
    levels = _count(vae, r"encoder\.down\.(\d+)\.")
    return {
        "in_channels": int(vae["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(vae["decoder.conv_out.weight"].shape[0]),
        "latent_channels": int(vae["decoder.conv_in.weight"].shape[1]),
        "block_out_channels": [
            int(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels)
        ],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": _count(vae, r"encoder\.down\.0\.block\.(\d+)\."),
        "norm_num_groups": GROUP_NORM_GROUPS,
        "scaling_factor": described.latent.scaling_factor,
    }
