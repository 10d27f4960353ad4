"""Turn latents into pictures mid-run: a cheap linear map, or a full VAE decode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from PIL import Image

from webui.engine.steps import StepHook, StepInfo
from webui.model_manager.detect import Arch
from webui.model_manager.load import LoadedModel

PreviewRenderer = Callable[[torch.Tensor], Image.Image]

# Rows: latent channels; columns: R, G, B (see DESIGN.md section 7).
_SD_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)


def linear_preview(latents: torch.Tensor, arch: Arch) -> list[Image.Image]:
    """Latent-sized RGB previews from fixed per-channel factors: no network, microseconds."""
    factors = torch.tensor(_SDXL_FACTORS if arch is Arch.SDXL else _SD_FACTORS, dtype=torch.float32)
    bias = torch.tensor(_SDXL_BIAS if arch is Arch.SDXL else (0.0, 0.0, 0.0), dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu(), factors) + bias
    return tensor_to_images(rgb.permute(0, 3, 1, 2))  # the factors map to roughly [-1, 1]


@torch.inference_mode()
def vae_decode(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1]; an fp16 VAE that overflows to NaN is upcast to fp32 for good."""
    vae = model.vae
    scaled = latents / vae.config.scaling_factor
    pixels = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
    if vae.dtype == torch.float16 and torch.isnan(pixels).any():
        torch.nn.Module.to(vae, dtype=torch.float32)
        pixels = vae.decode(scaled.float(), return_dict=False)[0]
    return pixels


def full_preview(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    return tensor_to_images(vae_decode(model, latents))


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(batch, 3, h, w) in [-1, 1] -> RGB images."""
    # The same arithmetic as diffusers' image processor, so pixels match its pipelines exactly.
    unit = (pixels.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    array = (unit * 255).round().to(torch.uint8)
    return [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in array]


def with_previews(on_step: StepHook, period: int, render: PreviewRenderer | None = None) -> StepHook:
    """Mark every `period`-th step as a preview step; with `render`, draw it here on the worker
    (TAESD, full VAE). Without, readers draw the cheap linear preview from the latent when they ask."""

    def hook(info: StepInfo) -> None:
        due = period > 0 and info.step % period == 0
        image = render(info.preview_latent) if due and render is not None else None
        on_step(replace(info, preview_due=due, preview=image))

    return hook
