"""Poor man's outpainting: grow the canvas on chosen sides and inpaint only the new area (plus a seam)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from webui.engine.request import GenerationError, GenerationRequest, MaskedContent, ResizeMode
from webui.results import StudioResult
from webui.scripts.args import ScriptArg, read_args
from webui.scripts.base import Planned, ScriptRun

DIRECTIONS = ("left", "right", "up", "down")
FILLS = ("fill", "original", "latent noise", "latent nothing")  # A1111's order = MaskedContent


@dataclass(frozen=True)
class OutpaintArgs:
    pixels: int = 128
    mask_blur: int = 4
    inpainting_fill: str = "fill"
    direction: tuple[str, ...] = DIRECTIONS


@dataclass(frozen=True)
class Canvas:
    image: Image.Image  # the original pasted at (left, top); new area stretched from its edges
    mask: Image.Image  # L: 255 = repaint; fades to 0 over `overlap` pixels into the original
    left: int
    top: int


def _rounded_up(value: int) -> int:
    return math.ceil(value / 8) * 8


def build_canvas(original: Image.Image, pixels: int, directions: Sequence[str], overlap: int) -> Canvas:
    """The bigger canvas (sides multiples of 8, growing the chosen sides) and its repaint mask."""
    image = np.asarray(original.convert("RGB"))
    height, width = image.shape[:2]
    grow = {side: pixels if side in directions else 0 for side in DIRECTIONS}
    # Rounding up to multiples of 8 adds to a side that grows anyway (right/down first).
    extra_w = _rounded_up(width + grow["left"] + grow["right"]) - (width + grow["left"] + grow["right"])
    extra_h = _rounded_up(height + grow["up"] + grow["down"]) - (height + grow["up"] + grow["down"])
    grow["left" if grow["left"] and not grow["right"] else "right"] += extra_w
    grow["up" if grow["up"] and not grow["down"] else "down"] += extra_h
    padded = np.pad(image, ((grow["up"], grow["down"]), (grow["left"], grow["right"]), (0, 0)), mode="edge")

    mask = np.full(padded.shape[:2], 255.0)
    inside = np.zeros((height, width))
    # Distance (in pixels) from each grown edge, inward; the repaint weight falls linearly to 0.
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    for side, distance in (
        ("left", cols),
        ("right", width - 1 - cols),
        ("up", rows),
        ("down", height - 1 - rows),
    ):
        if grow[side] and overlap:
            inside = np.maximum(inside, np.clip(overlap - distance, 0, None) / (overlap + 1))
    mask[grow["up"] : grow["up"] + height, grow["left"] : grow["left"] + width] = 255.0 * inside
    return Canvas(
        Image.fromarray(padded),
        Image.fromarray(np.round(mask).astype(np.uint8), "L"),
        grow["left"],
        grow["up"],
    )


class Outpainting:
    """A1111's "Poor man's outpainting" (img2img only).

    Positional script_args: pixels (128: how far to expand each chosen side), mask_blur (4: the
    seam reaches 2 x mask_blur pixels into the original, where old and new fade into each other),
    inpainting_fill ("fill", "original", "latent noise", "latent nothing", or index 0-3),
    direction (list of "left", "right", "up", "down"; all by default).

    The canvas grows (sides rounded up to multiples of 8, the extra on a growing side), the new
    area starts as the original's edge pixels stretched outwards, and one inpaint generation at
    the canvas size repaints the new area; original pixels beyond the seam are kept exactly.
    The result is that generation's, with its own infotext (Size: the canvas).
    """

    title = "Poor man's outpainting"
    modes = frozenset({"img2img"})
    args = (
        ScriptArg("pixels", "Pixels to expand", "number", 128, minimum=8, maximum=2048),
        ScriptArg("mask_blur", "Mask blur", "number", 4, minimum=0, maximum=64),
        ScriptArg("inpainting_fill", "Masked content", "choice", "fill", FILLS),
        ScriptArg("direction", "Outpainting direction", "multichoice", DIRECTIONS, DIRECTIONS),
    )

    def parse_args(self, args: Sequence[Any]) -> OutpaintArgs:
        read = read_args(self.title, self.args, args)
        if not read["direction"]:
            raise GenerationError(f"{self.title}: choose at least one direction", "script_args")
        return OutpaintArgs(**read)

    def planned(self, request: GenerationRequest, args: OutpaintArgs) -> list[Planned]:
        """One generation at the grown canvas's size."""
        if request.init_image is None:
            return []
        return [Planned(f"{self.title}: the grown canvas", self._outpaint(request, args))]

    def run(self, request: GenerationRequest, args: OutpaintArgs, run: ScriptRun) -> StudioResult:
        if request.init_image is None:
            raise GenerationError(f"{self.title} needs an init image", "init_images")
        return run.generate(self._outpaint(request, args), None)

    def _outpaint(self, request: GenerationRequest, args: OutpaintArgs) -> GenerationRequest:
        assert request.init_image is not None
        canvas = build_canvas(request.init_image, args.pixels, args.direction, 2 * args.mask_blur)
        return replace(
            request,
            init_image=canvas.image,
            mask=canvas.mask,
            width=canvas.image.width,
            height=canvas.image.height,
            resize_mode=ResizeMode.JUST_RESIZE,
            mask_blur=0,  # the mask already fades; blurring it would reach past the seam
            inpainting_fill=MaskedContent(FILLS.index(args.inpainting_fill)),
            inpainting_mask_invert=False,
            inpaint_full_res=False,
        )
