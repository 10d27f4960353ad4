"""Write a full-size, seeded, random-weight checkpoint in the real single-file LDM layout.

    python -m webui.tools.random_checkpoint --arch sd15 /tmp/random-sd15.safetensors

Its images are noise, but every tensor has the shape and byte count of the real SD1.5 or
SDXL base checkpoint, so load, swap and generation times measured with it are the real
ones (see docs/benchmarks.md). Shapes come from modules built on the meta device; the
file is streamed one tensor at a time, so writing SDXL (about 7 GB in fp16) never holds
more than its largest tensor in memory.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.model_manager.detect import SD1_TEXT_PREFIX, SDXL_TEXT1_PREFIX, SDXL_TEXT2_PREFIX
from webui.model_manager.ldm_export import hf_clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

ARCHES = ("sd15", "sdxl")
METADATA_ARCH = "webui.random_arch"

VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
}
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 size/crop ids x 256 + the pooled 1280
    "norm_num_groups": 32,
}
# OpenAI CLIP ViT-L/14's text tower: SD1's only text encoder and SDXL's first.
CLIP_L_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# OpenCLIP ViT-bigG/14's text tower: SDXL's second text encoder, with its pooled projection.
CLIP_BIG_G_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def checkpoint_shapes(arch: str, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Every tensor of a full-size `arch` checkpoint as a meta tensor, keyed as in the real file.

    Meta tensors cost no memory, so this is also how tests check the layout without a file.
    """
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHES)}")
    with torch.device("meta"):
        if arch == "sdxl":
            shapes = hf_clip_to_ldm(
                CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)).state_dict(), SDXL_TEXT1_PREFIX
            )
            big_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G_CONFIG))
            shapes |= open_clip_to_ldm(big_g.state_dict(), SDXL_TEXT2_PREFIX)
            unet_config = SDXL_UNET_CONFIG
        else:
            shapes = hf_clip_to_ldm(
                CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)).state_dict(), SD1_TEXT_PREFIX
            )
            unet_config = SD15_UNET_CONFIG
        shapes |= unet_to_ldm(UNet2DConditionModel(**unet_config).state_dict(), unet_config)
        shapes |= vae_to_ldm(AutoencoderKL(**VAE_CONFIG).state_dict(), VAE_CONFIG)
    return {key: value.to(dtype) for key, value in shapes.items()}


def write_random_checkpoint(arch: str, out: Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """A full-size random-weight `arch` checkpoint at `out` (.safetensors); returns `out`."""
    metadata = {"format": "pt", METADATA_ARCH: arch, "webui.seed": str(seed)}
    return write_random_tensors(out, checkpoint_shapes(arch, dtype), seed=seed, metadata=metadata)


def write_random_tensors(
    out: Path, shapes: dict[str, torch.Tensor], seed: int = 0, metadata: dict[str, str] | None = None
) -> Path:
    """Stream a .safetensors file holding random tensors of the given (meta) tensors' shapes and dtypes.

    Each tensor is made, written and freed before the next, so memory stays at one tensor.
    """
    if sys.byteorder != "little":
        raise RuntimeError("safetensors stores little-endian data; this writer copies memory as is")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(shapes)
    generator = torch.Generator().manual_seed(seed)
    partial = out.with_name(out.name + ".partial")
    with partial.open("wb") as handle:
        _write_header(handle, ((name, shapes[name]) for name in names), metadata or {})
        for name in names:
            _write_tensor(handle, _random_like(shapes[name], generator))
    # A file that exists is a whole file: a cancelled write never leaves a truncated checkpoint.
    partial.replace(out)
    return out


def _write_header(
    handle: BinaryIO, tensors: Iterable[tuple[str, torch.Tensor]], metadata: dict[str, str]
) -> None:
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, tensor in tensors:
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: cannot write dtype {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Readers map the data right after the header; padding it to 8 bytes keeps tensors aligned.
    encoded += b" " * (-len(encoded) % 8)
    handle.write(struct.pack("<Q", len(encoded)))
    handle.write(encoded)


def _write_tensor(handle: BinaryIO, tensor: torch.Tensor) -> None:
    if tensor.numel():
        handle.write(tensor.contiguous().view(torch.uint8).numpy().data)


def _random_like(shape: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # PyTorch's default Linear bound, 1/sqrt(fan-in), keeps activations within fp16 range when
    # the file is used for speed runs; uniform is also about twice as fast to draw as normal.
    fan_in = math.prod(shape.shape[1:]) if shape.ndim > 1 else shape.numel()
    bound = 1.0 / math.sqrt(max(1, fan_in))
    tensor = torch.empty(shape.shape, dtype=shape.dtype)
    return tensor.uniform_(-bound, bound, generator=generator)


def checkpoint_bytes(shapes: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in shapes.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=ARCHES, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    path = write_random_checkpoint(args.arch, args.out, args.seed, dtype)
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB, {args.arch}, {args.dtype}, seed {args.seed})")


if __name__ == "__main__":
    main()
