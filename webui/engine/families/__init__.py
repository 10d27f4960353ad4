"""One sampling loop per denoising family; an architecture names its family (model_manager/archs)."""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from webui.engine.families.unet import UNetLoop
from webui.engine.passes import BatchInputs, ConditioningSchedule, Pass, Progress
from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.speed import UNetCall
from webui.engine.steps import DenoiseHook, JobControl
from webui.model_manager.archs import DenoisingFamily
from webui.model_manager.load import LoadedModel


class SamplingLoop(Protocol):
    def run(
        self,
        request: GenerationRequest,
        spec: Pass,
        scheduler: SchedulerMixin,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        generators: list[torch.Generator],
        batch: BatchInputs,
        conditioning: ConditioningSchedule,
        progress: Progress,
        control: JobControl,
        strength: float | None,
    ) -> tuple[torch.Tensor, bool]:
        """One pass from noise (`strength` None) or from `batch.init_latents`: the latents, and
        False when a skip cut it short."""
        ...


def sampling_loop(
    model: LoadedModel, denoiser: UNetCall, *, batched: bool, on_denoise: DenoiseHook | None
) -> SamplingLoop:
    family = model.architecture.family
    if family is DenoisingFamily.UNET:
        return UNetLoop(model, denoiser, batched=batched, on_denoise=on_denoise)
    raise GenerationError(f"{model.name}: no sampling loop for the {family.value} denoising family")
