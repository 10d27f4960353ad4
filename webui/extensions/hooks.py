"""One job's always-on scripts and their hooks, each call isolated.

A hook that raises is skipped for the rest of the job; one that takes longer than the timeout is
left behind (the job goes on without its result) and its extension is stopped for the session.
Either way the job carries a warning naming the extension, and the console logs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.steps import DenoiseHook, DenoiseStep
from webui.extensions.api import AlwaysOnScript, ImageDone, ImageSaved, JobStart
from webui.extensions.isolation import TookTooLong
from webui.extensions.registry import Extension, describe_error


@dataclass(frozen=True)
class ActiveScript:
    extension: Extension
    script: AlwaysOnScript
    args: Any
    hooks: frozenset[str]  # the ones it overrides, found once per job rather than at every step


class JobHooks:
    """Calls the hooks of a job's always-on scripts in load order; collects `warnings`."""

    def __init__(self, scripts: Sequence[tuple[Extension, AlwaysOnScript, Any]], timeout_s: float) -> None:
        self._scripts = [
            ActiveScript(extension, script, args, frozenset(script.hooks()))
            for extension, script, args in scripts
        ]
        self._timeout_s = timeout_s
        self._skipped: set[tuple[int, str]] = set()  # (script index, hook) that failed in this job
        self.warnings: list[str] = []

    @classmethod
    def none(cls) -> JobHooks:
        return cls([], 0.0)

    def before_job(self, request: GenerationRequest) -> GenerationRequest:
        """The request as the before-job hooks leave it; GenerationError when one refuses it."""
        for index, active in self._having("before_job"):
            event = JobStart(request)
            if self._call(index, active, "before_job", event):
                if not isinstance(event.request, GenerationRequest):
                    self._failed(index, active, "before_job", "it set request to something else")
                    continue
                request = event.request
        return request

    @property
    def on_denoise(self) -> DenoiseHook | None:
        """The engine's per-step hook, or None when no script has one (the loop then pays nothing)."""
        return self._denoise if self._having("on_step") else None

    def _denoise(self, step: DenoiseStep) -> None:
        for index, active in self._having("on_step"):
            self._call(index, active, "on_step", step)

    def after_image(self, event: ImageDone) -> None:
        for index, active in self._having("after_image"):
            image = event.image
            if self._call(index, active, "after_image", event) and not hasattr(event.image, "save"):
                event.image = image
                self._failed(index, active, "after_image", "it set image to something that is not an image")

    def after_save(self, event: ImageSaved) -> None:
        for index, active in self._having("after_save"):
            self._call(index, active, "after_save", event)

    def _having(self, hook: str) -> list[tuple[int, ActiveScript]]:
        return [
            (index, active)
            for index, active in enumerate(self._scripts)
            if hook in active.hooks and active.extension.active and (index, hook) not in self._skipped
        ]

    def _call(self, index: int, active: ActiveScript, hook: str, event: object) -> bool:
        """True when the hook returned normally."""
        method = getattr(active.script, hook)
        inference = torch.is_inference_mode_enabled()  # thread-local: the hook's thread takes it over

        def call() -> None:
            with torch.inference_mode(inference):
                method(event, active.args)

        assert active.extension.thread is not None
        try:
            active.extension.thread.call(call, self._timeout_s)
        except TookTooLong:
            message = f"{active.script.title}: {hook} took longer than {self._timeout_s:g} s"
            active.extension.stop(message)
            self.warnings.append(
                f"Extension {active.extension.name}: {message}; it is off until the app restarts."
            )
            return False
        except GenerationError as error:
            if hook == "before_job":  # a refusal of the request, which the user should read
                raise GenerationError(f"{active.script.title}: {error}", error.field) from error
            self._failed(index, active, hook, describe_error(error), error)
            return False
        except Exception as error:
            self._failed(index, active, hook, describe_error(error), error)
            return False
        return True

    def _failed(
        self, index: int, active: ActiveScript, hook: str, why: str, error: BaseException | None = None
    ) -> None:
        self._skipped.add((index, hook))
        message = f"{active.script.title}: {hook} failed ({why})"
        active.extension.report(message, error)
        self.warnings.append(
            f"Extension {active.extension.name}: {message}; skipped for the rest of this job."
        )
