"""TAESD: a tiny distilled VAE decoder from models/VAE-approx for cheap full-size live previews."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderTiny
from PIL import Image

from webui.engine.preview import tensor_to_images
from webui.model_manager.archs import Arch, architecture
from webui.model_manager.state_dict import CheckpointError, read_state_dict

_FOLDER_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
_ORIGINAL_KEY = re.compile(r"(\d+)\.(.+)")
_LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)")


def find_taesd(folder: Path, arch: Arch) -> Path | None:
    """The TAESD decoder for `arch` in `folder` (models/VAE-approx): a file, or a diffusers folder."""
    stem = architecture(arch).latent.taesd_stem
    for name in (f"{stem}_decoder.safetensors", f"{stem}_decoder.pth"):
        if (folder / name).is_file():
            return folder / name
    diffusers_folder = folder / stem
    if all((diffusers_folder / name).is_file() for name in _FOLDER_FILES):
        return diffusers_folder
    return None


def load_taesd(path: Path, device: torch.device, dtype: torch.dtype) -> AutoencoderTiny:
    """A TAESD decoder from a diffusers folder or a single decoder file, ready for inference.

    Single files may be in the original madebyollin/taesd layout (what A1111 users have) or in
    diffusers' layout (`decoder.` keys); the decoder's shape is read from the tensors.
    """
    path = Path(path)
    try:
        if path.is_dir():
            model = _from_folder(path)
        else:
            model = _from_tensors(read_state_dict(path).tensors)
    except (CheckpointError, OSError, ValueError, RuntimeError, KeyError, IndexError, TypeError) as error:
        raise CheckpointError(f"{path.name}: not a TAESD decoder: {error}") from error
    torch.nn.Module.to(model, device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def taesd_preview(decoder: AutoencoderTiny, latents: torch.Tensor) -> list[Image.Image]:
    """Full-size RGB previews of UNet-space latents."""
    return tensor_to_images(taesd_decode(decoder, latents))


def taesd_decode(decoder: AutoencoderTiny, latents: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] on the decoder's device."""
    # TAESD was trained on UNet-space latents (its scaling factor is 1.0), so they go in as they are;
    # DecoderTiny already maps its [0, 1] output to [-1, 1].
    with torch.inference_mode():
        return decoder.decode(latents.to(decoder.device, decoder.dtype), return_dict=False)[0]


def _from_folder(path: Path) -> AutoencoderTiny:
    model, info = AutoencoderTiny.from_pretrained(path, local_files_only=True, output_loading_info=True)
    # diffusers only warns about weights it did not find, and leaves them unallocated.
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if missing or unexpected:
        raise CheckpointError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return model


def _from_tensors(tensors: dict[str, torch.Tensor]) -> AutoencoderTiny:
    weights = _decoder_weights(tensors)
    latent_channels, out_channels, widths, blocks = _decoder_shape(weights)
    with init_empty_weights(include_buffers=False):
        model = AutoencoderTiny(
            latent_channels=latent_channels,
            out_channels=out_channels,
            decoder_block_out_channels=widths,
            num_decoder_blocks=blocks,
            # Previews only decode: the encoder is a 1-channel stub of zeros.
            encoder_block_out_channels=(1,),
            num_encoder_blocks=(0,),
        )
    expected = set(model.decoder.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    encoder = {f"encoder.{key}": torch.zeros(t.shape) for key, t in model.encoder.state_dict().items()}
    decoder = {f"decoder.{key}": value for key, value in weights.items()}
    try:
        model.load_state_dict({**encoder, **decoder}, strict=True, assign=True)
    except RuntimeError as error:  # a shape mismatch: a header line, then one line per tensor
        raise CheckpointError(" ".join(line.strip() for line in str(error).splitlines()[1:3])) from error
    return model


def _decoder_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder tensors keyed as in DecoderTiny (`layers.N.…`); stray keys are kept to be reported."""
    if any(key.startswith("decoder.") for key in tensors):
        kept = {key: value for key, value in tensors.items() if not key.startswith("encoder.")}
        return {key.removeprefix("decoder."): value for key, value in kept.items()}
    renamed = {}
    for key, value in tensors.items():
        match = _ORIGINAL_KEY.fullmatch(key)
        # The original Sequential starts with a parameterless Clamp that DecoderTiny applies in forward.
        renamed[f"layers.{int(match[1]) - 1}.{match[2]}" if match and int(match[1]) > 0 else key] = value
    return renamed


def _decoder_shape(weights: dict[str, torch.Tensor]) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    """Latent channels, output channels, per-stage widths and per-stage block counts.

    DecoderTiny is: conv, ReLU, then per stage its blocks (`conv.0.weight`…) and a conv that either
    follows an Upsample (no bias) or, in the last stage, maps to RGB (with bias).
    """
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        if match := _LAYER_KEY.fullmatch(key):
            layers.setdefault(int(match[1]), {})[match[2]] = value
    if 0 not in layers or "weight" not in layers[0]:
        raise CheckpointError("no input convolution (`1.weight` in the original layout)")
    widths: list[int] = []
    blocks: list[int] = []
    count = 0
    for index in sorted(layers)[1:]:
        if "conv.0.weight" in layers[index]:
            count += 1
        elif "weight" in layers[index]:
            widths.append(layers[index]["weight"].shape[1])
            blocks.append(count)
            count = 0
    if not widths:
        raise CheckpointError("no decoder stages")
    last = layers[max(layers)]["weight"]
    return layers[0]["weight"].shape[1], last.shape[0], tuple(widths), tuple(blocks)
