"""Write a seeded, random-weight, tiny checkpoint in the real single-file LDM layout.

    python -m webui.tools.tiny_checkpoint --arch sd15 models/Stable-diffusion/tiny-sd15.safetensors
    python -m webui.tools.tiny_checkpoint --arch sd35-medium --no-text-encoders tiny-sd35m.safetensors

Its images are noise, but it goes through exactly the loader and engine code paths of a
real checkpoint, which is what tests and demos need on a machine without model weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.model_manager.detect import (
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    SDXL_TEXT1_PREFIX,
    SDXL_TEXT2_PREFIX,
    VAE_PREFIX,
)
from webui.model_manager.ldm_export import hf_clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm
from webui.tools.tiny_sd3 import SD3_ARCHES, T5_STORAGES, write_tiny_sd3_checkpoint

ARCHES = ("sd15", "sd15-inpaint", "sd2", "sd2-v", "sdxl")
TEXT_WIDTH = 32
VOCAB_SIZE = 49408  # the real CLIP vocabulary, so the real tokenizers work unchanged
SDXL_TIME_EMBED = 8
TINY_VAE_CONFIG: dict[str, object] = {
    "block_out_channels": [32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
}


def build_tiny_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """All tensors of a tiny `arch` checkpoint, keyed as in a real single-file checkpoint."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHES)}")
    torch.manual_seed(seed)
    is_xl = arch == "sdxl"
    is_sd2 = arch.startswith("sd2")
    tensors: dict[str, torch.Tensor] = {}
    if is_xl:
        tensors |= hf_clip_to_ldm(
            _text_model(2, projection=False, act="quick_gelu").state_dict(), SDXL_TEXT1_PREFIX
        )
        tensors |= open_clip_to_ldm(
            _text_model(2, projection=True, act="gelu").state_dict(), SDXL_TEXT2_PREFIX
        )
    elif is_sd2:
        # SD2 files carry one more OpenCLIP block than is used (it conditions on the penultimate).
        tensors |= open_clip_to_ldm(
            _text_model(3, projection=False, act="gelu").state_dict(), SD2_TEXT_PREFIX
        )
    else:
        tensors |= hf_clip_to_ldm(
            _text_model(2, projection=False, act="quick_gelu").state_dict(), SD1_TEXT_PREFIX
        )

    unet_config = _unet_config(arch)
    tensors |= unet_to_ldm(UNet2DConditionModel(**unet_config).state_dict(), unet_config)
    tensors |= _tiny_vae_tensors()
    if arch == "sd2-v":
        tensors["v_pred"] = torch.zeros(0)  # the community marker for v-prediction files
    # Real checkpoints are mostly distributed in half precision; so are these.
    return {key: value.detach().to(torch.float16).contiguous() for key, value in tensors.items()}


def _tiny_vae_tensors() -> dict[str, torch.Tensor]:
    return vae_to_ldm(AutoencoderKL(**TINY_VAE_CONFIG).state_dict(), TINY_VAE_CONFIG)


def write_tiny_vae(out: Path, seed: int = 0) -> Path:
    """A stand-alone VAE file as people keep in models/VAE: LDM keys without the checkpoint prefix."""
    torch.manual_seed(seed)
    tensors = {
        key.removeprefix(VAE_PREFIX): value.detach().to(torch.float16).contiguous()
        for key, value in _tiny_vae_tensors().items()
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out


def _text_model(layers: int, *, projection: bool, act: str) -> CLIPTextModel | CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=1,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=TEXT_WIDTH,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _unet_config(arch: str) -> dict[str, object]:
    config: dict[str, object] = {
        "sample_size": 8,
        "in_channels": 9 if arch == "sd15-inpaint" else 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "cross_attention_dim": TEXT_WIDTH,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": 8,
    }
    if arch.startswith("sd2"):
        config |= {"attention_head_dim": [1, 1], "use_linear_projection": True}
    if arch == "sdxl":
        config |= {
            "cross_attention_dim": 2 * TEXT_WIDTH,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": [1, 1],
            "use_linear_projection": True,
            "transformer_layers_per_block": [1, 2],
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": SDXL_TIME_EMBED,
            "projection_class_embeddings_input_dim": TEXT_WIDTH + 6 * SDXL_TIME_EMBED,
        }
    return config


def write_tiny_checkpoint(arch: str, out: Path, seed: int = 0) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = build_tiny_state_dict(arch, seed)
    save_file(tensors, str(out), metadata={"format": "pt", "webui.tiny_arch": arch, "webui.seed": str(seed)})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=ARCHES + SD3_ARCHES, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-text-encoders",
        action="store_true",
        help="SD 3.5 only: leave CLIP-L, CLIP-G and T5 out, as Stability's own SD 3.5 files do",
    )
    parser.add_argument(
        "--t5", choices=T5_STORAGES, default="fp16", help="SD 3.5 only: how the file stores T5's weights"
    )
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    if args.arch in SD3_ARCHES:
        path = write_tiny_sd3_checkpoint(
            args.arch, args.out, args.seed, text_encoders=not args.no_text_encoders, t5_storage=args.t5
        )
    elif args.no_text_encoders or args.t5 != "fp16":
        parser.error("--no-text-encoders and --t5 apply to the SD 3.5 arches only")
    else:
        path = write_tiny_checkpoint(args.arch, args.out, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.arch}, seed {args.seed})")


if __name__ == "__main__":
    main()
