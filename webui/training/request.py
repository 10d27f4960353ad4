"""What a training job asks for, checked before it is queued. No torch here: the page imports it."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from webui.training.progress import TrainingError

SHAPES_DATASET = "shapes"  # the procedural dataset, drawn on the fly; any other value is a folder
MAX_TRAIN_STEPS = 100_000
MAX_RANK = 256
MAX_VECTORS = 75  # one CLIP chunk
_NAME = re.compile(r"^[\w][\w .+-]{0,99}$")


class TrainingKind(str, Enum):
    LORA = "lora"
    EMBEDDING = "embedding"  # textual inversion
    FINETUNE = "finetune"
    SCRATCH = "scratch"  # a tiny SD 1.x model from random weights

    @property
    def label(self) -> str:
        return {
            "lora": "LoRA",
            "embedding": "Embedding (textual inversion)",
            "finetune": "Fine-tune the checkpoint",
            "scratch": "Tiny model from scratch",
        }[self.value]

    @property
    def default_learning_rate(self) -> float:
        return {"lora": 1e-3, "embedding": 5e-3, "finetune": 2e-5, "scratch": 4e-4}[self.value]


@dataclass
class TrainingRequest:
    kind: TrainingKind = TrainingKind.LORA
    name: str = ""  # the file written: models/Lora/<name>.safetensors, embeddings/<name>.safetensors, ...
    dataset: str = SHAPES_DATASET  # a folder of images with same-named .txt captions, or "shapes"
    base: str = ""  # the checkpoint to start from ("": the selected one); unused for scratch
    steps: int = 500
    learning_rate: float = 0.0  # 0: the kind's default
    batch_size: int = 4
    resolution: int = 512  # bucket area is about resolution squared
    rank: int = 8  # LoRA
    vectors: int = 2  # embedding
    init_text: str = ""  # embedding: the words its vectors start from ("": random)
    caption_dropout: float = 0.05
    seed: int = 0
    sample_every: int = 0  # 0: only at the end
    sample_prompt: str = ""
    gradient_checkpointing: bool = False
    resume: bool = True  # continue from this name's last checkpoint if there is one

    mode = "train"  # what Job reads to tell its kind
    n_iter = 1

    def validated(self) -> TrainingRequest:
        """This request with defaults filled in; TrainingError names the first field at fault."""
        kind = TrainingKind(self.kind)
        if not _NAME.match(self.name or ""):
            raise TrainingError(
                "name must be 1-100 letters, digits, spaces, '.', '+' or '-' (it names the file written)",
                "name",
            )
        if not self.dataset.strip():
            raise TrainingError(
                "dataset is empty: give a folder of images with .txt captions, or 'shapes'", "dataset"
            )
        _check_int("steps", self.steps, 1, MAX_TRAIN_STEPS)
        _check_int("batch_size", self.batch_size, 1, 64)
        _check_int("resolution", self.resolution, 64, 2048)
        if self.resolution % 64:
            raise TrainingError(f"resolution must be a multiple of 64, got {self.resolution}", "resolution")
        _check_int("rank", self.rank, 1, MAX_RANK)
        _check_int("vectors", self.vectors, 1, MAX_VECTORS)
        _check_int("sample_every", self.sample_every, 0, MAX_TRAIN_STEPS)
        rate = self.learning_rate or kind.default_learning_rate
        if not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 < rate <= 1:
            raise TrainingError(
                f"learning_rate must be a number above 0 and at most 1, got {self.learning_rate}",
                "learning_rate",
            )
        if not isinstance(self.caption_dropout, (int, float)) or not 0 <= self.caption_dropout < 1:
            raise TrainingError(
                f"caption_dropout must be at least 0 and below 1, got {self.caption_dropout}",
                "caption_dropout",
            )
        return TrainingRequest(**{**asdict(self), "kind": kind, "learning_rate": float(rate)})

    @property
    def uses_shapes(self) -> bool:
        return self.dataset.strip().lower() == SHAPES_DATASET

    @property
    def dataset_path(self) -> Path:
        return Path(self.dataset).expanduser()


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TrainingError(f"{field} must be a whole number from {low} to {high}, got {value!r}", field)
