"""What runs the queue's jobs when it is not the queue's own thread: workers elsewhere (webui.cluster).

The queue keeps its order (round-robin across users), its limits and its store; an executor only
says whether it can take a job now and runs the ones it took, one per worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from webui.engine.request import GenerationRequest
    from webui.engine.steps import StepInfo
    from webui.jobs.job import Job
    from webui.jobs.limits import Limits
    from webui.jobs.workers import WorkerReport
    from webui.results import StudioResult


class JobExecutor(Protocol):
    def claim(self, job: Job) -> bool:
        """Reserve a free worker for `job` and say True; False when none is free. Never blocks."""
        ...

    def release(self, job: Job) -> None:
        """The job ended (however): its worker may take another."""
        ...

    def generate(
        self,
        job: Job,
        request: GenerationRequest,
        on_step: Callable[[StepInfo], None],
        on_images: Callable[[StudioResult], None] | None,
        limits: Limits,
    ) -> StudioResult:
        """Run a claimed job to its end; raises as Studio.generate does, or with the worker's fault."""
        ...

    def unavailable(self) -> str | None:
        """Why no job can run at all any more (every worker gone for good); None while one can."""
        ...

    def workers(self) -> list[WorkerReport]: ...

    def close(self) -> None: ...
