"""A ceiling on request bodies (`--max-body-mb`), checked before anything reads them into memory."""

from __future__ import annotations

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
