"""Resume files: a run's weights, optimizer and step, written so a crash never leaves half a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_state(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    torch.save(state, partial)
    os.replace(partial, path)


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none. Only tensors and plain values are unpickled."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one step: a resumed run draws exactly what an unbroken one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)
