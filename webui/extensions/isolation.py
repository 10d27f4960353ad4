"""Running an extension's code where a hang cannot stop the app: one daemon thread per extension."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class TookTooLong(Exception):
    """The call did not return within its time; it may still be running on the extension's thread."""


class ExtensionThread:
    """Runs calls one at a time on the extension's own daemon thread and waits at most `timeout_s`.

    The caller's thread only waits, so a slow call costs the job its timeout and no more; the
    thread is a daemon so a call that never returns does not keep the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"extension-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (task := self._tasks.get()) is not None:
            task()

    def call(self, function: Callable[[], Any], timeout_s: float) -> Any:
        """`function()`'s value or exception; TookTooLong after `timeout_s`."""
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def task() -> None:
            try:
                outcome["value"] = function()
            except BaseException as error:  # handed to the caller, which decides what it means
                outcome["error"] = error
            finally:
                done.set()

        self._tasks.put(task)
        if not done.wait(timeout_s):
            raise TookTooLong
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def close(self) -> None:
        """Let the thread end after what it is running now (it may be stuck: nobody waits for it)."""
        self._tasks.put(None)
