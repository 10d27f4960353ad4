"""Train the demo model: a small SD 1.x checkpoint that draws coloured shapes where asked.

    python -m webui.training.demo [--out webui/assets/shapes-demo.safetensors]

Everything comes from this repository: the images are drawn by `shapes.py`, the VAE, the
text encoder and the UNet start from random weights, and the run is seeded, so the same
command on the same machine (and thread count) writes the same file. An interrupted run
continues from its work folder.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from webui.training.denoiser_trainer import DenoiserTrainOptions
from webui.training.progress import TrainingHooks, log_every
from webui.training.scratch import ScratchRecipe, shapes_data, train_tiny_model
from webui.training.shapes import IMAGE_SIZE
from webui.training.vae_trainer import DecoderRefineOptions, VaeTrainOptions

DEFAULT_OUT = Path("webui/assets/shapes-demo.safetensors")
DEMO_IMAGES = 24_000
SAMPLE_PROMPTS = [
    "a red circle at the top left on a blue background",
    "a yellow square at the bottom right on a black background",
    "a white triangle at the center on a green background",
    "a purple circle at the top right on a orange background",
]
DEMO_RECIPE = ScratchRecipe(
    seed=1234,
    image_size=IMAGE_SIZE,
    vae=VaeTrainOptions(steps=3000, batch_size=16, learning_rate=1e-3, crop=64),
    denoiser=DenoiserTrainOptions(
        steps=3000,
        batch_size=64,
        learning_rate=4e-4,
        warmup_steps=200,
        caption_dropout=0.1,
        ema_decay=0.999,
        checkpoint_every=200,
        sample_every=400,
    ),
    decoder=DecoderRefineOptions(steps=600, batch_size=8, learning_rate=3e-4),
)
DEMO_METADATA = {
    "modelspec.title": "shapes demo",
    "modelspec.description": "A small demo that knows only coloured circles, squares and triangles.",
}


def train_demo(out: Path, work: Path, recipe: ScratchRecipe = DEMO_RECIPE, images: int = DEMO_IMAGES) -> Path:
    data = shapes_data(recipe.seed, images, recipe.image_size)
    hooks = TrainingHooks(on_step=log_every(30))
    return train_tiny_model(out, work, recipe, data, hooks, SAMPLE_PROMPTS, DEMO_METADATA)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--work", type=Path, default=Path("training-work/shapes-demo"), help="resume files and samples"
    )
    parser.add_argument("--steps", type=int, help="denoiser steps (default: the recipe's)")
    parser.add_argument("--vae-steps", type=int, help="VAE steps (default: the recipe's)")
    parser.add_argument("--images", type=int, default=DEMO_IMAGES, help="shapes images drawn")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = DEMO_RECIPE
    if args.vae_steps:
        recipe = replace(recipe, vae=replace(recipe.vae, steps=args.vae_steps))
    if args.steps:
        recipe = replace(recipe, denoiser=replace(recipe.denoiser, steps=args.steps))
    train_demo(args.out, args.work, recipe, args.images)


if __name__ == "__main__":
    main()
