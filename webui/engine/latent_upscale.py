"""Hires fix's latent upscale modes: resizing the latent itself instead of decoded pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LatentMode:
    interpolation: str
    antialias: bool = False


# A1111's names and what each does to the latent.
LATENT_UPSCALE_MODES: dict[str, LatentMode] = {
    "Latent": LatentMode("bilinear"),
    "Latent (antialiased)": LatentMode("bilinear", antialias=True),
    "Latent (bicubic)": LatentMode("bicubic"),
    "Latent (bicubic antialiased)": LatentMode("bicubic", antialias=True),
    "Latent (nearest)": LatentMode("nearest"),
    "Latent (nearest-exact)": LatentMode("nearest-exact"),
}


def is_latent_mode(name: str) -> bool:
    return name in LATENT_UPSCALE_MODES


def upscale_latent(latents: torch.Tensor, name: str, size: tuple[int, int]) -> torch.Tensor:
    """Resize (batch, channels, h, w) latents to `size` = (h, w) with the named mode."""
    mode = LATENT_UPSCALE_MODES[name]
    options = {} if mode.interpolation.startswith("nearest") else {"align_corners": False}
    # Interpolation runs in float32: half-precision bicubic is not implemented on every device.
    resized = F.interpolate(
        latents.float(), size=size, mode=mode.interpolation, antialias=mode.antialias, **options
    )
    return resized.to(latents.dtype)
