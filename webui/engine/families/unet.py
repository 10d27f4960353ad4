"""The UNet family's sampling loop: SD 1.x, 2.x and SDXL, predicting noise or velocity on the
discrete DDPM schedule, with classifier-free guidance over a prompt's AND-parts."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from webui.engine.conditioning import Conditioning
from webui.engine.passes import BatchInputs, ConditioningSchedule, Pass, Progress
from webui.engine.request import GenerationRequest
from webui.engine.speed import UNetCall
from webui.engine.steps import DenoiseHook, DenoiseStep, Interrupted, JobControl
from webui.model_manager.load import LoadedModel


@dataclass(frozen=True)
class _UNetCall:
    """One UNet call of a guided step: which conditionings it predicts, stacked along the batch."""

    positions: list[int]  # indices into [negative (with CFG), AND-part 1, AND-part 2, ...]
    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None  # SDXL's pooled text and size conditioning


class UNetLoop:
    """Runs one pass's steps on a model's UNet (or the speed options' prepared call of it)."""

    def __init__(
        self, model: LoadedModel, unet: UNetCall, *, batched: bool, on_denoise: DenoiseHook | None
    ) -> None:
        self._model = model
        self._unet = unet
        self._batched = batched  # cond and uncond in one UNet call where their lengths allow
        self._on_denoise = on_denoise  # the job's hook before each step, which may change it

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
        """One sampling pass, from noise (`strength` None) or from `batch.init_latents`; returns the
        latents and False when a skip cut it short."""
        count = len(noise)
        if strength is None or batch.init_latents is None:
            latents = noise * scheduler.init_noise_sigma
        elif len(timesteps) == 0:
            return batch.init_latents, True
        elif strength >= 1.0:
            latents = noise * scheduler.init_noise_sigma
        else:
            # A1111's "Noise multiplier" scales img2img's added noise (not hires fix's).
            scale = request.initial_noise_multiplier if request.init_image is not None else 1.0
            latents = scheduler.add_noise(batch.init_latents, noise * scale, timesteps[:1].repeat(count))
        step_kwargs = _step_kwargs(scheduler, generators, request.eta)
        plan = _CallPlan(
            lambda group: self._added_conditioning(group, spec),
            count,
            use_cfg=request.cfg_scale > 1.0,
            batched=self._batched,
        )
        for index, timestep in enumerate(timesteps):
            if control.interrupted:
                raise Interrupted(latents)
            if control.take_skip():
                return latents, False
            negative, parts = conditioning.at(min(index, spec.steps - 1))
            if self._on_denoise is not None:
                latents, negative, parts = self._edit_step(progress, spec, timestep, latents, negative, parts)
            prediction = self._predict(
                scheduler.scale_model_input(latents, timestep),
                timestep,
                plan.calls(negative, parts),
                [weight for _, weight in parts],
                request.cfg_scale,
                batch,
            )
            output = scheduler.step(prediction, timestep, latents, **step_kwargs, return_dict=True)
            latents = output.prev_sample
            if batch.latent_mask is not None and batch.inpaint_cond is None:
                latents = _keep_unmasked(scheduler, batch, noise, latents, timesteps, index)
            progress.report(latents, getattr(output, "pred_original_sample", None))
        return latents, True

    def _edit_step(
        self,
        progress: Progress,
        spec: Pass,
        timestep: torch.Tensor,
        latents: torch.Tensor,
        negative: Conditioning,
        parts: list[tuple[Conditioning, float]],
    ) -> tuple[torch.Tensor, Conditioning, list[tuple[Conditioning, float]]]:
        assert self._on_denoise is not None
        step = DenoiseStep(
            progress.done + 1,
            max(progress.total, progress.done + 1),
            progress.batch_index,
            spec.hires,
            timestep,
            latents,
            negative,
            list(parts),
        )
        self._on_denoise(step)
        return step.latents, step.negative, step.parts

    def _predict(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        calls: list[_UNetCall],
        weights: list[float],
        cfg_scale: float,
        batch: BatchInputs,
    ) -> torch.Tensor:
        """The guided noise prediction: classifier-free guidance over the prompt's AND-parts."""
        use_cfg = cfg_scale > 1.0
        if batch.inpaint_cond is not None:
            model_input = torch.cat([model_input, batch.inpaint_cond], dim=1)
        predictions: list[torch.Tensor | None] = [None] * (len(weights) + use_cfg)
        for call in calls:
            stacked = len(call.positions)
            output = self._unet(
                torch.cat([model_input] * stacked) if stacked > 1 else model_input,
                timestep,
                encoder_hidden_states=call.embeds,
                added_cond_kwargs=call.added,
                return_dict=False,
            )[0]
            for position, chunk in zip(call.positions, output.chunk(stacked)):
                predictions[position] = chunk
        if not use_cfg:
            conditional = predictions
            if len(conditional) == 1 and weights[0] == 1.0:
                return conditional[0]  # type: ignore[return-value]
            total = sum(weights) or 1.0
            return sum(w * p for w, p in zip(weights, conditional)) / total  # type: ignore[operator,return-value]
        uncond, guided = predictions[0], predictions[0]
        for weight, prediction in zip(weights, predictions[1:]):
            guided = guided + (weight * cfg_scale) * (prediction - uncond)  # type: ignore[operator]
        return guided  # type: ignore[return-value]

    def _added_conditioning(self, cond: Conditioning, spec: Pass) -> dict[str, torch.Tensor] | None:
        if not self._model.architecture.size_conditioning:
            return None
        # Micro-conditioning: original size, crop top-left, target size.
        time_ids = torch.tensor(
            [[spec.height, spec.width, 0, 0, spec.height, spec.width]],
            device=self._model.device,
            dtype=self._model.dtype,
        ).repeat(cond.embeds.shape[0], 1)
        return {"text_embeds": cond.pooled, "time_ids": time_ids}


class _CallPlan:
    """The UNet calls of a pass's steps, built again only when prompt editing changes the conditioning.

    Conditionings of equal token length share one call (cond and uncond batched, unless the
    speed options say otherwise); a long prompt beside a short negative one gets its own call
    rather than padding that would change the result. Building the stacked embeddings and
    SDXL's size tensor once per segment keeps the loop free of per-step tensor creation.
    """

    def __init__(
        self,
        added_conditioning: Callable[[Conditioning], dict[str, torch.Tensor] | None],
        count: int,
        *,
        use_cfg: bool,
        batched: bool,
    ) -> None:
        self._added, self._count, self._use_cfg, self._batched = added_conditioning, count, use_cfg, batched
        self._conds: list[Conditioning] = []
        self._calls: list[_UNetCall] = []

    def calls(self, negative: Conditioning, parts: list[tuple[Conditioning, float]]) -> list[_UNetCall]:
        conds = ([negative] if self._use_cfg else []) + [cond for cond, _ in parts]
        if len(conds) != len(self._conds) or any(a is not b for a, b in zip(conds, self._conds)):
            self._conds = conds
            groups = _groups_by_length(conds) if self._batched else [[i] for i in range(len(conds))]
            self._calls = [self._call(indices) for indices in groups]
        return self._calls

    def _call(self, indices: list[int]) -> _UNetCall:
        group = Conditioning.concat([_repeat(self._conds[i], self._count) for i in indices])
        return _UNetCall(indices, group.embeds, self._added(group))


def _keep_unmasked(
    scheduler: SchedulerMixin,
    batch: BatchInputs,
    noise: torch.Tensor,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    index: int,
) -> torch.Tensor:
    """Normal UNets inpaint by resetting the unmasked area to the init image at the next noise level."""
    assert batch.init_latents is not None and batch.latent_mask is not None
    if index + 1 < len(timesteps):
        known = scheduler.add_noise(
            batch.init_latents, noise, timesteps[index + 1 : index + 2].repeat(len(noise))
        )
    else:
        known = batch.init_latents
    return known * (1 - batch.latent_mask) + latents * batch.latent_mask


def _step_kwargs(
    scheduler: SchedulerMixin, generators: list[torch.Generator], eta: float | None
) -> dict[str, Any]:
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in accepted:
        kwargs["generator"] = generators
    if "eta" in accepted:
        kwargs["eta"] = 0.0 if eta is None else eta
    return kwargs


def _groups_by_length(conds: list[Conditioning]) -> list[list[int]]:
    """Indices of `conds` grouped by token length, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for index, cond in enumerate(conds):
        groups.setdefault(cond.embeds.shape[1], []).append(index)
    return list(groups.values())


def _repeat(cond: Conditioning, count: int) -> Conditioning:
    """A batch-1 conditioning for `count` images."""
    pooled = None if cond.pooled is None else cond.pooled.expand(count, -1)
    return Conditioning(cond.embeds.expand(count, -1, -1), pooled)
