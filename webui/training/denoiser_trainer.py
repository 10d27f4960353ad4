"""The denoiser's training loop, shared by from-scratch training, fine-tuning and LoRA.

What is trained is whatever the caller left with `requires_grad`: every UNet and text
encoder weight (scratch, fine-tune) or only the LoRA adapters. Each step draws its batch,
caption variants and noise from (seed, step) alone, so a resumed run continues exactly as
an unbroken one would.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel, CLIPTokenizer

from webui.training.objective import DenoisingObjective, ObjectiveOptions, encode_captions, require_finite
from webui.training.progress import RunningMean, TrainingHooks, TrainingStep, TrainingStopped
from webui.training.state import load_state, save_state, step_generator
from webui.training.vae_trainer import bf16_autocast


class LatentCaptionData(Protocol):
    """Training examples as latents (already scaled for the UNet) and captions."""

    def __len__(self) -> int: ...

    def sample(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, list[int]]:
        """A batch of latents of one size, and the indices of the examples drawn."""
        ...

    def captions(self, index: list[int], rng: np.random.Generator) -> list[str]: ...


@dataclass(frozen=True)
class DenoiserTrainOptions:
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    min_lr_fraction: float = 0.1  # cosine decay ends here
    seed: int = 0
    caption_dropout: float = 0.1  # empty captions teach the unconditional prediction CFG needs
    ema_decay: float | None = None  # None: no EMA copy
    checkpoint_every: int = 250
    sample_every: int = 0  # 0: no samples during the run
    gradient_checkpointing: bool = False
    mixed_precision: bool = False
    max_grad_norm: float = 1.0
    objective: ObjectiveOptions = field(default_factory=ObjectiveOptions)


def learning_rate_at(step: int, options: DenoiserTrainOptions) -> float:
    """Linear warm-up, then cosine decay to `min_lr_fraction` of the peak."""
    if step < options.warmup_steps:
        return options.learning_rate * (step + 1) / options.warmup_steps
    span = max(1, options.steps - options.warmup_steps)
    progress = min(1.0, (step - options.warmup_steps) / span)
    floor = options.min_lr_fraction
    return options.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class DenoiserTrainer:
    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        data: LatentCaptionData,
        options: DenoiserTrainOptions,
        state_path: Path | None = None,
    ) -> None:
        self.unet, self.text_encoder, self.tokenizer = unet, text_encoder, tokenizer
        self.data, self.options, self.state_path = data, options, state_path
        self.device = next(unet.parameters()).device
        self.parameters = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("nothing to train: no parameter requires a gradient")
        self.optimizer = torch.optim.AdamW(self.parameters, lr=options.learning_rate, weight_decay=1e-2)
        self.ema = (
            EMAModel(self.parameters, decay=options.ema_decay, use_ema_warmup=True, power=3 / 4)
            if options.ema_decay
            else None
        )
        self.objective = DenoisingObjective(options.objective)
        self.step = 0
        self._empty_ids: torch.Tensor | None = None
        if options.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            if any(p.requires_grad for p in text_encoder.parameters()):
                text_encoder.gradient_checkpointing_enable()
        self._resume()

    def _resume(self) -> None:
        state = load_state(self.state_path) if self.state_path else None
        if state is None:
            return
        with torch.no_grad():
            for parameter, saved in zip(self.parameters, state["parameters"], strict=True):
                parameter.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])

    def save(self) -> None:
        if self.state_path is None:
            return
        save_state(
            self.state_path,
            {
                "step": self.step,
                "parameters": [p.detach().cpu().clone() for p in self.parameters],
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
            },
        )

    def run(
        self, hooks: TrainingHooks, phase: str = "denoiser", sample: Callable[[int], None] | None = None
    ) -> None:
        """Train until `options.steps`; stopping (hooks.stop) saves the state first."""
        options = self.options
        mean = RunningMean()
        started = time.monotonic()
        self.unet.train()
        self.text_encoder.train()
        try:
            while self.step < options.steps:
                hooks.check_stop()
                loss = self._one_step(self.step)
                self.step += 1
                hooks.step(
                    TrainingStep(phase, self.step, options.steps, mean.add(loss), time.monotonic() - started)
                )
                if options.checkpoint_every and self.step % options.checkpoint_every == 0:
                    self.save()
                    if hooks.on_checkpoint:
                        hooks.on_checkpoint(self.step, str(self.state_path))
                if sample and options.sample_every and self.step % options.sample_every == 0:
                    with self.averaged_weights():
                        sample(self.step)
                    self.unet.train()
                    self.text_encoder.train()
        except TrainingStopped:
            self.save()  # an interrupted run resumes from exactly here
            raise
        finally:
            self.unet.eval()
            self.text_encoder.eval()
        self.save()

    def _one_step(self, step: int) -> float:
        options = self.options
        generator = step_generator(options.seed, step)
        rng = np.random.default_rng([options.seed, step])
        latents, index = self.data.sample(generator, options.batch_size)
        latents = latents.to(self.device, next(self.unet.parameters()).dtype)
        captions = self.data.captions(index, rng)
        captions = ["" if rng.random() < options.caption_dropout else c for c in captions]
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(step, options)
        with bf16_autocast(self.device, options.mixed_precision):
            context = encode_captions(self.tokenizer, self.text_encoder, captions, self.device)
            loss = self.objective.loss(self.unet, latents, context, generator)
        require_finite(loss, step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, options.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.parameters)
        return float(loss.detach())

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Inside: the EMA weights are in the modules (if there is an EMA copy)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.parameters)
        self.ema.copy_to(self.parameters)
        try:
            yield
        finally:
            self.ema.restore(self.parameters)
