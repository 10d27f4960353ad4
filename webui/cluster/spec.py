"""One worker to start, as the flags decide it: no Ray needed to describe it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerSpec:
    """One worker to start: its name, what it shows as its device, and its Ray actor options
    (the GPUs or CPUs it takes, where it may run)."""

    id: str
    device: str
    options: dict[str, Any] = field(default_factory=dict)
