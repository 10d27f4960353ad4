"""What the queue says about the workers that run its jobs: torch-free, for the API and the page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A worker's states, as the API and the page show them.
STARTING, IDLE, BUSY, DEAD = "starting", "idle", "busy", "dead"
LOCAL_WORKER = "local"  # the name of the one worker when jobs run in the server's own process


@dataclass(frozen=True)
class HeldCheckpoint:
    name: str
    tier: str  # "vram" or "ram" (a CPU worker's "vram" is its compute copy)


@dataclass(frozen=True)
class WorkerReport:
    """One worker: a process that owns one device and its own model cache."""

    id: str
    device: str
    pid: int | None
    host: str
    state: str  # starting, idle, busy or dead
    checkpoints: tuple[HeldCheckpoint, ...] = ()
    jobs_done: int = 0
    last_error: str | None = None
    job: str | None = None  # the id of the job it runs now

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device": self.device,
            "pid": self.pid,
            "host": self.host,
            "state": self.state,
            "checkpoints": [{"name": held.name, "tier": held.tier} for held in self.checkpoints],
            "jobs_done": self.jobs_done,
            "last_error": self.last_error,
            "job": self.job,
        }

    def summary(self) -> str:
        """One line for the page, e.g. "w1 · cuda on box-a · busy · 12 jobs · holds sd15 (vram)"."""
        where = f"{self.device} on {self.host}" if self.host else self.device
        parts = [self.id, where, self.state, f"{self.jobs_done} jobs"]
        if self.checkpoints:
            parts.append("holds " + ", ".join(f"{held.name} ({held.tier})" for held in self.checkpoints))
        if self.last_error:
            parts.append(f"last error: {self.last_error}")
        return " · ".join(parts)
