"""What the routers share: the services, built once in `create_app` and passed in (no globals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from webui.api.errors import ApiError
from webui.api.fields import a1111_field
from webui.api.options import ServerOptions
from webui.jobs import Job, JobQueue, JobState

if TYPE_CHECKING:
    from webui.studio import Studio


@dataclass
class ApiContext:
    studio: Studio
    jobs: JobQueue
    options: ServerOptions
    cmd_flags: dict[str, Any] = field(default_factory=dict)  # secrets already removed

    def image_png(self, job: Job, index: int) -> bytes:
        """Image `index` of a finished job as a PNG file with its infotext, as saved to outputs/."""
        result = job.result
        if result is None or not 0 <= index < len(result.images):
            raise ApiError(404, f"job {job.id} has no image {index}")
        if index < len(result.paths) and result.paths[index].is_file():
            return result.paths[index].read_bytes()
        return self.studio.outputs.encode_png(result.images[index], result.infotexts[index])


async def wait_until_finished(job: Job) -> None:
    """Await a job without holding a thread, so many waiting clients cost nothing."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not finished.done():
            finished.set_result(None)

    job.add_done_callback(lambda _job: loop.call_soon_threadsafe(resolve))
    await finished


def raise_if_failed(job: Job) -> None:
    """A failed job as the HTTP error its cause deserves: the request's fault (422) or ours (500)."""
    if job.state is JobState.FAILED:
        if job.user_error:
            raise ApiError(422, job.error or "the request cannot run", a1111_field(job.error_field))
        raise ApiError(500, f"generation failed: {job.error}")
