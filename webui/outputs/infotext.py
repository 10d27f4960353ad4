"""A1111's infotext: the three-part text stored in every saved image (DESIGN.md section 5)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from webui.engine.image_parameters import request_fields_from_pairs  # no torch

NEGATIVE_PREFIX = "Negative prompt:"
# A1111's rule: the last line is parameters only when it holds at least this many pairs,
# so a prompt that merely contains "a: b" is not mistaken for one.
MIN_PARAMS_ON_LINE = 3

# One `key: value` pair; the value is a JSON string or runs to the next comma.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_NEEDS_QUOTES = (",", ":", '"', "\n")


@dataclass(frozen=True)
class Infotext:
    prompt: str
    negative_prompt: str
    params: dict[str, str]


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Build the text; pairs keep the mapping's order and None values are left out."""
    pairs = [f"{key}: {_format_value(value)}" for key, value in params.items() if value is not None]
    parts = []
    if prompt:
        parts.append(prompt)
    if negative_prompt:
        parts.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    if pairs:
        parts.append(", ".join(pairs))
    return "\n".join(parts)


def _format_value(value: object) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        text = str(int(value))  # A1111 writes "CFG scale: 7", not 7.0
    else:
        text = str(value)
    # Surrounding spaces would be lost by the parser's strip, so they need quotes too.
    if any(char in text for char in _NEEDS_QUOTES) or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def parse_infotext(text: str) -> Infotext:
    """Split infotext into prompt, negative prompt and raw string params; never raises."""
    if not isinstance(text, str):
        return Infotext("", "", {})
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    params: dict[str, str] = {}
    if len(_PARAM_RE.findall(lines[-1])) >= MIN_PARAMS_ON_LINE:
        params = _parse_params_line(lines.pop())

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if not negative_lines and line.lstrip().startswith(NEGATIVE_PREFIX):
            # The first negative line keeps only what follows the prefix (possibly "").
            negative_lines.append(line.lstrip()[len(NEGATIVE_PREFIX) :])
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    return Infotext(
        prompt="\n".join(prompt_lines).strip(),
        negative_prompt="\n".join(negative_lines).strip(),
        params=params,
    )


def _parse_params_line(line: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, raw in _PARAM_RE.findall(line):
        value = raw.strip()
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value  # a malformed quote is kept as written rather than dropped
            value = decoded if isinstance(decoded, str) else value
        params[key.strip()] = value
    return params


def request_fields_from_params(params: Mapping[str, str]) -> dict[str, object]:
    """Map A1111 keys to GenerationRequest field names; values that do not convert are skipped.

    The keys and how each is read come from the request's declaration (engine/request.py)."""
    return request_fields_from_pairs(params)
