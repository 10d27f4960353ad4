"""`/v1`: OpenAI's images API (generations, edits) and model list, over the same queue and login.

An app that takes an OpenAI base URL works with `base_url=<server>/v1` and an API token of this
server as its key. `model` names a checkpoint; OpenAI's own model names (dall-e-*, gpt-image-*)
mean the selected one, so apps that hard-code them still work. Beyond OpenAI's fields, a body may
carry negative_prompt, steps, cfg_scale, seed, sampler and denoising_strength (the client's
`extra_body`). Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image, ImageOps
from pydantic import Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from webui.api import agent_jobs
from webui.api.auth import caller_of
from webui.api.context import ApiContext, wait_until_finished
from webui.api.errors import ApiError
from webui.api.images import decode_image, encode_base64, flatten_alpha, image_to_png
from webui.api.schemas import CleanBody, Img2ImgBody, Txt2ImgBody
from webui.jobs import Caller

DEFAULT_STEPS = 20
# Names apps send because they were written for OpenAI: they mean "the selected checkpoint".
_OPENAI_MODEL_PREFIXES = ("dall-e", "gpt-image", "chatgpt-image")
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


class ImageRequest(CleanBody):
    """OpenAI's fields (others it defines, such as quality or style, are accepted and ignored)."""

    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["url", "b64_json"] = "b64_json"
    model: str | None = None
    # Ours, for clients that can send extra fields.
    negative_prompt: str = ""
    steps: int = Field(DEFAULT_STEPS, ge=1)
    cfg_scale: float = 7.0
    seed: int = -1
    sampler: str | None = None
    denoising_strength: float | None = Field(None, ge=0, le=1)


def openai_images_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1", include_in_schema=False)

    @router.post("/images/generations")
    async def generations(request: Request) -> JSONResponse:
        async def answer() -> dict[str, Any]:
            body = _parse(await _json_body(request))
            width, height = _size(body.size, (ctx.studio.models.default_size,) * 2)
            a1111 = Txt2ImgBody(**_common(ctx, body, width, height))
            return await _run(ctx, request, body, a1111)

        return await _openai_answer(answer)

    @router.post("/images/edits")
    async def edits(request: Request) -> JSONResponse:
        async def answer() -> dict[str, Any]:
            fields, image, mask = await _edit_form(request)
            body = _parse(fields)
            width, height = _size(body.size, _multiple_of_8(image.size))
            a1111 = Img2ImgBody(
                **_common(ctx, body, width, height),
                init_images=[encode_base64(image_to_png(flatten_alpha(image)))],
                mask=encode_base64(image_to_png(mask)) if mask is not None else None,
                denoising_strength=body.denoising_strength,
            )
            return await _run(ctx, request, body, a1111)

        return await _openai_answer(answer)

    @router.get("/models")
    def models() -> dict[str, Any]:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": file.name, "object": "model", "created": created, "owned_by": "local"}
                for file in ctx.studio.models.checkpoints()
            ],
        }

    async def unrouted(request: Request) -> JSONResponse:
        return _error_response(
            OpenAIError(404, f"no route {request.method} {request.url.path}", None, "not_found")
        )

    router.add_api_route("/{rest:path}", unrouted, methods=_METHODS)
    return router


async def _openai_answer(answer: Any) -> JSONResponse:
    try:
        return JSONResponse(await answer())
    except OpenAIError as error:
        return _error_response(error)
    except ValidationError as error:  # our A1111 body refused a value ImageRequest let through
        first = error.errors()[0] if error.errors() else {}
        return _error_response(OpenAIError(400, f"invalid request: {first.get('msg', error)}"))
    except ApiError as error:
        status = 400 if error.status == 422 else error.status
        param = {"batch_size": "n", "width": "size", "height": "size"}.get(error.field or "", error.field)
        return _error_response(OpenAIError(status, str(error), param))


def _error_response(error: OpenAIError) -> JSONResponse:
    kind = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(
        error.status, "invalid_request_error" if error.status < 500 else "server_error"
    )
    body = {"error": {"message": str(error), "type": kind, "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: deep nesting
        raise OpenAIError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "the body must be a JSON object")
    return body


def _parse(fields: dict[str, Any]) -> ImageRequest:
    try:
        return ImageRequest.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        raise OpenAIError(400, message, param) from None


def _size(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if text is None or text.strip() in ("", "auto"):
        return default
    width, x, height = text.strip().lower().partition("x")
    if not x or not width.isdigit() or not height.isdigit():
        raise OpenAIError(400, f"size: expected WIDTHxHEIGHT such as 512x512, got {text!r}", "size")
    return int(width), int(height)


def _multiple_of_8(size: tuple[int, int]) -> tuple[int, int]:
    return tuple(max(64, side - side % 8) for side in size)  # type: ignore[return-value]


def _common(ctx: ApiContext, body: ImageRequest, width: int, height: int) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "batch_size": body.n,
        "width": width,
        "height": height,
        "steps": body.steps,
        "cfg_scale": body.cfg_scale,
        "seed": body.seed,
        "sampler_name": body.sampler,
    }
    checkpoint = _checkpoint(ctx, body.model)
    if checkpoint:
        fields["override_settings"] = {"sd_model_checkpoint": checkpoint}
    return fields


def _checkpoint(ctx: ApiContext, model: str | None) -> str | None:
    if not model or model.lower().startswith(_OPENAI_MODEL_PREFIXES):
        return None
    names = [file.name for file in ctx.studio.models.checkpoints()]
    if model not in names:
        raise OpenAIError(
            404, f"model: no checkpoint {model!r}; GET /v1/models lists them", "model", "model_not_found"
        )
    return model


async def _run(ctx: ApiContext, request: Request, body: ImageRequest, a1111: Txt2ImgBody) -> dict[str, Any]:
    caller: Caller = caller_of(request.state)
    job = await agent_jobs.submit(ctx, caller, a1111)
    await wait_until_finished(job)
    done = agent_jobs.finished(ctx, job)
    base = str(request.base_url)
    data = []
    for index, png in enumerate(done.pngs):
        item: dict[str, Any] = {"revised_prompt": None}
        if body.response_format == "url":
            item["url"] = agent_jobs.image_url(base, job, index)
        else:
            item["b64_json"] = encode_base64(png)
        # Ours: what reproduces the image.
        item["seed"] = done.seeds[index] if index < len(done.seeds) else None
        item["infotext"] = done.infotexts[index] if index < len(done.infotexts) else None
        data.append(item)
    return {
        "created": int(time.time()),
        "data": data,
        "output_format": "png",
        "size": f"{a1111.width}x{a1111.height}",
        "job_id": job.id,
    }


async def _edit_form(request: Request) -> tuple[dict[str, Any], Image.Image, Image.Image | None]:
    """The edit's text fields, its image, and its mask in A1111's sense (white: change)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise OpenAIError(400, "images/edits takes multipart/form-data with an image file")
    try:
        form = await request.form()
    except (HTTPException, MultiPartException, ValueError) as error:
        raise OpenAIError(400, f"the form cannot be read: {error}") from None
    files = [
        value for key in ("image", "image[]") for value in form.getlist(key) if isinstance(value, UploadFile)
    ]
    if len(files) != 1:
        raise OpenAIError(400, "image: send exactly one image file", "image")
    image = await _read_upload(files[0], "image")
    mask_file = form.get("mask")
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    if isinstance(mask_file, UploadFile):
        mask_image = await _read_upload(mask_file, "mask")
        if mask_image.size != image.size:
            raise OpenAIError(
                400,
                f"mask: {mask_image.size[0]}x{mask_image.size[1]} is not the image's size "
                f"{image.size[0]}x{image.size[1]}",
                "mask",
            )
        mask = _transparent_as_white(mask_image)
        if mask is None:
            raise OpenAIError(400, "mask: has no transparent pixels; those mark what to change", "mask")
        return fields, image, mask
    # OpenAI: without a mask, the image's own transparent pixels are the area to change.
    return fields, image, _transparent_as_white(image)


async def _read_upload(upload: UploadFile, field: str) -> Image.Image:
    data = await upload.read()
    if not data:
        raise OpenAIError(400, f"{field}: the file is empty", field)
    try:
        return decode_image(encode_base64(data), field)
    except ApiError as error:
        raise OpenAIError(400, str(error), field) from None


def _transparent_as_white(image: Image.Image) -> Image.Image | None:
    """OpenAI's mask (fully transparent: change) as A1111's (white: change); None: nothing to change."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] > 0:
        return None
    return ImageOps.invert(alpha.point(lambda value: 255 if value > 0 else 0))
