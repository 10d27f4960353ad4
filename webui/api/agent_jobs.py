"""Jobs for the agent-facing APIs (MCP, OpenAI images): the same submit and wait as `/sdapi/v1`.

Each call is queued as its caller, so per-user limits, queue caps and job ownership apply as for
any other client. Refusals come back as one `ApiError`, which each API words in its own shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi.concurrency import run_in_threadpool
from PIL import Image

from webui.api.context import ApiContext, raise_if_failed
from webui.api.convert import img2img_request, txt2img_request
from webui.api.errors import ApiError
from webui.api.fields import a1111_field
from webui.api.images import decode_image, encode_base64
from webui.api.schemas import Img2ImgBody, Txt2ImgBody
from webui.engine.request import GenerationError
from webui.jobs import Caller, Job, JobNotFound, QueueFull
from webui.model_manager.state_dict import CheckpointError

# The URL of an image a job of this server made (v1.py's image route), absolute or not.
_IMAGE_PATH = re.compile(r"^/api/v1/jobs/(?P<job>[^/]+)/images/(?P<index>\d+)$")


@dataclass(frozen=True)
class Finished:
    job: Job
    pngs: list[bytes]  # as saved, infotext inside
    infotexts: list[str]
    seeds: list[int]


def as_api_error(error: Exception) -> ApiError:
    """Any refusal of a request as an ApiError with the status the HTTP APIs give it."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, (GenerationError, CheckpointError)):
        return ApiError(422, str(error), a1111_field(getattr(error, "field", None)))
    if isinstance(error, QueueFull):
        return ApiError(429, str(error))
    if isinstance(error, JobNotFound):
        return ApiError(404, str(error))
    raise error


def _submit(ctx: ApiContext, caller: Caller, body: Txt2ImgBody) -> Job:
    build = img2img_request if isinstance(body, Img2ImgBody) else txt2img_request
    generation, choices = build(body, ctx.options.clip_skip)
    return ctx.jobs.submit(
        generation, caller, checkpoint=choices.checkpoint, vae=choices.vae, save=choices.save
    )


async def submit(ctx: ApiContext, caller: Caller, body: Txt2ImgBody) -> Job:
    """Queue a txt2img (or, for an Img2ImgBody, img2img) job as `caller`; ApiError if refused."""
    try:
        return await run_in_threadpool(_submit, ctx, caller, body)
    except (ApiError, GenerationError, CheckpointError, QueueFull) as error:
        raise as_api_error(error) from error


def finished(ctx: ApiContext, job: Job) -> Finished:
    """A finished job's images; ApiError (422 or 500) when it failed."""
    raise_if_failed(job)
    result = job.result
    count = len(result.images) if result else 0
    pngs = [ctx.image_png(job, index) for index in range(count)]
    status = ctx.jobs.status(job)
    return Finished(job, pngs, list(status.infotexts)[:count], list(status.seeds)[:count])


def image_url(base_url: str, job: Job, index: int) -> str:
    return f"{base_url.rstrip('/')}/api/v1/jobs/{job.id}/images/{index}"


def read_image(ctx: ApiContext, caller: Caller, value: str, field: str) -> Image.Image:
    """An image given as base64 (a data URL too), or as the URL of an image this server made
    for `caller` (`.../api/v1/jobs/ID/images/N`, with or without scheme and host)."""
    text = value.strip()
    if text.startswith(("http://", "https://", "/")):
        match = _IMAGE_PATH.match(urlsplit(text).path)
        if match is None:
            raise ApiError(
                422,
                f"{field}: a URL must be one this server gave for an image (/api/v1/jobs/ID/images/N)",
                field,
            )
        try:
            job = ctx.jobs.get(match["job"], caller)
        except JobNotFound:
            raise ApiError(422, f"{field}: no job {match['job']} of yours has that image", field) from None
        png = ctx.image_png(job, int(match["index"]))
        return decode_image(encode_base64(png), field)
    return decode_image(text, field)
