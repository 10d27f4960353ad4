"""One JSON error shape for both APIs: `{"error", "detail", "field"?, "limit"?}` with a 4xx/5xx status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from webui.api.fields import a1111_field
from webui.engine.request import GenerationError
from webui.jobs import JobNotFound, QueueFull
from webui.jobs.limits import LimitError
from webui.model_manager.state_dict import CheckpointError
from webui.training.progress import TrainingError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def error_body(error: str, detail: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error, "detail": detail}
    if field:
        body["field"] = field
    body.update(extra)
    return body


def generation_error_response(error: Exception) -> JSONResponse:
    """A request the engine or the model manager refused: 422, naming the body field when known."""
    field = a1111_field(getattr(error, "field", None))
    extra = {"limit": error.limit} if isinstance(error, LimitError) else {}
    kind = "over a limit" if isinstance(error, LimitError) else "invalid request"
    return JSONResponse(error_body(kind, str(error), field, **extra), status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            where = first.get("ctx", {}).get("error") or "malformed JSON"
            return JSONResponse(error_body("bad request", f"the body is not valid JSON: {where}"), 400)
        field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        message = first.get("msg", "invalid request")
        detail = f"{field}: {message}" if field else message
        return JSONResponse(
            error_body("invalid request", detail, field, errors=_plain(errors)), status_code=422
        )

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(_reason(exc.status), str(exc), exc.field), status_code=exc.status)

    @app.exception_handler(GenerationError)
    async def generation_error(_request: Request, exc: GenerationError) -> JSONResponse:
        return generation_error_response(exc)

    @app.exception_handler(CheckpointError)
    async def checkpoint_error(_request: Request, exc: CheckpointError) -> JSONResponse:
        return generation_error_response(exc)

    @app.exception_handler(TrainingError)
    async def training_error(_request: Request, exc: TrainingError) -> JSONResponse:
        return generation_error_response(exc)

    @app.exception_handler(JobNotFound)
    async def job_not_found(_request: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse(error_body("not found", str(exc)), status_code=404)

    @app.exception_handler(QueueFull)
    async def queue_full(_request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(error_body("too many jobs", str(exc)), status_code=429)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(_reason(exc.status_code), str(exc.detail)), exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body("server error", f"{type(exc).__name__}: {exc}"), status_code=500)


def _reason(status: int) -> str:
    return {
        400: "bad request",
        403: "forbidden",
        404: "not found",
        409: "conflict",
        413: "request too large",
        422: "invalid request",
    }.get(status, "error")


def _plain(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's error list without the raw input (it may hold megabytes of base64)."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
