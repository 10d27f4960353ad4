"""The command line's flags for request fields, from the request's declaration (no torch here)."""

from __future__ import annotations

import argparse
from enum import IntEnum
from typing import Any

from webui.engine.parameters import Declared, declared
from webui.engine.request import GenerationRequest

# The request fields each command takes a flag for; flags, help and bounds come from the request's
# declaration (engine/request.py).
GENERATION_FLAGS = (
    "prompt",
    "negative_prompt",
    "sampler_name",
    "scheduler",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "seed",
    "batch_size",
    "n_iter",
    "clip_skip",
    "slg_scale",
    "slg_layers",
    "slg_start",
    "slg_stop",
)
IMG2IMG_FLAGS = (
    "denoising_strength",
    "resize_mode",
    "mask_blur",
    "inpainting_mask_invert",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
)


def add_declared_flag(command: argparse.ArgumentParser, item: Declared, **options: Any) -> None:
    """A request field's flag as declared: its type, default and help, its bounds in the help."""
    kwargs: dict[str, Any] = {"default": item.default}
    if item.param.help:
        kwargs["help"] = item.param.help
    if item.type is bool:
        kwargs["action"] = "store_true"
    elif is_choice(item):
        kwargs.update(type=int, choices=[member.value for member in item.type], default=int(item.default))
    else:
        kwargs["type"] = item.type
    kwargs.update(options)
    bounds = item.bounds_text()
    if bounds:
        kwargs["help"] = f"{kwargs['help']}; {bounds}" if kwargs.get("help") else bounds
    command.add_argument(*item.param.cli, **kwargs)


def is_choice(item: Declared) -> bool:
    """A numbered choice (resize mode, masked content): an int flag limited to its members."""
    return isinstance(item.type, type) and issubclass(item.type, IntEnum)


def body_fields(names: tuple[str, ...], sent_apart: tuple[str, ...] = ()) -> tuple[tuple[str, str, str], ...]:
    """(A1111 body field, argument, flag) of the flags whose value goes into the body as it is;
    fields carried in override_settings and those in `sent_apart` are left to the caller."""
    found = []
    for name in names:
        item = declared(GenerationRequest, name)
        if "." not in item.api_name and name not in sent_apart:
            found.append((item.api_name, item.flag_dest, item.param.cli[0]))
    return tuple(found)
