"""Prompt text -> the embeddings the UNet is conditioned on, per architecture."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from webui.model_manager.detect import Arch
from webui.model_manager.load import LoadedModel
from webui.model_manager.tokenizer import MAX_LENGTH


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (batch, tokens, width)
    pooled: torch.Tensor | None = None  # SDXL's pooled bigG embedding

    @staticmethod
    def concat(parts: list[Conditioning]) -> Conditioning:
        pooled = [p.pooled for p in parts]
        return Conditioning(
            torch.cat([p.embeds for p in parts]),
            None if any(p is None for p in pooled) else torch.cat(pooled),  # type: ignore[arg-type]
        )


@torch.inference_mode()
def encode_prompts(model: LoadedModel, prompts: list[str], clip_skip: int = 1) -> Conditioning:
    """Encode a batch of prompts; `clip_skip` follows A1111 (1 = the model's usual layer)."""
    if model.arch is Arch.SDXL:
        return _encode_sdxl(model, prompts, clip_skip)
    tokenizer, encoder = model.tokenizers[0], model.text_encoders[0]
    ids = _token_ids(tokenizer, prompts, model.device)
    if clip_skip <= 1:
        embeds = encoder(ids)[0]
    else:
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
        embeds = _final_layer_norm(encoder)(hidden)
    return Conditioning(embeds)


def _encode_sdxl(model: LoadedModel, prompts: list[str], clip_skip: int) -> Conditioning:
    # SDXL reads the penultimate layer of both encoders, without the final norm.
    layer = -(clip_skip + 1)
    embeds, pooled = [], None
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders):
        output = encoder(_token_ids(tokenizer, prompts, model.device), output_hidden_states=True)
        embeds.append(output.hidden_states[layer])
        if output[0].ndim == 2:
            pooled = output[0]
    return Conditioning(torch.cat(embeds, dim=-1), pooled)


def _token_ids(tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
    tokens = tokenizer(
        prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    )
    return tokens.input_ids.to(device)


def _final_layer_norm(encoder) -> torch.nn.Module:
    inner = getattr(encoder, "text_model", encoder)
    return inner.final_layer_norm
