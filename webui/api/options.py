"""A1111's `/sdapi/v1/options`: the server-wide defaults clients read and set by A1111's key names."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from webui.api.errors import ApiError
from webui.api.fields import CHECKPOINT_OPTION, CLIP_SKIP_OPTION, RNG_OPTION, VAE_OPTION
from webui.engine.request import RNG_SOURCES
from webui.jobs import Caller, JobQueue
from webui.model_manager.state_dict import CheckpointError

if TYPE_CHECKING:
    from webui.live_settings import LiveSettings
    from webui.studio import Studio

# Limits are options too, but only an admin may change them.
_LIMIT_OPTIONS: dict[str, type] = {
    "max_pixels": int,
    "max_batch_size": int,
    "max_batch_count": int,
    "max_steps": int,
    "max_body_mb": float,
    "max_queued_per_user": int,
    "max_prompt_chars": int,
}


class ServerOptions:
    """Reads and writes the options that mean something here; other keys are ignored, as in A1111."""

    def __init__(self, studio: Studio, jobs: JobQueue, live: LiveSettings, clip_skip: int = 1) -> None:
        self.studio = studio
        self.jobs = jobs
        self.live = live
        self.clip_skip = clip_skip
        self.randn_source = "CPU"  # the same noise on every machine; A1111's default is "GPU"
        self._writing = threading.Lock()

    def read(self) -> dict[str, Any]:
        studio = self.studio
        current = studio.models.current_checkpoint_file()
        outputs = studio.settings.outputs_dir
        limits = self.jobs.limits
        return {
            CHECKPOINT_OPTION: studio.models.registry.title(current),
            "sd_checkpoint_hash": studio.models.facts.cached_sha256(current.path),
            VAE_OPTION: studio.models.vae_choice,
            CLIP_SKIP_OPTION: self.clip_skip,
            RNG_OPTION: self.randn_source,
            "samples_format": "png",
            "outdir_samples": "",
            "outdir_txt2img_samples": str(outputs / "txt2img-images"),
            "outdir_img2img_samples": str(outputs / "img2img-images"),
            "outdir_extras_samples": str(outputs / "extras-images"),
            "enable_pnginfo": True,
            **{key: getattr(limits, key) for key in _LIMIT_OPTIONS},
        }

    def _check_names(self, values: dict[str, Any]) -> None:
        """Refuse an unknown checkpoint or VAE before switching anything, so a request applies whole."""
        for key in (CHECKPOINT_OPTION, VAE_OPTION):
            if key in values and not isinstance(values[key], str):
                raise ApiError(422, f"{key}: expected a name", key)
        for key, check in (
            (CHECKPOINT_OPTION, self.studio.models.find_checkpoint),
            (VAE_OPTION, self.studio.models.check_vae),
        ):
            if key in values:
                _by_name(key, check, values[key])

    def write(self, values: dict[str, Any], caller: Caller) -> None:
        """Apply the known keys; a bad value is a 422 naming its key and changes nothing after it."""
        # Clients such as Open WebUI post back the whole dict they read: unchanged limits are no change.
        current = self.jobs.limits
        limit_changes = {
            key: values[key]
            for key in _LIMIT_OPTIONS
            if key in values and values[key] != getattr(current, key)
        }
        if limit_changes and not caller.admin:
            raise ApiError(
                403, f"only an admin may change {', '.join(limit_changes)}", next(iter(limit_changes))
            )
        clip_skip = values.get(CLIP_SKIP_OPTION, self.clip_skip)
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= 12:
            raise ApiError(422, f"{CLIP_SKIP_OPTION}: expected a whole number from 1 to 12", CLIP_SKIP_OPTION)
        randn_source = values.get(RNG_OPTION, self.randn_source)
        if not isinstance(randn_source, str) or randn_source.strip().upper() not in RNG_SOURCES:
            raise ApiError(422, f"{RNG_OPTION}: expected one of {', '.join(RNG_SOURCES)}", RNG_OPTION)
        checked = {key: _limit_value(key, value) for key, value in limit_changes.items()}
        limits = self.jobs.limits
        if checked:
            try:
                limits = replace(limits, **checked)
            except ValueError as error:
                raise ApiError(422, str(error), next(iter(checked))) from error
        self._check_names(values)
        with self._writing:
            for key, apply in (
                (CHECKPOINT_OPTION, self.studio.models.select_checkpoint),
                (VAE_OPTION, self.studio.models.select_vae),
            ):
                if key in values:
                    _by_name(key, apply, values[key])
            self.clip_skip = clip_skip
            self.randn_source = randn_source.strip().upper()
            if checked:
                self.live.update(limits=limits)  # saved, like a change in the Settings tab


def _by_name(key: str, act: Callable[[str], object], name: str) -> None:
    """Look up or switch to a checkpoint or VAE; an unknown name is a 422 naming the option."""
    try:
        act(name)
    except CheckpointError as error:
        raise ApiError(422, f"{key}: {error}", key) from error


def _limit_value(key: str, value: Any) -> int | float:
    kind = _LIMIT_OPTIONS[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
        or kind(value) != value
    ):
        raise ApiError(422, f"{key}: expected a positive {'whole ' if kind is int else ''}number", key)
    return kind(value)
