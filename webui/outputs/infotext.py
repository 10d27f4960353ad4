"""A1111's infotext: the three-part text stored in every saved image (DESIGN.md section 5)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# A1111's RNG sources; the engine's list, repeated here because outputs does not import the engine.
RNG_SOURCES = ("CPU", "GPU", "NV")
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
    """Map A1111 keys to GenerationRequest field names; values that do not convert are skipped."""
    fields: dict[str, object] = {}
    for key, field_name, convert in _FIELD_CONVERSIONS:
        if key in params:
            value = convert(params[key])
            if value is not None:
                fields[field_name] = value
    for key, (width_field, height_field) in _SIZE_KEYS.items():
        size = _to_size(params.get(key))
        if size is not None:
            fields[width_field], fields[height_field] = size
    if "Hires upscale" in params or "Hires resize" in params:
        fields["enable_hr"] = True
    if str(params.get("Inpaint area", "")).strip().lower() == "only masked":
        fields["inpaint_full_res"] = True
    return fields


def _to_text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _to_int(value: object) -> int | None:
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    number = _to_float(text)  # "20.0" from hand-edited or foreign infotexts
    return int(number) if number is not None and number.is_integer() else None


def _to_rng(value: object) -> str | None:
    """A1111's RNG sources ("CPU", "GPU", "NV"), any case."""
    text = str(value).strip().upper()
    return text if text in RNG_SOURCES else None


def _to_bool(value: object) -> bool | None:
    text = str(value).strip().lower()
    return {"true": True, "false": False}.get(text)


def _to_float(value: object) -> float | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _to_size(value: object) -> tuple[int, int] | None:
    if not isinstance(value, str):
        return None
    width, sep, height = value.strip().lower().partition("x")
    if not sep:
        return None
    parsed = _to_int(width), _to_int(height)
    if parsed[0] is None or parsed[1] is None:
        return None
    return parsed[0], parsed[1]


# (A1111 key, GenerationRequest field, converter); "Size" is split separately.
_FIELD_CONVERSIONS: tuple[tuple[str, str, Callable[[str], object | None]], ...] = (
    ("Steps", "steps", _to_int),
    ("Sampler", "sampler_name", _to_text),
    ("Schedule type", "scheduler", _to_text),
    ("CFG scale", "cfg_scale", _to_float),
    ("Seed", "seed", _to_int),
    ("Clip skip", "clip_skip", _to_int),
    ("Denoising strength", "denoising_strength", _to_float),
    ("Mask blur", "mask_blur", _to_int),
    # A1111 writes "Eta DDIM" for DDIM and "Eta" for other samplers; "Eta" wins when both appear.
    ("Eta DDIM", "eta", _to_float),
    ("Eta", "eta", _to_float),
    ("Model", "model", _to_text),
    ("Model hash", "model_hash", _to_text),
    ("Variation seed", "subseed", _to_int),
    ("Variation seed strength", "subseed_strength", _to_float),
    ("Tiling", "tiling", _to_bool),
    ("RNG", "rng", _to_rng),
    ("Noise multiplier", "initial_noise_multiplier", _to_float),
    ("Masked area padding", "inpaint_full_res_padding", _to_int),
    ("Hires upscale", "hr_scale", _to_float),
    ("Hires steps", "hr_second_pass_steps", _to_int),
    ("Hires upscaler", "hr_upscaler", _to_text),
    ("Hires sampler", "hr_sampler_name", _to_text),
    ("Hires schedule type", "hr_scheduler", _to_text),
    ("Hires prompt", "hr_prompt", _to_text),
    ("Hires negative prompt", "hr_negative_prompt", _to_text),
)
# Keys whose value is `WxH`, and the request's (width, height) fields for them.
_SIZE_KEYS = {
    "Size": ("width", "height"),
    "Seed resize from": ("seed_resize_from_w", "seed_resize_from_h"),
    "Hires resize": ("hr_resize_x", "hr_resize_y"),
}
