"""Read a shapes image back from its pixels: background, object colour, shape and place.

No model is involved, so the scores judge a generator honestly: the background is the
median colour of the border, the object is every pixel far from it, its shape comes from
how much of its bounding box it fills, and its place from its centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from webui.training.shapes import COLOURS, PLACES

# A pixel belongs to the object when it is this far (RGB distance) from the background.
OBJECT_DISTANCE = 80.0
# Fewer object pixels than this fraction of the image: nothing was drawn.
MIN_OBJECT_FRACTION = 0.01
# Bounding-box fill between these: triangle (0.5) below the first, square (1.0) above the second.
TRIANGLE_BELOW = 0.64
SQUARE_ABOVE = 0.89

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _PALETTE_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class SceneReading:
    background: str
    colour: str | None  # None: no object found
    shape: str | None
    place: str | None
    fill: float  # the object's fraction of its bounding box


def nearest_colour(rgb: np.ndarray) -> str:
    distances = np.linalg.norm(_PALETTE - rgb.astype(np.float32), axis=1)
    return _PALETTE_NAMES[int(distances.argmin())]


def read_scene(image: Image.Image) -> SceneReading:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width, _ = pixels.shape
    border_width = max(2, min(height, width) // 32)
    border = np.concatenate(
        [
            pixels[:border_width].reshape(-1, 3),
            pixels[-border_width:].reshape(-1, 3),
            pixels[:, :border_width].reshape(-1, 3),
            pixels[:, -border_width:].reshape(-1, 3),
        ]
    )
    background_rgb = np.median(border, axis=0)
    background = nearest_colour(background_rgb)
    mask = np.linalg.norm(pixels - background_rgb, axis=2) > OBJECT_DISTANCE
    if mask.mean() < MIN_OBJECT_FRACTION:
        return SceneReading(background, None, None, None, 0.0)
    ys, xs = np.nonzero(mask)
    colour = nearest_colour(np.median(pixels[mask], axis=0))
    # A 1% trim on each side keeps stray pixels from widening the box.
    x0, x1 = np.percentile(xs, [1, 99])
    y0, y1 = np.percentile(ys, [1, 99])
    box = max(1.0, (x1 - x0 + 1) * (y1 - y0 + 1))
    inside = mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1]
    fill = float(inside.sum() / box)
    shape = "triangle" if fill < TRIANGLE_BELOW else "square" if fill > SQUARE_ABOVE else "circle"
    cx, cy = xs.mean() / width, ys.mean() / height
    place = min(PLACES, key=lambda name: (PLACES[name][0] - cx) ** 2 + (PLACES[name][1] - cy) ** 2)
    return SceneReading(background, colour, shape, place, fill)
