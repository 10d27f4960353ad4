"""Jobs shared by the UI, the API and the CLI: one queue, one worker per device, owners and progress.

The names below load their modules on first use, so that `webui.jobs.caller` and
`webui.jobs.limits` (and settings, which needs limits) import without torch and the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webui.jobs.caller import LOCAL_CALLER, Caller
    from webui.jobs.job import Job, JobKind, JobState, JobStatus
    from webui.jobs.limits import Limits
    from webui.jobs.queue import JobNotFound, JobQueue, QueueFull
    from webui.jobs.store import JobStore

_HOMES = {
    "LOCAL_CALLER": "webui.jobs.caller",
    "Caller": "webui.jobs.caller",
    "Job": "webui.jobs.job",
    "JobKind": "webui.jobs.job",
    "JobState": "webui.jobs.job",
    "JobStatus": "webui.jobs.job",
    "Limits": "webui.jobs.limits",
    "JobNotFound": "webui.jobs.queue",
    "JobQueue": "webui.jobs.queue",
    "QueueFull": "webui.jobs.queue",
    "JobStore": "webui.jobs.store",
}

__all__ = [  # the names of _HOMES, for readers and linters
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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'webui.jobs' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
