"""Judge a shapes model from pixels alone: does it draw what the prompt asks, where it asks?

    python -m webui.training.evaluate [--model webui/assets/shapes-demo.safetensors] [--count 200]

Prompts and seeds are drawn from a seed the training never used; each image is read back by
`scoring.read_scene` (background from the border, object colour, shape from how it fills its
bounding box, place from its centroid) and the accuracy per attribute is printed, with an
inpainting check: a yellow square asked for in a masked quadrant.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest, MaskedContent
from webui.model_manager.load import LoadedModel, load_model
from webui.training.scoring import nearest_colour, read_scene
from webui.training.shapes import IMAGE_SIZE, ShapeScene, draw_scene, scene_batch

EVALUATION_SEED = 987_654  # never a training seed
TARGETS = {"background": 0.90, "colour": 0.90, "shape": 0.80, "place": 0.85}
ATTRIBUTES = tuple(TARGETS)


@dataclass
class Evaluation:
    count: int
    correct: dict[str, int]
    seconds: float
    inpaint_yellow: float  # fraction of the masked quadrant that came out yellow
    inpaint_outside_change: float  # mean absolute pixel change outside the mask (0-255)

    def accuracy(self, attribute: str) -> float:
        return self.correct[attribute] / self.count if self.count else 0.0

    @property
    def passed(self) -> bool:
        return all(self.accuracy(a) >= TARGETS[a] for a in ATTRIBUTES)

    def report(self) -> str:
        lines = [f"{self.count} images in {self.seconds:.0f} s"]
        for attribute in ATTRIBUTES:
            accuracy = self.accuracy(attribute)
            mark = "ok" if accuracy >= TARGETS[attribute] else "BELOW TARGET"
            lines.append(f"  {attribute:<10} {accuracy:6.1%}  (target {TARGETS[attribute]:.0%}) {mark}")
        lines.append(
            f"  inpaint: {self.inpaint_yellow:.0%} of the masked quadrant yellow, "
            f"outside the mask changed by {self.inpaint_outside_change:.2f}/255 on average"
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "count": self.count,
            "accuracy": {a: round(self.accuracy(a), 4) for a in ATTRIBUTES},
            "targets": TARGETS,
            "inpaint_yellow": round(self.inpaint_yellow, 4),
            "inpaint_outside_change": round(self.inpaint_outside_change, 3),
            "seconds": round(self.seconds, 1),
        }


def score_scene(scene: ShapeScene, image: Image.Image) -> dict[str, bool]:
    reading = read_scene(image)
    return {
        "background": reading.background == scene.background,
        "colour": reading.colour == scene.colour,
        "shape": reading.shape == scene.shape,
        "place": reading.place == scene.place,
    }


def evaluate(
    model: LoadedModel, count: int = 200, steps: int = 20, cfg_scale: float = 7.0, sampler: str = "Euler a"
) -> Evaluation:
    engine = Engine(model)
    started = time.monotonic()
    scenes = scene_batch(EVALUATION_SEED, count)
    correct = dict.fromkeys(ATTRIBUTES, 0)
    for index, scene in enumerate(scenes):
        request = GenerationRequest(
            prompt=scene.caption(),
            width=IMAGE_SIZE,
            height=IMAGE_SIZE,
            steps=steps,
            cfg_scale=cfg_scale,
            sampler_name=sampler,
            seed=EVALUATION_SEED + index,
        )
        image = engine.generate(request).images[0]
        for attribute, ok in score_scene(scene, image).items():
            correct[attribute] += ok
    yellow, outside = inpaint_check(engine, steps, cfg_scale, sampler)
    return Evaluation(count, correct, time.monotonic() - started, yellow, outside)


def inpaint_check(engine: Engine, steps: int, cfg_scale: float, sampler: str) -> tuple[float, float]:
    """Ask for a yellow square in the masked bottom-right quadrant of a drawn scene."""
    scene = ShapeScene("red", "circle", "top left", "blue", 0.38, (0.0, 0.0))
    init = draw_scene(scene)
    half = IMAGE_SIZE // 2
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    mask.paste(255, (half, half, IMAGE_SIZE, IMAGE_SIZE))
    request = GenerationRequest(
        prompt="a yellow square at the bottom right on a blue background",
        width=IMAGE_SIZE,
        height=IMAGE_SIZE,
        steps=steps,
        cfg_scale=cfg_scale,
        sampler_name=sampler,
        seed=EVALUATION_SEED,
        init_image=init,
        mask=mask,
        mask_blur=0,
        denoising_strength=1.0,
        inpainting_fill=MaskedContent.LATENT_NOISE,
    )
    result = np.asarray(engine.generate(request).images[0].convert("RGB"), dtype=np.float32)
    quadrant = result[half:, half:].reshape(-1, 3)
    yellow = np.mean([nearest_colour(pixel) == "yellow" for pixel in quadrant[::7]])
    before = np.asarray(init, dtype=np.float32)
    keep = np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    keep[half:, half:] = False
    outside = float(np.abs(result[keep] - before[keep]).mean())
    return float(yellow), outside


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("webui/assets/shapes-demo.safetensors"))
    parser.add_argument("--count", type=int, default=200, help="prompts (one image each)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    model = load_model(args.model, torch.device("cpu"), torch.float32)
    result = evaluate(model, args.count, args.steps, args.cfg_scale, args.sampler)
    print(result.report())
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")
    raise SystemExit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
