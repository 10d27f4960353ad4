"""SD upscale: upscale the init image, redraw it tile by tile with img2img, and feather the tiles together."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from webui.engine.request import GenerationError, GenerationRequest, ResizeMode
from webui.outputs.infotext import format_infotext, parse_infotext
from webui.results import StudioResult
from webui.scripts.args import ScriptArg, read_args
from webui.scripts.base import ResultParts, ScriptRun, fixed_seed

Box = tuple[int, int]  # a tile's top-left corner (x, y)


@dataclass(frozen=True)
class UpscaleArgs:
    overlap: int = 64
    upscaler: str = "Lanczos"
    scale_factor: float = 2.0


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile starts covering `length` with at least `overlap` shared pixels (as A1111)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [min(int(i * step), length - tile) for i in range(count)]


def feather_weights(
    tile_w: int, tile_h: int, overlap: int, edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """A tile's blend weight: rising linearly over `overlap` pixels from each edge it shares
    (left, top, right, bottom); never 0, so every covered pixel has some weight."""
    ramp_x, ramp_y = np.ones(tile_w), np.ones(tile_h)
    steps = (np.arange(overlap) + 1) / (overlap + 1)
    width_x, width_y = min(overlap, tile_w), min(overlap, tile_h)
    left, top, right, bottom = edges
    if left:
        ramp_x[:width_x] = np.minimum(ramp_x[:width_x], steps[:width_x])
    if right:
        ramp_x[tile_w - width_x :] = np.minimum(ramp_x[tile_w - width_x :], steps[:width_x][::-1])
    if top:
        ramp_y[:width_y] = np.minimum(ramp_y[:width_y], steps[:width_y])
    if bottom:
        ramp_y[tile_h - width_y :] = np.minimum(ramp_y[tile_h - width_y :], steps[:width_y][::-1])
    return ramp_y[:, None] * ramp_x[None, :]


def blend_tiles(size: tuple[int, int], tiles: Sequence[tuple[Box, Image.Image]], overlap: int) -> Image.Image:
    """Tiles (all the same size) put back at their corners, feathered where they overlap."""
    width, height = size
    total = np.zeros((height, width, 3))
    weight = np.zeros((height, width, 1))
    for (x, y), tile in tiles:
        edges = (x > 0, y > 0, x + tile.width < width, y + tile.height < height)
        w = feather_weights(tile.width, tile.height, overlap, edges)[:, :, None]
        total[y : y + tile.height, x : x + tile.width] += (
            np.asarray(tile.convert("RGB"), dtype=np.float64) * w
        )
        weight[y : y + tile.height, x : x + tile.width] += w
    return Image.fromarray(np.clip(np.round(total / np.maximum(weight, 1e-12)), 0, 255).astype(np.uint8))


class SdUpscale:
    """A1111's "SD upscale" (img2img only).

    Positional script_args: overlap (64 px), upscaler (a name, e.g. "Lanczos"), scale_factor
    (2.0). A1111's four-value form with an unused first value ([info, overlap, upscaler,
    scale_factor]) is accepted too.

    The init image is upscaled, cut into tiles of the request's width x height that share at
    least `overlap` pixels, and each tile is redrawn by img2img at the request's denoising
    strength (batch size 1). As A1111, tile i gets seed + i (-1: one random seed); with a batch
    count above 1, upscale n starts from seed + n. Tiles are not saved; the final images are,
    at the upscaled size, with the first tile's infotext (Size set to the final size, plus "SD
    upscale overlap" and "SD upscale upscaler"). An interrupt keeps the tiles done so far.
    """

    title = "SD upscale"
    modes = frozenset({"img2img"})
    args = (
        ScriptArg("overlap", "Tile overlap", "number", 64, minimum=0, maximum=256),
        ScriptArg("upscaler", "Upscaler", "text", "Lanczos", source="upscalers"),
        ScriptArg("scale_factor", "Scale Factor", "number", 2.0, minimum=1.0, maximum=4.0),
    )

    def parse_args(self, args: Sequence[Any]) -> UpscaleArgs:
        if isinstance(args, Sequence) and not isinstance(args, str) and len(args) == len(self.args) + 1:
            args = args[1:]  # A1111's leading info placeholder
        return UpscaleArgs(**read_args(self.title, self.args, args))

    def run(self, request: GenerationRequest, args: UpscaleArgs, run: ScriptRun) -> StudioResult:
        if request.init_image is None:
            raise GenerationError(f"{self.title} needs an init image", "init_images")
        if args.overlap >= min(request.width, request.height):
            raise GenerationError(
                f"{self.title}: the overlap ({args.overlap}) must be smaller than the tile "
                f"({request.width}x{request.height})",
                "script_args",
            )
        base = replace(request, mask=None, batch_size=1, n_iter=1, resize_mode=ResizeMode.JUST_RESIZE)
        run.preflight(base, None)
        try:
            upscaled = run.upscale(request.init_image.convert("RGB"), args.upscaler, args.scale_factor)
        except GenerationError as error:  # the upscaler came from script_args, not from a request field
            raise GenerationError(f"{self.title}: {error}", "script_args") from None
        seed = fixed_seed(request.seed)
        parts = ResultParts()
        for n in range(request.n_iter):
            final, infotext, interrupted = self._upscale_once(base, upscaled, args, run, seed + n)
            if infotext is not None:
                parts.add(
                    final, infotext, (seed + n) % 2**32, run.save_image(final, infotext, (seed + n) % 2**32)
                )
            if interrupted:
                return parts.result(True)
        return parts.result()

    def _upscale_once(
        self, base: GenerationRequest, upscaled: Image.Image, args: UpscaleArgs, run: ScriptRun, seed: int
    ) -> tuple[Image.Image, str | None, bool]:
        tile_w, tile_h = base.width, base.height
        # An image smaller than a tile is padded with its edge pixels, then cropped back.
        canvas = _padded(upscaled, max(upscaled.width, tile_w), max(upscaled.height, tile_h))
        corners = [
            (x, y)
            for y in tile_starts(canvas.height, tile_h, args.overlap)
            for x in tile_starts(canvas.width, tile_w, args.overlap)
        ]
        tiles: list[tuple[Box, Image.Image]] = []
        first_infotext: str | None = None
        interrupted = False
        for index, (x, y) in enumerate(corners):
            tile = canvas.crop((x, y, x + tile_w, y + tile_h))
            if run.control.interrupted:
                interrupted = True
            else:
                tile_request = replace(base, init_image=tile, seed=(seed + index) % 2**32)
                result = run.generate(tile_request, None, save=False)
                if result.images:
                    tile = result.images[0]
                    first_infotext = first_infotext or result.infotexts[0]
                interrupted = result.interrupted or run.control.interrupted
            tiles.append(((x, y), tile))
        final = blend_tiles(canvas.size, tiles, args.overlap).crop((0, 0, upscaled.width, upscaled.height))
        infotext = _final_infotext(first_infotext, final.size, args) if first_infotext else None
        return final, infotext, interrupted


def _padded(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    array = np.asarray(image)
    return Image.fromarray(
        np.pad(array, ((0, height - image.height), (0, width - image.width), (0, 0)), mode="edge")
    )


def _final_infotext(tile_infotext: str, size: tuple[int, int], args: UpscaleArgs) -> str:
    info = parse_infotext(tile_infotext)
    params: dict[str, object] = dict(info.params)
    params["Size"] = f"{size[0]}x{size[1]}"
    version = params.pop("Version", None)
    params["SD upscale overlap"] = args.overlap
    params["SD upscale upscaler"] = args.upscaler
    params["Version"] = version
    return format_infotext(info.prompt, info.negative_prompt, params)
