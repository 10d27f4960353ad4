"""Textual inversion: new token vectors learned against a frozen model, saved as A1111 embeddings."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from webui.model_manager.load import LoadedModel
from webui.training.denoiser_trainer import DenoiserTrainOptions, LatentCaptionData, learning_rate_at
from webui.training.objective import DenoisingObjective, encode_captions, require_finite
from webui.training.progress import RunningMean, TrainingError, TrainingHooks, TrainingStep, TrainingStopped
from webui.training.state import load_state, save_state, step_generator


class EmbeddingTrainer:
    """Adds `vectors` placeholder tokens to the (single) text encoder and trains only their rows."""

    def __init__(
        self,
        model: LoadedModel,
        name: str,
        vectors: int,
        init_text: str,
        data: LatentCaptionData,
        options: DenoiserTrainOptions,
        state_path,
    ) -> None:
        if len(model.text_encoders) != 1:
            raise TrainingError(
                f"{model.name} ({model.arch.label}) has {len(model.text_encoders)} text encoders; "
                "embeddings can be trained for SD 1.x and 2.x models so far",
                "base",
            )
        self.model, self.name, self.data, self.options, self.state_path = (
            model,
            name,
            data,
            options,
            state_path,
        )
        self.tokenizer, self.encoder = model.tokenizers[0], model.text_encoders[0]
        self.tokens = [f"<{name}-{i}>" for i in range(vectors)]
        added = self.tokenizer.add_tokens(self.tokens)
        if added != vectors:
            raise TrainingError(
                f"the tokenizer already knows a token of {name!r}; choose another name", "name"
            )
        self.ids = self.tokenizer.convert_tokens_to_ids(self.tokens)
        self.encoder.resize_token_embeddings(len(self.tokenizer))
        table = self.encoder.get_input_embeddings().weight
        with torch.no_grad():
            table[self.ids] = self._initial_vectors(init_text, vectors, table)
        model.unet.requires_grad_(False)
        self.encoder.requires_grad_(False)
        table.requires_grad_(True)
        mask = torch.zeros(table.shape[0], 1, device=table.device, dtype=table.dtype)
        mask[self.ids] = 1.0
        table.register_hook(lambda grad: grad * mask)  # only the new rows learn
        self.table = table
        self.optimizer = torch.optim.AdamW([table], lr=options.learning_rate, weight_decay=0.0)
        self.objective = DenoisingObjective(options.objective)
        self.step = 0
        state = load_state(state_path) if state_path else None
        if state is not None:
            with torch.no_grad():
                table[self.ids] = state["vectors"].to(table)
            self.step = int(state["step"])

    def _initial_vectors(self, init_text: str, vectors: int, table: torch.Tensor) -> torch.Tensor:
        ids = self.tokenizer(init_text, add_special_tokens=False).input_ids if init_text.strip() else []
        if not ids:
            generator = torch.Generator().manual_seed(self.options.seed)
            spread = float(table[:49406].std())
            return (torch.randn(vectors, table.shape[1], generator=generator) * spread).to(table)
        return torch.stack([table[ids[i % len(ids)]] for i in range(vectors)]).clone()

    @property
    def prompt_text(self) -> str:
        return " ".join(self.tokens)

    def vectors(self) -> torch.Tensor:
        return self.table.detach()[self.ids].to("cpu", torch.float32).clone()

    def save(self) -> None:
        if self.state_path:
            save_state(self.state_path, {"step": self.step, "vectors": self.vectors()})

    def run(self, hooks: TrainingHooks, sample: Callable[[int], None] | None = None) -> None:
        options, mean, started = self.options, RunningMean(), time.monotonic()
        device = next(self.model.unet.parameters()).device
        while self.step < options.steps:
            if hooks.should_stop():
                self.save()
                raise TrainingStopped("training was interrupted")
            generator = step_generator(options.seed, self.step)
            rng = np.random.default_rng([options.seed, self.step])
            latents, index = self.data.sample(generator, options.batch_size)
            captions = self.data.captions(index, rng)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate_at(self.step, options)
            context = encode_captions(self.tokenizer, self.encoder, captions, device)
            loss = self.objective.loss(self.model.unet, latents.to(device, context.dtype), context, generator)
            require_finite(loss, self.step)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            hooks.step(
                TrainingStep(
                    "embedding",
                    self.step,
                    options.steps,
                    mean.add(float(loss.detach())),
                    time.monotonic() - started,
                )
            )
            if options.checkpoint_every and self.step % options.checkpoint_every == 0:
                self.save()
            if sample and options.sample_every and self.step % options.sample_every == 0:
                sample(self.step)
        self.save()
