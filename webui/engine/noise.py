"""The starting noise of each image: its seed, an optional variation seed, and "resize seed from".

Where the noise comes from is A1111's "Random number generator source" (`randn_source`):
"CPU" draws with torch on the CPU, the same on every machine (our default); "GPU" draws on the
generating device, as A1111 does by default, so only the same kind of device repeats it; "NV"
computes an NVIDIA GPU's draw with numpy (engine/philox.py), so an A1111 GPU seed repeats on a
Mac or a CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from webui.engine.philox import PhiloxGenerator

# Four latent channels: the SD 1.x/2.x/XL VAE's. Callers pass their architecture's count.
DEFAULT_CHANNELS = 4
_CPU = torch.device("cpu")


def sampler_generator(seed: int, source: str = "CPU", device: torch.device = _CPU) -> torch.Generator:
    """The torch generator a sampler continues for its own noise (ancestral and SDE steps).

    For "NV" this is a CPU generator: diffusers' samplers only take torch generators, so their
    step noise is the CPU's, not CUDA's (the starting noise, which fixes the composition, is NV's).
    """
    where = device if source == "GPU" else _CPU
    return torch.Generator(where).manual_seed(seed)


def seeded_noise(
    seed: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    source: str = "CPU",
    device: torch.device = _CPU,
    channels: int = DEFAULT_CHANNELS,
) -> torch.Tensor:
    """(1, channels, height, width) float32 noise for a seed, from the given RNG source (on the CPU after).

    A given `generator` (from `sampler_generator`) is drawn from, so a sampler can continue it;
    "NV" draws from its own Philox generator instead.
    """
    shape = (1, channels, height, width)
    if source == "NV":
        return torch.from_numpy(PhiloxGenerator(seed).randn(shape).astype(np.float32))
    generator = generator or sampler_generator(seed, source, device)
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device).cpu()


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
    source: str = "CPU",
    device: torch.device = _CPU,
    channels: int = DEFAULT_CHANNELS,
) -> torch.Tensor:
    """Noise for one image of latent size `height` x `width`.

    With a variation seed, the seed's noise is slerped towards the subseed's by the strength.
    With `resize_from` (latent height, width), the noise is drawn at that size and centred in
    noise of the real size, so a composition found at one size mostly survives at another.
    """
    drawn_height, drawn_width = resize_from or (height, width)
    noise = seeded_noise(seed, drawn_height, drawn_width, generator, source, device, channels)
    if subseed is not None and subseed_strength > 0:
        variation = seeded_noise(
            subseed, drawn_height, drawn_width, source=source, device=device, channels=channels
        )
        noise = slerp(subseed_strength, noise, variation)
    if (drawn_height, drawn_width) == (height, width):
        return noise
    canvas = seeded_noise(seed, height, width, source=source, device=device, channels=channels)
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
