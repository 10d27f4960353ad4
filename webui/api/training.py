"""The body of `POST /api/v1/train` and what a training job's status adds."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from webui.api.schemas import CleanBody
from webui.jobs import Job
from webui.training.request import MAX_RANK, MAX_TRAIN_STEPS, MAX_VECTORS, TrainingKind, TrainingRequest


class TrainBody(CleanBody):
    """What to train. Checked when it is queued: a bad folder or value answers 422 naming the field."""

    kind: TrainingKind = Field(TrainingKind.LORA, description="lora, embedding, finetune or scratch")
    name: str = Field(..., description="the file written (models/Lora/<name>.safetensors, embeddings/...)")
    dataset: str = Field(
        "shapes", description="a folder on the server with images and same-named .txt captions, or 'shapes'"
    )
    base: str = Field("", description="the checkpoint to train on; empty: the selected one")
    steps: int = Field(500, ge=1, le=MAX_TRAIN_STEPS)
    learning_rate: float = Field(0.0, ge=0, le=1, description="0: the kind's default")
    batch_size: int = Field(4, ge=1, le=64)
    resolution: int = Field(512, ge=64, le=2048, multiple_of=64)
    rank: int = Field(8, ge=1, le=MAX_RANK, description="LoRA rank")
    vectors: int = Field(2, ge=1, le=MAX_VECTORS, description="embedding vectors")
    init_text: str = Field("", description="embedding: words its vectors start from")
    caption_dropout: float = Field(0.05, ge=0, lt=1)
    seed: int = 0
    sample_every: int = Field(0, ge=0, le=MAX_TRAIN_STEPS)
    sample_prompt: str = ""
    gradient_checkpointing: bool = False
    resume: bool = Field(True, description="continue from this name's last checkpoint if one exists")


def training_json(job: Job) -> dict[str, Any]:
    """Kind, name, loss and (once done) the file written, for a training job's status."""
    request = job.request
    assert isinstance(request, TrainingRequest)
    status = job.status()
    result = job.result
    return {
        "kind": TrainingKind(request.kind).value,
        "name": request.name,
        "base": job.checkpoint or None,
        "phase": status.phase,
        "loss": None if status.loss is None else round(status.loss, 6),
        "losses": [[step, round(loss, 6)] for step, loss in job.losses()],
        "file": result.path.name if result is not None else None,
    }
