"""Prompt text -> the embeddings the UNet is conditioned on, per architecture."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPTokenizer

from webui.model_manager.detect import Arch
from webui.model_manager.load import LoadedModel, TextEncoder
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
        ids = _token_ids(tokenizer, prompts, model.device)
        output = encoder(ids, output_hidden_states=True)
        embeds.append(output.hidden_states[layer])
        if output[0].ndim == 2:
            pooled = _pooled(encoder, tokenizer, output, ids)
    return Conditioning(torch.cat(embeds, dim=-1), pooled)


def _pooled(encoder: TextEncoder, tokenizer: CLIPTokenizer, output, ids: torch.Tensor) -> torch.Tensor:
    """The projected embedding at each prompt's end-of-text token.

    transformers keeps a legacy pooling for configs whose eos_token_id is 2 (older SDXL
    diffusers folders): it pools at the largest token id, which is an embedding's added token
    once one is in the prompt. Pool where current configs do: at the first end-of-text token.
    """
    if encoder.config.eos_token_id == tokenizer.eos_token_id:
        return output[0]
    positions = (ids == tokenizer.eos_token_id).int().argmax(dim=-1)
    last = output.last_hidden_state[torch.arange(len(ids), device=ids.device), positions]
    return encoder.text_projection(last)


def _token_ids(tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
    tokens = tokenizer(
        prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    )
    return tokens.input_ids.to(device)


def _final_layer_norm(encoder) -> torch.nn.Module:
    inner = getattr(encoder, "text_model", encoder)
    return inner.final_layer_norm
