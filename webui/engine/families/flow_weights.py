"""A1111's prompt weights on SD 3's encoders: `(word:1.3)`, `(word)`, `[word]` scale that word's
hidden states in CLIP-L, CLIP-G and T5, and each encoder's mean is restored afterwards, as the
UNet path does (engine/conditioning.py). A prompt without weights takes diffusers' exact path.

What differs from SD 1.x/XL: CLIP reads one window of 77 tokens (SD 3 joins it to T5's sequence,
so there are no 75-token chunks) and T5 256; `BREAK` only separates words; the pooled outputs
are not weighted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from webui.engine.conditioning import emphasis
from webui.engine.families import flow
from webui.engine.prompt_parser import BREAK, BREAK_WEIGHT, parse_weighted
from webui.model_manager.sd3.build import SD3Components
from webui.model_manager.t5_tokenizer import T5_MAX_LENGTH

Pieces = Sequence[tuple[str, float]]


def weighted_pieces(text: str) -> tuple[str, Pieces | None]:
    """(the text as the encoders read it, its weighted pieces or None when every weight is 1)."""
    pieces = [
        (piece, weight) for piece, weight in parse_weighted(text) if (piece, weight) != (BREAK, BREAK_WEIGHT)
    ]
    plain = "".join(piece for piece, _ in pieces)
    return plain, (pieces if any(weight != 1.0 for _, weight in pieces) else None)


def encode_weighted(components: SD3Components, text: str) -> flow.FlowConditioning:
    """One prompt's conditioning, its weights applied."""
    plain, pieces = weighted_pieces(text)
    if pieces is None:
        return flow.encode_prompts(components, [plain])
    device = components.device  # offloaded encoders' weights wait on the host until their hooks run
    clip_l = _clip(components.tokenizer_l, components.clip_l, pieces, device)
    clip_g = _clip(components.tokenizer_g, components.clip_g, pieces, device)
    t5 = None
    if components.t5 is not None and components.tokenizer_t5 is not None:
        ids, weights = token_weights(components.tokenizer_t5, pieces, T5_MAX_LENGTH, begin=False)
        t5 = emphasis(components.t5(ids.to(device))[0][0], weights)[None]
    return flow.join_conditioning(components, clip_l, clip_g, t5)


def _clip(
    tokenizer: PreTrainedTokenizerBase, encoder, pieces: Pieces, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    ids, weights = token_weights(tokenizer, pieces, flow.CLIP_LENGTH, begin=True)
    output = encoder(ids.to(device), output_hidden_states=True)
    hidden = output.hidden_states[flow.CLIP_HIDDEN_LAYER]
    return emphasis(hidden[0], weights)[None], output.text_embeds


def token_weights(
    tokenizer: PreTrainedTokenizerBase, pieces: Pieces, length: int, *, begin: bool
) -> tuple[torch.Tensor, list[float]]:
    """(1, length) ids as the tokenizer lays out one text (`begin`: a start token first, as CLIP's),
    cut to fit and padded, and each position's weight (1 for the special tokens and padding)."""
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in pieces:
        # Stripped: T5's SentencePiece reads a piece's trailing space as a token of its own.
        piece_ids = tokenizer(piece.strip(), add_special_tokens=False).input_ids if piece.strip() else []
        ids += piece_ids
        weights += [weight] * len(piece_ids)
    room = length - (2 if begin else 1)
    ids, weights = ids[:room], weights[:room]
    if begin:
        ids, weights = [tokenizer.bos_token_id, *ids], [1.0, *weights]
    ids, weights = [*ids, tokenizer.eos_token_id], [*weights, 1.0]
    padding = length - len(ids)
    ids += [tokenizer.pad_token_id] * padding
    weights += [1.0] * padding
    return torch.tensor([ids]), weights
