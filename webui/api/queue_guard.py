"""Gradio's event stream (`/gradio_api/queue/data`) for a session it does not know: a clean 404.

Gradio starts the stream before it looks the session up, then raises inside it, which logs a
traceback ("response already started") for every stale or made-up session hash.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container
from typing import Any
from urllib.parse import parse_qs

_PATHS = ("/gradio_api/queue/data", "/queue/data")


class QueueSessionMiddleware:
    def __init__(self, app: Any, sessions: Callable[[], Container[str]]) -> None:
        self.app = app
        self.sessions = sessions  # the session hashes Gradio has messages waiting for

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") in _PATHS:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            session = (query.get("session_hash") or [""])[0]
            if session not in self.sessions():
                await _unknown_session(send)
                return
        await self.app(scope, receive, send)


async def _unknown_session(send: Any) -> None:
    body = json.dumps(
        {"error": "not found", "detail": "no such queue session; reload the page to start a new one"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
