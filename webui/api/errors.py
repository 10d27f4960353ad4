"""One JSON error shape for both APIs: `{"error", "detail", "field"?, "limit"?, "errors"?}` with a
4xx/5xx status, and the OpenAPI document saying so (FastAPI's default 422 schema is not ours)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from webui.api.fields import a1111_field
from webui.engine.request import GenerationError
from webui.jobs import JobNotFound, QueueFull
from webui.jobs.limits import LimitError
from webui.model_manager.state_dict import CheckpointError
from webui.training.progress import TrainingError

log = logging.getLogger(__name__)


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="where: 'body', then the field path")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """What every error answer of both APIs holds (A1111's own 422 has a list in `detail`)."""

    error: str = Field(description="the kind: 'invalid request', 'not found', 'over a limit', ...")
    detail: str = Field(description="what was wrong, in words")
    field: str | None = Field(None, description="the request field at fault (A1111's name), when one is")
    limit: str | None = Field(None, description="the server flag that sets the limit passed (422, 413)")
    errors: list[ValidationIssue] | None = Field(None, description="every problem found in the body (422)")


_WHY: dict[int | str, str] = {
    400: "The body is not valid JSON",
    401: "The server has a login and the request has no valid credentials",
    403: "The caller may not do this (an admin may)",
    404: "No such job, image, route or other item the path names",
    405: "The path exists with another method (see Allow)",
    408: "The request body stopped arriving; the connection is closed",
    413: "The request body is over --max-body-mb",
    422: "A field is missing, of the wrong type or out of range; `field` names it",
    429: "Too many failed logins (see Retry-After), or the caller's queue is full",
    500: "The server failed (not the request's fault)",
    "4XX": "The extension refused the request; `detail` says why",
}


def error_responses(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: these statuses answer an ErrorBody, as JSON whatever the route's
    own media type (FastAPI would document a `model` under the route's, e.g. image/png)."""
    return {
        status: {
            "description": _WHY.get(status) or HTTPStatus(int(status)).phrase,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for status in statuses
    }


def document_errors(app: FastAPI) -> None:
    """Make the app's OpenAPI document tell the errors as they are answered: ErrorBody for 422
    (not FastAPI's list), 400, 408 and 413 on every JSON body, 401 and 429 everywhere (the login)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        document = build()  # cached by FastAPI: the changes below are made once
        if fresh:
            _add_errors(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _add_errors(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(body.pop("$defs", {}))
    schemas["ErrorBody"] = body
    for path in document.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            statuses = [401, 429, *((400, 408, 413) if "requestBody" in operation else ())]
            if "422" in responses:
                statuses.append(422)  # replaces FastAPI's HTTPValidationError
            for status, response in error_responses(*statuses).items():
                responses[str(status)] = response
    if "HTTPValidationError" not in str(document.get("paths")):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)


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
        405: "method not allowed",
        409: "conflict",
        413: "request too large",
        422: "invalid request",
    }.get(status, "error")


def _plain(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's error list without the raw input (it may hold megabytes of base64)."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
