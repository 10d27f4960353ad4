"""What one sampling pass of a batch needs, whichever denoising family runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from webui.engine import images as pix
from webui.engine.conditioning import Conditioning
from webui.engine.steps import StepHook, StepInfo


@dataclass
class BatchInputs:
    """Per-batch tensors for img2img/inpainting; None fields mean plain txt2img."""

    init_latents: torch.Tensor | None = None
    latent_mask: torch.Tensor | None = None  # 1 = repaint, at latent size
    inpaint_cond: torch.Tensor | None = None  # mask + masked-image latents for 9-channel UNets
    inpaint: pix.InpaintInputs | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ConditioningSchedule(Protocol):
    def at(self, step: int) -> tuple[Conditioning, list[tuple[Conditioning, float]]]: ...


@dataclass(frozen=True)
class Pass:
    """What one sampling pass of a batch runs at: the first pass, or hires fix's second."""

    width: int
    height: int
    steps: int
    sampler: str
    scheduler: str
    hires: bool = False


class Progress:
    """Numbers steps across a batch's passes, so hires fix's steps continue the first pass's count."""

    def __init__(self, on_step: StepHook | None, batch_index: int, total: int) -> None:
        self.on_step, self.batch_index, self.total, self.done = on_step, batch_index, total, 0

    def report(self, latents: torch.Tensor, denoised: torch.Tensor | None) -> None:
        self.done += 1
        if self.on_step is not None:
            self.on_step(StepInfo(self.done, max(self.total, self.done), latents, denoised, self.batch_index))


def pass_timesteps(
    scheduler: SchedulerMixin, steps: int, strength: float | None, device: torch.device
) -> torch.Tensor:
    """Set the scheduler up for `steps`; from noise (strength None) all timesteps, else img2img's tail."""
    scheduler.set_timesteps(steps, device=device)
    if strength is None:
        return scheduler.timesteps
    return img2img_timesteps(scheduler, steps, strength)


def img2img_timesteps(scheduler: SchedulerMixin, steps: int, strength: float) -> torch.Tensor:
    """The last `steps * strength` timesteps, as diffusers' img2img pipelines take them."""
    start = steps - min(int(steps * strength), steps)
    order = getattr(scheduler, "order", 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * order)
    return scheduler.timesteps[start * order :]
