"""diffusers' SD3Transformer2DModel weights written back in Stability's single-file (MMDiT) layout.

The reverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`: used to write tiny
test checkpoints that go through exactly the loading path of a real SD 3.5 file.
"""

from __future__ import annotations

import re

import torch

# diffusers name (inside `transformer_blocks.N.`) -> Stability name (inside `joint_blocks.N.`).
_BLOCK_RENAMES = {
    "attn.norm_q.": "x_block.attn.ln_q.",
    "attn.norm_k.": "x_block.attn.ln_k.",
    "attn.norm_added_q.": "context_block.attn.ln_q.",
    "attn.norm_added_k.": "context_block.attn.ln_k.",
    "attn.to_out.0.": "x_block.attn.proj.",
    "attn.to_add_out.": "context_block.attn.proj.",
    "attn2.norm_q.": "x_block.attn2.ln_q.",
    "attn2.norm_k.": "x_block.attn2.ln_k.",
    "attn2.to_out.0.": "x_block.attn2.proj.",
    "norm1.linear.": "x_block.adaLN_modulation.1.",
    "norm1_context.linear.": "context_block.adaLN_modulation.1.",
    "ff.net.0.proj.": "x_block.mlp.fc1.",
    "ff.net.2.": "x_block.mlp.fc2.",
    "ff_context.net.0.proj.": "context_block.mlp.fc1.",
    "ff_context.net.2.": "context_block.mlp.fc2.",
}
# q, k and v projections that Stability keeps as one `qkv` matrix.
_QKV = {
    "attn.to_": "x_block.attn.qkv",
    "attn.add_": "context_block.attn.qkv",
    "attn2.to_": "x_block.attn2.qkv",
}
_GLOBAL_RENAMES = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj.": "x_embedder.proj.",
    "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
    "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
    "context_embedder.": "context_embedder.",
    "proj_out.": "final_layer.linear.",
    "norm_out.linear.": "final_layer.adaLN_modulation.1.",
}
_BLOCK_KEY = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """Stability's final modulations are (shift, scale); diffusers' (scale, shift). Its own inverse."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def transformer_to_stability(weights: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """SD3Transformer2DModel state dict -> MMDiT keys (without `model.diffusion_model.`)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match is None:
            out[_global_name(key)] = swap_halves(value) if key.startswith("norm_out.") else value
            continue
        index, rest = int(match.group(1)), match.group(2)
        if (parts := _qkv_part(rest)) is not None:
            target, letter, kind = parts
            qkv.setdefault((index, target, kind), {})[letter] = value
            continue
        renamed = _block_name(rest)
        last_context = index == num_layers - 1 and rest.startswith("norm1_context.")
        out[f"joint_blocks.{index}.{renamed}"] = swap_halves(value) if last_context else value
    for (index, target, kind), pieces in qkv.items():
        out[f"joint_blocks.{index}.{target}.{kind}"] = torch.cat([pieces["q"], pieces["k"], pieces["v"]])
    return out


def _qkv_part(rest: str) -> tuple[str, str, str] | None:
    """("x_block.attn.qkv", "q", "weight") for `attn.to_q.weight`; None for other names."""
    for source, target in _QKV.items():
        match = re.fullmatch(re.escape(source) + r"([qkv])(?:_proj)?\.(weight|bias)", rest)
        if match:
            return target, match.group(1), match.group(2)
    return None


def _block_name(rest: str) -> str:
    for source, target in _BLOCK_RENAMES.items():
        if rest.startswith(source):
            return target + rest[len(source) :]
    raise ValueError(f"no Stability name for transformer block weight {rest!r}")


def _global_name(key: str) -> str:
    for source, target in _GLOBAL_RENAMES.items():
        if key.startswith(source):
            return target + key[len(source) :]
    raise ValueError(f"no Stability name for transformer weight {key!r}")
