"""Write diffusers components back in the single-file LDM key layout.

The inverse of diffusers' single-file converters. Tiny test checkpoints are built as
diffusers modules and saved through this, so the loader reads them exactly as it reads
a real checkpoint; a round-trip test holds both directions to each other.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from webui.model_manager.detect import UNET_PREFIX, VAE_PREFIX

_RESNET_NAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION_NAMES = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


def unet_to_ldm(weights: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    per_level = config["layers_per_block"] + 1
    up_has_attention = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        out[UNET_PREFIX + _unet_key(key, per_level, up_has_attention)] = value
    return out


def _unet_key(key: str, per_level: int, up_has_attention: list[bool]) -> str:
    for new, old in _UNET_TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        block = 1 + level * per_level + index
        return (
            f"input_blocks.{block}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"input_blocks.{block}.1.{rest}"
        )
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(match[1]) + 1) * per_level}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(match[1])}.{_resnet(match[2])}"
    if match := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        block = level * per_level + index
        return (
            f"output_blocks.{block}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"output_blocks.{block}.1.{rest}"
        )
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level = int(match[1])
        slot = 2 if up_has_attention[level] else 1
        return f"output_blocks.{level * per_level + per_level - 1}.{slot}.conv.{match[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


def _resnet(rest: str) -> str:
    for new, old in _RESNET_NAMES:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def vae_to_ldm(weights: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        new_key = _vae_key(key, levels)
        if ".attn_1." in new_key and value.ndim == 2:
            value = value[:, :, None, None]  # LDM stores attention projections as 1x1 convs
        out[VAE_PREFIX + new_key] = value
    return out


def _vae_key(key: str, levels: int) -> str:
    key = key.replace("conv_norm_out", "norm_out")
    if match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        rest = match[2]
        for new, old in _VAE_ATTENTION_NAMES:
            if rest.startswith(new + "."):
                rest = old + rest[len(new) :]
                break
        return f"{match[1]}.mid.attn_1.{rest}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        level = levels - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}"
    return key


def canonical_text_keys(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as checkpoints spell them: transformers 5's CLIPTextModel leaves out `text_model.`."""
    return {
        key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}": value
        for key, value in weights.items()
    }


def hf_clip_to_ldm(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP is stored in transformers' own layout under a prefix."""
    return {prefix + key: value for key, value in canonical_text_keys(weights).items()}


def open_clip_to_ldm(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    weights = canonical_text_keys(weights)
    out: dict[str, torch.Tensor] = {}
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_names = (
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("self_attn.out_proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    )
    for key, value in weights.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif match := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", key):
            layer, rest = match[1], match[2]
            if re.match(r"self_attn\.[qkv]_proj\.", rest):
                continue  # fused below, once per layer
            for new, old in layer_names:
                if rest.startswith(new + "."):
                    out[f"{prefix}transformer.resblocks.{layer}.{old}{rest[len(new) :]}"] = value
    layers = {m[1] for key in weights if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", key))}
    for layer in layers:
        base = f"text_model.encoder.layers.{layer}.self_attn"
        for part in ("weight", "bias"):
            fused = torch.cat([weights[f"{base}.{p}_proj.{part}"] for p in "qkv"])
            out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{part}"] = fused
    return out
