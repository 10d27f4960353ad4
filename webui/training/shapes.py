"""The procedural "shapes" dataset: one flat-coloured shape on a flat background, with a caption.

The demo model learns from it, the evaluator scores against the same vocabulary, and tests use
it because every image is made here from a seed: nothing is downloaded and nothing ships but
this file. Captions follow `a <colour> <shape> at the <place> on a <colour> background`, with
the parts shuffled or left out now and then so that shorter prompts work too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128

# Saturated, well separated colours: the evaluator names a pixel by its nearest one.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (35, 170, 60),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 35),
    "orange": (245, 135, 25),
    "purple": (135, 45, 185),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
# Centres as fractions of the side.
PLACES: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
# The shape's side as a fraction of the image side, and how far it may wander off its place.
SHAPE_SIZE = (0.34, 0.42)
PLACE_JITTER = 0.04


@dataclass(frozen=True)
class ShapeScene:
    colour: str
    shape: str
    place: str
    background: str
    size: float  # side (or diameter) as a fraction of the image side
    offset: tuple[float, float]  # jitter of the centre, fractions of the side

    def caption(self) -> str:
        """The full, canonical caption (the one the evaluator prompts with)."""
        return f"a {self.colour} {self.shape} at the {self.place} on a {self.background} background"

    def centre(self, side: int) -> tuple[float, float]:
        fx, fy = PLACES[self.place]
        return (fx + self.offset[0]) * side, (fy + self.offset[1]) * side


def random_scene(rng: np.random.Generator) -> ShapeScene:
    names = list(COLOURS)
    background = names[rng.integers(len(names))]
    colour = rng.choice([name for name in names if name != background])
    return ShapeScene(
        colour=str(colour),
        shape=SHAPES[rng.integers(len(SHAPES))],
        place=list(PLACES)[rng.integers(len(PLACES))],
        background=background,
        size=float(rng.uniform(*SHAPE_SIZE)),
        offset=(
            float(rng.uniform(-PLACE_JITTER, PLACE_JITTER)),
            float(rng.uniform(-PLACE_JITTER, PLACE_JITTER)),
        ),
    )


def draw_scene(scene: ShapeScene, side: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image; shapes are drawn at 4x and downsampled for clean edges."""
    scale = 4
    big = side * scale
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy = (value * scale for value in scene.centre(side))
    half = scene.size * big / 2
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:  # an upright triangle as wide as it is tall: it fills half its bounding box
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return image.resize((side, side), Image.Resampling.LANCZOS)


def varied_caption(scene: ShapeScene, rng: np.random.Generator, drop: float = 0.15) -> str:
    """A caption with parts left out (each with probability `drop`) and in varied orders.

    The object's colour and shape stay together ("a red circle"), as people write them.
    """
    keep_colour = rng.random() >= drop
    keep_shape = rng.random() >= drop
    keep_place = rng.random() >= drop
    keep_background = rng.random() >= drop
    words = [w for w, keep in ((scene.colour, keep_colour), (scene.shape, keep_shape)) if keep]
    if keep_shape:
        thing = " ".join(words)
    elif words:
        thing = f"{words[0]} shape"
    else:
        thing = ""
    parts: list[str] = []
    if thing:
        # People write "an orange square" as often as the template's "a orange square".
        article = "an" if thing[0] in "aeiou" and rng.random() < 0.5 else "a"
        parts.append(f"{article} {thing}")
    if keep_place:
        parts.append(f"at the {scene.place}" if rng.random() < 0.7 else f"{scene.place}")
    if keep_background:
        parts.append(
            f"on a {scene.background} background" if rng.random() < 0.7 else f"{scene.background} background"
        )
    if not parts:
        return ""
    order = rng.random()
    if order < 0.6:
        return " ".join(parts)
    if order < 0.8:
        rng.shuffle(parts)
        return ", ".join(parts)
    rng.shuffle(parts)
    return " ".join(parts)


def scene_batch(seed: int, count: int) -> list[ShapeScene]:
    """`count` scenes drawn from `seed`: the same seed always gives the same scenes."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng) for _ in range(count)]


def bounding_box_fill(shape: str) -> float:
    """The fraction of its bounding box a perfect shape fills (what the evaluator measures)."""
    return {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[shape]
