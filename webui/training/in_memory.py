"""Wrap modules being trained as a LoadedModel, so samples come from the app's own engine."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel

from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest
from webui.model_manager.detect import detect_model
from webui.model_manager.load import LoadedModel
from webui.model_manager.tokenizer import build_clip_tokenizer
from webui.training.sd1_parts import sd1_state_dict


def sd1_loaded_model(
    name: str, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel
) -> LoadedModel:
    """The modules themselves (not copies) with the spec the loader would read from their file."""
    spec = detect_model(sd1_state_dict(unet, vae, text_encoder, torch.float16), {}, name)
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    tokenizer = build_clip_tokenizer(pad_with_exclamation=False)
    return LoadedModel(name, Path(name), spec, unet, vae, [text_encoder], [tokenizer], device, dtype)


@torch.no_grad()
def sample_images(
    model: LoadedModel, prompts: list[str], size: int, seed: int, steps: int = 20
) -> list[Image.Image]:
    engine = Engine(model)
    images = []
    for offset, prompt in enumerate(prompts):
        request = GenerationRequest(
            prompt=prompt,
            width=size,
            height=size,
            steps=steps,
            seed=seed + offset,
            cfg_scale=5.0,
            sampler_name="Euler",
        )
        images.extend(engine.generate(request).images)
    return images
