"""The one queue the UI, the API and the CLI submit to: FIFO across users, one job at a time."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.steps import StepInfo
from webui.jobs.job import Caller, Job, JobState, JobStatus
from webui.jobs.limits import Limits
from webui.model_manager.state_dict import CheckpointError
from webui.training.progress import TrainingError, TrainingHooks, TrainingStopped
from webui.training.request import TrainingRequest

if TYPE_CHECKING:
    from webui.studio import Studio

log = logging.getLogger(__name__)

_WAKE_S = 0.5


class JobNotFound(LookupError):
    """No such job for this caller (another user's job is not found either)."""


class QueueFull(RuntimeError):
    """The caller already has as many jobs waiting as the server allows."""


class JobQueue:
    """Owns every job. One worker thread runs them in submission order on the studio's device.

    Finished jobs (with their images) are kept for `retention_seconds`, and at most `keep_finished`
    of them, so a client that reconnects later can still fetch its results.
    """

    def __init__(
        self,
        studio: Studio,
        limits: Limits | None = None,
        *,
        retention_seconds: float = 3600.0,
        keep_finished: int = 500,
        step_hooks: Sequence[Callable[[Job, StepInfo], None]] = (),
    ) -> None:
        """`step_hooks` run on the worker after every denoising step of every job, in order."""
        self.studio = studio
        self.step_hooks = tuple(step_hooks)
        self.limits = limits or Limits()
        self.retention_seconds = retention_seconds
        self.keep_finished = keep_finished
        self._jobs: dict[str, Job] = {}
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._changed = threading.Condition()
        self._stopping = False
        self._worker: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> JobQueue:
        """Run jobs on a worker thread (tests, notebooks). A server should prefer `run()`."""
        if self._worker is None:
            self._worker = threading.Thread(target=self.run, name="job-worker", daemon=True)
            self._worker.start()
        return self

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Run jobs on the calling thread until `stop()` or `until()` (checked at least twice a second).

        On CPU, PyTorch's OpenMP threads serve the main thread best: measured on 2 cores, a small
        job ran 2.5x slower (80 ms against 32 ms) and a 512x512 one 14% slower from another thread,
        so `launch.py` serves HTTP from a thread and runs jobs here, on the main one.
        """
        while True:
            with self._changed:
                while not self._waiting and not self._stopping and not until():
                    self._changed.wait(_WAKE_S)
                if self._stopping or until():
                    return
                job = self._running = self._waiting.popleft()
            try:
                self._run(job)
            finally:
                with self._changed:
                    self._running = None
                    self._prune()
                    self._changed.notify_all()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Interrupt the running job, drop waiting ones, and end the worker."""
        with self._changed:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
            running = self._running
            self._changed.notify_all()
        for job in waiting:
            job.finish(JobState.INTERRUPTED, error="the server is shutting down")
        if running is not None:
            running.control.interrupt()
        if self._worker is not None:
            self._worker.join(timeout)

    def set_limits(self, **changes: object) -> Limits:
        self.limits = replace(self.limits, **changes)  # type: ignore[arg-type]
        return self.limits

    # -- submitting ----------------------------------------------------------------------------
    def submit(
        self,
        request: GenerationRequest,
        caller: Caller,
        *,
        checkpoint: str | None = None,
        vae: str | None = None,
        save: bool = True,
    ) -> Job:
        """Queue a job, or raise GenerationError/CheckpointError at once for a request that cannot run.

        The job runs on the checkpoint selected now (or `checkpoint`), even if someone switches later.
        """
        self.limits.check(request, self.studio.styles)
        file = self.studio.preflight(request, checkpoint, vae)
        job = Job(request, caller.name, file.name, arch=file.arch, vae=vae, save=save)
        self._enqueue(job, caller)
        return job

    def submit_training(self, request: TrainingRequest, caller: Caller) -> Job:
        """Queue a training job, or raise TrainingError/CheckpointError at once for one that cannot run.

        The base checkpoint is fixed now (the selected one unless the request names one)."""
        request = request.validated()
        base = self.studio.training_preflight(request, caller.admin)
        job = Job(request, caller.name, base)
        self._enqueue(job, caller)
        return job

    def _enqueue(self, job: Job, caller: Caller) -> None:
        with self._changed:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            mine = sum(1 for waiting in self._waiting if waiting.owner == caller.name)
            if mine >= self.limits.max_queued_per_user:
                raise QueueFull(
                    f"you already have {mine} jobs waiting, the most this server allows "
                    f"(--max-queued); wait for some to finish"
                )
            self._prune()
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._changed.notify_all()

    # -- looking ---------------------------------------------------------------------------------
    def get(self, job_id: str, caller: Caller) -> Job:
        with self._changed:
            job = self._jobs.get(job_id)
        if job is None or not _may_see(caller, job):
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def jobs(self, caller: Caller, everyone: bool = False) -> list[Job]:
        """The caller's jobs, oldest first (an admin may ask for everyone's)."""
        with self._changed:
            jobs = list(self._jobs.values())
        return [job for job in jobs if job.owner == caller.name or (everyone and caller.admin)]

    def status(self, job: Job) -> JobStatus:
        return job.status(self.position(job))

    def position(self, job: Job) -> int | None:
        with self._changed:
            for index, waiting in enumerate(self._waiting):
                if waiting is job:
                    return index + 1
        return None

    def counts(self) -> tuple[int, int]:
        """(running, waiting) across all users."""
        with self._changed:
            return (1 if self._running else 0), len(self._waiting)

    def current(self, caller: Caller) -> Job | None:
        """The caller's running job, else their next waiting one, else None (A1111's `progress`)."""
        with self._changed:
            if self._running is not None and self._running.owner == caller.name:
                return self._running
            return next((job for job in self._waiting if job.owner == caller.name), None)

    # -- stopping jobs -------------------------------------------------------------------------
    def interrupt(self, job: Job) -> bool:
        """Stop a job: a waiting one never runs; a running one keeps the images finished so far."""
        with self._changed:
            if job in self._waiting:
                self._waiting.remove(job)
                waiting = True
            else:
                waiting = False
        if waiting:
            job.finish(JobState.INTERRUPTED)
            return True
        if job.state is JobState.RUNNING:
            job.control.interrupt()
            return True
        return False

    def skip(self, job: Job) -> bool:
        """End the running batch of a job early; the next batch (if any) goes on."""
        if job.state is JobState.RUNNING:
            job.skipped = True
            job.control.skip()
            return True
        return False

    # -- the worker -------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        if job.control.interrupted:
            job.finish(JobState.INTERRUPTED)
            return
        job.mark_running()
        if isinstance(job.request, TrainingRequest):
            self._train(job, job.request)
            return
        try:
            result = self.studio.generate(
                job.request,
                on_step=lambda info: self._on_step(job, info),
                control=job.control,
                checkpoint=job.checkpoint,
                vae=job.vae,
                save=job.save,
            )
        except (GenerationError, CheckpointError) as error:
            _fail_by_request(job, error)
        except Exception as error:  # the worker must outlive any one job
            log.exception("job %s failed", job.id)
            job.finish(JobState.FAILED, error=f"{type(error).__name__}: {error}")
        else:
            job.finish(JobState.INTERRUPTED if result.interrupted else JobState.DONE, result=result)

    def _train(self, job: Job, request: TrainingRequest) -> None:
        hooks = TrainingHooks(
            on_step=job.on_training_step,
            on_sample=lambda step, images, prompts: job.on_training_sample(step, images),
            should_stop=lambda: job.control.interrupted,
        )
        try:
            result = self.studio.train(request, hooks, base=job.checkpoint)
        except TrainingStopped:
            job.finish(
                JobState.INTERRUPTED, error="interrupted; its last checkpoint is kept, train again to resume"
            )
        except (TrainingError, CheckpointError, FloatingPointError) as error:
            _fail_by_request(job, error)
        except Exception as error:  # the worker must outlive any one job
            log.exception("training job %s failed", job.id)
            job.finish(JobState.FAILED, error=f"{type(error).__name__}: {error}")
        else:
            job.finish(JobState.DONE, result=result)

    def _on_step(self, job: Job, info: StepInfo) -> None:
        job.on_step(info)
        for hook in self.step_hooks:
            hook(job, info)

    def _prune(self) -> None:
        """Forget finished jobs past the retention time or the count; call with the lock held."""
        finished = [job for job in self._jobs.values() if job.state.finished]
        cutoff = time.time() - self.retention_seconds
        excess = len(finished) - self.keep_finished
        for index, job in enumerate(finished):  # oldest first: dicts keep submission order
            if index < excess or (job.finished or 0) < cutoff:
                del self._jobs[job.id]


def _fail_by_request(job: Job, error: Exception) -> None:
    """The request was at fault (a 4xx for the API): say why, and which field when known."""
    job.finish(JobState.FAILED, error=str(error), error_field=getattr(error, "field", None), user_error=True)


def _may_see(caller: Caller, job: Job) -> bool:
    return caller.admin or job.owner == caller.name
