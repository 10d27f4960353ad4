"""What every tab gets: the services it drives, injected rather than imported as globals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from webui.jobs import Caller, JobQueue

if TYPE_CHECKING:
    import gradio as gr

    from webui.live_settings import LiveSettings
    from webui.studio import Studio


@dataclass(frozen=True)
class UiContext:
    studio: Studio
    jobs: JobQueue
    live: LiveSettings
    caller_named: Callable[[str | None], Caller]  # the logged-in user name (None: no login) -> job owner

    def caller(self, request: gr.Request) -> Caller:
        return self.caller_named(getattr(request, "username", None))
