"""Write a random-weight safety checker folder that flags every image or none.

    python -m webui.tools.tiny_safety_checker models/safety_checker --flag all

The checker flags an image when a cosine similarity (always within [-1, 1]) exceeds a
concept's threshold, so thresholds of -2 flag everything and +2 nothing, whatever the weights:
the tests then know the outcome while going through the real loading and scoring code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig

FLAG_CHOICES = ("all", "none")
TINY_IMAGE_SIZE = 32


def write_tiny_safety_checker(folder: Path, flag: str = "all", seed: int = 0) -> Path:
    """`folder` with config.json and model.safetensors, as the release's safety_checker folder."""
    if flag not in FLAG_CHOICES:
        raise ValueError(f"flag must be one of {', '.join(FLAG_CHOICES)}")
    torch.manual_seed(seed)
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": TINY_IMAGE_SIZE,
        "patch_size": 8,
    }
    text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    checker = StableDiffusionSafetyChecker(config)
    threshold = -2.0 if flag == "all" else 2.0
    with torch.no_grad():
        for parameter in checker.parameters():
            if parameter.dim() > 0:
                parameter.normal_(0.0, 0.02)
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    folder = Path(folder)
    checker.save_pretrained(folder, safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--flag", choices=FLAG_CHOICES, default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny_safety_checker(args.folder, args.flag, args.seed))


if __name__ == "__main__":
    main()
