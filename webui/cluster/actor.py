"""The worker: a Ray actor process that owns one device, a Studio with its own model cache, and
runs the jobs the server sends it, one at a time, reporting progress when asked."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from webui.cluster.progress import RemoteProgress
from webui.engine.preview import PreviewCopy
from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.steps import JobControl, StepInfo
from webui.jobs.limits import Limits, ScriptBudget
from webui.jobs.workers import BUSY, IDLE, HeldCheckpoint, WorkerReport
from webui.model_manager.cache import Tier
from webui.model_manager.detect import Arch
from webui.model_manager.state_dict import CheckpointError
from webui.results import StudioResult
from webui.settings import Settings
from webui.studio import Studio

log = logging.getLogger(__name__)

# Errors after which the device cannot be trusted: the worker exits, and the server re-runs its
# job elsewhere and starts a replacement (an out-of-memory error only fails the one job).
_DEVICE_FAULTS = ("CUDA error", "device-side assert", "AcceleratorError", "NCCL error")


@dataclass
class _Run:
    arch: Arch
    control: JobControl = field(default_factory=JobControl)
    step: int = 0
    total: int = 0
    batch_index: int = 0
    preview_step: int = 0
    latest: PreviewCopy | None = None


@dataclass(frozen=True)
class Outcome:
    result: StudioResult
    report: WorkerReport  # where its checkpoints are now, for the next dispatch


class StudioWorker:
    def __init__(
        self, worker_id: str, settings: Settings, device_label: str | None = None, cwd: str | None = None
    ) -> None:
        """`cwd`: the server's folder, where relative paths in `settings` (--data-dir .) start;
        kept where this machine has it (every machine keeps its checkout at the same path)."""
        if cwd is not None and os.path.isdir(cwd):
            os.chdir(cwd)
        self.id = worker_id
        self.studio = Studio(settings)
        self._device = _device_name(device_label or str(self.studio.device))
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._jobs_done = 0
        self._last_error: str | None = None

    def node_id(self) -> str:
        """The Ray node (machine) this worker runs on: a replacement starts on the same one."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def report(self) -> WorkerReport:
        held = tuple(
            HeldCheckpoint(placement.name, placement.tier.value)
            for placement in self.studio.models.placements()
            if placement.tier is not Tier.DISK
        )
        with self._lock:
            job = next(iter(self._runs), None)
            done, error = self._jobs_done, self._last_error
        state = BUSY if job else IDLE
        return WorkerReport(
            self.id, self._device, os.getpid(), socket.gethostname(), state, held, done, error, job
        )

    def generate(
        self,
        job_id: str,
        request: GenerationRequest,
        checkpoint: str,
        vae: str | None,
        save: bool,
        settings: Settings,
        limits: Limits,
    ) -> Outcome:
        """Run one job as Studio.generate does; the server polls `progress` meanwhile."""
        if settings != self.studio.settings:  # changed on the Settings tab since the last job
            self.studio.apply_settings(settings)
        file = self._checkpoint(checkpoint)
        run = _Run(file.arch or Arch.SD1)
        with self._lock:
            self._runs[job_id] = run
        try:
            result = self.studio.generate(
                request,
                on_step=lambda info: self._on_step(run, info),
                control=run.control,
                checkpoint=checkpoint,
                vae=vae,
                save=save,
                guard=ScriptBudget(limits),
            )
        except Exception as error:
            self._note_error(error)
            raise
        finally:
            with self._lock:
                self._runs.pop(job_id, None)
                self._jobs_done += 1
        return Outcome(result, self.report())

    def progress(self, job_id: str, seen_preview: int) -> RemoteProgress | None:
        with self._lock:
            run = self._runs.get(job_id)
        if run is None:
            return None
        latest, preview_step = run.latest, run.preview_step
        newer = latest is not None and preview_step > seen_preview
        return RemoteProgress(
            run.step,
            run.total,
            run.batch_index,
            preview_step,
            latest.image(run.arch) if newer and latest is not None else None,
        )

    def interrupt(self, job_id: str) -> None:
        with self._lock:
            run = self._runs.get(job_id)
        if run is not None:
            run.control.interrupt()

    def skip(self, job_id: str) -> None:
        with self._lock:
            run = self._runs.get(job_id)
        if run is not None:
            run.control.skip()

    def _checkpoint(self, name: str):
        """The registry's file; a checkpoint added on the server since this worker looked is found
        after one refresh of the folders."""
        try:
            return self.studio.models.find_checkpoint(name)
        except CheckpointError:
            self.studio.models.refresh_checkpoints()
            return self.studio.models.find_checkpoint(name)

    @staticmethod
    def _on_step(run: _Run, info: StepInfo) -> None:
        run.step, run.total, run.batch_index = info.step, info.total, info.batch_index
        if info.preview_due:
            run.latest = info.preview or PreviewCopy(info.preview_latent, pixels=False)
            run.preview_step += 1

    def _note_error(self, error: Exception) -> None:
        if isinstance(error, GenerationError | CheckpointError):
            return  # the request was at fault, not the worker
        text = f"{type(error).__name__}: {error}"
        with self._lock:
            self._last_error = text
        if any(mark in text for mark in _DEVICE_FAULTS):
            log.error("worker %s: the device failed (%s); exiting so a replacement starts", self.id, text)
            os._exit(70)  # the server sees the actor die, re-runs the job and replaces the worker


def _device_name(label: str) -> str:
    """ "cuda:1" for a worker Ray gave GPU 1 (it sees that GPU as its "cuda:0")."""
    if not label.startswith("cuda"):
        return label
    import ray

    gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return f"cuda:{','.join(gpus)}" if gpus else label
