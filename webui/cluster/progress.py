"""A job's progress as a worker reports it, and as the queue's job takes it in on the server."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from webui.engine.steps import StepInfo
from webui.model_manager.detect import Arch

_NO_LATENTS = torch.empty(0)  # the latents stay on the worker; the server gets the drawn preview


@dataclass(frozen=True)
class RemoteProgress:
    step: int
    total: int
    batch_index: int
    preview_step: int  # grows with each preview the worker made; 0 before the first
    preview: Image.Image | None  # the newest preview, when newer than the one the server has


class DrawnPreview:
    """A preview the worker already drew; stands in for PreviewCopy in a job's step."""

    def __init__(self, image: Image.Image) -> None:
        self._image = image

    def image(self, _arch: Arch) -> Image.Image:
        return self._image


def as_step(progress: RemoteProgress) -> StepInfo:
    """The step the job (and the queue's step hooks) see; a preview step only with a new preview."""
    return StepInfo(
        step=progress.step,
        total=progress.total,
        latents=_NO_LATENTS,
        denoised=None,
        batch_index=progress.batch_index,
        preview_due=progress.preview is not None,
        preview=DrawnPreview(progress.preview) if progress.preview is not None else None,  # type: ignore[arg-type]
    )
