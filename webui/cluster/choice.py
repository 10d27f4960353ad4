"""Which free worker takes a job: the one holding its checkpoint in VRAM, then in RAM, then the
least loaded. Pure Python, no Ray: the pool and the benchmark both use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A worker as the dispatcher sees it when a job is to be placed."""

    id: str
    vram: frozenset[str] = frozenset()  # checkpoint names on its device
    ram: frozenset[str] = frozenset()  # checkpoint names in its host memory
    running: int = 0  # jobs it runs now
    jobs_done: int = 0


def affinity(checkpoint: str, candidate: Candidate) -> int:
    """0: in VRAM, ready at once; 1: in RAM, a move away; 2: to be read from disk."""
    if checkpoint in candidate.vram:
        return 0
    return 1 if checkpoint in candidate.ram else 2


def choose_worker(checkpoint: str, candidates: Sequence[Candidate]) -> Candidate | None:
    """The best of `candidates` (free workers) for a job on `checkpoint`; None when there is none.

    Ties go to the least loaded (fewest running, then fewest done) and then to the first listed,
    so the choice is the same for the same inputs."""
    if not candidates:
        return None
    return min(candidates, key=lambda c: (affinity(checkpoint, c), c.running, c.jobs_done))
