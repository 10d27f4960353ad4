"""One generation job: who asked, what it asked for, where it is, and what came of it."""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from PIL import Image

from webui.engine.preview import PreviewCopy
from webui.engine.request import GenerationRequest
from webui.engine.steps import JobControl, StepInfo
from webui.model_manager.detect import Arch
from webui.training.progress import TrainingStep
from webui.training.request import TrainingRequest

log = logging.getLogger(__name__)


class JobKind(str, enum.Enum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    TRAIN = "train"


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.INTERRUPTED)


@dataclass(frozen=True)
class JobStatus:
    """A consistent snapshot of a job for the API and the UI."""

    id: str
    kind: JobKind
    owner: str
    state: JobState
    checkpoint: str
    position: int | None  # 1-based place among waiting jobs; None once it runs
    step: int
    steps: int
    batch: int  # 0-based index of the batch being sampled
    batches: int
    progress: float  # 0..1 over the whole job
    eta_seconds: float | None
    created: float
    started: float | None
    finished: float | None
    error: str | None
    error_field: str | None
    user_error: bool  # the request was at fault (a 4xx), not the server
    seeds: tuple[int, ...]
    infotexts: tuple[str, ...]
    preview_step: int  # grows with each new preview; 0 before the first
    warnings: tuple[str, ...] = ()  # extensions' failures during the job (it still finished)
    loss: float | None = None  # training jobs: the running mean of the loss
    phase: str | None = None  # training jobs: "vae", "denoiser", "lora", "embedding", ...
    worker: str | None = None  # the worker that runs or ran it (see JobQueue.workers)


# Loss points a training job keeps for its plot; older ones are thinned to every other one.
MAX_LOSS_POINTS = 1000


@dataclass(eq=False)
class Job:
    request: GenerationRequest | TrainingRequest
    owner: str
    checkpoint: str  # the registry name of the model, fixed when the job is submitted
    arch: Arch | None = None
    vae: str | None = None  # a VAE choice for this job only; None: the one selected when it runs
    save: bool = True
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.kind = JobKind(self.request.mode)
        self.control = JobControl()
        self.state = JobState.QUEUED
        self.started: float | None = None
        self.finished: float | None = None
        self.error: str | None = None
        self.error_field: str | None = None
        self.user_error = False
        self.result = None  # a StudioResult once the job has run
        self.skipped = False
        self.worker: str | None = None
        self._step = 0
        self._steps = self.request.steps
        self._batch = 0
        self._sampling_began: tuple[float, float] | None = None  # (time, progress) of the first step
        self._latest: PreviewCopy | None = None
        self._preview_step = 0
        self._preview: tuple[int, Image.Image] | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._callbacks: list[Callable[[Job], None]] = []
        self._losses: list[tuple[int, float]] = []
        self._phase: str | None = None

    # -- written by the worker ----------------------------------------------------------------
    def on_step(self, info: StepInfo) -> None:
        with self._lock:
            self._step, self._steps, self._batch = info.step, info.total, info.batch_index
            if info.preview_due:
                self._preview_step += 1
                # A fresh tensor each step; turned into a picture only when someone looks.
                self._latest = info.preview or PreviewCopy(info.preview_latent, pixels=False)
            if self._sampling_began is None:
                self._sampling_began = (time.monotonic(), self._fraction())

    def on_training_step(self, info: TrainingStep) -> None:
        with self._lock:
            if info.phase != self._phase:
                self._phase, self._sampling_began = info.phase, None
            self._step, self._steps = info.step, info.total
            self._losses.append((info.step, info.loss))
            if len(self._losses) > MAX_LOSS_POINTS:
                self._losses = self._losses[::2]
            if self._sampling_began is None:
                self._sampling_began = (time.monotonic(), self._fraction())

    def on_training_sample(self, step: int, images: list[Image.Image]) -> None:
        """Sample images become the job's preview (a strip of them), as steps' previews do."""
        if not images:
            return
        width, height = images[0].size
        strip = Image.new("RGB", (width * len(images), height))
        for index, image in enumerate(images):
            strip.paste(image.convert("RGB"), (index * width, 0))
        with self._lock:
            self._preview_step += 1
            self._preview = (self._preview_step, strip)

    def losses(self) -> list[tuple[int, float]]:
        """(step, loss) points of a training job's current phase so far, for a plot."""
        with self._lock:
            return list(self._losses)

    def mark_running(self) -> None:
        with self._lock:
            self.state, self.started = JobState.RUNNING, time.time()

    def restart_progress(self) -> None:
        """Its worker was lost: progress counts from the start again on the next one."""
        with self._lock:
            self._step, self._batch, self._sampling_began = 0, 0, None

    def finish(
        self,
        state: JobState,
        *,
        result: object = None,
        error: str | None = None,
        error_field: str | None = None,
        user_error: bool = False,
    ) -> None:
        with self._lock:
            if self.state.finished:
                return
            self.state, self.finished, self.result = state, time.time(), result
            self.error, self.error_field, self.user_error = error, error_field, user_error
            self._latest = None  # the preview tensor may live on the GPU; let it go
            callbacks, self._callbacks = self._callbacks, []
        self._done.set()
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("a callback for job %s failed", self.id)

    # -- read by anyone ------------------------------------------------------------------------
    @property
    def timestamp(self) -> str:
        """When the job was submitted, as A1111's `job_timestamp` writes it."""
        return datetime.fromtimestamp(self.created).strftime("%Y%m%d%H%M%S")

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def add_done_callback(self, callback: Callable[[Job], None]) -> None:
        """Call `callback(job)` once the job ends (at once, on this thread, if it has)."""
        with self._lock:
            if not self.state.finished:
                self._callbacks.append(callback)
                return
        callback(self)

    def status(self, position: int | None = None) -> JobStatus:
        with self._lock:
            result = self.result
            return JobStatus(
                id=self.id,
                kind=self.kind,
                owner=self.owner,
                state=self.state,
                checkpoint=self.checkpoint,
                position=position if self.state is JobState.QUEUED else None,
                step=self._step,
                steps=self._steps,
                batch=self._batch,
                batches=self.request.n_iter,
                progress=1.0 if self.state is JobState.DONE else self._fraction(),
                eta_seconds=self._eta(),
                created=self.created,
                started=self.started,
                finished=self.finished,
                error=self.error,
                error_field=self.error_field,
                user_error=self.user_error,
                seeds=tuple(result.seeds) if result else (),
                infotexts=tuple(result.infotexts) if result else (),
                warnings=tuple(result.warnings) if result else (),
                preview_step=self._preview_step,
                loss=self._losses[-1][1] if self._losses else None,
                phase=self._phase,
                worker=self.worker,
            )

    def preview(self) -> tuple[int, Image.Image] | None:
        """(preview_step, image) of the latest preview step: decoded on the worker (TAESD, VAE),
        or else a cheap linear map of the latent, drawn on demand."""
        with self._lock:
            latest, step, cached = self._latest, self._preview_step, self._preview
        if cached is not None and cached[0] == step:
            return cached
        if latest is None:
            return cached
        image = latest.image(self.arch or Arch.SD1)
        with self._lock:
            self._preview = (step, image)
        return step, image

    def _fraction(self) -> float:
        done = self._batch * self._steps + self._step
        return min(done / max(1, self.request.n_iter * self._steps), 1.0)

    def _eta(self) -> float | None:
        if self.state is not JobState.RUNNING or self._sampling_began is None:
            return None
        began, first = self._sampling_began
        fraction = self._fraction()
        if fraction <= first:
            return None
        rate = (time.monotonic() - began) / (fraction - first)
        return max(0.0, rate * (1.0 - fraction))
