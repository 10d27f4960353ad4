"""Textual-inversion embeddings used by file name in prompts, as A1111 does.

An embedding named in a prompt is added to the model's tokenizer(s) as placeholder tokens,
one per vector, whose rows in the text encoder's token table hold the vectors; the prompt
is rewritten to those tokens. SDXL files carry a table per encoder (`clip_l` for the first,
`clip_g` for the second) and both get the same placeholder tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from webui.model_manager.archs import Arch, architectures
from webui.model_manager.load import LoadedModel, TextEncoder
from webui.model_manager.state_dict import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    CheckpointError,
    load_weights_only_pickle,
    read_state_dict,
)

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = SAFETENSORS_SUFFIXES + (".pt", ".bin")


class EmbeddingError(CheckpointError):
    """An embedding that cannot be read or used with the current model; the message names it."""


@dataclass(frozen=True)
class Embedding:
    name: str  # the file stem: what prompts write
    tables: tuple[torch.Tensor, ...]  # (vectors, width) per text encoder, in the model's encoder order

    @property
    def vector_count(self) -> int:
        return int(self.tables[0].shape[0])

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(table.shape[1]) for table in self.tables)

    @property
    def arch(self) -> Arch | None:
        """The architecture the widths say (None for widths no released model has): tables per
        encoder for several encoders, the context width for one."""
        for described in architectures():
            if len(described.text_encoders) != len(self.tables):
                continue
            if len(self.tables) > 1 or self.widths[0] == described.context_width:
                return described.arch
        return None

    @property
    def arch_label(self) -> str:
        if self.arch is not None:
            return self.arch.label
        return f"an unknown model with {'+'.join(map(str, self.widths))}-wide text vectors"


def read_embedding(path: Path) -> Embedding:
    """Read an A1111 (`string_to_param`, `emb_params`, SDXL `clip_l`/`clip_g`) or diffusers embedding."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            content: object = read_state_dict(path).tensors
        except CheckpointError as error:
            raise EmbeddingError(str(error)) from error
    elif suffix in PICKLE_SUFFIXES:
        content = _load_pickle(path)
    else:
        raise EmbeddingError(f"{path.name}: not an embedding file ({', '.join(EMBEDDING_SUFFIXES)})")
    tables = tuple(_as_table(path, table) for table in _find_tables(path, content))
    if len(tables) == 2 and tables[0].shape[0] != tables[1].shape[0]:
        raise EmbeddingError(f"{path.name}: clip_l and clip_g hold different numbers of vectors")
    return Embedding(path.stem, tables)


def _load_pickle(path: Path) -> object:
    # A1111 files nest dicts (string_to_param, string_to_token), which read_state_dict flattens
    # away; weights_only still refuses anything but containers, numbers, strings and tensors.
    if not path.is_file():
        raise EmbeddingError(f"{path.name}: no such file")
    return load_weights_only_pickle(path, EmbeddingError)


def _find_tables(path: Path, content: object) -> list[object]:
    if isinstance(content, torch.Tensor):
        return [content]
    if not isinstance(content, dict):
        raise EmbeddingError(f"{path.name}: holds a {type(content).__name__}, not an embedding")
    for keys in _multi_table_keys():
        if all(key in content for key in keys):
            return [content[key] for key in keys]
    if isinstance(params := content.get("string_to_param"), dict) and params:
        return [params.get("*", next(iter(params.values())))]
    if "emb_params" in content:
        return [content["emb_params"]]
    tensors = [value for value in content.values() if isinstance(value, torch.Tensor)]
    if len(content) == 1 and len(tensors) == 1:
        return tensors  # diffusers: {token: vectors}
    raise EmbeddingError(
        f"{path.name}: not an embedding layout we know "
        "(expected string_to_param, emb_params, clip_l/clip_g, or a single {token: vectors} entry)"
    )


def _multi_table_keys() -> list[tuple[str, ...]]:
    """The table keys of multi-encoder embedding files (SDXL's `clip_l`, `clip_g`)."""
    return [
        tuple(slot.embedding_key for slot in described.text_encoders)
        for described in architectures()
        if len(described.text_encoders) > 1
    ]


def _as_table(path: Path, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise EmbeddingError(f"{path.name}: the embedding vectors are not a float tensor")
    table = value.detach().to("cpu", torch.float32)
    if table.ndim == 3 and table.shape[0] == 1:
        table = table[0]
    if table.ndim == 1:
        table = table[None]
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise EmbeddingError(f"{path.name}: vectors of shape {tuple(value.shape)} are not an embedding")
    if not bool(torch.isfinite(table).all()):
        # They would turn every prompt that names the embedding into a black image.
        raise EmbeddingError(f"{path.name}: its vectors contain NaN or infinite values")
    return table


def apply_embeddings(
    model: LoadedModel, prompts: Sequence[str], available: Mapping[str, Path]
) -> tuple[list[str], list[str]]:
    """Prompts rewritten to the placeholder tokens of the embeddings they name, and those names.

    A name counts where it stands as a word of its own, in any letter case. Each embedding is
    read and installed into the model once; EmbeddingError if it does not fit the model.
    """
    lookup = {name.lower(): name for name in sorted(available, key=len, reverse=True)}
    used = embedding_names_in(prompts, available)
    if not used:
        return list(prompts), []
    pattern = _name_pattern(lookup)
    tokens = {name: _install(model, name, Path(available[name])) for name in used}
    rewritten = [
        pattern.sub(lambda match: " ".join(tokens[lookup[match[1].lower()]]), prompt) for prompt in prompts
    ]
    return rewritten, used


def embedding_names_in(prompts: Sequence[str], names: Iterable[str]) -> list[str]:
    """The names that stand as words of their own in the prompts, in any letter case, in order."""
    lookup = {name.lower(): name for name in sorted(names, key=len, reverse=True)}
    if not lookup:
        return []
    pattern = _name_pattern(lookup)
    used: list[str] = []
    for prompt in prompts:
        for match in pattern.finditer(prompt):
            name = lookup[match[1].lower()]
            if name not in used:
                used.append(name)
    return used


def _name_pattern(lookup: Mapping[str, str]) -> re.Pattern[str]:
    # Longest names first, so "style-x" wins over "style" where both would match.
    words = "|".join(re.escape(name) for name in lookup)
    return re.compile(rf"(?<!\w)({words})(?!\w)", re.IGNORECASE)


def _install(model: LoadedModel, name: str, path: Path) -> list[str]:
    """The embedding's placeholder tokens, adding them to the model first if needed.

    The tokens are named after a digest of the file's path, size and time, so the model's
    tokenizers themselves record what is loaded (nothing else to keep in sync) and an edited
    file gets fresh tokens instead of a stale table.
    """
    try:
        stat = path.stat()
    except OSError as error:
        raise EmbeddingError(f"embedding '{name}': cannot read {path}: {error.strerror or error}") from error
    digest = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    installed = _installed_tokens(model, digest)
    if installed:
        return installed
    try:
        embedding = dataclasses.replace(read_embedding(path), name=name)
    except EmbeddingError as error:
        reason = str(error).removeprefix(f"{path.name}: ")
        raise EmbeddingError(f"embedding '{name}' could not be used: {reason}") from error
    check_embedding_fits(model, embedding)
    tokens = [f"<ti-{digest}-{index}>" for index in range(embedding.vector_count)]
    with torch.no_grad():
        for tokenizer, encoder, table in zip(model.tokenizers, model.text_encoders, embedding.tables):
            _add_rows(tokenizer, encoder, tokens, table)
    log.info("loaded embedding %s (%d vectors) into %s", name, embedding.vector_count, model.name)
    return tokens


def _installed_tokens(model: LoadedModel, digest: str) -> list[str]:
    tokens: list[str] = []
    while all(
        _has_row(tokenizer, encoder, f"<ti-{digest}-{len(tokens)}>")
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders)
    ):
        tokens.append(f"<ti-{digest}-{len(tokens)}>")
    return tokens


def _has_row(tokenizer: CLIPTokenizer, encoder: TextEncoder, token: str) -> bool:
    token_id = tokenizer.get_added_vocab().get(token)
    return token_id is not None and token_id < encoder.get_input_embeddings().num_embeddings


def check_embedding_fits(model: LoadedModel, embedding: Embedding) -> None:
    """EmbeddingError naming the embedding and both architectures unless its tables fit the encoders."""
    model_widths = tuple(int(encoder.get_input_embeddings().embedding_dim) for encoder in model.text_encoders)
    if len(embedding.tables) != len(model_widths):
        raise EmbeddingError(
            f"embedding '{embedding.name}' is for {embedding.arch_label}, the current model is "
            f"{model.arch.label}: it has vectors for {len(embedding.tables)} text encoder(s), "
            f"the model has {len(model_widths)}"
        )
    if embedding.widths != model_widths:
        raise EmbeddingError(
            f"embedding '{embedding.name}' is for {embedding.arch_label}, the current model is "
            f"{model.arch.label}: its vectors are {'+'.join(map(str, embedding.widths))} wide, "
            f"the model's text encoders take {'+'.join(map(str, model_widths))}"
        )


def _add_rows(tokenizer: CLIPTokenizer, encoder: TextEncoder, tokens: list[str], table: torch.Tensor) -> None:
    tokenizer.add_tokens(tokens)
    rows = encoder.get_input_embeddings()
    if len(tokenizer) > rows.num_embeddings:
        # mean_resizing would sample the new rows from the table's statistics; they are
        # overwritten at once, so skip that work (and its use of the global random generator).
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        rows = encoder.get_input_embeddings()
    ids = tokenizer.convert_tokens_to_ids(tokens)
    rows.weight[ids] = table.to(rows.weight.device, rows.weight.dtype)
    rows.weight.requires_grad_(False)
