"""Checkpoint switching in the studio: during a job, per request, on failure, and without leaks."""

from __future__ import annotations

import gc
import hashlib
import shutil
import threading
import warnings
from pathlib import Path

import psutil
import pytest
import torch

from tests.conftest import CPU
from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.steps import StepInfo
from webui.model_manager.cache import MemoryBudgets, ModelCache, Tier
from webui.model_manager.load import load_model
from webui.model_manager.merge import MergeMethod, MergeRecipe
from webui.model_manager.placement import model_bytes
from webui.model_manager.registry import ModelKind
from webui.model_manager.state_dict import CheckpointError
from webui.outputs import parse_infotext
from webui.settings import Settings
from webui.studio import Studio
from webui.tools.tiny_checkpoint import write_tiny_checkpoint, write_tiny_vae
from webui.tools.tiny_networks import write_tiny_embedding, write_tiny_lora

REQUEST = GenerationRequest(prompt="a red kite", steps=3, width=64, height=64, seed=21)


@pytest.fixture
def data_dir(tiny_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name in ("alpha", "beta"):
        shutil.copy(tiny_dir / "tiny-sd15.safetensors", folder / f"{name}.safetensors")
    write_tiny_checkpoint("sd15", folder / "gamma.safetensors", seed=3)  # different weights
    return tmp_path


def _studio(data_dir: Path, **overrides: object) -> Studio:
    return Studio(Settings.for_data_dir(data_dir, watermark=False, **overrides))


def _model_in(infotext: str) -> str:
    return str(parse_infotext(infotext).params["Model"])


def test_a_switch_during_a_job_applies_to_the_next_job(data_dir: Path) -> None:
    studio = _studio(data_dir, ckpt="alpha")
    started, release = threading.Event(), threading.Event()

    def hold(info: StepInfo) -> None:
        started.set()
        release.wait(timeout=30)

    outcome: dict[str, object] = {}
    job = threading.Thread(target=lambda: outcome.update(result=studio.generate(REQUEST, on_step=hold)))
    job.start()
    assert started.wait(timeout=30)
    studio.models.select_checkpoint("gamma")  # returns while the job still runs
    assert job.is_alive() and studio.models.current_checkpoint() == "gamma"
    assert studio.models.cache.tier(studio.models.find_checkpoint("gamma").path) is Tier.RAM
    release.set()
    job.join(timeout=60)
    first = outcome["result"]
    assert _model_in(first.infotexts[0]) == "alpha"  # type: ignore[attr-defined]
    second = studio.generate(REQUEST)
    assert _model_in(second.infotexts[0]) == "gamma"
    assert second.images[0].tobytes() != first.images[0].tobytes()  # type: ignore[attr-defined]


def test_per_request_checkpoint_leaves_the_selection_alone(data_dir: Path) -> None:
    studio = _studio(data_dir, ckpt="alpha")
    on_gamma = studio.generate(REQUEST, checkpoint="gamma")
    assert _model_in(on_gamma.infotexts[0]) == "gamma" and studio.models.current_checkpoint() == "alpha"
    again = studio.generate(REQUEST)
    assert _model_in(again.infotexts[0]) == "alpha"
    with pytest.raises(CheckpointError, match="unknown checkpoint 'delta'"):
        studio.generate(REQUEST, checkpoint="delta")


def test_a_failed_switch_keeps_the_previous_model_serving(data_dir: Path) -> None:
    studio = _studio(data_dir, ckpt="alpha")
    before = studio.generate(REQUEST).images[0].tobytes()
    broken = studio.settings.ckpt_dir / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    studio.models.refresh_checkpoints()
    with pytest.raises(CheckpointError, match="cannot be used"):
        studio.models.select_checkpoint("broken")
    assert studio.models.current_checkpoint() == "alpha"
    assert studio.generate(REQUEST).images[0].tobytes() == before


def test_vae_choice_reaches_the_image_and_the_infotext(data_dir: Path) -> None:
    vae = write_tiny_vae(data_dir / "models" / "VAE" / "clear.safetensors", seed=4)
    studio = _studio(data_dir, ckpt="alpha")
    own = studio.generate(REQUEST)
    assert studio.models.vae_choices() == ["Automatic", "None", "clear"]
    studio.models.select_vae("clear")
    with_vae = studio.generate(REQUEST)
    params = parse_infotext(with_vae.infotexts[0]).params
    assert params["VAE"] == "clear.safetensors" and len(str(params["VAE hash"])) == 10
    assert with_vae.images[0].tobytes() != own.images[0].tobytes()
    with pytest.raises(CheckpointError, match="unknown VAE"):
        studio.models.select_vae("murky")
    assert studio.models.vae_choice == "clear"
    studio.models.select_vae("None")
    assert studio.generate(REQUEST).images[0].tobytes() == own.images[0].tobytes()
    # "Automatic" picks up a checkpoint's own sidecar VAE.
    shutil.copy(vae, studio.settings.ckpt_dir / "alpha.vae.safetensors")
    studio.models.select_vae("Automatic")
    assert studio.generate(REQUEST).images[0].tobytes() == with_vae.images[0].tobytes()


def test_a_merge_is_listed_and_usable_at_once(data_dir: Path) -> None:
    studio = _studio(data_dir, ckpt="alpha")
    folder = studio.settings.ckpt_dir
    recipe = MergeRecipe(
        folder / "alpha.safetensors",
        folder / "gamma.safetensors",
        None,
        MergeMethod.WEIGHTED_SUM,
        0.5,
        "blend",
    )
    merged = studio.models.merge_checkpoints(recipe)
    assert "blend" in studio.models.checkpoint_titles() and merged.label == "SD 1.x"
    studio.models.select_checkpoint("blend")
    assert _model_in(studio.generate(REQUEST).infotexts[0]) == "blend"


def test_memory_report_lists_every_cached_model(data_dir: Path) -> None:
    studio = _studio(data_dir, ckpt="alpha")
    studio.models.model()
    report = studio.models.memory_report()
    assert report["ram"]["process"] > 0  # type: ignore[index]
    assert [m["name"] for m in report["models"]] == ["alpha"]  # type: ignore[index]
    assert report["models"][0]["last_event"].startswith("loaded alpha from disk to RAM")  # type: ignore[index]


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() pokes deprecated torch shims that warn
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_thirty_switches_leak_neither_memory_nor_tensors(data_dir: Path) -> None:
    folder = data_dir / "models" / "Stable-diffusion"
    paths = [folder / f"{name}.safetensors" for name in ("alpha", "beta", "gamma")]
    size = model_bytes(load_model(paths[0], CPU, torch.float32))
    # A stand-in GPU holding one model and RAM holding one more: switches load, move and evict.
    cache = ModelCache(
        lambda path: load_model(path, CPU, torch.float32),
        CPU,
        MemoryBudgets(int(size * 1.2), int(size * 1.2)),
        separate_device_memory=True,
        device_bytes=10**12,
    )
    for path in paths:  # the first round reaches the steady state
        cache.activate(path)
    tensors, rss = _live_tensors(), _rss()
    for switch in range(30):
        cache.activate(paths[switch % 3])
    assert {e.action for e in cache.events()} == {"load", "move", "evict"}
    assert _live_tensors() == tensors
    growth = _rss() - rss
    print(f"after 30 switches: {growth / 1e6:+.1f} MB process memory, model size {size / 1e6:.1f} MB")
    assert growth < size, f"process memory grew by {growth / 1e6:.1f} MB over 30 switches"


def test_lora_and_embedding_hashes_reach_the_infotext(data_dir: Path) -> None:
    lora = write_tiny_lora("sd15", data_dir / "models" / "Lora" / "ink.safetensors")
    embedding = write_tiny_embedding("sd15", data_dir / "embeddings" / "dusk.pt")
    write_tiny_lora("sdxl", data_dir / "models" / "Lora" / "xl-only.safetensors")
    studio = _studio(data_dir, ckpt="alpha")
    plain = studio.generate(REQUEST)
    styled = studio.generate(GenerationRequest(prompt="dusk, <lora:ink:0.6>", steps=3, width=64, height=64))
    params = parse_infotext(styled.infotexts[0]).params
    assert params["Lora hashes"] == f"ink: {hashlib.sha256(lora.read_bytes()).hexdigest()[:12]}"
    assert params["TI hashes"] == f"dusk: {hashlib.sha256(embedding.read_bytes()).hexdigest()[:12]}"
    assert parse_infotext(styled.infotexts[0]).prompt == "dusk, <lora:ink:0.6>"  # pasted back, it reproduces
    with pytest.raises(GenerationError, match="SDXL"):
        studio.generate(GenerationRequest(prompt="<lora:xl-only>", steps=2, width=64, height=64))
    assert studio.generate(REQUEST).images[0].tobytes() == plain.images[0].tobytes()
    labels = {f.name: f.label for f in studio.models.registry.files(ModelKind.LORA)}
    assert labels == {"ink": "LoRA (SD 1.x)", "xl-only": "LoRA (SDXL)"}


@pytest.mark.parametrize(("setting", "tiled"), [("on", True), ("off", False), ("auto", False)])
def test_vae_tiling_setting(data_dir: Path, setting: str, tiled: bool) -> None:
    studio = _studio(data_dir, ckpt="alpha", vae_tiling=setting)
    request = GenerationRequest(prompt="a wide field", steps=2, width=192, height=128, seed=2)
    result = studio.generate(request)
    assert result.images[0].size == (192, 128)
    assert studio.models.model().vae.use_tiling is tiled
