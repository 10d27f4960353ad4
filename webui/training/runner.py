"""Run one TrainingRequest: load a private copy of the base model, train, write the file.

The copy keeps training away from the model the generation engine holds in its cache: no
adapter or new token leaks into anyone's images, and a failed run leaves nothing behind
but its last resume checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from webui.model_manager.load import LoadedModel, load_model
from webui.model_manager.state_dict import read_state_dict
from webui.training.denoiser_trainer import DenoiserTrainer, DenoiserTrainOptions
from webui.training.embedding_trainer import EmbeddingTrainer
from webui.training.folder_dataset import load_buckets, read_folder
from webui.training.in_memory import sample_images
from webui.training.latent_data import BucketedLatents, encode_buckets
from webui.training.lora_trainer import add_lora, kohya_state_dict
from webui.training.progress import TrainingError, TrainingHooks
from webui.training.request import TrainingKind, TrainingRequest
from webui.training.sd1_parts import save_atomically
from webui.training.shapes import draw_scene, scene_batch, varied_caption

log = logging.getLogger(__name__)

# Shapes examples drawn for a run on the procedural dataset (steps x batch, within these).
_SHAPES_EXAMPLES = (64, 2048)


@dataclass(frozen=True)
class TrainingOutputs:
    """Where results and resume files go (the registry's folders)."""

    checkpoints: Path
    lora: Path
    embeddings: Path
    work: Path

    def result_path(self, request: TrainingRequest) -> Path:
        folder = {
            TrainingKind.LORA: self.lora,
            TrainingKind.EMBEDDING: self.embeddings,
            TrainingKind.FINETUNE: self.checkpoints,
            TrainingKind.SCRATCH: self.checkpoints,
        }[request.kind]
        return folder / f"{request.name}.safetensors"

    def state_path(self, request: TrainingRequest) -> Path:
        return self.work / f"{request.kind.value}-{request.name}" / "state.pt"


@dataclass
class TrainingResult:
    kind: TrainingKind
    name: str
    path: Path
    steps: int
    seconds: float
    sample_prompts: list[str] = field(default_factory=list)
    samples: list[Image.Image] = field(default_factory=list)

    @property
    def images(self) -> list[Image.Image]:
        return self.samples

    # What the job queue's image routes read from any result: samples are not saved files.
    @property
    def paths(self) -> list[Path]:
        return []

    @property
    def infotexts(self) -> list[str]:
        return self.sample_prompts

    @property
    def seeds(self) -> list[int]:
        return []

    @property
    def warnings(self) -> list[str]:
        return []


def run_training(
    request: TrainingRequest,
    base: Path | None,
    outputs: TrainingOutputs,
    device: torch.device,
    hooks: TrainingHooks,
) -> TrainingResult:
    """Train as `request` says on a copy of the checkpoint `base` (None only for scratch)."""
    request = request.validated()
    started = time.monotonic()
    state_path = outputs.state_path(request)
    if not request.resume and state_path.exists():
        state_path.unlink()
    if request.kind is TrainingKind.SCRATCH:
        from webui.training.scratch import train_scratch  # the demo's pipeline, for any dataset

        path = train_scratch(request, outputs.result_path(request), state_path.parent, device, hooks)
        return TrainingResult(request.kind, request.name, path, request.steps, time.monotonic() - started)
    if base is None:
        raise TrainingError("choose a base checkpoint to train on", "base")
    model = load_model(base, device, torch.float32)
    options = _options(request, device)
    data = _dataset(request, model)
    if request.kind is TrainingKind.EMBEDDING:
        trainer = EmbeddingTrainer(
            model, request.name, request.vectors, request.init_text, data, options, state_path
        )
        sampler = _Sampler(model, request, data, (request.name, trainer.prompt_text))
        data.caption = _with_placeholder(data.caption, request.name, trainer.prompt_text)
        trainer.run(hooks, sample=sampler.periodic(hooks))
        path = _save_embedding(trainer, request, outputs.result_path(request), base)
    else:
        if request.kind is TrainingKind.LORA:
            with torch.random.fork_rng():  # the adapters' initial weights follow the request's seed
                torch.manual_seed(request.seed)
                add_lora(model, request.rank)
        else:
            model.unet.requires_grad_(True)
            model.text_encoders[0].requires_grad_(True)
        trainer = DenoiserTrainer(
            model.unet, model.text_encoders[0], model.tokenizers[0], data, options, state_path
        )
        sampler = _Sampler(model, request, data, None)
        trainer.run(hooks, phase=request.kind.value, sample=sampler.periodic(hooks))
        if request.kind is TrainingKind.LORA:
            path = _save_lora(model, request, outputs.result_path(request), base)
        else:
            path = _save_checkpoint(model, request, outputs.result_path(request), base)
    samples = sampler.images()
    if hooks.on_sample:
        hooks.on_sample(request.steps, samples, [sampler.shown])
    seconds = time.monotonic() - started
    log.info("trained %s %s in %.0f s: %s", request.kind.value, request.name, seconds, path)
    return TrainingResult(request.kind, request.name, path, request.steps, seconds, [sampler.shown], samples)


class _Sampler:
    """Sample images of the model as it trains, from the sample prompt (or the first caption)."""

    def __init__(
        self,
        model: LoadedModel,
        request: TrainingRequest,
        data: BucketedLatents,
        placeholder: tuple[str, str] | None,
    ) -> None:
        self.model, self.request = model, request
        self.shown = request.sample_prompt.strip() or data.caption(0, np.random.default_rng(0)) or "a picture"
        self.encoded = self.shown
        if placeholder is not None:  # an embedding being trained: its name becomes its tokens
            name, tokens = placeholder
            self.encoded = _with_placeholder(lambda i, rng: self.shown, name, tokens)(
                0, np.random.default_rng(0)
            )

    def images(self) -> list[Image.Image]:
        unet = self.model.unet
        was_training = unet.training
        unet.eval()
        try:
            return sample_images(self.model, [self.encoded], self.request.resolution, seed=self.request.seed)
        finally:
            unet.train(was_training)

    def periodic(self, hooks: TrainingHooks):
        if not (self.request.sample_every and hooks.on_sample):
            return None
        on_sample = hooks.on_sample

        def sample(step: int) -> None:
            on_sample(step, self.images(), [self.shown])

        return sample


def _options(request: TrainingRequest, device: torch.device) -> DenoiserTrainOptions:
    return DenoiserTrainOptions(
        steps=request.steps,
        batch_size=request.batch_size,
        learning_rate=request.learning_rate,
        warmup_steps=min(100, max(1, request.steps // 10)),
        seed=request.seed,
        caption_dropout=request.caption_dropout,
        ema_decay=None,
        checkpoint_every=max(25, request.steps // 10),
        gradient_checkpointing=request.gradient_checkpointing,
        sample_every=request.sample_every,
        # bf16 autocast on GPUs; on CPUs the UNet measured no faster in bf16, so fp32 there.
        mixed_precision=device.type == "cuda",
    )


def _dataset(request: TrainingRequest, model: LoadedModel) -> BucketedLatents:
    scale = float(model.vae.config.scaling_factor)
    if request.uses_shapes:
        count = min(max(request.steps * request.batch_size, _SHAPES_EXAMPLES[0]), _SHAPES_EXAMPLES[1])
        scenes = scene_batch(request.seed, count)
        images = [draw_scene(scene, request.resolution) for scene in scenes]
        means, stds = encode_buckets(model.vae, [images])
        return BucketedLatents(means, stds, lambda i, rng: varied_caption(scenes[i], rng), scale)
    buckets = load_buckets(read_folder(request.dataset_path), request.resolution)
    sizes = sorted(buckets)
    captions = [caption for size in sizes for _, caption in buckets[size]]
    means, stds = encode_buckets(model.vae, [[image for image, _ in buckets[size]] for size in sizes])
    return BucketedLatents(means, stds, lambda i, rng: captions[i], scale)


def _with_placeholder(caption, name: str, tokens: str):
    """Captions name the embedding by its name; the encoder sees its placeholder tokens there."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")

    def variant(index: int, rng: np.random.Generator) -> str:
        text = caption(index, rng)
        if pattern.search(text):
            return pattern.sub(tokens, text)
        return f"{tokens}, {text}" if text else tokens

    return variant


def _metadata(request: TrainingRequest, base: Path | None) -> dict[str, str]:
    return {
        "ss_output_name": request.name,
        "ss_training_comment": "trained with Stable Diffusion studio",
        "ss_sd_model_name": base.name if base else "",
        "ss_steps": str(request.steps),
        "ss_learning_rate": str(request.learning_rate),
        "webui.training": json.dumps(
            {k: (v.value if hasattr(v, "value") else v) for k, v in vars(request).items()}
        ),
    }


def _save_lora(model: LoadedModel, request: TrainingRequest, path: Path, base: Path) -> Path:
    tensors = kohya_state_dict(model)
    metadata = _metadata(request, base) | {
        "ss_network_dim": str(request.rank),
        "ss_network_alpha": str(request.rank),
    }
    return save_atomically(tensors, path, metadata)


def _save_embedding(trainer: EmbeddingTrainer, request: TrainingRequest, path: Path, base: Path) -> Path:
    metadata = {"name": request.name, "step": str(trainer.step), "sd_checkpoint_name": base.stem}
    return save_atomically({"emb_params": trainer.vectors().contiguous()}, path, metadata)


def _save_checkpoint(model: LoadedModel, request: TrainingRequest, path: Path, base: Path) -> Path:
    """The base file's tensors with the trained UNet and text encoder written over them."""
    from webui.training.checkpoint_export import trained_checkpoint_tensors

    original = read_state_dict(base)
    tensors = trained_checkpoint_tensors(model, original.tensors)
    metadata = {key: value for key, value in original.metadata.items() if not key.startswith("webui.")}
    return save_atomically(tensors, path, metadata | _metadata(request, base))
