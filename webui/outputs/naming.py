"""File names from a pattern such as "[seed]-[prompt_words]", filled from an image's infotext."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

from webui.outputs.infotext import Infotext, parse_infotext

DEFAULT_PATTERN = "[seed]"
MAX_NAME_CHARS = 120  # leaves room for the number prefix and folders under common path limits
_PROMPT_WORDS = 8
_TOKEN = re.compile(r"\[([a-z_]+)\]")
_UNSAFE = re.compile(r"[^\w\-. ]+")


def _param(key: str) -> Callable[[int, Infotext, datetime], str]:
    return lambda _seed, info, _when: info.params.get(key, "")


def _size(index: int) -> Callable[[int, Infotext, datetime], str]:
    return lambda _seed, info, _when: (info.params.get("Size", "").split("x") + ["", ""])[index]


# The names A1111 users know from its "Images filename pattern" setting.
TOKENS: dict[str, Callable[[int, Infotext, datetime], str]] = {
    "seed": lambda seed, _info, _when: str(seed),
    "prompt_words": lambda _seed, info, _when: " ".join(re.findall(r"\w+", info.prompt)[:_PROMPT_WORDS]),
    "model_name": _param("Model"),
    "model_hash": _param("Model hash"),
    "sampler": _param("Sampler"),
    "scheduler": _param("Schedule type"),
    "steps": _param("Steps"),
    "cfg": _param("CFG scale"),
    "width": _size(0),
    "height": _size(1),
    "date": lambda _seed, _info, when: when.strftime("%Y-%m-%d"),
    "datetime": lambda _seed, _info, when: when.strftime("%Y%m%d%H%M%S"),
}


def check_pattern(pattern: str) -> str:
    """The pattern, or ValueError naming what is wrong with it (unknown token, a folder separator)."""
    if not pattern.strip():
        raise ValueError("the file name pattern is empty; use e.g. [seed]")
    unknown = sorted(set(_TOKEN.findall(pattern)) - TOKENS.keys())
    if unknown:
        raise ValueError(
            f"unknown file name token(s) {', '.join(f'[{t}]' for t in unknown)}; "
            f"known: {', '.join(f'[{t}]' for t in TOKENS)}"
        )
    literal = _TOKEN.sub("", pattern)
    if "/" in literal or "\\" in literal or ".." in literal:
        raise ValueError("the file name pattern may not contain folders (/, \\ or ..)")
    return pattern


def expand_pattern(pattern: str, seed: int, infotext: str, when: datetime) -> str:
    """A safe file name stem: characters outside letters, digits, `-`, `.`, `_` and space become `_`."""
    info = parse_infotext(infotext)
    name = _TOKEN.sub(lambda match: TOKENS[match.group(1)](seed, info, when), pattern)
    name = _UNSAFE.sub("_", name).strip(" .")[:MAX_NAME_CHARS].strip(" .")
    return name or str(seed)
