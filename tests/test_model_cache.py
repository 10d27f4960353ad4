"""The model cache: tiers, budgets, LRU, leases and low-memory modes, on a stand-in GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import CPU
from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest
from webui.model_manager.cache import MemoryBudgets, ModelCache, Tier
from webui.model_manager.load import load_model
from webui.model_manager.offload import MemoryMode, choose_memory_mode
from webui.model_manager.placement import host_views, model_bytes
from webui.tools.tiny_networks import write_tiny_embedding, write_tiny_lora

GB = 1_000_000_000


@pytest.fixture(scope="module")
def three(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("three")
    paths = []
    for name in ("alpha", "beta", "gamma"):
        paths.append(folder / f"{name}.safetensors")
        shutil.copy(tiny_dir / "tiny-sd15.safetensors", paths[-1])
    return paths


@pytest.fixture(scope="module")
def model_size(three: list[Path]) -> int:
    return model_bytes(load_model(three[0], CPU, torch.float32))


def _cache(size: int, vram_models: float, ram_models: float, **kwargs) -> ModelCache:
    """A cache whose 'GPU' is the CPU: tiers, budgets and events behave as on CUDA."""
    budgets = MemoryBudgets(int(size * vram_models), int(size * ram_models))
    kwargs.setdefault("device_bytes", 1000 * GB)
    return ModelCache(
        lambda path: load_model(path, CPU, torch.float32), CPU, budgets, separate_device_memory=True, **kwargs
    )


def _tiers(cache: ModelCache, paths: list[Path]) -> list[str]:
    return [cache.tier(path).value for path in paths]


def test_lru_demotes_to_ram_then_drops_to_disk(three: list[Path], model_size: int) -> None:
    alpha, beta, gamma = three
    cache = _cache(model_size, vram_models=1.5, ram_models=1.5)
    cache.activate(alpha)
    assert _tiers(cache, three) == ["vram", "disk", "disk"]
    cache.activate(beta)
    assert _tiers(cache, three) == ["ram", "vram", "disk"]
    cache.activate(gamma)  # beta goes to RAM; alpha, least recently used, leaves memory
    assert _tiers(cache, three) == ["disk", "ram", "vram"]
    events_before = len(cache.events())
    cache.activate(beta)  # RAM-warm: a move, not a load
    new = cache.events()[events_before:]
    assert [(e.action, e.name, e.target) for e in new] == [
        ("move", "gamma", Tier.RAM),
        ("move", "beta", Tier.VRAM),
    ]
    assert _tiers(cache, three) == ["disk", "vram", "ram"]


def test_budgets_are_kept_and_a_file_is_never_cached_twice(three: list[Path], model_size: int) -> None:
    cache = _cache(model_size, vram_models=2.5, ram_models=1.2)
    for path in [*three, *three, three[0]]:
        model = cache.activate(path)
        assert cache.used_bytes(Tier.VRAM) <= cache.budgets.vram_bytes
        assert cache.used_bytes(Tier.RAM) <= cache.budgets.ram_bytes
        assert len({p.path for p in cache.placements()}) == len(cache.placements())
        assert cache.activate(path) is model  # asking again changes nothing
    assert sum(p.tier is Tier.VRAM for p in cache.placements()) == 2


def test_events_are_timed_with_size_and_bandwidth(three: list[Path], model_size: int) -> None:
    cache = _cache(model_size, vram_models=1, ram_models=1)
    cache.activate(three[0])
    cache.activate(three[1])
    load, move = cache.events()[:2]
    assert (load.action, load.source, load.target) == ("load", Tier.DISK, Tier.RAM)
    assert move.action == "move" and move.size_bytes == model_size and move.seconds >= 0
    assert load.describe().startswith(f"loaded alpha from disk to RAM: {model_size / 1e6:.1f} MB in ")
    assert move.describe().startswith("moved alpha from RAM to cpu") and "GB/s" in move.describe()
    placement = {p.name: p for p in cache.placements()}
    assert placement["beta"].tier is Tier.VRAM and placement["beta"].last_event is not None


def test_a_model_in_use_is_never_moved_or_evicted(three: list[Path], model_size: int) -> None:
    alpha, beta, gamma = three
    cache = _cache(model_size, vram_models=1, ram_models=1)
    with cache.use(alpha) as model:
        cache.activate(beta)  # over budget rather than pull the running job's model away
        cache.prefetch(gamma)
        cache.evict()
        cache.unload()
        assert cache.tier(alpha) is Tier.VRAM
        assert next(p for p in cache.placements() if p.path == alpha).in_use
        assert model.unet.conv_in.weight.is_contiguous()
    cache.activate(gamma)
    assert cache.tier(alpha) is not Tier.VRAM


def test_unload_and_evict(three: list[Path], model_size: int) -> None:
    cache = _cache(model_size, vram_models=2, ram_models=2)
    cache.activate(three[0])
    cache.unload()
    assert cache.tier(three[0]) is Tier.RAM
    cache.evict(three[0])
    assert cache.tier(three[0]) is Tier.DISK and cache.placements() == []


def test_cpu_device_has_one_tier(three: list[Path], model_size: int) -> None:
    budgets = MemoryBudgets(0, int(model_size * 2.5))
    cache = ModelCache(lambda path: load_model(path, CPU, torch.float32), CPU, budgets)
    for path in three:
        cache.activate(path)
    assert _tiers(cache, three) == ["disk", "ram", "ram"]


@pytest.mark.parametrize("mode", [MemoryMode.TEXT_OFFLOAD, MemoryMode.MEDVRAM, MemoryMode.LOWVRAM])
def test_low_memory_modes_make_the_same_image_and_leave_no_hooks(
    three: list[Path], model_size: int, mode: MemoryMode, tmp_path: Path
) -> None:
    networks = {
        "loras": {"ink": write_tiny_lora("sd15", tmp_path / "ink.safetensors")},
        "embeddings": {"dusk": write_tiny_embedding("sd15", tmp_path / "dusk.pt")},
    }
    plain = GenerationRequest(prompt="a lighthouse", steps=3, width=64, height=64, seed=5)
    # A LoRA and an embedding add modules after the hooks went on; they must be offloaded too.
    styled = GenerationRequest(
        prompt="a lighthouse, dusk <lora:ink:0.8>", steps=3, width=64, height=64, seed=5
    )
    reference = load_model(three[0], CPU, torch.float32)
    expected = [Engine(reference, **networks).generate(r).images[0].tobytes() for r in (plain, styled, plain)]
    cache = _cache(model_size, vram_models=4, ram_models=4, memory_mode=mode)
    with cache.use(three[0]) as model:
        assert _hook_count(model) > 0
        engine = Engine(model, **networks)
        images = [engine.generate(r).images[0].tobytes() for r in (plain, styled, plain)]
        if mode is MemoryMode.LOWVRAM:  # on a real GPU an unhooked layer would fail with a device mismatch
            named = [(n, m) for part in (model.unet, *model.text_encoders) for n, m in part.named_modules()]
            owners = [(n, m) for n, m in named if next(m.parameters(recurse=False), None) is not None]
            assert any(".lora_A." in name for name, _ in owners)
            assert all(m._forward_pre_hooks for _, m in owners)
    assert images == expected
    assert expected[0] != expected[1] and expected[0] == expected[2]
    assert next(p for p in cache.placements()).memory_mode is mode
    cache.memory_mode = MemoryMode.NORMAL
    with cache.use(three[0]) as model:
        assert _hook_count(model) == 0
        assert Engine(model).generate(plain).images[0].tobytes() == expected[0]


def _hook_count(model) -> int:
    modules = [m for part in (model.unet, model.vae, *model.text_encoders) for m in part.modules()]
    return sum(len(m._forward_pre_hooks) for m in modules)


def test_automatic_memory_mode_follows_the_gpu_size() -> None:
    cuda = torch.device("cuda")
    sd15, sdxl = int(2.1 * GB), int(6.9 * GB)
    assert choose_memory_mode(MemoryMode.AUTO, cuda, sd15, 24 * GB) is MemoryMode.NORMAL
    assert choose_memory_mode(MemoryMode.AUTO, cuda, sdxl, 24 * GB) is MemoryMode.NORMAL
    assert choose_memory_mode(MemoryMode.AUTO, cuda, sdxl, 8 * GB) is MemoryMode.MEDVRAM
    assert choose_memory_mode(MemoryMode.AUTO, cuda, sdxl, 4 * GB) is MemoryMode.LOWVRAM
    assert choose_memory_mode(MemoryMode.AUTO, CPU, sdxl, 1 * GB) is MemoryMode.NORMAL
    assert choose_memory_mode(MemoryMode.LOWVRAM, cuda, sd15, 80 * GB) is MemoryMode.LOWVRAM


def test_budgets_default_from_the_machine() -> None:
    budgets = MemoryBudgets.for_machine(CPU)
    assert budgets.vram_bytes == 0 and budgets.ram_bytes > GB / 2
    assert MemoryBudgets.for_machine(CPU, vram_gb=3, ram_gb=1.5) == MemoryBudgets(3 * GB, 1_500_000_000)


def test_host_copies_share_a_few_power_of_two_blocks() -> None:
    """Pinned memory comes in power-of-two blocks; carving tensors out of big ones wastes little."""
    tensors = [torch.randn(3, 5), torch.ones(1000, dtype=torch.float16), torch.arange(7), torch.zeros(0)]
    views = host_views(tensors, chunk_bytes=2048, pin=False)
    for tensor, view in zip(tensors, views, strict=True):
        assert view.shape == tensor.shape and view.dtype == tensor.dtype
        view.copy_(tensor)
    for tensor, view in zip(tensors, views, strict=True):
        assert torch.equal(view, tensor)  # no two views overlap
    storages = {view.untyped_storage().data_ptr(): view.untyped_storage() for view in views if view.numel()}
    # 512 + 2048 + 512 + 0 aligned bytes in 2 KiB chunks: the small ones share the first chunk.
    assert sorted(storage.nbytes() for storage in storages.values()) == [1024, 2048]


def test_text_offload_is_chosen_when_the_denoiser_fits_but_the_encoders_do_not() -> None:
    """SD 3.5's sizes in fp16 with T5 in fp8 (CLIP-L 0.25, CLIP-G 1.39, T5 4.7 GB): on a GPU where
    the denoiser and VAE fit with room to work, the encoders visit it one at a time."""
    cuda = torch.device("cuda")
    encoders = (int(0.25 * GB), int(1.39 * GB), int(4.7 * GB))
    medium, large = int(4.95 * GB) + sum(encoders), int(16.3 * GB) + sum(encoders)
    assert choose_memory_mode(MemoryMode.AUTO, cuda, medium, 24 * GB, encoders) is MemoryMode.NORMAL
    assert choose_memory_mode(MemoryMode.AUTO, cuda, medium, 12 * GB, encoders) is MemoryMode.TEXT_OFFLOAD
    assert choose_memory_mode(MemoryMode.AUTO, cuda, large, 32 * GB, encoders) is MemoryMode.TEXT_OFFLOAD
    assert choose_memory_mode(MemoryMode.AUTO, cuda, large, 24 * GB, encoders) is MemoryMode.MEDVRAM
    # Without the sizes of its encoders nothing tells text-offload is possible: as before.
    assert choose_memory_mode(MemoryMode.AUTO, cuda, medium, 12 * GB) is MemoryMode.MEDVRAM
