"""The architectures we load, as registered data (see base.py for what one is).

Adding an architecture: describe it in a module beside these, list it in `_REGISTERED`, and
give its denoising family a loop in engine/families/ if it has a new one.
"""

from __future__ import annotations

from collections.abc import Iterable

from webui.model_manager.archs.base import (
    Arch,
    Architecture,
    DenoisingFamily,
    LatentFormat,
    TextConditioning,
    TextEncoderSlot,
)
from webui.model_manager.archs.sd1 import SD1
from webui.model_manager.archs.sd2 import SD2
from webui.model_manager.archs.sd3 import SD3
from webui.model_manager.archs.sdxl import SDXL

__all__ = [
    "Arch",
    "Architecture",
    "DenoisingFamily",
    "LatentFormat",
    "TextConditioning",
    "TextEncoderSlot",
    "architecture",
    "architectures",
    "diffusers_folder_architecture",
    "match_text_encoders",
]

# Detection order: an architecture whose encoders include another's prefixes comes first.
_REGISTERED: tuple[Architecture, ...] = (SDXL, SD2, SD1, SD3)


def architectures() -> tuple[Architecture, ...]:
    return _REGISTERED


def architecture(arch: Arch | str) -> Architecture:
    """The description of `arch` (an Arch or its stored value)."""
    arch = Arch(arch)
    return next(described for described in _REGISTERED if described.arch is arch)


def match_text_encoders(keys: Iterable[str]) -> tuple[Architecture | None, str]:
    """The architecture whose text encoders a single file's keys hold, or (None, why not).

    A file with an architecture's identifying encoder but not all of its encoders is named
    by that architecture's `incomplete_message` (an SDXL refiner, for one)."""
    keys = list(keys)
    prefixes = {slot.prefix for described in _REGISTERED for slot in described.text_encoders}
    found = {prefix for prefix in prefixes if any(key.startswith(prefix) for key in keys)}
    for described in _REGISTERED:
        if not described.encoders_in_checkpoint_layout:
            continue
        if described.identifying_prefix not in found:
            continue
        if all(slot.prefix in found for slot in described.text_encoders):
            return described, ""
        return None, described.incomplete_message or f"{described.label} without all its text encoders"
    return None, "it has a UNet but no text encoder we know"


def diffusers_folder_architecture(encoder_count: int, first_activation: str) -> Architecture | None:
    """The architecture of a diffusers folder from its text encoders: how many, and the first
    one's activation (OpenAI CLIP's quick_gelu or OpenCLIP's gelu: sizes differ in tiny models)."""
    candidates = [
        described
        for described in _REGISTERED
        if described.encoders_in_checkpoint_layout and len(described.text_encoders) == encoder_count
    ]
    if len(candidates) == 1:
        return candidates[0]
    return next((c for c in candidates if c.text_encoders[0].activation == first_activation), None)
