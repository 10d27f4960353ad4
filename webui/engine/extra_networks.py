"""A1111's extra-network prompt tags: `<lora:name>`, `<lora:name:0.7>`, `<lora:name:te:unet>`."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from webui.engine.request import GenerationError

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


@dataclass(frozen=True)
class RefusedNetworks:
    """LoRA and embedding files that cannot be used, by the name prompts would use: the reason."""

    loras: Mapping[str, str] = field(default_factory=dict)
    embeddings: Mapping[str, str] = field(default_factory=dict)


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


def lora_list_name(written: str, usable: Collection[str], refused: Mapping[str, str]) -> str:
    """The LoRA list's name for a tag's name: exact, else the one match ignoring case.

    Otherwise a GenerationError on the prompt; when a file of that name was refused by the
    scan, it gives the scan's reason, since "unknown" would send the user looking for a typo.
    """
    if written in usable:
        return written
    folded = [name for name in usable if name.lower() == written.lower()]
    if len(folded) == 1:
        return folded[0]
    reason = refused.get(written)
    if reason is None:
        reason = next((why for name, why in refused.items() if name.lower() == written.lower()), None)
    if reason is not None:
        raise refused_network("LoRA", written, reason)
    raise GenerationError(
        f"unknown LoRA '{written}' in the prompt; check its name in the LoRA list "
        "(refresh the list after adding files)",
        "prompt",
    )


def refused_network(kind: str, name: str, reason: str) -> GenerationError:
    """The job error for a LoRA or embedding named in a prompt whose file cannot be used."""
    return GenerationError(f"{kind} '{name}' could not be used: {reason}", "prompt")


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
