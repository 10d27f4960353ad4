"""One ASGI app: the A1111-compatible API, our job API, their docs and the Gradio page, behind one login."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.routing import Match, Mount

from webui import __version__
from webui.api.auth import Credentials, LoginMiddleware, caller_of
from webui.api.context import ApiContext
from webui.api.errors import document_errors, error_body, install_error_handlers
from webui.api.extensions import extensions_router, mount_extension_routes
from webui.api.file_access import OwnedFilesMiddleware, PageFiles
from webui.api.guards import BodySizeMiddleware, BodyTimeoutMiddleware
from webui.api.login_throttle import LoginLimits
from webui.api.openai_images import openai_images_router
from webui.api.options import ServerOptions
from webui.api.queue_guard import QueueSessionMiddleware
from webui.api.sdapi import sdapi_router
from webui.api.token_routes import tokens_router
from webui.api.tokens import TokenStore
from webui.api.v1 import v1_router
from webui.jobs import LOCAL_CALLER, Caller, JobQueue
from webui.live_settings import LiveSettings
from webui.mcp.server import McpEndpoint

if TYPE_CHECKING:
    import uvicorn

    from webui.studio import Studio

log = logging.getLogger(__name__)


def create_app(
    studio: Studio,
    jobs: JobQueue,
    *,
    credentials: Credentials | None = None,
    cmd_flags: dict[str, Any] | None = None,
    with_ui: bool = True,
    live_settings: LiveSettings | None = None,
    login_limits: LoginLimits | None = None,
    tokens: TokenStore | None = None,
) -> FastAPI:
    """The whole server as an ASGI app; `jobs` must be started by the caller.

    Without `live_settings`, changed settings apply but are not saved to a settings file.
    `login_limits`: how fast failed logins are throttled (default: LoginLimits()).
    `tokens`: API tokens taken as Bearer logins (default: with a login, those in the data folder)."""
    if credentials is None:
        tokens = None  # no login: nothing to log in with
    elif tokens is None:
        tokens = TokenStore.in_data_dir(studio.settings.data_dir)
    live = live_settings or LiveSettings(studio, jobs)
    app = FastAPIOffline(
        title="Stable Diffusion studio API",
        version=__version__,
        description=(
            "`/sdapi/v1` speaks AUTOMATIC1111's API for existing clients. `/api/v1` queues jobs, "
            "returns their ids at once and streams progress as server-sent events. When the server "
            "has a login, every route needs HTTP Basic credentials or an API token "
            "(`Authorization: Bearer ...`, made with `/api/v1/tokens`). `/v1` speaks OpenAI's images "
            "API and `/mcp` the Model Context Protocol (see docs/agents.md)."
        ),
        redoc_url=None,
    )
    install_error_handlers(app)
    document_errors(app)
    ctx = ApiContext(studio, jobs, ServerOptions(studio, jobs, live), redact(cmd_flags or {}, credentials))
    app.include_router(sdapi_router(ctx))
    app.include_router(v1_router(ctx))
    app.include_router(extensions_router(studio))
    app.include_router(tokens_router(tokens))
    app.include_router(openai_images_router(ctx))
    mcp = McpEndpoint(ctx)
    app.add_route("/mcp", mcp, methods=_METHODS, include_in_schema=False)
    _run_during_lifespan(app, mcp.running)
    mount_extension_routes(app, studio.extensions)
    _answer_unrouted(app)
    page_files = PageFiles()
    if with_ui:
        _mount_ui(app, live, credentials, page_files, tokens)
    # Added last = outermost: the login runs before anything reads the body or routes the request.
    app.add_middleware(
        OwnedFilesMiddleware,
        jobs=jobs,
        protected=lambda: [studio.settings.outputs_dir],
        page_files=page_files,
    )
    app.add_middleware(BodySizeMiddleware, limit_bytes=lambda: jobs.limits.max_body_bytes)
    app.add_middleware(LoginMiddleware, credentials=credentials, limits=login_limits, tokens=tokens)
    app.add_middleware(BodyTimeoutMiddleware)
    return app


def _run_during_lifespan(app: FastAPI, running: Callable[[], AbstractAsyncContextManager[None]]) -> None:
    """Keep `running()` entered while the server runs (the MCP session manager's task group)."""
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with outer(app_) as state, running():
            yield state

    app.router.lifespan_context = lifespan


_API_PREFIXES = ("/api/", "/sdapi/")
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _answer_unrouted(app: FastAPI) -> None:
    """Under the API prefixes, a path no route serves answers 404 and one served for other
    methods 405 with Allow, both as ErrorBody; else the page, mounted at /, would answer 404."""

    def serves(method: str, scope: dict[str, Any]) -> bool:
        asked = {**scope, "method": method}
        # Not this route, nor a mount: the page's, at /, takes any path and method.
        routes = (
            route
            for route in app.router.routes
            if not isinstance(route, Mount) and getattr(route, "endpoint", None) is not unrouted
        )
        return any(route.matches(asked)[0] is Match.FULL for route in routes)

    async def unrouted(request: Request) -> JSONResponse:
        # Each method is asked of the routes themselves: FastAPI keeps included routers opaque.
        allowed = [method for method in _METHODS if serves(method, request.scope)]
        if not allowed:
            message = f"no route {request.url.path}"
            return JSONResponse(error_body("not found", message), status_code=404)
        methods = ", ".join(allowed)
        message = f"{request.url.path} answers {methods}, not {request.method}"
        return JSONResponse(error_body("method not allowed", message), 405, headers={"Allow": methods})

    for prefix in _API_PREFIXES:
        app.add_api_route(f"{prefix}{{rest:path}}", unrouted, methods=_METHODS, include_in_schema=False)


def _mount_ui(
    app: FastAPI,
    live: LiveSettings,
    credentials: Credentials | None,
    page_files: PageFiles,
    tokens: TokenStore | None = None,
) -> None:
    import gradio as gr

    from webui.ui.app import build_ui, launch_options
    from webui.ui.context import UiContext

    def caller_named(name: str | None) -> Caller:
        if credentials is None or name is None:
            return LOCAL_CALLER
        return Caller(name, admin=name in credentials.admins)

    ui = UiContext(live.studio, live.jobs, live, caller_named, page_files.record, tokens)
    blocks = build_ui(ui).queue()
    extra: dict[str, Any] = {}
    if credentials is not None:
        # Gradio asks this for the user name of each event, so handlers see `request.username`.
        extra["auth_dependency"] = lambda request: caller_of(request.state).name
    gr.mount_gradio_app(app, blocks, path="", **launch_options(live.studio), **extra)
    # Gradio keeps the sessions it streams to in its queue; there is no public accessor.
    app.add_middleware(QueueSessionMiddleware, sessions=lambda: blocks._queue.pending_messages_per_session)


_SECRET_FLAGS = ("auth",)


def redact(flags: dict[str, Any], credentials: Credentials | None) -> dict[str, Any]:
    """Flags as `cmd-flags` shows them: no password, under any key."""
    secrets = credentials.secrets() if credentials else []
    clean: dict[str, Any] = {}
    for key, value in flags.items():
        hidden = (key in _SECRET_FLAGS and value) or (
            isinstance(value, str) and any(secret in value for secret in secrets)
        )
        clean[key] = "<hidden>" if hidden else str(value) if isinstance(value, Path) else value
    return clean


@dataclass(frozen=True)
class Tls:
    keyfile: Path
    certfile: Path


class QuietShutdownFilter(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" for streams it cancels at shutdown.

    An open page holds event streams; when the graceful shutdown's time is up, uvicorn cancels
    them and logs each cancellation as a long traceback, though nothing went wrong.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, asyncio.CancelledError):
            return False
        if "timeout graceful shutdown exceeded" in record.getMessage():  # an ERROR for a plain stop
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "closed the connections of pages still open", ()
        return True


def uvicorn_config(
    app: FastAPI, host: str, port: int, tls: Tls | None = None, shutdown_grace_s: int = 5
) -> uvicorn.Config:
    import uvicorn

    errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(known, QuietShutdownFilter) for known in errors.filters):
        errors.addFilter(QuietShutdownFilter())

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        ssl_keyfile=str(tls.keyfile) if tls else None,
        ssl_certfile=str(tls.certfile) if tls else None,
        timeout_graceful_shutdown=shutdown_grace_s,
        # The login throttle counts failures per client address; trusting X-Forwarded-For (which
        # uvicorn does for loopback peers by default) would let a local client choose its address.
        proxy_headers=False,
    )


class BackgroundServer:
    """Serve an app from a thread (tests, notebooks); `with BackgroundServer(...) as url:`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, tls: Tls | None = None) -> None:
        import uvicorn

        # Open event streams (Gradio's queue, job events) would hold a graceful shutdown open.
        self._server = uvicorn.Server(uvicorn_config(app, host, port, tls, shutdown_grace_s=1))
        self._thread = threading.Thread(target=self._server.run, name="http-server", daemon=True)
        self._scheme = "https" if tls else "http"
        self._host = host

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"{self._scheme}://{self._host}:{port}"

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
