"""The original release's safety checker, loaded offline from the owner's models/safety_checker.

diffusers' StableDiffusionSafetyChecker scores a CLIP image embedding against fixed concept
embeddings; it blackens what it flags, but here a flagged image is blurred instead (the page
then still shows that something was made, and where), and the caller is told which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image, ImageFilter

# The PIL one: the default CLIP processor would want torchvision, which this app does not need.
from transformers import CLIPImageProcessorPil as CLIPImageProcessor

from webui.model_manager.state_dict import CheckpointError

log = logging.getLogger(__name__)

SAFETY_CHECKER_FOLDER = "safety_checker"  # under DATA_DIR/models
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_PROCESSOR_FILE = "preprocessor_config.json"
# A flagged image is shrunk to this many pixels on its longer side, then blurred back up.
_BLUR_GRID = 16


@dataclass
class SafetyChecker:
    checker: StableDiffusionSafetyChecker
    processor: CLIPImageProcessor
    device: torch.device
    dtype: torch.dtype

    @torch.no_grad()
    def flags(self, images: list[Image.Image]) -> list[bool]:
        """True for each image the checker flags."""
        if not images:
            return []
        pixels = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt").pixel_values
        clip_input = pixels.to(self.device, self.dtype)
        # The checker blackens flagged entries of its second argument: give it a throwaway copy.
        _, flagged = self.checker(clip_input=clip_input, images=torch.zeros(len(images), 1))
        return [bool(flag) for flag in flagged]

    def screen(self, images: list[Image.Image]) -> tuple[list[Image.Image], list[bool]]:
        """The images with each flagged one blurred, and the flags."""
        flagged = self.flags(images)
        return [blur(image) if flag else image for image, flag in zip(images, flagged)], flagged


def blur(image: Image.Image) -> Image.Image:
    """An image whose shapes and colours are left but no detail: pixelated, then blurred."""
    width, height = image.size
    scale = _BLUR_GRID / max(width, height)
    small = image.convert("RGB").resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX
    )
    radius = max(width, height) / _BLUR_GRID
    return small.resize((width, height), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(radius))


def find_safety_checker(models_dir: Path) -> Path | None:
    """DATA_DIR/models/safety_checker when it holds a config and weights; else None."""
    folder = Path(models_dir) / SAFETY_CHECKER_FOLDER
    has_weights = any((folder / name).is_file() for name in _WEIGHT_FILES)
    return folder if (folder / "config.json").is_file() and has_weights else None


def load_safety_checker(models_dir: Path, device: torch.device, dtype: torch.dtype) -> SafetyChecker:
    """The checker in DATA_DIR/models/safety_checker; CheckpointError saying what to put there."""
    folder = find_safety_checker(models_dir)
    if folder is None:
        expected = Path(models_dir) / SAFETY_CHECKER_FOLDER
        raise CheckpointError(
            f"--safety-checker is on, but {expected} holds no safety checker: put the files of the "
            f"original release's safety_checker folder there (config.json and {' or '.join(_WEIGHT_FILES)}"
            f"; {_PROCESSOR_FILE} from its feature_extractor folder too, if you have it). "
            "Nothing is downloaded."
        )
    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{folder}: cannot load the safety checker: {error}") from error
    checker = checker.to(device=device, dtype=dtype).eval().requires_grad_(False)
    # diffusers logs that flagged images "will be returned black"; here they are blurred instead.
    logging.getLogger(StableDiffusionSafetyChecker.__module__).setLevel(logging.ERROR)
    log.info("safety checker loaded from %s", folder)
    return SafetyChecker(checker, _processor(folder, checker), device, dtype)


def _processor(folder: Path, checker: StableDiffusionSafetyChecker) -> CLIPImageProcessor:
    if (folder / _PROCESSOR_FILE).is_file():
        return CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    # CLIP's own preprocessing (its defaults) at the size the vision tower was built for.
    side = checker.config.vision_config.image_size
    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
