"""The denoising objective every trainer here shares: noise a latent, predict, weigh the error.

One schedule for training and sampling: the SD 1.x training schedule the loader gives every
checkpoint, so what is trained here samples correctly with the app's own samplers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from webui.model_manager.detect import TRAIN_SCHEDULE


@dataclass(frozen=True)
class ObjectiveOptions:
    prediction_type: str = "epsilon"
    # Min-SNR weighting (Hang et al. 2023): easy, low-noise steps stop dominating the loss.
    min_snr_gamma: float | None = 5.0
    # A little per-channel offset noise lets the model move an image's overall colour.
    noise_offset: float = 0.05


class DenoisingObjective:
    def __init__(self, options: ObjectiveOptions | None = None) -> None:
        self.options = options or ObjectiveOptions()
        self.scheduler = DDPMScheduler(**TRAIN_SCHEDULE, prediction_type=self.options.prediction_type)
        alphas = self.scheduler.alphas_cumprod
        self._snr = alphas / (1.0 - alphas)

    @property
    def timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def loss(
        self,
        unet: UNet2DConditionModel,
        latents: torch.Tensor,
        context: torch.Tensor,
        generator: torch.Generator,
        unet_extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The weighted error of one batch; `latents` already scaled as the UNet sees them.

        `unet_extra` is concatenated to the noisy latents (an inpainting UNet's mask and image).
        """
        batch = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
        if self.options.noise_offset:
            offset = torch.randn((batch, latents.shape[1], 1, 1), generator=generator, dtype=latents.dtype)
            noise = noise + self.options.noise_offset * offset
        noise = noise.to(latents.device)
        steps = torch.randint(0, self.timesteps, (batch,), generator=generator).to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, steps)
        if unet_extra is not None:
            noisy = torch.cat([noisy, unet_extra], dim=1)
        prediction = unet(noisy, steps, context).sample.float()
        if self.options.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, steps)
        else:
            target = noise
        per_item = (prediction - target.float()).pow(2).mean(dim=(1, 2, 3))
        return (per_item * self._weights(steps)).mean()

    def _weights(self, steps: torch.Tensor) -> torch.Tensor:
        gamma = self.options.min_snr_gamma
        if gamma is None:
            return torch.ones_like(steps, dtype=torch.float32)
        snr = self._snr.to(steps.device)[steps]
        clipped = torch.clamp(snr, max=gamma)
        if self.options.prediction_type == "v_prediction":
            return clipped / (snr + 1.0)
        return clipped / snr


def encode_captions(
    tokenizer: CLIPTokenizer, encoder: CLIPTextModel, captions: list[str], device: torch.device
) -> torch.Tensor:
    """The text encoder's last hidden state for captions of one CLIP chunk (as the engine's clip skip 1)."""
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    return encoder(ids).last_hidden_state


def require_finite(loss: torch.Tensor, step: int) -> None:
    """A NaN or infinite loss ends the run with a message instead of training on garbage."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"the loss became {float(loss.detach())} at step {step + 1}; lower the learning rate"
        )
