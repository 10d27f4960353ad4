"""The starting noise of each image: its seed, an optional variation seed, and "resize seed from"."""

from __future__ import annotations

import torch

LATENT_CHANNELS = 4


def seeded_noise(
    seed: int, height: int, width: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(1, 4, height, width) float32 noise drawn on the CPU, so a seed means the same on every device.

    A given `generator` (seeded with `seed`) is drawn from, so a sampler can continue it.
    """
    generator = generator or torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, LATENT_CHANNELS, height, width), generator=generator, dtype=torch.float32)


def slerp(t: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: mixing two noises this way keeps the result's norm noise-like."""
    start_unit = start / start.norm()
    end_unit = end / end.norm()
    dot = (start_unit * end_unit).sum().clamp(-1.0, 1.0)
    if dot.abs() > 0.9995:  # nearly parallel: the plain line is exact enough and avoids dividing by ~0
        return (1 - t) * start + t * end
    omega = torch.acos(dot)
    return (torch.sin((1 - t) * omega) * start + torch.sin(t * omega) * end) / torch.sin(omega)


def image_noise(
    seed: int,
    height: int,
    width: int,
    *,
    subseed: int | None = None,
    subseed_strength: float = 0.0,
    resize_from: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise for one image of latent size `height` x `width`.

    With a variation seed, the seed's noise is slerped towards the subseed's by the strength.
    With `resize_from` (latent height, width), the noise is drawn at that size and centred in
    noise of the real size, so a composition found at one size mostly survives at another.
    """
    drawn_height, drawn_width = resize_from or (height, width)
    noise = seeded_noise(seed, drawn_height, drawn_width, generator)
    if subseed is not None and subseed_strength > 0:
        noise = slerp(subseed_strength, noise, seeded_noise(subseed, drawn_height, drawn_width))
    if (drawn_height, drawn_width) == (height, width):
        return noise
    canvas = seeded_noise(seed, height, width)
    rows = _centred(drawn_height, height)
    columns = _centred(drawn_width, width)
    canvas[:, :, rows[1], columns[1]] = noise[:, :, rows[0], columns[0]]
    return canvas


def _centred(drawn: int, target: int) -> tuple[slice, slice]:
    """(source, destination) slices that centre `drawn` cells within `target`, cropping if larger."""
    span = min(drawn, target)
    source_start = max(drawn - target, 0) // 2
    target_start = max(target - drawn, 0) // 2
    return slice(source_start, source_start + span), slice(target_start, target_start + span)
