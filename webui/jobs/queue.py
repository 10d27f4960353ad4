"""The one queue the UI, the API and the CLI submit to: round-robin across users, one job at a time
on the studio's device, or one per worker when an executor (webui.cluster) runs them."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.steps import StepInfo
from webui.jobs.caller import Caller
from webui.jobs.executor import JobExecutor
from webui.jobs.fair import FairLine
from webui.jobs.job import Job, JobState, JobStatus
from webui.jobs.limits import Limits, ScriptBudget
from webui.jobs.store import FileImages, JobStore, StoredImage, StoredJob
from webui.jobs.workers import BUSY, IDLE, LOCAL_WORKER, HeldCheckpoint, WorkerReport
from webui.model_manager.state_dict import CheckpointError
from webui.outputs.files import remove_partial_writes
from webui.results import StudioResult
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
    """Owns every job. One worker thread runs them on the studio's device, taking turns across
    users (each user's jobs in the order they were sent; see FairLine).

    Finished jobs (with their images) are kept for `retention_seconds`, and at most `keep_finished`
    of them, so a client that reconnects later can still fetch its results. With a `store`, jobs
    outlive the process: see `_restore` for what a restart does with each.
    """

    def __init__(
        self,
        studio: Studio,
        limits: Limits | None = None,
        *,
        retention_seconds: float = 3600.0,
        keep_finished: int = 500,
        step_hooks: Sequence[Callable[[Job, StepInfo], None]] = (),
        store: JobStore | None = None,
        executor: JobExecutor | None = None,
    ) -> None:
        """`step_hooks` run on the worker after every denoising step of every job, in order.
        `store` keeps jobs across restarts; the jobs it holds are taken up at once.
        `executor` runs generations on its workers, as many at once as it has free ones;
        without it they run one at a time in this process."""
        self.studio = studio
        self.step_hooks = tuple(step_hooks)
        self.limits = limits or Limits()
        self.retention_seconds = retention_seconds
        self.keep_finished = keep_finished
        self._jobs: dict[str, Job] = {}
        self._waiting = FairLine()
        self.executor = executor
        self._running: list[Job] = []
        self._dispatched: set[threading.Thread] = set()  # with an executor: a thread per running job
        self._local_done = 0  # for the listing of the in-process worker
        self._local_error: str | None = None
        self._changed = threading.Condition()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self.store = store
        self._cancelled: set[str] = set()  # running jobs a user stopped (not the shutdown)
        self._resumable: dict[str, list[StoredImage]] = {}  # images of batches done before a restart
        if store is not None:
            self._restore(store)

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
        if self.executor is not None:
            self._dispatch(self.executor, until)
            return
        while True:
            with self._changed:
                while not self._waiting and not self._stopping and not until():
                    self._changed.wait(_WAKE_S)
                if self._stopping or until():
                    return
                job = self._waiting.pop()
                self._running.append(job)
            job.worker = LOCAL_WORKER
            try:
                self._run(job)
            finally:
                self._ended(job)

    def _dispatch(self, executor: JobExecutor, until: Callable[[], bool]) -> None:
        """Hand the next job in round-robin order to the executor whenever it has a free worker;
        each runs on a thread of its own here, which waits for its worker."""
        while True:
            with self._changed:
                job, gone = self._claim_next(executor, until)
                if job is not None and (self._stopping or until()):
                    executor.release(job)
                    job.finish(JobState.INTERRUPTED, error="the server is shutting down")
                    return
                if job is None and gone is None:
                    return  # stopping
                stranded = self._waiting.drain() if gone is not None else []
                if job is not None:
                    self._running.append(job)
                    thread = threading.Thread(
                        target=self._run_claimed, args=(executor, job), name=f"job-{job.id[:8]}", daemon=True
                    )
                    self._dispatched.add(thread)
            for each in stranded:  # no worker is left: say so rather than let them wait for ever
                each.finish(JobState.FAILED, error=f"no worker can run jobs: {gone}")
                self._record_end(each)
            if job is not None:
                thread.start()

    def _claim_next(self, executor: JobExecutor, until: Callable[[], bool]) -> tuple[Job | None, str | None]:
        """Wait for the next job and a worker for it: (job, None); (None, why) once no worker is
        left; (None, None) when stopping. Call with the lock held."""
        while not self._stopping and not until():
            if self._waiting:
                job = self._waiting.pop()
                if executor.claim(job):
                    return job, None
                self._waiting.push_front(job)
                gone = executor.unavailable()
                if gone is not None:
                    return None, gone
            self._changed.wait(_WAKE_S)
        return None, None

    def _run_claimed(self, executor: JobExecutor, job: Job) -> None:
        try:
            self._run(job)
        finally:
            executor.release(job)
            with self._changed:
                self._dispatched.discard(threading.current_thread())
            self._ended(job)

    def _ended(self, job: Job) -> None:
        with self._changed:
            self._running.remove(job)
            if job.worker == LOCAL_WORKER:
                self._local_done += 1
                if job.state is JobState.FAILED and not job.user_error:
                    self._local_error = job.error
            self._prune()
            self._changed.notify_all()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Interrupt the running job, drop waiting ones, and end the worker. With a store, both
        stay written down as they were, and the next start runs them again."""
        with self._changed:
            self._stopping = True
            waiting = self._waiting.drain()
            running = list(self._running)
            dispatched = list(self._dispatched)
            self._changed.notify_all()
        for job in waiting:
            job.finish(JobState.INTERRUPTED, error="the server is shutting down")
        for job in running:
            job.control.interrupt()
        if self._worker is not None:
            self._worker.join(timeout)
        for thread in dispatched:
            thread.join(timeout)

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
        file = self.studio.preflight(request, checkpoint, vae, guard=ScriptBudget(self.limits))
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
        # Written down outside the lock: an init image takes a while to encode (0.17 s at 512 px).
        kept = self.store is not None and self.store.add(job)
        try:
            with self._changed:
                if self._stopping:
                    raise QueueFull("the server is shutting down")
                mine = self._waiting.count(caller.name)
                if mine >= self.limits.max_queued_per_user:
                    raise QueueFull(
                        f"you already have {mine} jobs waiting, the most this server allows "
                        f"(--max-queued); wait for some to finish"
                    )
                self._prune()
                self._jobs[job.id] = job
                self._waiting.push(job)
                self._changed.notify_all()
        except QueueFull:
            if kept and self.store is not None:
                self.store.forget([job.id])
            raise

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
        """1-based place among waiting jobs, in the round-robin order they will run in."""
        with self._changed:
            return self._waiting.position(job)

    def counts(self) -> tuple[int, int]:
        """(running, waiting) across all users."""
        with self._changed:
            return len(self._running), len(self._waiting)

    def current(self, caller: Caller) -> Job | None:
        """The caller's running job, else their next waiting one, else None (A1111's `progress`)."""
        with self._changed:
            mine = [job for job in self._running if job.owner == caller.name]
            return mine[0] if mine else self._waiting.first_of(caller.name)

    def workers(self) -> list[WorkerReport]:
        """The workers that run jobs: the executor's, or this process as the one worker."""
        if self.executor is not None:
            return self.executor.workers()
        with self._changed:
            running = next(iter(self._running), None)
            done, error = self._local_done, self._local_error
        held = tuple(
            HeldCheckpoint(placement.name, placement.tier.value)
            for placement in self.studio.models.placements()
            if placement.tier.value != "disk"
        )
        return [
            WorkerReport(
                LOCAL_WORKER,
                str(self.studio.device),
                os.getpid(),
                socket.gethostname(),
                BUSY if running else IDLE,
                held,
                done,
                error,
                running.id if running else None,
            )
        ]

    # -- stopping jobs -------------------------------------------------------------------------
    def interrupt(self, job: Job) -> bool:
        """Stop a job: a waiting one never runs; a running one keeps the images finished so far."""
        with self._changed:
            waiting = self._waiting.remove(job)
        if waiting:
            job.finish(JobState.INTERRUPTED)
            self._record_end(job)
            return True
        if job.state is JobState.RUNNING:
            with self._changed:
                self._cancelled.add(job.id)
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
            self._record_end(job)
            return
        if self.executor is not None and isinstance(job.request, TrainingRequest):
            job.worker = LOCAL_WORKER  # training runs in this process (docs/cluster.md)
        job.mark_running()
        if self.store is not None:
            self.store.started(job)
        try:
            if isinstance(job.request, TrainingRequest):
                self._train(job, job.request)
            else:
                self._generate(job, job.request)
        finally:
            self._record_end(job)

    def _generate(self, job: Job, request: GenerationRequest) -> None:
        earlier = self._resume_point(job, request)
        skipped = 0  # batches made before a restart: progress counts on from them
        if earlier is not None:
            request, skipped = _remaining(request, earlier), len(earlier) // request.batch_size
        on_images = None
        if self.store is not None and not request.script_name:
            store = self.store

            def on_images(batch: StudioResult) -> None:
                store.add_images(job, batch.images, batch.paths, batch.infotexts, batch.seeds)

        def on_step(info: StepInfo) -> None:
            self._on_step(job, replace(info, batch_index=info.batch_index + skipped) if skipped else info)

        try:
            if self.executor is not None:
                result = self.executor.generate(job, request, on_step, on_images, self.limits)
            else:
                result = self.studio.generate(
                    request,
                    on_step=on_step,
                    control=job.control,
                    checkpoint=job.checkpoint,
                    vae=job.vae,
                    save=job.save,
                    guard=ScriptBudget(self.limits),
                    on_images=on_images,
                )
        except (GenerationError, CheckpointError) as error:
            _fail_by_request(job, error)
        except Exception as error:  # the worker must outlive any one job
            log.exception("job %s failed", job.id)
            job.finish(JobState.FAILED, error=f"{type(error).__name__}: {error}")
        else:
            if self.store is not None and request.script_name:
                self.store.add_images(job, result.images, result.paths, result.infotexts, result.seeds)
            if earlier:
                result = _joined(earlier, result, job.save)
            job.finish(JobState.INTERRUPTED if result.interrupted else JobState.DONE, result=result)

    def _resume_point(self, job: Job, request: GenerationRequest) -> list[StoredImage] | None:
        """The images of whole batches a job made before a restart cut it short, when the rest
        can be made with the same seeds; else None (and the job starts over)."""
        with self._changed:
            earlier = self._resumable.pop(job.id, None)
        if not earlier:
            return None
        batches_done, partial = divmod(len(earlier), request.batch_size)
        unknown_subseeds = request.subseed_strength > 0 and request.subseed == -1
        if request.script_name or partial or batches_done >= request.n_iter or unknown_subseeds:
            if self.store is not None:
                self.store.clear_images(job)
            return None
        return earlier

    def _record_end(self, job: Job) -> None:
        """Write down how a job ended, unless the shutdown stopped it: then it runs again later."""
        with self._changed:
            cancelled = job.id in self._cancelled
            self._cancelled.discard(job.id)
            by_shutdown = self._stopping and not cancelled and job.state is JobState.INTERRUPTED
        if self.store is None or not job.state.finished or by_shutdown:
            return
        result = job.result
        warnings = result.warnings if isinstance(result, StudioResult) else []
        self.store.finished(job, warnings)

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
        forgotten = []
        for index, job in enumerate(finished):  # oldest first: dicts keep submission order
            if index < excess or (job.finished or 0) < cutoff:
                del self._jobs[job.id]
                forgotten.append(job.id)
        if forgotten and self.store is not None:
            self.store.forget(forgotten)

    # -- after a restart ---------------------------------------------------------------------------
    def _restore(self, store: JobStore) -> None:
        """Take up the jobs a previous run of the server left in `store`.

        Finished jobs are listed again with their images until their retention time is over.
        Waiting jobs wait again, in their old order; a generation that was running runs again
        first, from its first unfinished batch when the seeds allow, else from the start. A
        training job that was running is not re-run: it ends as interrupted, and training it
        again resumes from its last checkpoint (as after an interrupt).
        """
        for folder in (self.studio.settings.outputs_dir, store.spool):
            for temp in remove_partial_writes(folder):
                log.info("removed %s, left by a write the previous run did not finish", temp)
        running: list[Job] = []
        for stored in store.load():
            job = stored.job
            self._jobs[job.id] = job
            if stored.state.finished:
                _finish_restored(job, stored)
            elif stored.state is JobState.RUNNING and isinstance(job.request, TrainingRequest):
                job.finish(JobState.INTERRUPTED, error=RESTART_STOPPED_TRAINING)
                store.finished(job)
            elif stored.state is JobState.RUNNING:
                self._resumable[job.id] = stored.images
                running.append(job)
            else:
                self._waiting.push(job)
        for job in reversed(running):
            self._waiting.push_front(job)
        with self._changed:
            self._prune()
        if self._jobs:
            log.info(
                "took up %d kept job(s): %d to run, %d finished",
                len(self._jobs),
                len(self._waiting),
                len(self._jobs) - len(self._waiting),
            )


RESTART_STOPPED_TRAINING = (
    "interrupted by a restart of the server; its last checkpoint is kept, train again to resume"
)


def _finish_restored(job: Job, stored: StoredJob) -> None:
    result = None
    if not isinstance(job.request, TrainingRequest):
        images = [image for image in stored.images if image.file.is_file()]
        result = StudioResult(
            FileImages([image.file for image in images]),  # type: ignore[arg-type]
            [image.file for image in images if image.saved],
            [image.infotext for image in images],
            [image.seed for image in images],
            stored.state is JobState.INTERRUPTED,
            stored.warnings,
        )
    job.finish(
        stored.state,
        result=result,
        error=stored.error,
        error_field=stored.error_field,
        user_error=stored.user_error,
    )
    job.started, job.finished = stored.started, stored.finished


def _remaining(request: GenerationRequest, earlier: list[StoredImage]) -> GenerationRequest:
    """The batches still to make after `earlier` images: image i keeps seed + i."""
    done = len(earlier)
    subseed = request.subseed if request.subseed == -1 else (request.subseed + done) % 2**32
    return replace(
        request,
        seed=(earlier[0].seed + done) % 2**32,
        subseed=subseed,
        n_iter=request.n_iter - done // request.batch_size,
    )


def _joined(earlier: list[StoredImage], later: StudioResult, saved: bool) -> StudioResult:
    files = [image.file for image in earlier]
    return StudioResult(
        [*FileImages(files), *later.images],
        [*(files if saved else []), *later.paths],
        [*(image.infotext for image in earlier), *later.infotexts],
        [*(image.seed for image in earlier), *later.seeds],
        later.interrupted,
        later.warnings,
    )


def _fail_by_request(job: Job, error: Exception) -> None:
    """The request was at fault (a 4xx for the API): say why, and which field when known."""
    job.finish(JobState.FAILED, error=str(error), error_field=getattr(error, "field", None), user_error=True)


def _may_see(caller: Caller, job: Job) -> bool:
    return caller.admin or job.owner == caller.name
