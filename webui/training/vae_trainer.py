"""Train an SD 1.x-layout VAE from scratch on a tensor of images (the demo model's first phase)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from webui.training.progress import RunningMean, TrainingHooks, TrainingStep
from webui.training.state import step_generator

# As in the original autoencoders: a whisper of KL keeps the latent space smooth.
KL_WEIGHT = 1e-6


@dataclass(frozen=True)
class VaeTrainOptions:
    steps: int = 3000
    batch_size: int = 16
    learning_rate: float = 1e-3
    crop: int = 64  # random crops: the VAE is convolutional and crops are 4x cheaper than 128 px
    seed: int = 0
    mixed_precision: bool = True  # bf16 autocast where the CPU or GPU has native bf16


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled or not bf16_is_native(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def bf16_is_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and _cpu_has_bf16()
    return False


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW images to the [-1, 1] floats the VAE works in."""
    return images.float() / 127.5 - 1.0


def train_vae(
    vae: AutoencoderKL, images: torch.Tensor, options: VaeTrainOptions, hooks: TrainingHooks
) -> AutoencoderKL:
    """Fit `vae` to `images` (uint8, N x 3 x H x W); returns it in eval mode."""
    device = next(vae.parameters()).device
    optimizer = torch.optim.AdamW(vae.parameters(), lr=options.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options.learning_rate, total_steps=options.steps, pct_start=0.05
    )
    mean = RunningMean()
    started = time.monotonic()
    vae.train()
    count, _, height, width = images.shape
    for step in range(1, options.steps + 1):
        hooks.check_stop()
        generator = step_generator(options.seed, step)
        index = torch.randint(0, count, (options.batch_size,), generator=generator)
        top = int(torch.randint(0, height - options.crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - options.crop + 1, (1,), generator=generator))
        batch = to_unit_range(images[index, :, top : top + options.crop, left : left + options.crop]).to(
            device
        )
        with bf16_autocast(device, options.mixed_precision):
            posterior = vae.encode(batch).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(
                posterior.mean.shape, generator=generator
            ).to(device)
            decoded = vae.decode(latents).sample
        error = decoded.float() - batch
        loss = error.abs().mean() + error.pow(2).mean() + KL_WEIGHT * posterior.kl().float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        hooks.step(
            TrainingStep(
                "vae", step, options.steps, mean.add(float(loss.detach())), time.monotonic() - started
            )
        )
    return vae.eval()


@torch.no_grad()
def encode_images(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64, mixed_precision: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior mean and std of each image, in fp32 (for a denoiser to train on)."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    means, stds = [], []
    for start in range(0, images.shape[0], batch_size):
        pixels = to_unit_range(images[start : start + batch_size]).to(device, dtype)
        with bf16_autocast(device, mixed_precision):
            posterior = vae.encode(pixels).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means).contiguous(), torch.cat(stds).contiguous()


@dataclass(frozen=True)
class DecoderRefineOptions:
    steps: int = 1200
    batch_size: int = 8
    learning_rate: float = 3e-4
    seed: int = 1


def refine_decoder(
    vae: AutoencoderKL, images: torch.Tensor, options: DecoderRefineOptions, hooks: TrainingHooks
) -> AutoencoderKL:
    """Train only the decoder on whole images, the encoder frozen.

    The latents the UNet learned from stay exactly the same, so this can follow the denoiser:
    whole images (not crops) teach the decoder the real image border, and it sharpens edges.
    """
    device = next(vae.parameters()).device
    decoder_parts = [vae.decoder, vae.post_quant_conv]
    parameters = [p for part in decoder_parts for p in part.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options.learning_rate, total_steps=options.steps, pct_start=0.05
    )
    mean, started = RunningMean(), time.monotonic()
    vae.requires_grad_(False)
    for part in decoder_parts:
        part.requires_grad_(True).train()
    for step in range(1, options.steps + 1):
        hooks.check_stop()
        generator = step_generator(options.seed, step)
        index = torch.randint(0, images.shape[0], (options.batch_size,), generator=generator)
        batch = to_unit_range(images[index]).to(device)
        with torch.no_grad():
            posterior = vae.encode(batch).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(
                posterior.mean.shape, generator=generator
            ).to(device)
        error = vae.decode(latents).sample.float() - batch
        loss = error.abs().mean() + error.pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        info = TrainingStep(
            "decoder", step, options.steps, mean.add(float(loss.detach())), time.monotonic() - started
        )
        hooks.step(info)
    vae.requires_grad_(False)
    return vae.eval()
