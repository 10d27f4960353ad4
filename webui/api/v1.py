"""`/api/v1`: our own API. Submit returns a job id at once; progress streams as server-sent events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from webui.api.auth import caller_of
from webui.api.context import ApiContext
from webui.api.convert import img2img_request, txt2img_request
from webui.api.errors import ApiError, error_responses
from webui.api.fields import a1111_field
from webui.api.images import encode_base64, image_to_png
from webui.api.schemas import Img2ImgBody, Txt2ImgBody
from webui.api.training import TrainBody, training_json
from webui.jobs import Caller, Job, JobNotFound, JobStatus
from webui.training.request import TrainingRequest

_EVENT_POLL_S = 0.1
_KEEPALIVE_S = 15.0


class JobSubmitted(BaseModel):
    id: str
    state: str
    position: int | None
    urls: dict[str, str]


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


def _event_stream_responses() -> dict[int | str, dict[str, Any]]:
    """The events route's answers; its schema is one event, as OpenAPI before 3.2 reads it."""
    event = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"enum": ["progress", "done", "failed", "interrupted"]},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "description": "the job as GET /api/v1/jobs/{job_id} gives it; a progress event's may "
                "add `preview`, a PNG data URL",
            },
        },
    }
    return {200: {"content": {"text/event-stream": {"schema": event}}}, **error_responses(404)}


class PngImage(Response):
    media_type = "image/png"


class V1Txt2Img(Txt2ImgBody):
    """A1111's txt2img body; our API saves to outputs/ unless told not to (A1111's does not)."""

    save_images: bool = True


class V1Img2Img(Img2ImgBody):
    save_images: bool = True


def v1_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["jobs"])

    def submit(request: Request, body: Txt2ImgBody, build: Any) -> JobSubmitted:
        generation, choices = build(body, ctx.options.clip_skip)
        job = ctx.jobs.submit(
            generation,
            caller_of(request.state),
            checkpoint=choices.checkpoint,
            vae=choices.vae,
            save=choices.save,
        )
        status = ctx.jobs.status(job)
        return JobSubmitted(id=job.id, state=status.state.value, position=status.position, urls=_urls(job))

    @router.post("/jobs/txt2img", status_code=202, summary="Queue a txt2img job (A1111 body); returns its id")
    def submit_txt2img(request: Request, body: V1Txt2Img) -> JobSubmitted:
        return submit(request, body, txt2img_request)

    @router.post(
        "/jobs/img2img", status_code=202, summary="Queue an img2img or inpainting job; returns its id"
    )
    def submit_img2img(request: Request, body: V1Img2Img) -> JobSubmitted:
        return submit(request, body, img2img_request)

    @router.post(
        "/train", status_code=202, summary="Queue a training job (LoRA, embedding, fine-tune, scratch)"
    )
    def submit_training(request: Request, body: TrainBody) -> JobSubmitted:
        job = ctx.jobs.submit_training(TrainingRequest(**body.model_dump()), caller_of(request.state))
        status = ctx.jobs.status(job)
        return JobSubmitted(id=job.id, state=status.state.value, position=status.position, urls=_urls(job))

    @router.get("/jobs", summary="The caller's jobs, oldest first (admins: everyone=true for all)")
    def list_jobs(request: Request, everyone: bool = False) -> list[dict[str, Any]]:
        caller = caller_of(request.state)
        return [_describe(ctx, job) for job in ctx.jobs.jobs(caller, everyone)]

    # 404 on each job route: no job with that id that the caller may see (others' jobs look absent).
    @router.get(
        "/jobs/{job_id}", summary="A job's state, progress and results", responses=error_responses(404)
    )
    def get_job(request: Request, job_id: str) -> dict[str, Any]:
        return _describe(ctx, ctx.jobs.get(job_id, caller_of(request.state)))

    @router.get(
        "/jobs/{job_id}/events",
        summary="Server-sent events: progress with previews, then the end",
        response_class=EventStream,
        responses=_event_stream_responses(),
    )
    async def job_events(request: Request, job_id: str, previews: bool = True) -> EventStream:
        job = ctx.jobs.get(job_id, caller_of(request.state))
        return EventStream(
            _events(ctx, job, request, previews),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get(
        "/jobs/{job_id}/images/{index}",
        summary="One finished image as PNG, infotext inside",
        response_class=PngImage,
        responses=error_responses(404),
    )
    def job_image(request: Request, job_id: str, index: int) -> PngImage:
        job = ctx.jobs.get(job_id, caller_of(request.state))
        return PngImage(ctx.image_png(job, index))

    @router.get(
        "/jobs/{job_id}/preview",
        summary="The latest live preview of a running job, as PNG",
        response_class=PngImage,
        responses=error_responses(404),
    )
    def job_preview(request: Request, job_id: str) -> PngImage:
        job = ctx.jobs.get(job_id, caller_of(request.state))
        preview = job.preview()
        if preview is None:
            raise ApiError(404, f"job {job_id} has no preview yet")
        return PngImage(image_to_png(preview[1]))

    @router.post(
        "/jobs/{job_id}/cancel",
        summary="Stop a job; a running one keeps its finished images",
        responses=error_responses(404),
    )
    def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        job = ctx.jobs.get(job_id, caller_of(request.state))
        ctx.jobs.interrupt(job)
        return _describe(ctx, job)

    @router.post(
        "/jobs/{job_id}/skip", summary="End the running batch of a job early", responses=error_responses(404)
    )
    def skip_job(request: Request, job_id: str) -> dict[str, Any]:
        job = ctx.jobs.get(job_id, caller_of(request.state))
        ctx.jobs.skip(job)
        return _describe(ctx, job)

    @router.get("/queue", summary="How busy the server is, and where the caller's jobs wait")
    def queue(request: Request) -> dict[str, Any]:
        caller = caller_of(request.state)
        running, waiting = ctx.jobs.counts()
        mine = [ctx.jobs.status(job) for job in ctx.jobs.jobs(caller) if not job.state.finished]
        return {
            "running": running,
            "waiting": waiting,
            "yours": [{"id": s.id, "state": s.state.value, "position": s.position} for s in mine],
        }

    @router.get(
        "/workers",
        summary="The workers that run jobs: device, host, pid, state, the checkpoints each holds "
        "and where, jobs done and last error (one, `local`, unless the server runs a cluster)",
    )
    def workers(request: Request) -> list[dict[str, Any]]:
        caller = caller_of(request.state)
        listed = []
        for worker in ctx.jobs.workers():
            described = worker.as_json()
            if worker.job is not None and not _may_see(ctx, caller, worker.job):
                described["job"] = None  # another user's job: its id is theirs to know
            listed.append(described)
        return listed

    @router.get("/me", summary="Who the server thinks the caller is")
    def me(request: Request) -> dict[str, Any]:
        caller = caller_of(request.state)
        return {"user": caller.name, "admin": caller.admin}

    @router.get("/memory", summary="RAM, VRAM and where each cached model is, with its last move")
    def memory() -> dict[str, Any]:
        return ctx.studio.models.memory_report()

    @router.get(
        "/models",
        summary="Checkpoints with architecture, hash, size and where they are now; then every model file "
        "of any kind that cannot be used (`usable` false), with the reason in `error`",
    )
    def models() -> list[dict[str, Any]]:
        return _models(ctx)

    return router


def _urls(job: Job) -> dict[str, str]:
    base = f"/api/v1/jobs/{job.id}"
    return {
        "self": base,
        "events": f"{base}/events",
        "preview": f"{base}/preview",
        "cancel": f"{base}/cancel",
    }


def _describe(ctx: ApiContext, job: Job) -> dict[str, Any]:
    status = ctx.jobs.status(job)
    described = _status_json(status)
    described["urls"] = _urls(job)
    count = len(status.seeds)
    if isinstance(job.request, TrainingRequest):
        described["training"] = training_json(job)
        count = len(job.result.images) if job.result is not None else 0  # its sample images
    described["images"] = [f"/api/v1/jobs/{job.id}/images/{i}" for i in range(count)]
    return described


def _may_see(ctx: ApiContext, caller: Caller, job_id: str) -> bool:
    try:
        ctx.jobs.get(job_id, caller)
    except JobNotFound:
        return False
    return True


def _status_json(status: JobStatus) -> dict[str, Any]:
    return {
        "id": status.id,
        "type": status.kind.value,
        "owner": status.owner,
        "state": status.state.value,
        "checkpoint": status.checkpoint,
        "position": status.position,
        "progress": {
            "step": status.step,
            "steps": status.steps,
            "batch": status.batch,
            "batches": status.batches,
            "fraction": round(status.progress, 4),
            "eta_seconds": None if status.eta_seconds is None else round(status.eta_seconds, 2),
        },
        "created": status.created,
        "started": status.started,
        "finished": status.finished,
        "worker": status.worker,
        "error": status.error,
        "error_field": a1111_field(status.error_field),
        "user_error": status.user_error,  # the request was at fault (fix and resend), not the server
        "seeds": list(status.seeds),
        "infotexts": list(status.infotexts),
        "warnings": list(status.warnings),
    }


async def _events(ctx: ApiContext, job: Job, request: Request, previews: bool) -> AsyncIterator[str]:
    """`progress` events as the job moves (with a PNG preview when a new one exists), then one
    `done`, `failed` or `interrupted` event with the final state, and the stream ends."""
    last_sent: tuple[Any, ...] | None = None
    last_preview = 0
    quiet = 0.0
    while True:
        status = ctx.jobs.status(job)
        if status.state.finished:
            yield _event(status.state.value, _describe(ctx, job))
            return
        key = (status.state, status.position, status.step, status.batch)
        if key != last_sent:
            payload = _status_json(status)
            if previews and status.preview_step > last_preview:
                preview = await run_in_threadpool(job.preview)
                if preview is not None:
                    last_preview = preview[0]
                    payload["preview"] = "data:image/png;base64," + encode_base64(image_to_png(preview[1]))
            yield _event("progress", payload)
            last_sent, quiet = key, 0.0
        elif quiet >= _KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet = 0.0
        if await request.is_disconnected():
            return
        await asyncio.sleep(_EVENT_POLL_S)
        quiet += _EVENT_POLL_S


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _models(ctx: ApiContext) -> list[dict[str, Any]]:
    studio = ctx.studio
    where = {p.name: p for p in studio.models.placements()}
    answer = []
    for file in studio.models.checkpoints():
        placement = where.get(file.name)
        digest = studio.models.facts.cached_sha256(file.path)
        answer.append(
            {
                "name": file.name,
                "title": studio.models.registry.title(file),
                "architecture": file.label,
                # null: the file has no EMA weights; else whether they are the ones used
                "ema_weights": studio.models.uses_ema(file) if file.has_ema else None,
                # a model distilled for few steps, with the settings its family needs; else null
                "few_step": file.few_step.as_dict() | {"summary": file.few_step.summary}
                if file.few_step
                else None,
                "hash": digest[:10] if digest else None,
                "size_bytes": file.size_bytes,
                "where": placement.tier.value if placement else "disk",
                "last_event": placement.last_event.describe() if placement and placement.last_event else None,
                "selected": file.name == studio.models.current_checkpoint(),
                "kind": file.kind.value,
                "usable": True,
                "error": None,
            }
        )
    # Refused files are listed too, so a damaged or misplaced file is never silently missing.
    for file in studio.models.registry.unusable():
        answer.append(
            {
                "name": file.name,
                "file": file.filename,
                "kind": file.kind.value,
                "size_bytes": file.size_bytes,
                "usable": False,
                "error": file.error,
            }
        )
    return answer
