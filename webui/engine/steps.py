"""What the denoising loop reports each step, and how a caller stops it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from PIL import Image

if TYPE_CHECKING:
    from webui.engine.conditioning import Conditioning
    from webui.model_manager.archs import Arch


class Preview(Protocol):
    """A step's preview on its way to host memory (engine/preview.py's PreviewCopy)."""

    pixels: bool  # a decoder drew it (else it is a latent, drawn by the linear map on demand)

    def tensor(self) -> torch.Tensor: ...

    def image(self, arch: Arch) -> Image.Image: ...


class Interrupted(Exception):
    """The caller asked to stop the whole job; images finished so far are kept."""


@dataclass(frozen=True)
class StepInfo:
    step: int  # 1-based: `step` of `total` steps are done
    total: int
    latents: torch.Tensor
    denoised: torch.Tensor | None  # the scheduler's estimate of the clean latent, when it gives one
    batch_index: int  # which batch of the job (0-based, of `n_iter`)
    preview_due: bool = True  # whether this step is one to preview (see `with_previews`)
    preview: Preview | None = None  # the preview on its way to host memory (see `with_previews`)

    @property
    def preview_latent(self) -> torch.Tensor:
        """The first image's latent to preview: the predicted clean one when the scheduler gives it."""
        return (self.denoised if self.denoised is not None else self.latents)[:1]


StepHook = Callable[[StepInfo], None]


@dataclass
class DenoiseStep:
    """A step about to run, for hooks that change it: assign new `latents`, `negative` or `parts`
    (or edit the tensors in place) and the UNet sees them. Read-only observers use `StepInfo`."""

    step: int  # 1-based, counted across a batch's passes as `StepInfo.step` is
    total: int
    batch_index: int
    hires: bool  # hires fix's second pass
    timestep: torch.Tensor
    latents: torch.Tensor  # (batch, 4, height / 8, width / 8), before the scheduler's input scaling
    negative: Conditioning  # the negative prompt (used when CFG scale > 1)
    parts: list[tuple[Conditioning, float]]  # the prompt's AND-parts with their weights


DenoiseHook = Callable[[DenoiseStep], None]


class JobControl:
    """Flags a UI or API thread sets while the loop runs; checked once per step."""

    def __init__(self) -> None:
        self._interrupt = threading.Event()
        self._skip = threading.Event()

    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def take_skip(self) -> bool:
        """True once per skip request: skipping ends the current batch only."""
        if self._skip.is_set():
            self._skip.clear()
            return True
        return False
