"""SD 3.5 LoRAs in kohya's layout (sd-scripts, and the trainers that copy it): `lora_unet_` plus
the MMDiT module's Stability name with `_` for `.` (`lora_unet_joint_blocks_3_x_block_attn_qkv`),
`lora_te1_`/`lora_te2_` for CLIP-L/CLIP-G, rewritten into diffusers' SD 3 layout (peft
`lora_A`/`lora_B` under `transformer.`, `text_encoder.`, `text_encoder_2.`), which is what the
LoRA loader reads. Alphas must already be folded into the up projections.

Stability fuses q, k and v into one `qkv` projection where diffusers keeps three: its LoRA's down
projection is shared, its up projection's rows split in three. Diffusers swaps the two halves
(shift, scale) of the adaptive norms whose output feeds no later block: so do their rows here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

KOHYA_SD3_PREFIX = "lora_unet_joint_blocks_"
T5_PREFIX = "lora_te3_"

# Stability's module (after `joint_blocks_N_`) -> diffusers' module(s) in `transformer_blocks.N.`.
_BLOCK_MODULES = {
    "x_block_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "x_block_attn_proj": ("attn.to_out.0",),
    "x_block_attn2_qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "x_block_attn2_proj": ("attn2.to_out.0",),
    "x_block_mlp_fc1": ("ff.net.0.proj",),
    "x_block_mlp_fc2": ("ff.net.2",),
    "x_block_adaLN_modulation_1": ("norm1.linear",),
    "context_block_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "context_block_attn_proj": ("attn.to_add_out",),
    "context_block_mlp_fc1": ("ff_context.net.0.proj",),
    "context_block_mlp_fc2": ("ff_context.net.2",),
    "context_block_adaLN_modulation_1": ("norm1_context.linear",),
}
_OTHER_MODULES = {
    "context_embedder": "context_embedder",
    "t_embedder_mlp_0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder_mlp_2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder_mlp_0": "time_text_embed.text_embedder.linear_1",
    "y_embedder_mlp_2": "time_text_embed.text_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
}
_BLOCK_KEY = re.compile(r"lora_unet_joint_blocks_(\d+)_(.+)")
_CLIP_KEY = re.compile(r"lora_te([12])_text_model_encoder_layers_(\d+)_(self_attn|mlp)_(\w+)")
_PAIR = (".lora_down.weight", ".lora_up.weight")


class KohyaLoraError(ValueError):
    """A kohya SD 3 key this converter cannot place; the message names it."""


def is_kohya_sd3(keys: Mapping[str, object]) -> bool:
    return any(key.startswith(KOHYA_SD3_PREFIX) for key in keys)


def kohya_sd3_to_diffusers(tensors: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The same LoRA in diffusers' SD 3 layout, for a transformer of `depth` blocks."""
    converted: dict[str, torch.Tensor] = {}
    for key in sorted(tensors):
        if not key.endswith(_PAIR[0]):
            if key.endswith(_PAIR[1]) or key.endswith(".alpha"):
                continue  # taken with its down projection; alphas are already folded
            raise KohyaLoraError(f"{key}: not a LoRA down or up projection")
        base = key.removesuffix(_PAIR[0])
        down, up = tensors[key], tensors[base + _PAIR[1]]
        if base.startswith(T5_PREFIX):
            raise KohyaLoraError(
                f"{base}: T5 layers are not patched by LoRAs here (CLIP-L, CLIP-G and the transformer are)"
            )
        targets, swap = _targets(base, depth)
        ups = up.chunk(len(targets), dim=0) if len(targets) > 1 else (up,)
        for target, part in zip(targets, ups, strict=True):
            if swap:
                part = torch.cat(part.chunk(2, dim=0)[::-1])
            converted[f"{target}.lora_A.weight"] = down
            converted[f"{target}.lora_B.weight"] = part
    return converted


def _targets(base: str, depth: int) -> tuple[tuple[str, ...], bool]:
    """(diffusers module names, whether the adaptive norm's halves swap)."""
    if match := _BLOCK_KEY.fullmatch(base):
        block, module = int(match[1]), match[2]
        if module in _BLOCK_MODULES and block < depth:
            last_context = module == "context_block_adaLN_modulation_1" and block == depth - 1
            names = tuple(f"transformer.transformer_blocks.{block}.{name}" for name in _BLOCK_MODULES[module])
            return names, last_context
    elif base.startswith("lora_unet_") and base.removeprefix("lora_unet_") in _OTHER_MODULES:
        module = base.removeprefix("lora_unet_")
        return (f"transformer.{_OTHER_MODULES[module]}",), module == "final_layer_adaLN_modulation_1"
    elif match := _CLIP_KEY.fullmatch(base):
        part = "text_encoder" if match[1] == "1" else "text_encoder_2"
        return (f"{part}.text_model.encoder.layers.{match[2]}.{match[3]}.{match[4]}",), False
    raise KohyaLoraError(f"{base}: no such layer in an SD 3.5 model of {depth} blocks")
