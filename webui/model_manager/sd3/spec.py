"""Tell a Stable Diffusion 3.x single file apart and read every component config from its shapes.

Stability's SD 3 / 3.5 files hold an MMDiT under `model.diffusion_model.` (`joint_blocks.N`,
`x_embedder`, ...), a 16-channel VAE under `first_stage_model.`, and may hold the three text
encoders under `text_encoders.clip_l|clip_g|t5xxl.transformer.`. Only keys and shapes are read
here, so this works on the meta tensors of a header-only read as on loaded weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from webui.model_manager.state_dict import CheckpointError

TRANSFORMER_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
ENCODER_PREFIXES = {"clip_l": CLIP_L_PREFIX, "clip_g": CLIP_G_PREFIX, "t5xxl": T5_PREFIX}

# SD3's VAE latents are shifted and scaled before the transformer sees them (its reference config).
VAE_SCALING_FACTOR = 1.5305
VAE_SHIFT_FACTOR = 0.0609
# The flow-matching schedule of SD 3 and 3.5: 1000 training steps, timesteps shifted by 3.
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
# Attention heads of SD 3.0's MMDiT (it has no q/k norm weights to read the width from) and of CLIP.
DEFAULT_HEAD_WIDTH = 64
CLIP_VOCAB_SIZE = 49408
CLIP_POSITIONS = 77
GROUP_NORM_GROUPS = 32
# 1024 px images: 128 latent rows, the default size of every SD 3.x model.
DEFAULT_SAMPLE_SIZE = 128

# Known MMDiT variants: SD 3.5 Medium is the only one with dual-attention (`attn2`) layers,
# SD 3.5 Large (and Large Turbo, the same weights' shape) has 38 joint blocks, SD 3.0 Medium 24
# without q/k norms.
SD35_MEDIUM = "sd35-medium"
SD35_LARGE = "sd35-large"
SD3_MEDIUM = "sd3-medium"
VARIANT_LABELS = {SD35_MEDIUM: "SD 3.5 Medium", SD35_LARGE: "SD 3.5 Large", SD3_MEDIUM: "SD 3 Medium"}
SD35_LARGE_DEPTH = 38
SD3_MEDIUM_DEPTH = 24


@dataclass(frozen=True)
class ClipSpec:
    """One CLIP text encoder in transformers' layout; `prefix` is where its keys start."""

    role: str  # "clip_l" or "clip_g"
    prefix: str
    config: dict[str, Any]  # CLIPTextConfig keyword arguments
    has_projection: bool  # whether the file holds a text_projection (CLIP-L's is never used: convert.py)

    @property
    def width(self) -> int:
        return int(self.config["hidden_size"])


@dataclass(frozen=True)
class T5Spec:
    prefix: str
    config: dict[str, Any]  # T5Config keyword arguments
    storage: (
        str  # "float" (fp32/fp16/bf16), "fp8" (float8_e4m3fn) or "scaled_fp8" (fp8 with per-weight scales)
    )

    @property
    def width(self) -> int:
        return int(self.config["d_model"])


@dataclass(frozen=True)
class SD3Spec:
    variant: str
    transformer_config: dict[str, Any]  # SD3Transformer2DModel keyword arguments
    vae_config: dict[str, Any] | None  # AutoencoderKL keyword arguments; None: no VAE in the file
    clip_l: ClipSpec | None  # None: not in the file (see encoder_files.py)
    clip_g: ClipSpec | None
    t5: T5Spec | None
    is_turbo: bool = False  # only the file's metadata can say so: Large Turbo has Large's shapes
    shift: float = SCHEDULER_CONFIG["shift"]  # a diffusers folder's scheduler may say otherwise

    @property
    def kind(self) -> str:
        return VARIANT_LABELS[self.variant] + (" Turbo" if self.is_turbo else "")

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return {**SCHEDULER_CONFIG, "shift": self.shift}

    @property
    def pooled_width(self) -> int:
        """CLIP-L's width plus CLIP-G's: what the transformer's pooled projection takes."""
        return int(self.transformer_config["pooled_projection_dim"])

    @property
    def joint_width(self) -> int:
        """T5's width: the text sequence width the transformer takes (CLIP's is padded to it)."""
        return int(self.transformer_config["joint_attention_dim"])

    @property
    def missing_encoders(self) -> tuple[str, ...]:
        return tuple(role for role in ("clip_l", "clip_g", "t5xxl") if self.encoder(role) is None)

    def encoder(self, role: str) -> ClipSpec | T5Spec | None:
        return {"clip_l": self.clip_l, "clip_g": self.clip_g, "t5xxl": self.t5}[role]


def is_sd3_checkpoint(keys: Iterable[str]) -> bool:
    """Whether a single file's keys are those of an SD 3.x MMDiT (cheap: keys only)."""
    names = set(keys)
    return f"{TRANSFORMER_PREFIX}x_embedder.proj.weight" in names and any(
        key.startswith(f"{TRANSFORMER_PREFIX}joint_blocks.") for key in names
    )


def detect_sd3(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], name: str) -> SD3Spec:
    """Identify an SD 3.x single file; CheckpointError names what is missing or unknown."""
    try:
        return _detect(tensors, metadata, name)
    except KeyError as error:
        raise CheckpointError(f"{name}: a tensor an SD 3 model needs is missing: {error}") from error
    except (IndexError, TypeError, ValueError, ZeroDivisionError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{name}: a tensor has a shape no SD 3 model has: {error}") from error


def _detect(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], name: str) -> SD3Spec:
    if not is_sd3_checkpoint(tensors):
        raise CheckpointError(f"{name}: not an SD 3 checkpoint (no MMDiT under '{TRANSFORMER_PREFIX}')")
    transformer = strip_prefix(tensors, TRANSFORMER_PREFIX)
    config = transformer_config(transformer)
    variant = variant_of(config, name)
    clip_l = clip_spec(strip_prefix(tensors, CLIP_L_PREFIX), "clip_l", CLIP_L_PREFIX, name)
    clip_g = clip_spec(strip_prefix(tensors, CLIP_G_PREFIX), "clip_g", CLIP_G_PREFIX, name)
    t5 = t5_spec(strip_prefix(tensors, T5_PREFIX), T5_PREFIX, name)
    spec = SD3Spec(
        variant,
        config,
        vae_config(strip_prefix(tensors, VAE_PREFIX), name),
        clip_l,
        clip_g,
        t5,
        _declares_turbo(metadata),
    )
    check_encoders_fit(spec, name)
    return spec


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    """The distinct numbers matched by the `(\\d+)` group of `pattern`, sorted."""
    regex = re.compile(pattern)
    return sorted({int(match.group(1)) for key in keys if (match := regex.match(key))})


def transformer_config(weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """SD3Transformer2DModel's config from the MMDiT's Stability-layout tensors (prefix removed)."""
    patch = weights["x_embedder.proj.weight"]
    hidden, in_channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    depths = _indices(weights, r"joint_blocks\.(\d+)\.")
    if depths != list(range(len(depths))):
        raise CheckpointError(f"the MMDiT's joint blocks are not numbered 0..N-1: {depths[:5]}...")
    ln_q = weights.get("joint_blocks.0.x_block.attn.ln_q.weight")
    head_width = int(ln_q.shape[0]) if ln_q is not None else DEFAULT_HEAD_WIDTH
    if hidden % head_width:
        raise CheckpointError(f"the MMDiT's width {hidden} is not a whole number of {head_width}-wide heads")
    positions = int(weights["pos_embed"].shape[1])
    max_size = math.isqrt(positions)
    if max_size * max_size != positions:
        raise CheckpointError(f"the MMDiT's position table has {positions} rows, not a square grid")
    context = weights["context_embedder.weight"]
    out_channels = int(weights["final_layer.linear.weight"].shape[0]) // (patch_size * patch_size)
    return {
        "sample_size": min(DEFAULT_SAMPLE_SIZE, max_size * patch_size),
        "patch_size": patch_size,
        "in_channels": in_channels,
        "num_layers": len(depths),
        "attention_head_dim": head_width,
        "num_attention_heads": hidden // head_width,
        "joint_attention_dim": int(context.shape[1]),
        "caption_projection_dim": int(context.shape[0]),
        "pooled_projection_dim": int(weights["y_embedder.mlp.0.weight"].shape[1]),
        "out_channels": out_channels,
        "pos_embed_max_size": max_size,
        "dual_attention_layers": tuple(_indices(weights, r"joint_blocks\.(\d+)\.x_block\.attn2\.")),
        "qk_norm": "rms_norm" if ln_q is not None else None,
    }


def variant_of(config: Mapping[str, Any], name: str) -> str:
    """Which known MMDiT `config` (SD3Transformer2DModel's) is; CheckpointError for others."""
    depth, dual = config["num_layers"], config["dual_attention_layers"]
    if dual:
        return SD35_MEDIUM
    if depth == SD35_LARGE_DEPTH and config["qk_norm"]:
        return SD35_LARGE
    if depth == SD3_MEDIUM_DEPTH and not config["qk_norm"]:
        return SD3_MEDIUM
    width = config["num_attention_heads"] * config["attention_head_dim"]
    raise CheckpointError(
        f"{name}: an MMDiT of a variant not known here ({depth} joint blocks, width {width}, "
        f"{'with' if config['qk_norm'] else 'without'} q/k norms, no dual-attention layers); known: "
        f"SD 3.5 Medium (dual-attention layers), SD 3.5 Large and Large Turbo ({SD35_LARGE_DEPTH} "
        f"blocks, q/k norms), SD 3 Medium ({SD3_MEDIUM_DEPTH} blocks)"
    )


def _declares_turbo(metadata: Mapping[str, str]) -> bool:
    declared = " ".join(metadata.get(key, "") for key in ("modelspec.architecture", "modelspec.title"))
    return "turbo" in declared.lower()


def clip_spec(weights: Mapping[str, torch.Tensor], role: str, prefix: str, name: str) -> ClipSpec | None:
    """A CLIP text encoder in transformers' layout (`text_model.…`, prefix removed); None if absent."""
    if not weights:
        return None
    token = weights.get("text_model.embeddings.token_embedding.weight")
    if token is None:
        raise CheckpointError(
            f"{name}: its {role} text encoder is not in transformers' CLIP layout "
            "(no text_model.embeddings.token_embedding.weight)"
        )
    hidden = int(token.shape[1])
    projection = weights.get("text_projection.weight")
    config = {
        "vocab_size": int(token.shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(weights["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": len(_indices(weights, r"text_model\.encoder\.layers\.(\d+)\.")),
        "num_attention_heads": max(1, hidden // DEFAULT_HEAD_WIDTH),
        "max_position_embeddings": int(weights["text_model.embeddings.position_embedding.weight"].shape[0]),
        # OpenAI's CLIP-L uses quick GELU, OpenCLIP's bigG the exact one; the weights cannot say.
        "hidden_act": "quick_gelu" if role == "clip_l" else "gelu",
        # SD 3 uses CLIP-L's pooled output unprojected: an identity projection (see convert.py).
        "projection_dim": int(projection.shape[0]) if projection is not None and role == "clip_g" else hidden,
    }
    if config["vocab_size"] < CLIP_VOCAB_SIZE or config["max_position_embeddings"] < CLIP_POSITIONS:
        raise CheckpointError(
            f"{name}: its {role} text encoder has {config['vocab_size']} tokens and "
            f"{config['max_position_embeddings']} positions; CLIP's tokenizer needs "
            f"{CLIP_VOCAB_SIZE} and {CLIP_POSITIONS}"
        )
    return ClipSpec(role, prefix, config, projection is not None)


def t5_spec(weights: Mapping[str, torch.Tensor], prefix: str, name: str) -> T5Spec | None:
    """A T5 encoder in transformers' layout (`encoder.block.N…`, prefix removed); None if absent."""
    if not weights:
        return None
    embedding = weights.get("shared.weight", weights.get("encoder.embed_tokens.weight"))
    if embedding is None or "encoder.block.0.layer.0.SelfAttention.q.weight" not in weights:
        raise CheckpointError(f"{name}: its T5 text encoder is not in transformers' T5 layout")
    bias = weights["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = int(bias.shape[1])
    inner = int(weights["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0])
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in weights
    wi = weights[
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
        if gated
        else "encoder.block.0.layer.1.DenseReluDense.wi.weight"
    ]
    config = {
        "vocab_size": int(embedding.shape[0]),
        "d_model": int(embedding.shape[1]),
        "d_kv": inner // heads,
        "d_ff": int(wi.shape[0]),
        "num_layers": len(_indices(weights, r"encoder\.block\.(\d+)\.")),
        "num_heads": heads,
        "relative_attention_num_buckets": int(bias.shape[0]),
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "layer_norm_epsilon": 1e-6,
        "is_encoder_decoder": False,
        "use_cache": False,
    }
    if "scaled_fp8" in weights:
        storage = "scaled_fp8"
    elif any(value.dtype == torch.float8_e4m3fn for value in weights.values()):
        storage = "fp8"
    else:
        storage = "float"
    return T5Spec(prefix, config, storage)


def vae_config(weights: Mapping[str, torch.Tensor], name: str) -> dict[str, Any] | None:
    """AutoencoderKL's config for SD3's 16-channel VAE (LDM layout, prefix removed); None if absent."""
    if not weights:
        return None
    if "decoder.conv_in.weight" not in weights:
        raise CheckpointError(f"{name}: its VAE under '{VAE_PREFIX}' has no decoder")
    levels = _indices(weights, r"encoder\.down\.(\d+)\.")
    latent_channels = int(weights["decoder.conv_in.weight"].shape[1])
    if latent_channels != 16:
        raise CheckpointError(f"{name}: its VAE has {latent_channels} latent channels; SD 3 uses 16")
    return {
        "in_channels": int(weights["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(weights["decoder.conv_out.weight"].shape[0]),
        "latent_channels": latent_channels,
        "block_out_channels": [
            int(weights[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels
        ],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "layers_per_block": len(_indices(weights, r"encoder\.down\.0\.block\.(\d+)\.")),
        "norm_num_groups": GROUP_NORM_GROUPS,
        "scaling_factor": VAE_SCALING_FACTOR,
        "shift_factor": VAE_SHIFT_FACTOR,
        # SD3's VAE has no 1x1 convolutions around its latent; older VAEs do.
        "use_quant_conv": "quant_conv.weight" in weights,
        "use_post_quant_conv": "post_quant_conv.weight" in weights,
    }


def check_encoders_fit(spec: SD3Spec, name: str) -> None:
    """The encoders present must have the widths the transformer takes."""
    if spec.clip_l and spec.clip_g and spec.clip_l.width + spec.clip_g.width != spec.pooled_width:
        raise CheckpointError(
            f"{name}: CLIP-L ({spec.clip_l.width}) and CLIP-G ({spec.clip_g.width}) widths do not add up "
            f"to the {spec.pooled_width} pooled inputs of its transformer"
        )
    if spec.t5 and spec.t5.width != spec.joint_width:
        raise CheckpointError(
            f"{name}: its T5 is {spec.t5.width} wide; its transformer takes {spec.joint_width}-wide text"
        )
    clip_width = sum(clip.width for clip in (spec.clip_l, spec.clip_g) if clip)
    if clip_width > spec.joint_width:
        raise CheckpointError(
            f"{name}: its CLIP encoders ({clip_width} wide together) are wider than the "
            f"{spec.joint_width}-wide text its transformer takes"
        )
