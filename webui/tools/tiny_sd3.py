"""Seeded, random-weight, tiny SD 3.5 single files in Stability's layout (a few MB).

    python -m webui.tools.tiny_checkpoint --arch sd35-medium models/Stable-diffusion/tiny-sd35m.safetensors

The widths are tiny but every structural trait a real file has is there: SD 3.5 Medium's
dual-attention layers, SD 3.5 Large's 38 joint blocks, q/k RMS norms, a 16-channel VAE without
quant convolutions, CLIP-L narrower than CLIP-G, T5 wider than both together (so CLIP's
embeddings are padded), real CLIP and T5 vocabulary sizes (the real tokenizers work unchanged).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from webui.model_manager.ldm_export import vae_to_ldm
from webui.model_manager.sd3.export import transformer_to_stability
from webui.model_manager.sd3.spec import ENCODER_PREFIXES, TRANSFORMER_PREFIX

SD3_ARCHES = ("sd35-medium", "sd35-large")
T5_STORAGES = ("fp16", "fp8", "scaled_fp8")
CLIP_L_WIDTH = 16
CLIP_G_WIDTH = 32
T5_WIDTH = 64  # wider than CLIP-L + CLIP-G together, as 4096 > 768 + 1280
T5_VOCAB = 32128  # T5 v1.1's embedding rows (the tokenizer uses the first 32,100)
CLIP_VOCAB = 49408
HEAD_WIDTH = 16
HEADS = 2
POS_EMBED_MAX_SIZE = 16
# The real depths: Medium 24 (dual attention in 0-12), Large 38; Medium's is cut to stay tiny,
# its dual-attention layers are what tells it apart.
DEPTHS = {"sd35-medium": 4, "sd35-large": 38}
DUAL_ATTENTION = {"sd35-medium": (0, 1), "sd35-large": ()}
TINY_SD3_VAE_CONFIG: dict[str, object] = {
    "block_out_channels": [32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


def tiny_transformer_config(arch: str) -> dict[str, object]:
    return {
        "sample_size": POS_EMBED_MAX_SIZE * 2,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": DEPTHS[arch],
        "attention_head_dim": HEAD_WIDTH,
        "num_attention_heads": HEADS,
        "joint_attention_dim": T5_WIDTH,
        "caption_projection_dim": HEAD_WIDTH * HEADS,
        "pooled_projection_dim": CLIP_L_WIDTH + CLIP_G_WIDTH,
        "pos_embed_max_size": POS_EMBED_MAX_SIZE,
        "dual_attention_layers": DUAL_ATTENTION[arch],
        "qk_norm": "rms_norm",
    }


def build_tiny_sd3_state_dict(
    arch: str, seed: int = 0, *, text_encoders: bool = True, t5_storage: str = "fp16"
) -> dict[str, torch.Tensor]:
    """All tensors of a tiny SD 3.5 file, keyed as in Stability's single files, in half precision
    (T5 in fp8 or scaled fp8 if asked, as ComfyUI's `t5xxl_fp8_e4m3fn[_scaled]` files)."""
    if arch not in SD3_ARCHES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(SD3_ARCHES)}")
    if t5_storage not in T5_STORAGES:
        raise ValueError(f"unknown T5 storage {t5_storage!r}; choose one of {', '.join(T5_STORAGES)}")
    torch.manual_seed(seed)
    config = tiny_transformer_config(arch)
    transformer = SD3Transformer2DModel(**config)
    tensors = {
        TRANSFORMER_PREFIX + key: value
        for key, value in transformer_to_stability(
            transformer.state_dict(), int(config["num_layers"])
        ).items()
    }
    tensors |= vae_to_ldm(AutoencoderKL(**TINY_SD3_VAE_CONFIG).state_dict(), TINY_SD3_VAE_CONFIG)
    tensors = {key: value.detach().to(torch.float16).contiguous() for key, value in tensors.items()}
    if text_encoders:
        for role, weights in tiny_text_encoder_weights(seed, t5_storage).items():
            tensors |= {ENCODER_PREFIXES[role] + key: value for key, value in weights.items()}
    return tensors


def tiny_text_encoder_weights(
    seed: int = 0, t5_storage: str = "fp16", *, clip_l_projection: bool = False
) -> dict[str, dict[str, torch.Tensor]]:
    """CLIP-L, CLIP-G and T5 weights in transformers' layout, by role ("clip_l", "clip_g", "t5xxl").

    Seeded on their own, so that a file without encoders plus these equals the file with them.
    Stability's files keep no text projection for CLIP-L (SD 3 does not use it), and T5's
    embedding once, as `shared.weight`; stand-alone clip_l files carry OpenAI's projection
    (`clip_l_projection`)."""
    torch.manual_seed(seed + 1)
    clip_l = _clip(CLIP_L_WIDTH, "quick_gelu").state_dict()
    if not clip_l_projection:
        clip_l.pop("text_projection.weight")
    clip_g = _clip(CLIP_G_WIDTH, "gelu").state_dict()
    t5 = _t5().state_dict()
    t5.pop("encoder.embed_tokens.weight")
    half = {
        role: {
            key: value.detach().to(torch.float16).contiguous()
            for key, value in weights.items()
            if not key.endswith("position_ids")
        }
        for role, weights in (("clip_l", clip_l), ("clip_g", clip_g), ("t5xxl", t5))
    }
    if t5_storage != "fp16":
        half["t5xxl"] = quantize_t5(half["t5xxl"], scaled=t5_storage == "scaled_fp8")
    return half


def quantize_t5(weights: dict[str, torch.Tensor], *, scaled: bool) -> dict[str, torch.Tensor]:
    """T5 weights as ComfyUI's fp8 files hold them: linear weights in float8_e4m3fn; `scaled`
    adds a per-weight `scale_weight` (fp8 value times scale = weight) and the `scaled_fp8` marker."""
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        is_linear = value.ndim == 2 and ".layer." in key and "relative_attention_bias" not in key
        if not is_linear:
            out[key] = value
            continue
        if scaled:
            scale = value.float().abs().max() / 448.0  # 448: float8_e4m3fn's largest value
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix("weight") + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value.to(torch.float8_e4m3fn)
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def _clip(width: int, act: str) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=1,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=width,
    )
    return CLIPTextModelWithProjection(config)


def _t5() -> T5EncoderModel:
    config = T5Config(
        vocab_size=T5_VOCAB,
        d_model=T5_WIDTH,
        d_kv=16,
        d_ff=2 * T5_WIDTH,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config)


def write_tiny_sd3_checkpoint(
    arch: str, out: Path, seed: int = 0, *, text_encoders: bool = True, t5_storage: str = "fp16"
) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = build_tiny_sd3_state_dict(arch, seed, text_encoders=text_encoders, t5_storage=t5_storage)
    metadata = {"format": "pt", "webui.tiny_arch": arch, "webui.seed": str(seed)}
    save_file(tensors, str(out), metadata=metadata)
    return out


def write_tiny_text_encoder_files(folder: Path, seed: int = 0, t5_storage: str = "fp16") -> dict[str, Path]:
    """The three encoders as separate files, as ComfyUI's models/clip folder holds them
    (`clip_l.safetensors`, `clip_g.safetensors`, `t5xxl_fp16.safetensors`): no prefixes. With the
    same seed they are the encoders `build_tiny_sd3_state_dict` puts inside the checkpoint."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file_names = {"clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": f"t5xxl_{t5_storage}"}
    written = {}
    for role, weights in tiny_text_encoder_weights(seed, t5_storage, clip_l_projection=True).items():
        path = folder / f"{file_names[role]}.safetensors"
        save_file(weights, str(path))
        written[role] = path
    return written


def write_tiny_sd3_lora(
    path: Path, arch: str = "sd35-medium", seed: int = 0, rank: int = 4, *, text_encoder: bool = True
) -> Path:
    """A LoRA for the tiny SD 3.5 files in diffusers' SD 3 layout (what diffusers' SD 3 LoRA
    training saves): `transformer.*` joint-attention projections of every block, and CLIP-L's
    attention projections (`text_encoder.*`) when `text_encoder`, as peft lora_A/lora_B pairs."""
    if arch not in SD3_ARCHES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(SD3_ARCHES)}")
    generator = torch.Generator().manual_seed(seed)
    width = HEAD_WIDTH * HEADS
    layers = [
        (f"transformer.transformer_blocks.{block}.attn.{projection}", width, width)
        for block in range(DEPTHS[arch])
        for projection in ("to_q", "to_k", "to_v", "add_k_proj", "add_v_proj")
    ]
    if text_encoder:
        layers += [
            (
                f"text_encoder.text_model.encoder.layers.{layer}.self_attn.{kind}",
                CLIP_L_WIDTH,
                CLIP_L_WIDTH,
            )
            for layer in range(2)
            for kind in ("q_proj", "v_proj")
        ]
    tensors: dict[str, torch.Tensor] = {}
    for name, inputs, outputs in layers:
        tensors[f"{name}.lora_A.weight"] = torch.randn((rank, inputs), generator=generator) * 0.5
        tensors[f"{name}.lora_B.weight"] = torch.randn((outputs, rank), generator=generator) * 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.to(torch.float16).contiguous() for key, value in tensors.items()}, str(path))
    return path
