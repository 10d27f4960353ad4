"""Training examples encoded once by the model's own VAE, in batches of one bucket size."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from webui.training.vae_trainer import encode_images

CaptionVariant = Callable[[int, np.random.Generator], str]  # (example index, rng) -> caption


class BucketedLatents:
    """Latent posteriors per bucket; `sample` draws a batch from one bucket, by bucket size."""

    def __init__(
        self,
        means: list[torch.Tensor],
        stds: list[torch.Tensor],
        caption: CaptionVariant,
        scale: float,
    ) -> None:
        self.means, self.stds, self.caption, self.scale = means, stds, caption, scale
        self.offsets = np.cumsum([0] + [m.shape[0] for m in means])
        sizes = torch.tensor([float(m.shape[0]) for m in means])
        self._bucket_weights = sizes / sizes.sum()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def sample(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, list[int]]:
        bucket = int(torch.multinomial(self._bucket_weights, 1, generator=generator))
        mean, std = self.means[bucket], self.stds[bucket]
        local = torch.randint(0, mean.shape[0], (batch_size,), generator=generator)
        latents = mean[local] + std[local] * torch.randn(mean[local].shape, generator=generator)
        return latents * self.scale, [int(self.offsets[bucket]) + int(i) for i in local]

    def captions(self, index: list[int], rng: np.random.Generator) -> list[str]:
        return [self.caption(i, rng) for i in index]


def encode_buckets(
    vae: AutoencoderKL, buckets: list[list[Image.Image]], batch_size: int = 8
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The VAE posterior (mean, std) of every image, bucket by bucket, on the CPU in fp32."""
    means, stds = [], []
    for images in buckets:
        pixels = torch.stack(
            [torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in images]
        )
        mean, std = encode_images(vae, pixels, batch_size)
        means.append(mean)
        stds.append(std)
    return means, stds
