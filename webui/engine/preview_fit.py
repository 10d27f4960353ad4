"""A linear latent-to-RGB preview map fitted to a model's own VAE, for latents no fixed table covers
(SD 3's 16 channels, or any VAE of a new architecture).

The VAE encodes a set of synthetic pictures (flat colours, greys and smooth colour fields, which
is what a linear map can show); least squares then finds the per-channel factors and the bias that
best turn each latent pixel back into its patch's mean colour. It costs one small encode per VAE,
done once, and the preview itself stays one matrix product per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL

FIT_SIDE = 64  # pixels per side of each fitting picture
SMOOTH_FIELDS = 16  # random smooth colour fields besides the flat colours
FLAT_COLOURS = (
    (-1, -1, -1), (1, 1, 1), (0, 0, 0), (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5),
    (1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, -1), (-1, 1, 1), (1, -1, 1),
)  # fmt: skip


@dataclass(frozen=True)
class LinearPreview:
    """Latents (scaled and shifted as the denoiser sees them) -> preview pixels in [-1, 1]."""

    factors: torch.Tensor  # (channels, 3)
    bias: torch.Tensor  # (3,)

    def render(self, latents: torch.Tensor) -> torch.Tensor:
        """(batch, channels, h, w) -> (batch, 3, h, w) on the latents' device, clamped to [-1, 1]."""
        factors = self.factors.to(latents.device, latents.dtype)
        bias = self.bias.to(latents.device, latents.dtype)
        rgb = torch.einsum("bchw,cr->brhw", latents, factors) + bias[None, :, None, None]
        return rgb.clamp(-1, 1)


def fitting_pictures(seed: int = 0) -> torch.Tensor:
    """(n, 3, FIT_SIDE, FIT_SIDE) pixels in [-1, 1]: flat colours and smooth random colour fields."""
    generator = torch.Generator().manual_seed(seed)
    flat = torch.tensor(FLAT_COLOURS, dtype=torch.float32)[:, :, None, None].expand(
        -1, -1, FIT_SIDE, FIT_SIDE
    )
    coarse = torch.rand(SMOOTH_FIELDS, 3, 4, 4, generator=generator) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=(FIT_SIDE, FIT_SIDE), mode="bilinear")
    return torch.cat([flat, smooth])


@torch.inference_mode()
def fit_linear_preview(vae: AutoencoderKL, device: torch.device | None = None) -> LinearPreview:
    """The least-squares linear map from `vae`'s latents (scaled and shifted by its config) to the
    mean colour of the pixels each latent pixel stands for. `device`: where the VAE runs (under
    an offload mode its weights may be on the host until its hooks bring them)."""
    pictures = fitting_pictures()
    latents = []
    for picture in pictures.split(4):  # small batches: a real VAE's encoder activations are large
        posterior = vae.encode(picture.to(device or vae.device, vae.dtype)).latent_dist
        latents.append(posterior.mode().float().cpu())
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scaled = (torch.cat(latents) - shift) * vae.config.scaling_factor
    factor = FIT_SIDE // scaled.shape[-1]
    targets = torch.nn.functional.avg_pool2d(pictures, factor)
    inputs = scaled.permute(0, 2, 3, 1).reshape(-1, scaled.shape[1]).double()
    outputs = targets.permute(0, 2, 3, 1).reshape(-1, 3).double()
    with_bias = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(with_bias, outputs, driver="gelsd").solution.float()
    return LinearPreview(factors=solution[:-1], bias=solution[-1])
