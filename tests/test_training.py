"""Training: requests and datasets checked by name, each trainer's file read back by the real
loaders, resume after an interrupt equal to an unbroken run. Tiny checkpoints, a few steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest
from webui.model_manager.embeddings import read_embedding
from webui.model_manager.load import load_model
from webui.model_manager.lora import detect_lora_arch
from webui.training.folder_dataset import bucket_sizes, fit_to_bucket, nearest_bucket, read_folder
from webui.training.progress import TrainingError, TrainingHooks, TrainingStopped
from webui.training.request import TrainingKind, TrainingRequest
from webui.training.runner import TrainingOutputs, run_training
from webui.training.scoring import read_scene
from webui.training.shapes import draw_scene, scene_batch, varied_caption

CPU = torch.device("cpu")


def _outputs(root: Path) -> TrainingOutputs:
    return TrainingOutputs(root / "Stable-diffusion", root / "Lora", root / "embeddings", root / "work")


def _request(kind: str, name: str = "trained", **changes: object) -> TrainingRequest:
    fields: dict[str, object] = {
        "kind": TrainingKind(kind),
        "name": name,
        "steps": 4,
        "batch_size": 2,
        "resolution": 64,
        "rank": 4,
        "sample_prompt": "a red circle",
    }
    return TrainingRequest(**(fields | changes))


def _generate(model, prompt: str, loras: dict[str, Path] | None = None, embeddings=None) -> np.ndarray:
    engine = Engine(model, loras=loras or {}, embeddings=embeddings or {})
    request = GenerationRequest(prompt=prompt, width=64, height=64, steps=3, seed=5, sampler_name="Euler")
    return np.asarray(engine.generate(request).images[0], dtype=np.int16)


# -- the shapes dataset and its reader ---------------------------------------------------------------
def test_every_drawn_scene_reads_back_as_drawn() -> None:
    for scene in scene_batch(3, 60):
        reading = read_scene(draw_scene(scene))
        assert (reading.background, reading.colour, reading.shape, reading.place) == (
            scene.background,
            scene.colour,
            scene.shape,
            scene.place,
        ), scene


def test_captions_vary_but_follow_their_seed() -> None:
    scene = scene_batch(0, 1)[0]
    first = [varied_caption(scene, np.random.default_rng(7)) for _ in range(3)]
    again = [varied_caption(scene, np.random.default_rng(7)) for _ in range(3)]
    assert first == again
    many = {varied_caption(scene, np.random.default_rng(seed)) for seed in range(40)}
    assert len(many) > 5 and scene.caption() != ""


# -- requests and datasets ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"name": ""}, "name"),
        ({"name": "../escape"}, "name"),
        ({"steps": 0}, "steps"),
        ({"resolution": 100}, "resolution"),
        ({"rank": 0}, "rank"),
        ({"caption_dropout": 1.0}, "caption_dropout"),
        ({"dataset": "  "}, "dataset"),
    ],
)
def test_bad_requests_name_their_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(TrainingError) as caught:
        _request("lora", **changes).validated()
    assert caught.value.field == field


def test_a_learning_rate_of_zero_means_the_kinds_default() -> None:
    assert (
        _request("lora", "x", learning_rate=0).validated().learning_rate
        == TrainingKind.LORA.default_learning_rate
    )


def test_folder_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="does not exist"):
        read_folder(tmp_path / "missing")
    with pytest.raises(TrainingError, match="has no images"):
        read_folder(tmp_path)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("a red square", encoding="utf-8")
    with pytest.raises(TrainingError, match=r"no \.txt caption.*b\.png"):
        read_folder(tmp_path)
    (tmp_path / "b.txt").write_text("a blue square\n", encoding="utf-8")
    (tmp_path / "c.jpg").write_bytes(b"not an image at all")
    (tmp_path / "c.txt").write_text("broken", encoding="utf-8")
    with pytest.raises(TrainingError, match=r"not readable images.*c\.jpg"):
        read_folder(tmp_path)
    (tmp_path / "c.jpg").unlink()
    assert [item.caption for item in read_folder(tmp_path)] == ["a red square", "a blue square"]


def test_buckets_keep_the_aspect_and_the_area() -> None:
    buckets = bucket_sizes(512)
    assert (512, 512) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    wide = nearest_bucket((1600, 900), buckets)
    assert wide[0] > wide[1]
    assert fit_to_bucket(Image.new("RGB", (1600, 900)), wide).size == wide


# -- each trainer writes what the app's loaders read -------------------------------------------------
def test_lora_is_written_in_kohya_layout_and_changes_images(tiny_dir: Path, tmp_path: Path) -> None:
    outputs = _outputs(tmp_path)
    result = run_training(
        _request("lora", "shapes-lora", learning_rate=0.05),
        tiny_dir / "tiny-sd15.safetensors",
        outputs,
        CPU,
        TrainingHooks(),
    )
    assert result.path == outputs.lora / "shapes-lora.safetensors"
    keys = load_file(result.path)
    assert any(
        k.startswith("lora_unet_down_blocks_0_attentions_0") and k.endswith(".lora_down.weight") for k in keys
    )
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    with safe_open(result.path, "pt") as handle:
        assert handle.metadata()["ss_network_dim"] == "4"
    detect_lora_arch(result.path)  # readable by the LoRA loader's detector
    model = load_model(tiny_dir / "tiny-sd15.safetensors", CPU, torch.float32)
    plain = _generate(model, "a red circle")
    styled = _generate(model, "a red circle <lora:shapes-lora:1>", loras={"shapes-lora": result.path})
    assert np.abs(plain - styled).max() > 0
    assert np.array_equal(_generate(model, "a red circle", loras={"shapes-lora": result.path}), plain)
    assert result.samples and result.samples[0].size == (64, 64)


def test_a_rank_larger_than_a_layer_is_refused_by_name(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="rank 64 is larger than the layer") as caught:
        run_training(
            _request("lora", "big", rank=64),
            tiny_dir / "tiny-sd15.safetensors",
            _outputs(tmp_path),
            CPU,
            TrainingHooks(),
        )
    assert caught.value.field == "rank"
    assert not (tmp_path / "Lora" / "big.safetensors").exists()


def test_embedding_is_an_a1111_file_used_by_its_name(tiny_dir: Path, tmp_path: Path) -> None:
    result = run_training(
        _request("embedding", "zorb", vectors=3, init_text="red circle", learning_rate=0.05),
        tiny_dir / "tiny-sd15.safetensors",
        _outputs(tmp_path),
        CPU,
        TrainingHooks(),
    )
    assert set(load_file(result.path)) == {"emb_params"}
    embedding = read_embedding(result.path)
    assert embedding.vector_count == 3 and embedding.widths == (32,)
    model = load_model(tiny_dir / "tiny-sd15.safetensors", CPU, torch.float32)
    with_word = _generate(model, "a zorb", embeddings={"zorb": result.path})
    assert np.abs(with_word - _generate(model, "a")).max() > 0


def test_finetune_writes_a_checkpoint_with_new_unet_and_the_same_vae(tiny_dir: Path, tmp_path: Path) -> None:
    base = tiny_dir / "tiny-sd15.safetensors"
    result = run_training(
        _request("finetune", "tuned", learning_rate=1e-3), base, _outputs(tmp_path), CPU, TrainingHooks()
    )
    before, after = load_file(base), load_file(result.path)
    assert set(before) == set(after)
    vae_keys = [k for k in before if k.startswith("first_stage_model.")]
    unet_keys = [k for k in before if k.startswith("model.diffusion_model.")]
    assert all(torch.equal(before[k], after[k]) for k in vae_keys)
    assert any(not torch.equal(before[k], after[k]) for k in unet_keys)
    assert after[unet_keys[0]].dtype == before[unet_keys[0]].dtype
    load_model(result.path, CPU, torch.float32)


def test_a_model_from_scratch_loads_through_the_real_loader(tmp_path: Path) -> None:
    result = run_training(
        _request("scratch", "tiny-scratch", steps=3), None, _outputs(tmp_path), CPU, TrainingHooks()
    )
    model = load_model(result.path, CPU, torch.float32)
    assert model.spec.kind == "SD 1.x"
    assert _generate(model, "a red circle").shape == (64, 64, 3)


def test_an_interrupted_run_resumes_to_exactly_the_unbroken_result(tiny_dir: Path, tmp_path: Path) -> None:
    base = tiny_dir / "tiny-sd15.safetensors"
    request = _request("lora", "resumed", steps=6, learning_rate=0.01)
    unbroken = run_training(request, base, _outputs(tmp_path / "a"), CPU, TrainingHooks())
    outputs = _outputs(tmp_path / "b")
    steps_seen: list[int] = []
    hooks = TrainingHooks(
        on_step=lambda info: steps_seen.append(info.step), should_stop=lambda: len(steps_seen) >= 3
    )
    with pytest.raises(TrainingStopped):
        run_training(request, base, outputs, CPU, hooks)
    assert not outputs.result_path(request).exists()  # no half-trained file, only the resume state
    assert outputs.state_path(request).is_file()
    resumed = run_training(
        request, base, outputs, CPU, TrainingHooks(on_step=lambda info: steps_seen.append(info.step))
    )
    assert steps_seen == [1, 2, 3, 4, 5, 6]
    expected, got = load_file(unbroken.path), load_file(resumed.path)
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_a_nan_loss_fails_with_a_message_and_writes_nothing(tiny_dir: Path, tmp_path: Path) -> None:
    tensors = load_file(tiny_dir / "tiny-sd15.safetensors")
    key = next(k for k in tensors if k.startswith("model.diffusion_model.out.2.weight"))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        run_training(_request("lora", "nan-lora"), broken, _outputs(tmp_path), CPU, TrainingHooks())
    assert not (tmp_path / "Lora" / "nan-lora.safetensors").exists()
