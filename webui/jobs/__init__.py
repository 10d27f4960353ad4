"""Jobs shared by the UI, the API and the CLI: one queue, one worker per device, owners and progress."""

from webui.jobs.job import LOCAL_CALLER, Caller, Job, JobKind, JobState, JobStatus
from webui.jobs.limits import Limits
from webui.jobs.queue import JobNotFound, JobQueue, QueueFull
from webui.jobs.store import JobStore

__all__ = [
    "LOCAL_CALLER",
    "Caller",
    "Job",
    "JobKind",
    "JobNotFound",
    "JobQueue",
    "JobState",
    "JobStatus",
    "JobStore",
    "Limits",
    "QueueFull",
]
