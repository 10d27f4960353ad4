"""A1111 sampler and schedule-type names mapped onto diffusers schedulers."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
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
from diffusers.schedulers.scheduling_utils import SchedulerMixin

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

# A1111 "Schedule type" -> scheduler options ("Automatic" keeps the sampler's own).
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}

# The reference SD 1.x/2.x/XL scheduler configs space timesteps this way.
_BASE_OPTIONS = {"timestep_spacing": "leading", "steps_offset": 1}


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
    name: str, schedule_type: str, base_config: dict[str, Any], *, seed: int | None = None
) -> SchedulerMixin:
    """A fresh scheduler for one job: schedulers keep per-run state, so never share them."""
    sampler, schedule = resolve_sampler(name, schedule_type)
    options = {**base_config, **_BASE_OPTIONS, **sampler.options, **SCHEDULE_TYPES[schedule]}
    accepted = inspect.signature(sampler.scheduler_class.__init__).parameters
    for key in SCHEDULE_TYPES[schedule]:
        if key not in accepted:
            raise GenerationError(
                f"schedule type {schedule!r} is not available for sampler {sampler.name!r}", "scheduler"
            )
    if sampler.scheduler_class is DPMSolverSDEScheduler and seed is not None:
        options["noise_sampler_seed"] = seed
    try:
        return sampler.scheduler_class(**{key: value for key, value in options.items() if key in accepted})
    except (ImportError, ValueError) as error:
        raise GenerationError(
            f"sampler {sampler.name!r} with schedule {schedule!r} cannot run: {error}"
        ) from error
