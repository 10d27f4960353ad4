"""Change settings while the app runs (the Settings tab, the API's options): apply, then save."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from webui.settings import EDITABLE_FIELDS, Settings

if TYPE_CHECKING:
    from webui.jobs import JobQueue
    from webui.settings_file import SettingsFile
    from webui.studio import Studio


class LiveSettings:
    """The one place that changes editable settings: the studio, the job queue's limits and the
    settings file stay in step. `pinned` names fields a command-line flag set for this run."""

    def __init__(
        self,
        studio: Studio,
        jobs: JobQueue,
        file: SettingsFile | None = None,
        pinned: frozenset[str] = frozenset(),
    ) -> None:
        self.studio = studio
        self.jobs = jobs
        self.file = file
        self.pinned = pinned
        self._lock = threading.Lock()

    @property
    def current(self) -> Settings:
        return replace(self.studio.settings, limits=self.jobs.limits)

    def update(self, **changes: object) -> Settings:
        """Apply every change or none: ValueError (naming the problem) leaves everything as it was."""
        unknown = set(changes) - set(EDITABLE_FIELDS)
        if unknown:
            raise ValueError(f"not a setting that can change while running: {', '.join(sorted(unknown))}")
        with self._lock:
            new = replace(self.current, **changes)  # type: ignore[arg-type]  # validates
            self.studio.apply_settings(new)
            self.jobs.limits = new.limits
            if self.file is not None:
                self.file.save(new)
            return new
