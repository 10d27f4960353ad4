"""The shipped demo model draws what it is asked, so these tests can check what random weights
never could: prompts, img2img, inpainting, a LoRA and an embedding trained here, all by pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest, MaskedContent
from webui.model_manager.load import load_model
from webui.services.models import DEMO_CHECKPOINT, DEMO_MODEL_FILE, DEMO_SIZE
from webui.settings import Settings
from webui.studio import Studio
from webui.training.progress import TrainingHooks
from webui.training.request import TrainingKind, TrainingRequest
from webui.training.runner import TrainingOutputs, run_training
from webui.training.scoring import nearest_colour, read_scene
from webui.training.shapes import ShapeScene, draw_scene, scene_batch

CPU = torch.device("cpu")
SIZE = DEMO_SIZE


@pytest.fixture(scope="module")
def demo():
    return load_model(DEMO_MODEL_FILE, CPU, torch.float32)


def _draw(engine: Engine, prompt: str, seed: int, **extra: object) -> Image.Image:
    request = GenerationRequest(prompt=prompt, width=SIZE, height=SIZE, steps=20, seed=seed, **extra)
    return engine.generate(request).images[0]


def test_a_fresh_install_starts_on_the_demo_and_says_what_it_knows(tmp_path: Path) -> None:
    studio = Studio(Settings.for_data_dir(tmp_path))
    assert studio.models.demo_mode and studio.models.current_checkpoint() == DEMO_CHECKPOINT
    assert studio.models.default_size == SIZE
    assert "demo" in studio.models.demo_message and "red circle" in studio.models.demo_message
    assert not list((tmp_path / "models" / "Stable-diffusion").glob("*.safetensors"))  # nothing copied
    model = studio.models.model()
    assert model.spec.kind == "SD 1.x" and DEMO_MODEL_FILE.stat().st_size <= 25_000_000


def test_the_background_follows_the_prompt(demo) -> None:
    engine = Engine(demo)
    asked = ["blue", "black", "green", "yellow", "orange", "white"]
    drawn = [
        read_scene(_draw(engine, f"a red circle at the center on a {colour} background", seed)).background
        for seed, colour in enumerate(asked)
    ]
    assert sum(a == d for a, d in zip(asked, drawn)) >= 4, drawn
    assert len(set(drawn)) >= 4  # not one colour whatever was asked


def test_img2img_at_low_strength_keeps_the_layout(demo) -> None:
    engine = Engine(demo)
    scene = ShapeScene("orange", "circle", "bottom left", "purple", 0.38, (0, 0))
    result = _draw(engine, scene.caption(), 3, init_image=draw_scene(scene), denoising_strength=0.3)
    reading = read_scene(result)
    assert (reading.background, reading.colour, reading.shape, reading.place) == (
        "purple",
        "orange",
        "circle",
        "bottom left",
    )


def test_inpainting_paints_over_the_mask_as_asked_and_keeps_the_rest(demo) -> None:
    """The red circle's quadrant is masked and the prompt asks for the blue background alone."""
    init = draw_scene(ShapeScene("red", "circle", "top left", "blue", 0.38, (0, 0)))
    half = SIZE // 2
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, half, half))
    result = _draw(
        Engine(demo),
        "a blue background",
        1,
        init_image=init,
        mask=mask,
        mask_blur=0,
        denoising_strength=1.0,
        inpainting_fill=MaskedContent.LATENT_NOISE,
    )
    pixels, before = np.asarray(result, dtype=np.float32), np.asarray(init, dtype=np.float32)
    quadrant = pixels[4 : half - 4, 4 : half - 4].reshape(-1, 3)
    red = np.mean([nearest_colour(p) == "red" for p in quadrant[::5]])
    blue = np.mean([nearest_colour(p) == "blue" for p in quadrant[::5]])
    assert red < 0.05 and blue > 0.8, (red, blue)  # before: about 40% red
    keep = np.ones((SIZE, SIZE), dtype=bool)
    keep[:half, :half] = False
    assert np.abs(pixels[keep] - before[keep]).mean() < 1.0


def _framed_dataset(folder: Path, count: int) -> Path:
    """Shapes with a thick white frame: a style the demo never saw."""
    folder.mkdir(parents=True)
    for index, scene in enumerate(scene_batch(55, count)):
        image = draw_scene(scene)
        ImageDraw.Draw(image).rectangle((0, 0, SIZE - 1, SIZE - 1), outline="white", width=10)
        image.save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(scene.caption(), encoding="utf-8")
    return folder


def _frame_whiteness(image: Image.Image) -> float:
    """0 (no light frame) to 1 (white): the darkest channel, averaged over a band along the edges."""
    darkest = np.asarray(image, dtype=np.float32).min(axis=2) / 255
    band = np.ones_like(darkest, dtype=bool)
    band[10:-10, 10:-10] = False
    band[:2, :] = band[-2:, :] = band[:, :2] = band[:, -2:] = False
    return float(darkest[band].mean())


def _train_on_demo(tmp_path: Path, kind: TrainingKind, name: str, dataset: Path, **options: object):
    outputs = TrainingOutputs(tmp_path / "ckpt", tmp_path / "Lora", tmp_path / "emb", tmp_path / "work")
    request = TrainingRequest(
        kind=kind,
        name=name,
        dataset=str(dataset),
        batch_size=4,
        resolution=SIZE,
        caption_dropout=0.0,
        **options,
    )
    return run_training(request, DEMO_MODEL_FILE, outputs, CPU, TrainingHooks())


@pytest.mark.slow
def test_a_lora_trained_here_changes_the_style_it_was_trained_on(demo, tmp_path: Path) -> None:
    dataset = _framed_dataset(tmp_path / "framed", 48)
    result = _train_on_demo(
        tmp_path, TrainingKind.LORA, "framed", dataset, steps=300, rank=8, learning_rate=1e-2
    )
    engine = Engine(demo, loras={"framed": result.path})
    prompt = "a red circle at the center on a blue background"
    plain = [_frame_whiteness(_draw(engine, prompt, seed)) for seed in range(3)]
    framed = [_frame_whiteness(_draw(engine, f"{prompt} <lora:framed:1>", seed)) for seed in range(3)]
    assert np.mean(framed) > np.mean(plain) + 0.15, (plain, framed)


@pytest.mark.slow
def test_an_embedding_trained_here_is_used_by_its_name(demo, tmp_path: Path) -> None:
    """ "zorb" is taught as a new word for the green background (the demo draws backgrounds best)."""
    folder = tmp_path / "zorb"
    folder.mkdir()
    for index, scene in enumerate(scene_batch(66, 120)):
        if scene.colour == "green":
            continue
        scene = ShapeScene(scene.colour, scene.shape, scene.place, "green", scene.size, scene.offset)
        draw_scene(scene).save(folder / f"{index:03d}.png")
        caption = f"a {scene.colour} {scene.shape} at the {scene.place} on a zorb background"
        (folder / f"{index:03d}.txt").write_text(caption, encoding="utf-8")
    result = _train_on_demo(
        tmp_path, TrainingKind.EMBEDDING, "zorb", folder, steps=120, vectors=1, learning_rate=5e-3
    )
    engine = Engine(demo, embeddings={"zorb": result.path})
    prompts = [f"a {c} square at the center on a zorb background" for c in ("white", "blue", "red", "yellow")]
    backgrounds = [read_scene(_draw(engine, prompt, seed)).background for seed, prompt in enumerate(prompts)]
    assert backgrounds.count("green") >= 3, backgrounds
