"""Training as a service of the app: checked at submission, run by the job queue, listed after."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from webui.model_manager.detect import Arch
from webui.model_manager.registry import ModelFile, ModelKind, ModelRegistry
from webui.training.folder_dataset import read_folder
from webui.training.progress import TrainingError, TrainingHooks
from webui.training.request import TrainingKind, TrainingRequest
from webui.training.runner import TrainingOutputs, TrainingResult, run_training

_RESULT_KIND = {
    TrainingKind.LORA: ModelKind.LORA,
    TrainingKind.EMBEDDING: ModelKind.EMBEDDING,
    TrainingKind.FINETUNE: ModelKind.CHECKPOINT,
    TrainingKind.SCRATCH: ModelKind.CHECKPOINT,
}
# The trainers build SD 1.x/2.x UNets and single CLIP encoders only.
_TRAINABLE = (Arch.SD1, Arch.SD2)


class TrainingService:
    def __init__(
        self,
        registry: ModelRegistry,
        work_dir: Path,
        device: torch.device,
        selected_checkpoint: Callable[[], ModelFile],
    ) -> None:
        self.registry, self.device, self.selected_checkpoint = registry, device, selected_checkpoint
        folders = registry.folders
        self.outputs = TrainingOutputs(folders.checkpoints[0], folders.lora, folders.embeddings, work_dir)
        self.datasets_dir = work_dir / "datasets"

    def preflight(self, request: TrainingRequest, admin: bool = True) -> str:
        """The base checkpoint's name ("" for scratch); TrainingError for what cannot run.

        Only admins may train on any folder of the server; others on folders in `datasets_dir`
        (samples would otherwise show them anyone's images)."""
        request = request.validated()
        if not request.uses_shapes:
            folder = request.dataset_path
            if not admin and not folder.resolve().is_relative_to(self.datasets_dir.resolve()):
                raise TrainingError(
                    f"only admins may train on any folder; put yours in {self.datasets_dir}", "dataset"
                )
            read_folder(folder)
        if request.kind is TrainingKind.SCRATCH:
            return ""
        base = (
            self.registry.find(ModelKind.CHECKPOINT, request.base)
            if request.base
            else self.selected_checkpoint()
        )
        self.registry.require_usable(base)
        if base.arch is not None and base.arch not in _TRAINABLE:
            raise TrainingError(
                f"{base.name} is {base.arch.label}; training works on SD 1.x and 2.x checkpoints so far",
                "base",
            )
        if "inpainting" in base.label:
            raise TrainingError(f"{base.name} is an inpainting checkpoint; train on its base model", "base")
        if self.outputs.result_path(request).resolve() == base.path.resolve():
            raise TrainingError(
                f"{request.name!r} would overwrite the base checkpoint; choose another name", "name"
            )
        return base.name

    def run(self, request: TrainingRequest, hooks: TrainingHooks, base: str) -> TrainingResult:
        base_path = self.registry.find(ModelKind.CHECKPOINT, base).path if base else None
        result = run_training(request, base_path, self.outputs, self.device, hooks)
        self.registry.refresh([_RESULT_KIND[request.validated().kind]])
        return result
