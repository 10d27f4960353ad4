"""Runs the queue's jobs on the pool's workers: one claimed worker per job, its progress polled
into the job, stop and skip passed on, and a job whose worker died run once more elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from webui.cluster.actor import Outcome
from webui.cluster.copies import save_missing_here
from webui.cluster.pool import WorkerPool, first_line
from webui.cluster.progress import RemoteProgress, as_step
from webui.engine.request import GenerationRequest
from webui.engine.steps import StepInfo
from webui.jobs.job import Job
from webui.jobs.limits import Limits
from webui.jobs.workers import WorkerReport
from webui.results import StudioResult

if TYPE_CHECKING:
    from webui.studio import Studio

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a running job's progress is asked for
PROGRESS_TIMEOUT_S = 5.0
RERUN_WAIT_S = 600.0  # how long a job whose worker died waits for another one


class WorkerLost(RuntimeError):
    """The worker running a job died (its process ended, its device failed, its machine left)."""


class ClusterExecutor:
    """A JobExecutor (webui.jobs.executor) over a WorkerPool. `studio` is the server's own: it gives
    each job the settings and VAE choice of the moment, as the in-process worker would see them."""

    def __init__(self, pool: WorkerPool, studio: Studio, *, rerun_wait_s: float = RERUN_WAIT_S) -> None:
        self.pool = pool
        self.studio = studio
        self.rerun_wait_s = rerun_wait_s

    def claim(self, job: Job) -> bool:
        return self.pool.claim(job)

    def release(self, job: Job) -> None:
        self.pool.release(job)

    def workers(self) -> list[WorkerReport]:
        return self.pool.reports()

    def unavailable(self) -> str | None:
        return self.pool.gone()

    def close(self) -> None:
        """Stop the workers and leave Ray (a Ray instance this server started stops with it)."""
        self.pool.close()
        ray.shutdown()

    def generate(
        self,
        job: Job,
        request: GenerationRequest,
        on_step: Callable[[StepInfo], None],
        on_images: Callable[[StudioResult], None] | None,
        limits: Limits,
    ) -> StudioResult:
        worker_id = self.pool.assigned(job)
        lost: list[str] = []
        while True:
            if worker_id is None:
                raise WorkerLost(_lost_message(lost, "no worker was left to run it again"))
            job.worker = worker_id
            try:
                outcome = self._run_on(worker_id, job, request, on_step, limits)
            except WorkerLost as error:
                lost.append(f"worker {worker_id} died while running it ({error})")
                self.pool.lost(worker_id, str(error))
                if len(lost) > 1:  # run once more, never twice: the fault may be the job's
                    raise WorkerLost(_lost_message(lost, "it is not run a third time")) from error
                if job.control.interrupted:
                    raise WorkerLost(_lost_message(lost, "it was stopped, so it is not run again")) from error
                log.warning("job %s: %s; running it again on another worker", job.id, lost[-1])
                job.restart_progress()
                worker_id = self.pool.claim_again(job, self.rerun_wait_s)
                continue
            self.pool.finished(worker_id, outcome.report)
            save_missing_here(outcome.result, self.studio.outputs.saver, request.mode)  # a worker elsewhere
            # Images reach the store once the job is done: a re-run elsewhere starts from nothing.
            if on_images is not None and not request.script_name and outcome.result.images:
                on_images(outcome.result)
            return outcome.result

    def _run_on(
        self,
        worker_id: str,
        job: Job,
        request: GenerationRequest,
        on_step: Callable[[StepInfo], None],
        limits: Limits,
    ) -> Outcome:
        actor = self.pool.handle(worker_id)
        if actor is None:
            raise WorkerLost("it was gone before the job reached it")
        vae = job.vae or self.studio.models.vae_choice
        running = actor.generate.remote(
            job.id, request, job.checkpoint, vae, job.save, self.studio.settings, limits
        )
        seen: tuple[int, int, int] = (0, 0, 0)  # (batch, step, preview) last passed to the job
        stopped = False
        while True:
            finished, _ = ray.wait([running], timeout=POLL_S)
            if job.control.interrupted and not stopped:
                actor.interrupt.remote(job.id)
                stopped = True
            if job.control.take_skip():
                actor.skip.remote(job.id)
            if finished:
                break
            progress = self._progress(actor, job, seen[2])
            if progress is not None and progress.step > 0:
                now = (progress.batch_index, progress.step, progress.preview_step)
                if now != seen:
                    seen = now
                    on_step(as_step(progress))
        try:
            return ray.get(running)
        except RayActorError as error:
            raise WorkerLost(first_line(error)) from error
        except RayTaskError as error:
            cause = error.cause
            raise (cause if isinstance(cause, Exception) else error) from None

    @staticmethod
    def _progress(actor: object, job: Job, seen_preview: int) -> RemoteProgress | None:
        try:
            return ray.get(actor.progress.remote(job.id, seen_preview), timeout=PROGRESS_TIMEOUT_S)  # type: ignore[attr-defined]
        except GetTimeoutError:
            return None
        except RayActorError as error:
            raise WorkerLost(first_line(error)) from error


def _lost_message(lost: list[str], then: str) -> str:
    return "; ".join(lost) + f"; {then}"
