"""A1111 sampler and schedule-type names mapped onto diffusers schedulers.

A1111 names diffusers cannot run are answered by name (`UNAVAILABLE_SAMPLERS`) rather than
swapped for something else.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import AysSchedules, SchedulerMixin

from webui.engine.request import GenerationError


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: type[SchedulerMixin]
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uses_eta(self) -> bool:
        return "eta" in inspect.signature(self.scheduler_class.step).parameters


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", DPMSolverMultistepScheduler, {}, ("k_dpmpp_2m",)),
    Sampler(
        "DPM++ 2M SDE",
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++"},
        ("k_dpmpp_2m_sde",),
    ),
    Sampler("DPM++ SDE", DPMSolverSDEScheduler, {}, ("k_dpmpp_sde",)),
    Sampler(
        "DPM++ 3M SDE",
        DPMSolverMultistepScheduler,
        {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"},
        ("k_dpmpp_3m_sde",),
    ),
    # k-diffusion's second-order singlestep ancestral sampler; diffusers' nearest is the singlestep
    # solver with its own noise (the SDE variant), which its docs name as the counterpart.
    Sampler(
        "DPM++ 2S a",
        DPMSolverSinglestepScheduler,
        {"solver_order": 2, "algorithm_type": "sde-dpmsolver++", "lower_order_final": True},
        ("k_dpmpp_2s_a",),
    ),
    Sampler("Euler a", EulerAncestralDiscreteScheduler, {}, ("k_euler_a", "k_euler_ancestral")),
    Sampler("Euler", EulerDiscreteScheduler, {}, ("k_euler",)),
    Sampler("LMS", LMSDiscreteScheduler, {}, ("k_lms",)),
    Sampler("Heun", HeunDiscreteScheduler, {}, ("k_heun",)),
    Sampler("DPM2", KDPM2DiscreteScheduler, {}, ("k_dpm_2",)),
    Sampler("DPM2 a", KDPM2AncestralDiscreteScheduler, {}, ("k_dpm_2_a",)),
    Sampler("DDIM", DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}, ("ddim",)),
    Sampler("PLMS", PNDMScheduler, {"skip_prk_steps": True}, ("plms",)),
    Sampler("UniPC", UniPCMultistepScheduler, {}, ("unipc",)),
    Sampler("LCM", LCMScheduler, {}, ("lcm",)),
)

# A1111 samplers no diffusers scheduler implements, with the reason a request naming one gets.
UNAVAILABLE_SAMPLERS: dict[str, str] = {
    "Restart": "Restart sampling (Xu et al. 2023) has no diffusers scheduler",
    "DPM fast": "k-diffusion's adaptive DPM-Solver has no diffusers scheduler",
    "DPM adaptive": "k-diffusion's adaptive DPM-Solver has no diffusers scheduler",
    "DPM++ 2M SDE Heun": "the Heun variant of the SDE solver has no diffusers scheduler",
    "DDIM CFG++": "CFG++ guidance is not built",
}

# A1111 "Schedule type" -> scheduler options ("Automatic" keeps the sampler's own).
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    # k-diffusion's polyexponential with A1111's rho of 1 is exactly the exponential schedule.
    "Polyexponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    # ComfyUI's "simple" takes every (1000/steps)-th training timestep from the end: trailing spacing.
    "Simple": {"timestep_spacing": "trailing"},
    # k-diffusion's "normal": timesteps evenly spaced from the last training step to 0.
    "Normal": {"timestep_spacing": "linspace", "steps_offset": 0},
    # The original DDIM spacing: every (1000/steps)-th timestep from 1, as the reference configs.
    "DDIM": {"timestep_spacing": "leading", "steps_offset": 1},
    "Align Your Steps": {},
    "KL Optimal": {},
}

# The reference SD 1.x/2.x/XL scheduler configs space timesteps this way.
_BASE_OPTIONS = {"timestep_spacing": "leading", "steps_offset": 1}


def _kl_optimal(sigma_min: float, sigma_max: float, steps: int, ays_table: str) -> list[float]:
    """Sigmas of "KL Optimal" (Sabour et al. 2024): evenly spaced in arctan(sigma), then 0."""
    angles = np.linspace(math.atan(sigma_max), math.atan(sigma_min), steps)
    return [*np.tan(angles).tolist(), 0.0]


def _align_your_steps(sigma_min: float, sigma_max: float, steps: int, ays_table: str) -> list[float]:
    """NVIDIA's 10-step "Align Your Steps" sigmas, log-linearly resampled to `steps` as A1111 does."""
    table = np.array(AysSchedules[ays_table][:-1])
    if steps != len(table):
        where = np.linspace(0, 1, len(table))
        table = np.exp(np.interp(np.linspace(0, 1, steps), where, np.log(table[::-1])))[::-1]
    return [*table.tolist(), 0.0]


# Schedule types given as explicit sigmas; diffusers takes those only in some schedulers.
_SIGMA_SCHEDULES: dict[str, Callable[[float, float, int, str], list[float]]] = {
    "Align Your Steps": _align_your_steps,
    "KL Optimal": _kl_optimal,
}


def sampler_names() -> list[str]:
    return [sampler.name for sampler in SAMPLERS]


def resolve_sampler(name: str, schedule_type: str = "Automatic") -> tuple[Sampler, str]:
    """The sampler and schedule type for a name, accepting old one-word forms like "DPM++ 2M Karras"."""
    schedule = _find_schedule(schedule_type or "Automatic")
    wanted = (name or "").strip().lower()
    for sampler in SAMPLERS:
        if wanted in (sampler.name.lower(), *sampler.aliases):
            return sampler, schedule
    for suffix in SCHEDULE_TYPES:
        if suffix != "Automatic" and wanted.endswith(" " + suffix.lower()):
            base = wanted[: -len(suffix) - 1]
            for sampler in SAMPLERS:
                if base == sampler.name.lower():
                    return sampler, suffix
    for unavailable, reason in UNAVAILABLE_SAMPLERS.items():
        if wanted == unavailable.lower():
            raise GenerationError(f"sampler {unavailable!r} is not available: {reason}", "sampler_name")
    raise GenerationError(
        f"unknown sampler {name!r}; choose one of: {', '.join(sampler_names())}", "sampler_name"
    )


def _find_schedule(schedule_type: str) -> str:
    wanted = schedule_type.strip().lower().replace("_", " ")  # A1111's API names: "sgm_uniform"
    for known in SCHEDULE_TYPES:
        if wanted == known.lower():
            return known
    raise GenerationError(
        f"unknown schedule type {schedule_type!r}; choose one of: {', '.join(SCHEDULE_TYPES)}",
        "scheduler",
    )


def make_scheduler(
    name: str,
    schedule_type: str,
    base_config: dict[str, Any],
    *,
    seed: int | None = None,
    ays_table: str = "StableDiffusionSigmas",
) -> SchedulerMixin:
    """A fresh scheduler for one job: schedulers keep per-run state, so never share them.

    `ays_table` names the architecture's row of diffusers' AysSchedules for "Align Your Steps".
    """
    sampler, schedule = resolve_sampler(name, schedule_type)
    options = {**base_config, **_BASE_OPTIONS, **sampler.options, **SCHEDULE_TYPES[schedule]}
    accepted = inspect.signature(sampler.scheduler_class.__init__).parameters
    takes_sigmas = "sigmas" in inspect.signature(sampler.scheduler_class.set_timesteps).parameters
    for key in SCHEDULE_TYPES[schedule]:
        if key not in accepted:
            raise GenerationError(
                f"schedule type {schedule!r} is not available for sampler {sampler.name!r}", "scheduler"
            )
    if schedule in _SIGMA_SCHEDULES and not (
        takes_sigmas and sampler.scheduler_class is EulerDiscreteScheduler
    ):
        raise GenerationError(
            f"schedule type {schedule!r} is not available for sampler {sampler.name!r}: diffusers takes "
            "explicit sigmas only in Euler's scheduler",
            "scheduler",
        )
    if sampler.scheduler_class is DPMSolverSDEScheduler and seed is not None:
        options["noise_sampler_seed"] = seed
    try:
        scheduler = sampler.scheduler_class(
            **{key: value for key, value in options.items() if key in accepted}
        )
    except (ImportError, ValueError) as error:
        raise GenerationError(
            f"sampler {sampler.name!r} with schedule {schedule!r} cannot run: {error}"
        ) from error
    if schedule in _SIGMA_SCHEDULES:
        _use_sigmas(scheduler, _SIGMA_SCHEDULES[schedule], ays_table)
    return scheduler


def _use_sigmas(
    scheduler: SchedulerMixin, sigmas_for: Callable[[float, float, int, str], list[float]], ays_table: str
) -> None:
    """Make this scheduler's `set_timesteps(steps)` take the schedule's sigmas, so the loop that
    drives it needs no special case."""
    plain = scheduler.set_timesteps
    trained = np.sqrt((1 - scheduler.alphas_cumprod.numpy()) / scheduler.alphas_cumprod.numpy())
    sigma_min, sigma_max = float(trained[0]), float(trained[-1])

    def set_timesteps(num_inference_steps: int, device: Any = None, **kwargs: Any) -> None:
        plain(device=device, sigmas=sigmas_for(sigma_min, sigma_max, num_inference_steps, ays_table))

    scheduler.set_timesteps = set_timesteps  # type: ignore[method-assign]
