"""CLIP tokenizers built from the BPE merge list shipped in this package: no download, ever."""

from __future__ import annotations

import functools
import gzip
from importlib import resources

from transformers import CLIPTokenizer

# The merge list file has a header line, then the merges CLIP actually uses.
_MERGE_COUNT = 49152 - 256 - 2
MAX_LENGTH = 77


@functools.cache
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    raw = resources.files("webui.model_manager.assets").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1]]
    symbols = list(_byte_symbols())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible map of the 256 byte values to printable characters, in id order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    order = printable + [b for b in range(256) if b not in printable]
    shifted = printable + [256 + i for i in range(256 - len(printable))]
    return [chr(code) for _, code in zip(order, shifted)]


def build_clip_tokenizer(*, pad_with_exclamation: bool) -> CLIPTokenizer:
    """SD1 and SDXL's first encoder pad with <|endoftext|>; SD2 and SDXL's second with "!" (id 0)."""
    vocab, merges = _vocab_and_merges()
    pad = "!" if pad_with_exclamation else "<|endoftext|>"
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad, model_max_length=MAX_LENGTH)
