"""Speed options keep the images: each one changes pixels by no more than running in fp16 does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0

from webui.engine.generate import Engine
from webui.engine.preview import PreviewCopy, vae_decode
from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.speed import prepare_unet
from webui.engine.speed_options import SpeedOptions, xformers_available
from webui.model_manager.detect import Arch
from webui.model_manager.load import LoadedModel, load_model
from webui.tools.tiny_networks import write_tiny_lora

CPU = torch.device("cpu")
REQUEST = GenerationRequest(
    prompt="a red fox",
    negative_prompt="blurry",
    steps=6,
    width=64,
    height=64,
    seed=3,
    batch_size=2,
    sampler_name="Euler",
)


def _fresh(tiny_dir: Path, arch: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A model of its own: speed options change modules, and the session's shared models must not."""
    return load_model(tiny_dir / f"tiny-{arch}.safetensors", CPU, dtype)


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per arch: the fp32 images, and how far the same job in fp16 lands from them (the noise floor)."""
    out = {}
    for arch in ("sd15", "sdxl"):
        exact = _pixels(Engine(_fresh(tiny_dir, arch)).generate(REQUEST).images)
        half = _pixels(Engine(_fresh(tiny_dir, arch, torch.float16)).generate(REQUEST).images)
        out[arch] = (exact, np.abs(half - exact))
    return out


def _within_fp16_noise(images, exact: np.ndarray, fp16_noise: np.ndarray) -> None:
    difference = np.abs(_pixels(images) - exact)
    assert difference.max() <= max(fp16_noise.max(), 1)
    assert difference.mean() <= fp16_noise.mean()


def test_half_precision_is_the_noise_floor(reference) -> None:
    for arch, (_exact, noise) in reference.items():
        assert 0 < noise.mean() < 1, arch  # fp16 moves pixels, by less than a level on average
        assert noise.max() <= 2, arch


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize(
    "options",
    [
        SpeedOptions(attention="math"),
        SpeedOptions(channels_last="on"),
        SpeedOptions(fuse_qkv="on"),
        SpeedOptions(batch_cond_uncond=False),
        SpeedOptions(attention="math", channels_last="on", batch_cond_uncond=False),
        SpeedOptions(channels_last="on", fuse_qkv="on"),
    ],
    ids=[
        "math-attention",
        "channels-last",
        "fused-qkv",
        "split-cond-uncond",
        "all-but-fused",
        "cl-and-fused",
    ],
)
def test_each_speed_option_keeps_the_image(tiny_dir, reference, arch: str, options: SpeedOptions) -> None:
    model = _fresh(tiny_dir, arch)
    calls = _count_unet_calls(model)
    images = Engine(model, speed=options).generate(REQUEST).images
    exact, noise = reference[arch]
    _within_fp16_noise(images, exact, noise)
    processors = {type(p) for p in model.unet.attn_processors.values()}
    resolved = options.resolve(CPU)
    expected = {"sdpa": AttnProcessor2_0, "math": AttnProcessor}[resolved.attention]
    assert processors == ({FusedAttnProcessor2_0} if resolved.fuse_qkv else {expected})
    assert model.unet.conv_in.weight.is_contiguous(
        memory_format=torch.channels_last if resolved.channels_last else torch.contiguous_format
    )
    # CFG with one negative and one positive prompt: one call per step, or two when split.
    assert len(calls) == REQUEST.steps * (1 if options.batch_cond_uncond else 2)
    assert {batch for batch in calls} == {
        2 * REQUEST.batch_size if options.batch_cond_uncond else REQUEST.batch_size
    }


def test_fused_projections_step_aside_for_a_lora(tiny_dir, tmp_path) -> None:
    lora = write_tiny_lora("sd15", tmp_path / "ink.safetensors")
    with_lora = GenerationRequest(**{**REQUEST.__dict__, "prompt": "a red fox <lora:ink:1>"})
    plain = _pixels(Engine(_fresh(tiny_dir, "sd15"), loras={"ink": lora}).generate(with_lora).images)

    model = _fresh(tiny_dir, "sd15")
    engine = Engine(model, loras={"ink": lora}, speed=SpeedOptions(fuse_qkv="on"))
    first = _pixels(engine.generate(REQUEST).images)
    assert {type(p) for p in model.unet.attn_processors.values()} == {FusedAttnProcessor2_0}
    fused_away = _pixels(engine.generate(with_lora).images)
    assert {type(p) for p in model.unet.attn_processors.values()} == {AttnProcessor2_0}
    assert np.array_equal(fused_away, plain)  # the adapters on q/k/v were used
    assert not np.array_equal(fused_away, first)  # and they change the image
    again = _pixels(engine.generate(REQUEST).images)
    assert {type(p) for p in model.unet.attn_processors.values()} == {FusedAttnProcessor2_0}
    assert np.array_equal(again, first)


def test_options_that_cannot_work_here_are_refused_clearly(tiny_dir) -> None:
    with pytest.raises(ValueError, match="compile must be one of"):
        SpeedOptions(compile="fast")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        SpeedOptions(compile="on", cuda_graphs=True).resolve(CPU)
    engine = Engine(_fresh(tiny_dir, "sd15"), speed=SpeedOptions(compile="on", cuda_graphs=True))
    with pytest.raises(GenerationError, match="CUDA graphs"):
        engine.generate(REQUEST)
    if not xformers_available():
        with pytest.raises(ValueError, match="xformers package is not installed"):
            SpeedOptions(attention="xformers").resolve(CPU)


def test_auto_switches_turn_on_for_cuda_only() -> None:
    cuda = SpeedOptions().resolve(torch.device("cuda"))
    cpu = SpeedOptions().resolve(CPU)
    assert (cuda.attention, cuda.channels_last, cuda.fuse_qkv) == ("sdpa", True, True)
    assert (cpu.attention, cpu.channels_last, cpu.fuse_qkv) == ("sdpa", False, False)
    assert SpeedOptions(attention="math", fuse_qkv="on").resolve(CPU).fuse_qkv is False  # fused is SDPA's
    assert SpeedOptions(compile="on").resolve(CPU).compile_mode == "default"
    assert SpeedOptions(compile="max").resolve(CPU).compile_mode == "max-autotune-no-cudagraphs"
    graphs = SpeedOptions(compile="on", cuda_graphs=True).resolve(torch.device("cuda"))
    assert graphs.compile_mode == "reduce-overhead"


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_compiled_unet_keeps_the_image_and_is_built_once_per_shape(tiny_dir, reference) -> None:
    from torch._dynamo.utils import counters

    model = _fresh(tiny_dir, "sd15")
    engine = Engine(model, speed=SpeedOptions(compile="on"))
    exact, noise = reference["sd15"]
    _within_fp16_noise(engine.generate(REQUEST).images, exact, noise)  # the first job compiles
    compiled = prepare_unet(model, SpeedOptions(compile="on").resolve(CPU), loras_active=False)
    assert compiled is not model.unet
    graphs = counters["stats"]["unique_graphs"]
    _within_fp16_noise(engine.generate(REQUEST).images, exact, noise)
    assert counters["stats"]["unique_graphs"] == graphs  # same shape: the compiled graph is reused
    # Switched off again, the plain module runs.
    assert prepare_unet(model, SpeedOptions().resolve(CPU), loras_active=False) is model.unet


def test_batch_decode_equals_decoding_each_image(tiny_model) -> None:
    model = tiny_model("sd15")
    latents = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    together = vae_decode(model, latents)
    alone = torch.cat([vae_decode(model, latent[None]) for latent in latents])
    assert together.shape == (3, 3, 64, 64)
    assert torch.equal(together, alone)


def test_preview_copy_on_the_host_is_the_latent_itself() -> None:
    latent = torch.randn((1, 4, 8, 8))
    copy = PreviewCopy(latent, pixels=False)
    assert torch.equal(copy.tensor(), latent)
    assert copy.image(Arch.SD1).size == (8, 8)
    pixels = PreviewCopy(torch.zeros((1, 3, 16, 16)), pixels=True)
    assert pixels.image(Arch.SD1).getpixel((0, 0)) == (128, 128, 128)


def _count_unet_calls(model: LoadedModel) -> list[int]:
    """The batch size of every UNet forward."""
    calls: list[int] = []
    model.unet.register_forward_pre_hook(lambda _module, args: calls.append(args[0].shape[0]))
    return calls
