"""Image inputs that take a file which is not an image (random bytes named `x.jpg`, text named
`x.png`) as a value the tab can answer, rather than failing the event with Gradio's raw "Could not
preprocess input component ..." (a temp path and an exception name) and leaving the last result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
from PIL import Image

# What PIL raises for bytes it cannot decode (UnidentifiedImageError is an OSError) or a bomb.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Unreadable:
    """An upload that is not a readable image; `name` is the file's own name, never a temp path."""

    name: str

    @property
    def message(self) -> str:
        return f"{self.name} is not a readable image (PNG, JPEG or WebP, not damaged)"


def unreadable_message(path: str | Path) -> str:
    return Unreadable(Path(path).name).message


def _name_of(payload: Any) -> str:
    for candidate in (getattr(payload, "orig_name", None), getattr(payload, "path", None)):
        if candidate:
            return Path(str(candidate)).name
    background = getattr(payload, "background", None)
    return _name_of(background) if background is not None else "the file"


ImageComponent = TypeVar("ImageComponent", gr.Image, gr.ImageEditor)


def tolerant(component: ImageComponent) -> ImageComponent:
    """`component` handing an undecodable upload over as `Unreadable` (a gr.Image with
    type="filepath": as its path, which the handler reads and reports itself).

    Wraps the instance's `preprocess`: a subclass would make Gradio write a .pyi beside this file.
    """
    original = component.preprocess
    keeps_path = isinstance(component, gr.Image) and component.type == "filepath"

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except DECODE_ERRORS:
            if keeps_path and getattr(payload, "path", None):
                return str(payload.path)
            return Unreadable(_name_of(payload))

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component
