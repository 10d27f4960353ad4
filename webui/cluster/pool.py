"""The server's side of the workers: Ray actors started, watched, claimed for jobs and replaced.

Each worker runs one job at a time. A worker is claimed for a job with `choose_worker`; one found
dead (by a job's wait or by the health check of idle ones) is listed as dead with its error, and
a replacement starts on the same machine while that machine is still in the cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from webui.cluster.actor import StudioWorker
from webui.cluster.choice import Candidate, choose_worker
from webui.cluster.spec import WorkerSpec
from webui.jobs.job import Job
from webui.jobs.workers import BUSY, DEAD, IDLE, STARTING, WorkerReport
from webui.settings import Settings

log = logging.getLogger(__name__)

HEALTH_PERIOD_S = 2.0
PING_TIMEOUT_S = 10.0
# A worker that keeps dying (a broken driver, a model that crashes it) is not restarted forever.
MAX_RESTARTS = 5


@dataclass
class _Worker:
    spec: WorkerSpec
    report: WorkerReport
    handle: Any = None  # the actor; None while dead
    ready: Any = None  # the ObjectRef of its first report while it starts
    node_id: str | None = None
    job: str | None = None
    restarts: int = 0
    jobs_done: int = 0  # across its incarnations
    lost_error: str | None = None  # why its previous incarnation died


class WorkerPool:
    def __init__(
        self, settings: Settings, specs: list[WorkerSpec], *, health_period_s: float = HEALTH_PERIOD_S
    ):
        if not specs:
            raise ValueError("a cluster needs at least one worker")
        self._settings = settings
        self._actor_class = ray.remote(StudioWorker)
        self._changed = threading.Condition()
        self._workers = {spec.id: self._spawn(spec) for spec in specs}
        self._closed = False
        self._monitor = threading.Thread(
            target=self._watch, args=(health_period_s,), name="cluster-health", daemon=True
        )
        self._monitor.start()

    # -- what the queue and the executor ask ------------------------------------------------------
    def reports(self) -> list[WorkerReport]:
        with self._changed:
            return [self._report_of(worker) for worker in self._workers.values()]

    def gone(self) -> str | None:
        """When every worker is dead and none is starting: their last errors; else None."""
        with self._changed:
            if any(w.report.state != DEAD for w in self._workers.values()):
                return None
            return "; ".join(f"{w.spec.id}: {w.report.last_error}" for w in self._workers.values())

    def claim(self, job: Job) -> bool:
        """Reserve the best free worker for `job` (see choose_worker); False when none is free."""
        with self._changed:
            free = [w for w in self._workers.values() if w.report.state == IDLE and w.job is None]
            chosen = choose_worker(job.checkpoint, [_candidate(w) for w in free])
            if chosen is None:
                return False
            self._workers[chosen.id].job = job.id
            return True

    def claim_again(self, job: Job, timeout_s: float) -> str | None:
        """Wait for another free worker for a job whose worker died; None when no worker is left
        (none alive, none starting) or none came free within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                if self.claim(job):
                    return self.assigned(job)
                if not any(w.report.state != DEAD for w in self._workers.values()):
                    return None
                if job.control.interrupted:  # stopped while it waited: not run again
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 1.0))

    def assigned(self, job: Job) -> str | None:
        with self._changed:
            return next((w.spec.id for w in self._workers.values() if w.job == job.id), None)

    def handle(self, worker_id: str) -> Any:
        with self._changed:
            return self._workers[worker_id].handle

    def finished(self, worker_id: str, report: WorkerReport) -> None:
        """A job ended on the worker: keep what it says it holds now, for the next dispatch."""
        with self._changed:
            worker = self._workers[worker_id]
            worker.jobs_done += 1
            if worker.report.state != DEAD:
                worker.report = replace(report, state=IDLE, job=None)

    def release(self, job: Job) -> None:
        with self._changed:
            for worker in self._workers.values():
                if worker.job == job.id:
                    worker.job = None
            self._changed.notify_all()

    def lost(self, worker_id: str, error: str) -> None:
        """The worker died: list it as dead and start a replacement on its machine if it is still there."""
        with self._changed:
            worker = self._workers[worker_id]
            if worker.handle is None or self._closed:
                return
            log.error("worker %s died: %s", worker_id, error)
            _kill_quietly(worker.handle)
            if worker.report.pid is not None:
                error = f"{error} (process {worker.report.pid} on {worker.report.host})"
            worker.handle, worker.ready, worker.job = None, None, None
            worker.lost_error = error
            worker.report = replace(worker.report, state=DEAD, job=None, last_error=error, checkpoints=())
            self._changed.notify_all()
            if worker.restarts >= MAX_RESTARTS:
                log.error("worker %s died %d times; not starting it again", worker_id, worker.restarts + 1)
                return
            if worker.node_id is not None and not _node_alive(worker.node_id):
                log.error("worker %s: its machine left the cluster; not replaced", worker_id)
                return
            spec = worker.spec
            if worker.node_id is not None:  # the same machine, so the same kind of device
                strategy = NodeAffinitySchedulingStrategy(worker.node_id, soft=False)
                spec = replace(spec, options={**spec.options, "scheduling_strategy": strategy})
            replacement = self._spawn(spec)
            replacement.restarts, replacement.lost_error = worker.restarts + 1, error
            replacement.jobs_done = worker.jobs_done
            self._workers[worker_id] = replacement

    def close(self) -> None:
        with self._changed:
            self._closed = True
            handles = [w.handle for w in self._workers.values() if w.handle is not None]
            self._changed.notify_all()
        for handle in handles:
            ray.kill(handle)
        self._monitor.join(PING_TIMEOUT_S)

    # -- starting and watching --------------------------------------------------------------------
    def _spawn(self, spec: WorkerSpec) -> _Worker:
        actor = self._actor_class.options(max_concurrency=4, **spec.options).remote(
            spec.id, self._settings, spec.device, os.getcwd()
        )
        report = WorkerReport(spec.id, spec.device, None, "", STARTING)
        return _Worker(spec, report, actor, ready=(actor.report.remote(), actor.node_id.remote()))

    def _watch(self, period_s: float) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                workers = list(self._workers.items())
            for worker_id, worker in workers:
                if worker.ready is not None:
                    self._check_started(worker_id, worker)
                elif worker.handle is not None and worker.job is None:
                    self._ping(worker_id, worker)
            with self._changed:
                if self._closed:
                    return
                self._changed.wait(period_s)

    def _check_started(self, worker_id: str, worker: _Worker) -> None:
        report_ref, node_ref = worker.ready
        done, _ = ray.wait([report_ref, node_ref], num_returns=2, timeout=0)
        if len(done) < 2:
            return
        try:
            report, node_id = ray.get([report_ref, node_ref])
        except RayError as error:
            self.lost(worker_id, f"could not start: {first_line(error)}")
            return
        with self._changed:
            if self._workers.get(worker_id) is worker:
                worker.ready, worker.node_id = None, node_id
                worker.report = report
                log.info(
                    "worker %s ready: %s on %s, pid %s", worker_id, report.device, report.host, report.pid
                )
                self._changed.notify_all()

    def _ping(self, worker_id: str, worker: _Worker) -> None:
        try:
            report = ray.get(worker.handle.report.remote(), timeout=PING_TIMEOUT_S)
        except GetTimeoutError:
            return  # busy with a long call; the next round asks again
        except RayActorError as error:
            self.lost(worker_id, f"died while idle: {first_line(error)}")
            return
        with self._changed:
            if self._workers.get(worker_id) is worker and worker.job is None:
                worker.report = report

    @staticmethod
    def _report_of(worker: _Worker) -> WorkerReport:
        """Its last report, with what the pool knows better: its job, its count, why it last died."""
        report = replace(
            worker.report,
            jobs_done=worker.jobs_done,
            last_error=worker.report.last_error or worker.lost_error,
        )
        if worker.job is not None and report.state == IDLE:
            return replace(report, state=BUSY, job=worker.job)
        return report


def _candidate(worker: _Worker) -> Candidate:
    held = worker.report.checkpoints
    return Candidate(
        worker.spec.id,
        vram=frozenset(c.name for c in held if c.tier == "vram"),
        ram=frozenset(c.name for c in held if c.tier == "ram"),
        jobs_done=worker.jobs_done,
    )


def _kill_quietly(handle: Any) -> None:
    with contextlib.suppress(RayError):  # already gone
        ray.kill(handle, no_restart=True)


def _node_alive(node_id: str) -> bool:
    return any(node.get("NodeID") == node_id and node.get("Alive") for node in ray.nodes())


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
