"""Turn latents into pictures mid-run: a cheap linear map, or a full VAE decode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from PIL import Image

from webui.engine.request import GenerationError
from webui.engine.steps import StepHook, StepInfo
from webui.model_manager.archs import Arch, architecture
from webui.model_manager.load import LoadedModel

# A latent (on the model's device) -> its preview's pixels in [-1, 1], still on that device.
PreviewRenderer = Callable[[torch.Tensor], torch.Tensor]


def linear_preview(latents: torch.Tensor, arch: Arch) -> list[Image.Image]:
    """Latent-sized RGB previews from fixed per-channel factors: no network, microseconds."""
    latent = architecture(arch).latent
    if latent.preview_factors:
        factors = torch.tensor(latent.preview_factors, dtype=torch.float32)
    else:  # no known map: the first three channels, roughly (the studio fits one to the VAE instead)
        factors = torch.eye(latent.channels, 3, dtype=torch.float32)
    bias = torch.tensor(latent.preview_bias, dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu(), factors) + bias
    return tensor_to_images(rgb.permute(0, 3, 1, 2))  # the factors map to roughly [-1, 1]


@torch.inference_mode()
def vae_decode(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1]; an fp16 VAE that overflows to NaN is upcast to fp32 for good.

    A batch is decoded one image at a time: the decoder's activations at full resolution are
    the largest tensors of a job, and a batch of them at once is the memory spike that makes
    a job fail at its very end.
    """
    return torch.cat([_decode_one(model, latent[None]) for latent in latents])


def _decode_one(model: LoadedModel, latent: torch.Tensor) -> torch.Tensor:
    vae = model.vae
    scaled = latent / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    pixels = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
    if vae.dtype == torch.float16 and torch.isnan(pixels).any():
        torch.nn.Module.to(vae, dtype=torch.float32)
        pixels = vae.decode(scaled.float(), return_dict=False)[0]
    if not torch.isfinite(pixels).all():
        # Saved as it is, NaN would be a black image that looks like a result.
        raise GenerationError(
            "the image came out as NaN (not a number): the checkpoint, its VAE or the prompt's "
            "weights gave numbers out of range; try another VAE, lower weights or --precision fp32"
        )
    return pixels


def full_preview(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    return tensor_to_images(vae_decode(model, latents))


class PreviewCopy:
    """A preview tensor (a latent, or pixels a decoder drew) on its way to host memory.

    On CUDA the copy is queued behind the step's kernels into pinned memory and the denoising
    loop goes on at once; only whoever shows the preview waits for it. Elsewhere the tensor
    is already host memory and is kept as it is.
    """

    def __init__(self, tensor: torch.Tensor, *, pixels: bool) -> None:
        self.pixels = pixels
        self._done: torch.cuda.Event | None = None
        tensor = tensor.detach()
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
        else:
            self._host = tensor

    def tensor(self) -> torch.Tensor:
        if self._done is not None:
            self._done.synchronize()
        return self._host

    def image(self, arch: Arch) -> Image.Image:
        host = self.tensor()
        return tensor_to_images(host)[0] if self.pixels else linear_preview(host, arch)[0]


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(batch, 3, h, w) in [-1, 1] -> RGB images."""
    # The same arithmetic as diffusers' image processor, so pixels match its pipelines exactly.
    unit = (pixels.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    array = (unit * 255).round().to(torch.uint8)
    return [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in array]


def with_previews(on_step: StepHook, period: int, render: PreviewRenderer | None = None) -> StepHook:
    """Mark every `period`-th step as a preview step and start its copy to host memory; with
    `render`, the worker decodes it first (TAESD, full VAE) on the device. Readers turn the copy
    into a picture (the cheap linear map for a latent) when they ask."""

    def hook(info: StepInfo) -> None:
        due = period > 0 and info.step % period == 0
        copy = None
        if due:
            latent = info.preview_latent
            copy = PreviewCopy(render(latent), pixels=True) if render else PreviewCopy(latent, pixels=False)
        on_step(replace(info, preview_due=due, preview=copy))

    return hook
