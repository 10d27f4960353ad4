"""Guards on request bodies: a ceiling on their size (`--max-body-mb`), checked before anything
reads them into memory, and a limit on how long a client may pause while sending one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any


class BodySizeMiddleware:
    """Answers 413 when Content-Length, or the bytes actually streamed, pass the limit."""

    def __init__(self, app: Any, limit_bytes: Callable[[], int]) -> None:
        self.app = app
        self.limit_bytes = limit_bytes  # read per request: an admin may change it while serving

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_bytes()
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, limit)
            return
        seen = 0
        answered = False  # by us, with the 413: what the app sends afterwards is dropped
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raising here would reach FastAPI's body parser, which turns any error into
                    # a generic 400; answer now and tell the app the client went away instead.
                    if not answered and not started:
                        answered = True
                        await _too_large(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if not answered:
                started = started or message["type"] == "http.response.start"
                await send(message)

        await self.app(scope, counting_receive, guarded_send)


def _content_length(scope: dict[str, Any]) -> int | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps(
        {
            "error": "request too large",
            "detail": f"the request body is over this server's limit of {limit} bytes "
            f"({limit / 2**20:.1f} MB, --max-body-mb)",
            "limit": "--max-body-mb",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# A client that stops sending in the middle of a body is dropped after this many seconds of
# silence (slow but steady uploads are fine: the clock restarts with every chunk).
BODY_IDLE_TIMEOUT_S = 5.0


class BodyTimeoutMiddleware:
    """Answers 408 and closes the connection when a request body stalls for `idle_s` seconds.

    uvicorn waits for the rest of a body as long as the client keeps the connection open, each
    stalled upload holding a request (and often a worker thread) with it."""

    def __init__(self, app: Any, idle_s: float = BODY_IDLE_TIMEOUT_S) -> None:
        self.app = app
        self.idle_s = idle_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        timed_out = False
        started = False

        async def timed_receive() -> dict[str, Any]:
            nonlocal body_done, timed_out
            if body_done or timed_out:
                return await receive()  # only the disconnect is left: no clock on it
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except TimeoutError:
                timed_out = True
                if not started:
                    await _request_timeout(send, self.idle_s)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if not timed_out:
                started = started or message["type"] == "http.response.start"
                await send(message)

        await self.app(scope, timed_receive, guarded_send)


async def _request_timeout(send: Any, idle_s: float) -> None:
    body = json.dumps(
        {
            "error": "request timeout",
            "detail": f"the request body stopped arriving for {idle_s:g} s; the connection is closed",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 408,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # uvicorn then closes the socket after the answer
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
