"""What a training run tells the outside world, and how the outside world stops it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """A training request or dataset that cannot work; the message names the problem."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TrainingStopped(Exception):
    """Raised inside a run when it was asked to stop; the last checkpoint stays."""


@dataclass(frozen=True)
class TrainingStep:
    phase: str  # "vae", "denoiser", "lora", "embedding", ...
    step: int  # 1-based, counted over the whole phase (a resumed run continues the count)
    total: int
    loss: float  # a running mean, less noisy than one batch's
    seconds: float  # since this phase (re)started


@dataclass
class TrainingHooks:
    """Callbacks a run calls; every one is optional, so a script and a job share the trainers."""

    on_step: Callable[[TrainingStep], None] | None = None
    on_sample: Callable[[int, list[Image.Image], list[str]], None] | None = None
    on_checkpoint: Callable[[int, str], None] | None = None
    # Asked before every step; True ends the run (its resume state is saved first).
    should_stop: Callable[[], bool] = field(default=lambda: False)

    def step(self, info: TrainingStep) -> None:
        if self.on_step:
            self.on_step(info)

    def check_stop(self) -> None:
        if self.should_stop():
            raise TrainingStopped("training was interrupted")


class RunningMean:
    """An exponential mean of the loss for reports and the live plot."""

    def __init__(self, weight: float = 0.05) -> None:
        self.weight = weight
        self.value: float | None = None

    def add(self, value: float) -> float:
        self.value = value if self.value is None else (1 - self.weight) * self.value + self.weight * value
        return self.value


def log_every(seconds: float) -> Callable[[TrainingStep], None]:
    """An on_step that logs at most once per `seconds` (and always the last step)."""
    last = [0.0]

    def report(info: TrainingStep) -> None:
        now = time.monotonic()
        if now - last[0] >= seconds or info.step == info.total:
            last[0] = now
            rate = info.step / info.seconds if info.seconds else 0.0
            log.info(
                "%s step %d/%d loss %.4f (%.2f steps/s)", info.phase, info.step, info.total, info.loss, rate
            )

    return report
