"""What only a CUDA device can show, on the tiny checkpoints: fp16 with the fp32 VAE fallback,
pinned-memory swaps, the speed options, compile and CUDA graphs, and the low-memory modes.

Skipped without CUDA; `python -m webui.tools.gpu_check` runs them (`-m cuda`) on a GPU machine.
Each compares against the same job in fp32 on the CPU (the noise is drawn on the CPU, so the
starting latents are identical): a GPU changes pixels by no more than fp16 rounding does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import CPU
from webui.engine.generate import Engine
from webui.engine.preview import vae_decode
from webui.engine.request import GenerationRequest
from webui.engine.speed_options import SpeedOptions
from webui.model_manager.cache import MemoryBudgets, ModelCache, Tier
from webui.model_manager.load import LoadedModel, load_model
from webui.model_manager.offload import MemoryMode
from webui.model_manager.placement import model_modules

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
REQUEST = GenerationRequest(
    prompt="a red fox", negative_prompt="blurry", steps=6, width=64, height=64, seed=3, batch_size=2
)
# fp16 on a GPU against fp32 on the CPU, in 0-255 levels: the tiny models' images are mostly
# noise, which fp16 rounding moves more than it moves a real picture.
MAX_MEAN_LEVELS = 3.0


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


@pytest.fixture(scope="module")
def cpu_reference(tiny_dir: Path) -> dict[str, np.ndarray]:
    return {
        arch: _pixels(
            Engine(load_model(tiny_dir / f"tiny-{arch}.safetensors", CPU, torch.float32))
            .generate(REQUEST)
            .images
        )
        for arch in ("sd15", "sdxl")
    }


def _cuda_model(tiny_dir: Path, arch: str, dtype: torch.dtype = torch.float16) -> LoadedModel:
    return load_model(tiny_dir / f"tiny-{arch}.safetensors", CUDA, dtype)


def _close_to(images, reference: np.ndarray) -> None:
    difference = np.abs(_pixels(images) - reference)
    assert difference.mean() <= MAX_MEAN_LEVELS, difference.mean()


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_fp16_on_cuda_matches_fp32_on_the_cpu(tiny_dir: Path, cpu_reference, arch: str) -> None:
    model = _cuda_model(tiny_dir, arch)
    assert next(model.unet.parameters()).device.type == "cuda"
    _close_to(Engine(model).generate(REQUEST).images, cpu_reference[arch])


def test_an_fp16_vae_that_overflows_is_decoded_again_in_fp32(tiny_dir: Path) -> None:
    model = _cuda_model(tiny_dir, "sd15")
    latent = torch.full((1, 4, 8, 8), 1e4, device=CUDA, dtype=torch.float16)
    with torch.inference_mode():
        half = model.vae.decode(latent / model.vae.config.scaling_factor, return_dict=False)[0]
    if torch.isfinite(half).all():
        pytest.skip("this latent does not overflow the tiny VAE in fp16 on this GPU")
    pixels = vae_decode(model, latent)
    assert model.vae.dtype == torch.float32  # upcast for good
    assert torch.isfinite(pixels).all()


@pytest.mark.parametrize(
    "options",
    [
        SpeedOptions(),  # on CUDA: SDPA, channels-last and fused QKV by default
        SpeedOptions(channels_last="off", fuse_qkv="off"),
        SpeedOptions(attention="math"),
        SpeedOptions(batch_cond_uncond=False),
    ],
    ids=["auto", "plain", "math-attention", "split-cond-uncond"],
)
def test_speed_options_keep_the_image_on_cuda(tiny_dir: Path, cpu_reference, options: SpeedOptions) -> None:
    model = _cuda_model(tiny_dir, "sd15")
    _close_to(Engine(model, speed=options).generate(REQUEST).images, cpu_reference["sd15"])


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["compile", "compile+cuda-graphs"])
def test_compiled_unet_keeps_the_image_on_cuda(tiny_dir: Path, cpu_reference, cuda_graphs: bool) -> None:
    model = _cuda_model(tiny_dir, "sd15")
    engine = Engine(model, speed=SpeedOptions(compile="on", cuda_graphs=cuda_graphs))
    _close_to(engine.generate(REQUEST).images, cpu_reference["sd15"])  # compiles
    _close_to(engine.generate(REQUEST).images, cpu_reference["sd15"])  # reuses


def test_swaps_go_through_pinned_host_memory(tiny_dir: Path) -> None:
    path = tiny_dir / "tiny-sd15.safetensors"
    size = 1 << 30
    cache = ModelCache(
        lambda p: load_model(p, CPU, torch.float16), CUDA, MemoryBudgets(size, size), MemoryMode.NORMAL
    )
    model = cache.activate(path)
    assert cache.tier(path) is Tier.VRAM
    assert all(p.device.type == "cuda" for m in model_modules(model) for p in m.parameters())
    cache.unload(path)
    assert cache.tier(path) is Tier.RAM
    host = [p for m in model_modules(model) for p in m.parameters()]
    assert all(p.device.type == "cpu" and p.is_pinned() for p in host)
    back = cache.activate(path)
    assert all(p.device.type == "cuda" for m in model_modules(back) for p in m.parameters())
    moves = [event for event in cache.events() if event.action == "move"]
    assert moves and all(event.seconds >= 0 for event in moves)


@pytest.mark.parametrize("mode", [MemoryMode.TEXT_OFFLOAD, MemoryMode.MEDVRAM, MemoryMode.LOWVRAM])
def test_low_memory_modes_run_on_cuda_with_the_same_image(
    tiny_dir: Path, cpu_reference, mode: MemoryMode
) -> None:
    path = tiny_dir / "tiny-sd15.safetensors"
    size = 1 << 30
    cache = ModelCache(lambda p: load_model(p, CPU, torch.float16), CUDA, MemoryBudgets(size, size), mode)
    torch.cuda.reset_peak_memory_stats()
    with cache.use(path) as model:
        images = Engine(model).generate(REQUEST).images
    _close_to(images, cpu_reference["sd15"])
    assert torch.cuda.max_memory_allocated() > 0


@pytest.mark.parametrize("mode", list(MemoryMode)[1:])  # every mode but auto: normal, text-offload, med, low
def test_sd35_runs_on_cuda_in_every_memory_mode(tmp_path: Path, mode: MemoryMode) -> None:
    """SD 3.5's encoders, transformer and VAE take their inputs on the device they run on even
    while an offload mode keeps their weights on the host until their hooks run (img2img and a
    weighted prompt go through the VAE encoder and the weighted encoders as well)."""
    from PIL import Image

    from webui.tools.tiny_sd3 import write_tiny_sd3_checkpoint

    path = write_tiny_sd3_checkpoint("sd35-medium", tmp_path / "sd35m.safetensors")
    request = GenerationRequest(
        prompt="a (red:1.3) circle",
        negative_prompt="blur",
        steps=4,
        width=64,
        height=64,
        seed=3,
        sampler_name="Euler",
        init_image=Image.new("RGB", (64, 64), (200, 40, 40)),
        denoising_strength=0.6,
    )
    reference = _pixels(Engine(load_model(path, CPU, torch.float32)).generate(request).images)
    size = 1 << 30
    cache = ModelCache(lambda p: load_model(p, CPU, torch.float32), CUDA, MemoryBudgets(size, size), mode)
    with cache.use(path) as model:
        images = Engine(model).generate(request).images
    _close_to(images, reference)
