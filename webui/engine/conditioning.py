"""Prompt text -> the embeddings the UNet is conditioned on, per architecture, as A1111 does it.

A prompt is split into weighted pieces (prompt_parser.parse_weighted), tokenized without start
and end tokens and cut into chunks of 75 tokens; each chunk is encoded on its own as
[BOS] + 75 + [EOS/pad] = 77 positions and the chunks are concatenated along the token axis.
A weight scales its tokens' embeddings, after which the chunk is rescaled to its unweighted mean
(A1111's "Original" emphasis).

Prompts of different lengths are padded to the same number of chunks with the encoding of the
empty prompt, which is token for token what A1111's padding chunks are ([BOS] then EOS/pad).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import CLIPTokenizer

from webui.engine.prompt_parser import BREAK, BREAK_WEIGHT, parse_weighted, schedule_prompt, split_and
from webui.model_manager.archs import TextConditioning
from webui.model_manager.load import LoadedModel, TextEncoder
from webui.model_manager.tokenizer import MAX_LENGTH

CHUNK_TOKENS = MAX_LENGTH - 2  # the prompt tokens one chunk holds between its BOS and EOS
COMMA_BACKTRACK = 20  # A1111's default "prompt word wrap length limit"
_MEAN_FLOOR = 1e-4  # relative to the mean magnitude: below it a chunk's mean is numerically zero
_PLACEHOLDER_START = re.compile(r"<ti-.+-0>")  # an embedding's first token (model_manager.embeddings)


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (batch, 77 * chunks, width)
    pooled: torch.Tensor | None = None  # SDXL's pooled bigG embedding
    empty_chunk: torch.Tensor | None = None  # (1, 77, width): the empty prompt; pads shorter prompts

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // MAX_LENGTH

    def padded_to(self, chunks: int) -> Conditioning:
        """This conditioning with empty-prompt chunks appended up to `chunks`."""
        missing = chunks - self.chunks
        if missing <= 0:
            return self
        if self.empty_chunk is None:
            raise ValueError("this conditioning has no empty chunk to pad with")
        fill = self.empty_chunk.expand(self.embeds.shape[0], -1, -1).repeat(1, missing, 1)
        return Conditioning(torch.cat([self.embeds, fill], dim=1), self.pooled, self.empty_chunk)

    @staticmethod
    def concat(parts: list[Conditioning]) -> Conditioning:
        """Stack along the batch, padding every part to the longest one's chunk count."""
        chunks = max(part.chunks for part in parts)
        parts = [part.padded_to(chunks) for part in parts]
        pooled = [p.pooled for p in parts]
        return Conditioning(
            torch.cat([p.embeds for p in parts]),
            None if any(p is None for p in pooled) else torch.cat(pooled),  # type: ignore[arg-type]
            parts[0].empty_chunk,
        )


@torch.inference_mode()
def encode_prompts(model: LoadedModel, prompts: list[str], clip_skip: int = 1) -> Conditioning:
    """Encode a batch of prompts; `clip_skip` follows A1111 (1 = the model's usual layer).

    Weights and BREAK are applied; every prompt gets the chunk count of the longest.
    """
    unique = list(dict.fromkeys(prompts))
    encoded = dict(zip(unique, _encode_texts(model, unique, clip_skip)))
    return Conditioning.concat([encoded[prompt] for prompt in prompts])


def chunk_count(model: LoadedModel, prompt: str) -> int:
    """How many 77-position chunks `prompt` encodes to (its token count is up to 75 per chunk)."""
    return len(_chunks(model.tokenizers[0], prompt))


# (negative, [(positive AND-part, weight), ...]) for one denoising step
StepConditioning = tuple[Conditioning, list[tuple[Conditioning, float]]]


class PromptSchedule:
    """A job's conditioning per step: negative and AND-parts of the positive prompt, each scheduled."""

    def __init__(self, per_step: list[StepConditioning]) -> None:
        self._per_step = per_step

    @classmethod
    @torch.inference_mode()
    def build(
        cls, model: LoadedModel, positive: str, negative: str, steps: int, clip_skip: int
    ) -> PromptSchedule:
        steps = max(1, steps)
        negative_schedule = schedule_prompt(negative, steps)  # A1111 does not AND-split negatives
        positive_schedules = [(schedule_prompt(text, steps), weight) for text, weight in split_and(positive)]
        texts = _schedule_texts([negative_schedule, *(schedule for schedule, _ in positive_schedules)])
        # One encoder pass for every distinct text; each keeps its own chunk count.
        encoded = dict(zip(texts, _encode_texts(model, texts, clip_skip)))
        per_step: list[StepConditioning] = []
        for step in range(1, steps + 1):
            entry = (
                encoded[_text_at(negative_schedule, step)],
                [(encoded[_text_at(schedule, step)], weight) for schedule, weight in positive_schedules],
            )
            # Reuse the previous step's objects while nothing changes, so callers can compare by `is`.
            if per_step and _same_entry(per_step[-1], entry):
                entry = per_step[-1]
            per_step.append(entry)
        return cls(per_step)

    def at(self, step: int) -> StepConditioning:
        """(negative, [(positive part, weight), ...]) for 0-based denoising step `step`.

        Each Conditioning has batch 1; steps inside one segment get the very same objects.
        """
        return self._per_step[min(max(step, 0), len(self._per_step) - 1)]


def _schedule_texts(schedules: Iterable[list[tuple[int, str]]]) -> list[str]:
    return list(dict.fromkeys(text for schedule in schedules for _, text in schedule))


def _text_at(schedule: list[tuple[int, str]], step: int) -> str:
    index = bisect_left([end for end, _ in schedule], step)
    return schedule[min(index, len(schedule) - 1)][1]


def _same_entry(
    a: StepConditioning,
    b: StepConditioning,
) -> bool:
    return a[0] is b[0] and all(x is y for (x, _), (y, _) in zip(a[1], b[1]))


# --- chunking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    tokens: tuple[int, ...]  # at most CHUNK_TOKENS, without BOS/EOS
    weights: tuple[float, ...]

    def ids(self, tokenizer: CLIPTokenizer) -> list[int]:
        # EOS right after the text, then the tokenizer's pad (EOS again for SD1, "!" for SD2/bigG).
        padding = [tokenizer.pad_token_id] * (CHUNK_TOKENS - len(self.tokens))
        return [tokenizer.bos_token_id, *self.tokens, tokenizer.eos_token_id, *padding]

    def multipliers(self) -> list[float]:
        return [1.0, *self.weights, *[1.0] * (MAX_LENGTH - 1 - len(self.weights))]


class _ChunkBuilder:
    """Fills chunks unit by unit; a unit (a token, or all of one embedding's) never straddles two."""

    def __init__(self, comma: int) -> None:
        self.comma = comma
        self.chunks: list[_Chunk] = []
        self.tokens: list[int] = []
        self.weights: list[float] = []
        self.last_comma = -1

    def add(self, unit: list[int], weight: float) -> None:
        if len(self.tokens) + len(unit) > CHUNK_TOKENS:
            self._wrap(is_comma=unit == [self.comma])
        if len(self.tokens) + len(unit) > CHUNK_TOKENS:
            self.close()  # the carried-over words and a long embedding still do not fit together
        if unit == [self.comma]:
            self.last_comma = len(self.tokens)
        self.tokens += unit
        self.weights += [weight] * len(unit)

    def _wrap(self, is_comma: bool) -> None:
        # Like A1111, carry the words after a recent comma over to the next chunk, so a phrase
        # is not cut in half.
        if is_comma or self.last_comma < 0 or len(self.tokens) - self.last_comma > COMMA_BACKTRACK:
            self.close()
            return
        cut = self.last_comma + 1
        tokens, weights = self.tokens[cut:], self.weights[cut:]
        self.tokens, self.weights = self.tokens[:cut], self.weights[:cut]
        self.close()
        self.tokens, self.weights = tokens, weights

    def close(self) -> None:
        self.chunks.append(_Chunk(tuple(self.tokens), tuple(self.weights)))
        self.tokens, self.weights, self.last_comma = [], [], -1

    def finish(self) -> list[_Chunk]:
        if self.tokens or not self.chunks:
            self.close()
        return self.chunks


def _chunks(tokenizer: CLIPTokenizer, prompt: str) -> list[_Chunk]:
    pieces = parse_weighted(prompt)
    texts = [text for text, weight in pieces if weight != BREAK_WEIGHT]
    token_lists = iter(tokenizer(texts, add_special_tokens=False, verbose=False).input_ids if texts else [])
    builder = _ChunkBuilder(tokenizer.convert_tokens_to_ids(",</w>"))
    for text, weight in pieces:
        if text == BREAK and weight == BREAK_WEIGHT:
            builder.close()  # even an empty chunk, as A1111 does for a leading or doubled BREAK
            continue
        for unit in _units(tokenizer, next(token_lists)):
            builder.add(unit, weight)
    return builder.finish()


def _units(tokenizer: CLIPTokenizer, ids: list[int]) -> list[list[int]]:
    """Tokens grouped so that each textual-inversion embedding's placeholder tokens stay together."""
    units: list[list[int]] = []
    base = tokenizer.vocab_size  # added (embedding) tokens come after the base vocabulary
    for token in ids:
        continues = (
            token >= base
            and units
            and units[-1][-1] >= base
            and len(units[-1]) < CHUNK_TOKENS
            and not _PLACEHOLDER_START.fullmatch(tokenizer.convert_ids_to_tokens(token))
        )
        if continues:
            units[-1].append(token)
        else:
            units.append([token])
    return units


# --- encoding ----------------------------------------------------------------------------------


def _encode_texts(model: LoadedModel, texts: list[str], clip_skip: int) -> list[Conditioning]:
    """Each text at batch 1 and its own chunk count, from one encoder pass per text encoder."""
    per_encoder: list[list[torch.Tensor]] = []  # [encoder][text] -> (1, 77 * chunks, width)
    empty: list[torch.Tensor] = []
    pooled: list[torch.Tensor] | None = None
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders):
        chunked = [_chunks(tokenizer, text) for text in texts]
        rows = _unique_rows(tokenizer, [*(c for chunks in chunked for c in chunks), _Chunk((), ())])
        hidden, pooled_rows = _run_encoder(model, encoder, tokenizer, rows, clip_skip)
        row_of = {row: index for index, row in enumerate(rows)}
        per_encoder.append([_weighted(tokenizer, chunks, hidden, row_of) for chunks in chunked])
        empty.append(hidden[row_of[tuple(_Chunk((), ()).ids(tokenizer))]][None])
        if pooled_rows is not None:  # SDXL: from each prompt's first chunk, as A1111
            pooled = [pooled_rows[row_of[tuple(chunks[0].ids(tokenizer))]][None] for chunks in chunked]
    empty_chunk = torch.cat(empty, dim=-1)
    return [
        Conditioning(
            torch.cat([embeds[index] for embeds in per_encoder], dim=-1),
            None if pooled is None else pooled[index],
            empty_chunk,
        )
        for index in range(len(texts))
    ]


def _unique_rows(tokenizer: CLIPTokenizer, chunks: list[_Chunk]) -> list[tuple[int, ...]]:
    # Weights apply after the encoder, so chunks with the same ids share one encoder row.
    return list(dict.fromkeys(tuple(chunk.ids(tokenizer)) for chunk in chunks))


def _run_encoder(
    model: LoadedModel,
    encoder: TextEncoder,
    tokenizer: CLIPTokenizer,
    rows: list[tuple[int, ...]],
    clip_skip: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states (rows, 77, width), pooled (rows, width) or None) for token-id rows."""
    ids = torch.tensor(rows, dtype=torch.long, device=model.device)
    if model.architecture.conditioning is TextConditioning.PENULTIMATE_AND_POOLED:
        output = encoder(ids, output_hidden_states=True)
        hidden = output.hidden_states[-(clip_skip + 1)]
        pooled = _pooled(encoder, tokenizer, output, ids) if output[0].ndim == 2 else None
        return hidden, pooled
    if clip_skip <= 1:
        return encoder(ids)[0], None
    hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    return _final_layer_norm(encoder)(hidden), None


def _weighted(
    tokenizer: CLIPTokenizer, chunks: list[_Chunk], hidden: torch.Tensor, row_of: dict[tuple[int, ...], int]
) -> torch.Tensor:
    """A text's chunks, weighted, end to end: (1, 77 * chunks, width)."""
    parts = []
    for chunk in chunks:
        embeds = hidden[row_of[tuple(chunk.ids(tokenizer))]]
        if any(weight != 1.0 for weight in chunk.weights):
            embeds = emphasis(embeds, chunk.multipliers())
        parts.append(embeds)
    return torch.cat(parts)[None]


def emphasis(embeds: torch.Tensor, multipliers: list[float]) -> torch.Tensor:
    """Scale each position by its weight, then restore the chunk's mean (A1111's "Original").

    The mean is taken per prompt and chunk; A1111 takes it over the whole batch, which makes a
    prompt's result depend on the others it is batched with. A mean that is next to zero next
    to the values themselves (an encoder whose final norm has no bias, as freshly initialised
    ones) would turn the ratio into noise, even flip its sign: then the weights apply unscaled.
    """
    values = embeds.float()
    scale = torch.tensor(multipliers, dtype=torch.float32, device=embeds.device)[:, None]
    weighted = values * scale
    old_mean, new_mean = values.mean(), weighted.mean()
    floor = _MEAN_FLOOR * values.abs().mean()
    if old_mean.abs() > floor and new_mean.abs() > floor:
        weighted = weighted * (old_mean / new_mean)
    return weighted.to(embeds.dtype)


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


def _final_layer_norm(encoder) -> torch.nn.Module:
    inner = getattr(encoder, "text_model", encoder)
    return inner.final_layer_norm
