"""Saved images through the page's file routes (`/gradio_api/file=PATH`) go to their owner only.

Gradio serves any file under the outputs folder to anyone logged in, and saved names are
predictable (`txt2img-images/<day>/<number>-<seed>.png`). With a login, a file there is served
to a user only when one of their jobs made it (or the page saved it for them, e.g. an extras
upscale); admins get every file. Without a login (one user, an admin) nothing changes.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webui.jobs import Caller, JobQueue

_FILE_ROUTE = re.compile(r"^(?:/gradio_api)?/file(?:=|/)(.+)$")
_MAX_RECORDED = 10_000  # files the page saved outside jobs, remembered newest first


class PageFiles:
    """Owners of files the page saved outside any job (extras upscales), newest kept."""

    def __init__(self) -> None:
        self._owners: OrderedDict[Path, str] = OrderedDict()
        self._lock = threading.Lock()  # Gradio handlers run on worker threads

    def record(self, path: Path, caller: Caller) -> None:
        with self._lock:
            self._owners[_real(str(path))] = caller.name
            self._owners.move_to_end(_real(str(path)))
            while len(self._owners) > _MAX_RECORDED:
                self._owners.popitem(last=False)

    def owner(self, path: Path) -> str | None:
        with self._lock:
            return self._owners.get(path)


class OwnedFilesMiddleware:
    """Answers 404 for a file under a protected folder that is not the caller's; must run
    inside LoginMiddleware, which puts the caller on the scope."""

    def __init__(
        self, app: Any, jobs: JobQueue, protected: Callable[[], list[Path]], page_files: PageFiles
    ) -> None:
        self.app = app
        self.jobs = jobs
        self.protected = protected  # read per request: an admin may move the outputs folder
        self.page_files = page_files

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            match = _FILE_ROUTE.match(scope.get("path", ""))
            caller = scope.get("state", {}).get("caller")
            if match and isinstance(caller, Caller) and not self.may_read(caller, match.group(1)):
                await _not_found(send)
                return
        await self.app(scope, receive, send)

    def may_read(self, caller: Caller, asked: str) -> bool:
        if "\0" in asked:
            return False  # names no file (and os.path raises on it)
        if caller.admin:
            return True
        target = _real(asked)
        roots = [_real(str(root)) for root in self.protected()]
        if not any(target.is_relative_to(root) for root in roots):
            return True  # not a saved image: Gradio's own rules apply
        if self.page_files.owner(target) == caller.name:
            return True
        return any(
            _real(str(path)) == target
            for job in self.jobs.jobs(caller)
            for path in getattr(job.result, "paths", ()) or ()
        )


def _real(path: str) -> Path:
    """The file a path names, as Gradio finds it: relative to the working folder, links followed."""
    return Path(os.path.realpath(os.path.abspath(path)))


async def _not_found(send: Any) -> None:
    body = json.dumps({"error": "not found", "detail": "no such file, or it is not yours"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
