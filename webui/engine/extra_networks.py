"""A1111's extra-network prompt tags: `<lora:name>`, `<lora:name:0.7>`, `<lora:name:te:unet>`."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

# `<kind:arg:arg...>`; names may hold anything but the tag's own delimiters.
_TAG = re.compile(r"<(\w+):([^:<>]+)((?::[^:<>]*)*)>")
LORA_KINDS = ("lora", "lyco")  # A1111 still reads the old LyCORIS extension's spelling
DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True)
class LoraTag:
    name: str
    text_encoder_weight: float = DEFAULT_WEIGHT
    unet_weight: float = DEFAULT_WEIGHT

    @property
    def weight(self) -> float:
        """The one weight infotext shows: A1111 writes the text-encoder multiplier."""
        return self.text_encoder_weight


def parse_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """The prompt without its LoRA tags, and the tags in order.

    A tag whose weights are not numbers is dropped with a warning rather than failing the job
    (A1111 stops with an error), so one typo does not cost a whole queue of images.
    """
    tags: list[LoraTag] = []

    def take(match: re.Match[str]) -> str:
        kind, name, rest = match[1].lower(), match[2].strip(), match[3]
        if kind not in LORA_KINDS:
            return match[0]  # hypernetworks and other kinds are not ours: leave the text alone
        tag = _lora_tag(name, [arg.strip() for arg in rest.split(":")[1:]])
        if tag is None:
            log.warning("ignoring %s: its weights are not numbers", match[0])
        else:
            tags.append(tag)
        return ""

    cleaned = _TAG.sub(take, prompt)
    # A prompt without tags stays exactly as typed.
    return (prompt if cleaned == prompt else _tidy(cleaned)), tags


def _lora_tag(name: str, args: list[str]) -> LoraTag | None:
    if not name:
        return None
    numbers = [_number(arg) for arg in args[:2]]
    if any(number is None for number in numbers):
        return None
    if not numbers:
        return LoraTag(name)
    te_weight = numbers[0]
    unet_weight = numbers[1] if len(numbers) > 1 else te_weight
    return LoraTag(name, te_weight, unet_weight)  # type: ignore[arg-type]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _tidy(text: str) -> str:
    """Collapse the gaps and stray commas a removed tag leaves behind."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r",(\s*,)+", ",", text)
    return text.strip().strip(",").strip()
