"""What every tab gets: the services it drives, injected rather than imported as globals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from webui.jobs import Caller, JobQueue

if TYPE_CHECKING:
    import gradio as gr

    from webui.api.tokens import TokenStore
    from webui.live_settings import LiveSettings
    from webui.studio import Studio


@dataclass(frozen=True)
class UiContext:
    studio: Studio
    jobs: JobQueue
    live: LiveSettings
    caller_named: Callable[[str | None], Caller]  # the logged-in user name (None: no login) -> job owner
    # Tells the server who owns a file the page saved outside any job, so the file routes serve
    # it to them (webui/api/file_access.py); jobs' own files are known from the queue.
    record_file: Callable[[Path, Caller], None] = lambda _path, _caller: None
    tokens: TokenStore | None = None  # the users' API tokens; None: no login, no Account tab

    def caller(self, request: gr.Request) -> Caller:
        return self.caller_named(getattr(request, "username", None))


# Event options for the page's own handlers: kept out of Gradio's API listing (ours is /docs).
PRIVATE: Mapping[str, Any] = MappingProxyType({"api_visibility": "private"})
# ... and answered at once, outside Gradio's queue: instant UI-only updates (show/hide, swap).
PRIVATE_UNQUEUED: Mapping[str, Any] = MappingProxyType({"api_visibility": "private", "queue": False})
