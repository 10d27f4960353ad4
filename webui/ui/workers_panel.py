"""The workers that run jobs, as the Models tab lists them (read from the queue's service)."""

from __future__ import annotations

import gradio as gr

from webui.jobs import JobQueue
from webui.jobs.workers import WorkerReport

WORKER_HEADERS = ["Worker", "Device", "Host", "PID", "State", "Holds", "Jobs done", "Last error"]


def worker_rows(jobs: JobQueue) -> list[list[str]]:
    return [_row(worker) for worker in jobs.workers()]


def _row(worker: WorkerReport) -> list[str]:
    held = ", ".join(f"{held.name} ({held.tier})" for held in worker.checkpoints) or "nothing"
    return [
        worker.id,
        worker.device,
        worker.host,
        "" if worker.pid is None else str(worker.pid),
        worker.state,  # not the job: the page shows everyone the workers, and a job is its owner's
        held,
        str(worker.jobs_done),
        worker.last_error or "",
    ]


def build_workers_table(jobs: JobQueue) -> gr.Dataframe:
    return gr.Dataframe(
        value=worker_rows(jobs),
        headers=WORKER_HEADERS,
        interactive=False,
        wrap=True,
        elem_id="models-workers",
        label="Workers (each runs one job at a time on its device, with its own models in memory)",
    )
