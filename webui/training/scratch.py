"""A tiny SD 1.x model trained from random weights: VAE first, then UNet and text encoder together.

Each phase leaves its result in the work folder (the VAE, the encoded latents, the
denoiser's resume state), so an interrupted run picks up where it stopped. The demo model
is this pipeline on the shapes dataset (see demo.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from webui.model_manager.detect import UNET_PREFIX
from webui.model_manager.ema import ema_tensors
from webui.model_manager.tokenizer import build_clip_tokenizer
from webui.training.denoiser_trainer import DenoiserTrainer, DenoiserTrainOptions
from webui.training.folder_dataset import fit_to_bucket, read_folder
from webui.training.in_memory import sample_images, sd1_loaded_model
from webui.training.progress import TrainingError, TrainingHooks
from webui.training.request import TrainingRequest
from webui.training.sd1_parts import (
    SD1_LATENT_SCALE,
    TinySD1Shape,
    build_text_encoder,
    build_unet,
    build_vae,
    rescale_vae_latents,
    save_atomically,
    sd1_state_dict,
)
from webui.training.shapes import ShapeScene, draw_scene, scene_batch, varied_caption
from webui.training.vae_trainer import (
    DecoderRefineOptions,
    VaeTrainOptions,
    encode_images,
    refine_decoder,
    train_vae,
)

log = logging.getLogger(__name__)

CaptionVariant = Callable[[int, np.random.Generator], str]
_NORMALISE_IMAGES = 2000  # images whose latent spread sets the VAE's scale


@dataclass(frozen=True)
class ScratchRecipe:
    """Everything that decides a from-scratch model; its metadata records it."""

    seed: int = 1234
    image_size: int = 128
    shape: TinySD1Shape = field(default_factory=TinySD1Shape)
    vae: VaeTrainOptions = field(default_factory=VaeTrainOptions)
    denoiser: DenoiserTrainOptions = field(default_factory=DenoiserTrainOptions)
    decoder: DecoderRefineOptions | None = None  # a last decoder-only phase on whole images

    def as_dict(self) -> dict[str, object]:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class ScratchData:
    count: int
    render: Callable[[], torch.Tensor]  # all images, uint8 N x 3 x H x W (called at most once per phase)
    caption: CaptionVariant


class CaptionedLatents:
    """Encoded images with captions drawn per step; implements denoiser_trainer.LatentCaptionData."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, caption: CaptionVariant) -> None:
        self.means, self.stds, self.caption = means, stds, caption

    def __len__(self) -> int:
        return self.means.shape[0]

    def sample(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, list[int]]:
        index = torch.randint(0, len(self), (batch_size,), generator=generator)
        mean, std = self.means[index], self.stds[index]
        return (mean + std * torch.randn(mean.shape, generator=generator)) * SD1_LATENT_SCALE, index.tolist()

    def captions(self, index: list[int], rng: np.random.Generator) -> list[str]:
        return [self.caption(i, rng) for i in index]


def shapes_data(seed: int, count: int, size: int) -> ScratchData:
    scenes = scene_batch(seed, count)
    return ScratchData(
        count, lambda: render_scenes(scenes, size), lambda i, rng: varied_caption(scenes[i], rng)
    )


def render_scenes(scenes: list[ShapeScene], size: int) -> torch.Tensor:
    started = time.monotonic()
    images = torch.empty((len(scenes), 3, size, size), dtype=torch.uint8)
    for i, scene in enumerate(scenes):
        images[i] = torch.from_numpy(np.array(draw_scene(scene, size))).permute(2, 0, 1)
    log.info("drew %d images in %.0f s", len(scenes), time.monotonic() - started)
    return images


def folder_data(folder: Path, size: int) -> ScratchData:
    items = read_folder(folder)

    def render() -> torch.Tensor:
        images = torch.empty((len(items), 3, size, size), dtype=torch.uint8)
        for i, item in enumerate(items):
            with Image.open(item.path) as image:
                images[i] = torch.from_numpy(np.array(fit_to_bucket(image, (size, size)))).permute(2, 0, 1)
        return images

    return ScratchData(len(items), render, lambda i, rng: items[i].caption)


def train_tiny_model(
    out: Path,
    work: Path,
    recipe: ScratchRecipe,
    data: ScratchData,
    hooks: TrainingHooks,
    sample_prompts: list[str],
    metadata: dict[str, str],
) -> Path:
    torch.manual_seed(recipe.seed)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    vae = build_vae(recipe.shape)
    vae_file, latents_file = work / "vae.safetensors", work / "latents.safetensors"
    images: torch.Tensor | None = None
    if vae_file.is_file():
        vae.load_state_dict(load_file(vae_file))
    else:
        started = time.monotonic()
        images = data.render()
        train_vae(vae, images, recipe.vae, hooks)
        _normalise_latents(vae, images[:_NORMALISE_IMAGES])
        save_atomically(vae.state_dict(), vae_file, {})
        timings["vae_s"] = time.monotonic() - started
    vae.eval().requires_grad_(False)
    if latents_file.is_file():
        saved = load_file(latents_file)
        means, stds = saved["means"], saved["stds"]
    else:
        started = time.monotonic()
        images = data.render() if images is None else images
        means, stds = encode_images(vae, images, mixed_precision=recipe.vae.mixed_precision)
        save_file({"means": means, "stds": stds}, str(latents_file))
        timings["encode_s"] = time.monotonic() - started
    del images

    torch.manual_seed(recipe.seed + 1)
    unet, text_encoder = build_unet(recipe.shape), build_text_encoder(recipe.shape)
    tokenizer = build_clip_tokenizer(pad_with_exclamation=False)
    trainer = DenoiserTrainer(
        unet,
        text_encoder,
        tokenizer,
        CaptionedLatents(means, stds, data.caption),
        recipe.denoiser,
        work / "denoiser-state.pt",
    )

    def sample(step: int) -> None:
        model = sd1_loaded_model(out.stem, unet, vae, text_encoder)
        pictures = sample_images(model, sample_prompts, recipe.image_size, seed=1)
        contact_sheet(pictures).save(work / f"samples-{step:05d}.png")
        if hooks.on_sample:
            hooks.on_sample(step, pictures, sample_prompts)
        unet.train()
        text_encoder.train()

    started = time.monotonic()
    trainer.run(hooks, sample=sample)
    timings["denoiser_s"] = time.monotonic() - started
    if recipe.decoder is not None:
        decoder_file = work / "decoder.safetensors"
        if decoder_file.is_file():
            vae.load_state_dict(load_file(decoder_file))
        else:
            started = time.monotonic()
            refine_decoder(vae, data.render(), recipe.decoder, hooks)
            save_atomically(vae.state_dict(), decoder_file, {})
            timings["decoder_s"] = time.monotonic() - started
    raw_unet = sd1_state_dict(unet, vae, text_encoder, torch.float16) if trainer.ema is not None else {}
    with trainer.averaged_weights():
        tensors = sd1_state_dict(unet, vae, text_encoder, torch.float16)
        if sample_prompts:
            sample(recipe.denoiser.steps)
    if trainer.ema is not None:
        # CompVis's layout: raw UNet weights, their average under model_ema. It has no place for
        # a second text encoder, so the file's text encoder is the averaged one.
        averaged_unet = {key: value for key, value in tensors.items() if key.startswith(UNET_PREFIX)}
        tensors |= {key: value for key, value in raw_unet.items() if key.startswith(UNET_PREFIX)}
        tensors |= ema_tensors(averaged_unet, trainer.ema.decay, trainer.ema.optimization_step)
    metadata = metadata | {
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.resolution": f"{recipe.image_size}x{recipe.image_size}",
        "webui.recipe": json.dumps(recipe.as_dict()),
        "webui.training_seconds": json.dumps(timings),
    }
    save_atomically(tensors, out, metadata)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def _normalise_latents(vae, images: torch.Tensor) -> None:
    """Rescale the VAE so that SD 1.x's fixed latent scale gives the UNet unit-variance latents."""
    means, _ = encode_images(vae, images)
    factor = 1.0 / (SD1_LATENT_SCALE * float(means.std()))
    rescale_vae_latents(vae, factor)
    log.info("latent std %.3f: rescaled the VAE by %.3f", float(means.std()), factor)


def contact_sheet(images: list[Image.Image]) -> Image.Image:
    width, height = images[0].size
    sheet = Image.new("RGB", (width * len(images), height))
    for i, image in enumerate(images):
        sheet.paste(image, (i * width, 0))
    return sheet


def train_scratch(
    request: TrainingRequest, out: Path, work: Path, device: torch.device, hooks: TrainingHooks
) -> Path:
    """A TrainingRequest of kind scratch: the demo's recipe at the request's steps and rates."""
    size = request.resolution
    if size > 256:
        raise TrainingError(
            f"from-scratch models are tiny and trained at 64-256 px; got resolution {size}", "resolution"
        )
    vae_steps = max(50, min(3000, request.steps))
    recipe = ScratchRecipe(
        seed=request.seed,
        image_size=size,
        vae=VaeTrainOptions(steps=vae_steps, batch_size=16, crop=min(64, size), seed=request.seed),
        denoiser=DenoiserTrainOptions(
            steps=request.steps,
            batch_size=request.batch_size,
            learning_rate=request.learning_rate,
            warmup_steps=min(200, max(1, request.steps // 10)),
            seed=request.seed,
            caption_dropout=max(request.caption_dropout, 0.1),
            ema_decay=0.999 if request.steps >= 1000 else None,
            checkpoint_every=max(25, request.steps // 20),
            sample_every=request.sample_every,
            gradient_checkpointing=request.gradient_checkpointing,
        ),
    )
    if request.uses_shapes:
        data = shapes_data(request.seed, max(256, min(24_000, request.steps * request.batch_size)), size)
    else:
        data = folder_data(request.dataset_path, size)
    prompts = [request.sample_prompt] if request.sample_prompt.strip() else []
    del device  # trained where the modules are built: the CPU (tiny models need no GPU)
    return train_tiny_model(out, work, recipe, data, hooks, prompts, {"modelspec.title": request.name})
