"""Hires fix, variation seeds, "resize seed from" and seamless tiling, on tiny random-weight models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.engine.generate import Engine
from webui.engine.noise import image_noise, seeded_noise
from webui.engine.preview import vae_decode
from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.steps import StepInfo
from webui.engine.tiling import circular_padding
from webui.outputs import format_infotext, parse_infotext, request_fields_from_params


def _request(**fields) -> GenerationRequest:
    base = {"prompt": "a red fox", "negative_prompt": "blurry", "steps": 4, "width": 64, "height": 64}
    return GenerationRequest(**(base | {"seed": 7} | fields))


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos"])
def test_hires_fix_output_size_steps_and_infotext(tiny_model, upscaler: str) -> None:
    steps: list[tuple[int, int]] = []
    result = Engine(tiny_model("sd15")).generate(
        _request(enable_hr=True, hr_scale=2, hr_upscaler=upscaler, denoising_strength=0.5),
        on_step=lambda info: steps.append((info.step, info.total)),
    )
    assert result.images[0].size == (128, 128)
    # 4 first-pass steps, then int(4 * 0.5) hires steps, counted as one run.
    assert steps == [(n, 6) for n in range(1, 7)]
    assert result.params["Size"] == "64x64"  # A1111 writes the first pass's size
    assert result.params["Hires upscale"] == 2
    assert result.params["Hires upscaler"] == upscaler
    assert result.params["Denoising strength"] == 0.5


def test_hires_fix_explicit_size_sampler_and_prompt(tiny_model) -> None:
    engine = Engine(tiny_model("sdxl"))
    request = _request(
        enable_hr=True,
        hr_resize_x=96,
        hr_resize_y=128,
        hr_second_pass_steps=3,
        hr_sampler_name="DDIM",
        hr_prompt="a blue fox",
    )
    result = engine.generate(request)
    assert result.images[0].size == (96, 128)
    assert result.params["Hires resize"] == "96x128"
    assert "Hires upscale" not in result.params
    assert result.params["Hires steps"] == 3
    assert result.params["Hires sampler"] == "DDIM"
    assert result.params["Hires prompt"] == "a blue fox"
    other_prompt = engine.generate(request.__class__(**{**request.__dict__, "hr_prompt": ""}))
    assert not np.array_equal(_pixels(result.images[0]), _pixels(other_prompt.images[0]))


def test_hires_infotext_round_trips_to_the_same_image(tiny_model) -> None:
    engine = Engine(tiny_model("sd15"))
    first = engine.generate(_request(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, seed=31))
    text = format_infotext("a red fox", "blurry", {**first.params, "Seed": 31})
    fields = request_fields_from_params(parse_infotext(text).params)
    fields = {k: v for k, v in fields.items() if k not in ("model", "model_hash")}
    again = engine.generate(GenerationRequest(prompt="a red fox", negative_prompt="blurry", **fields))
    assert fields["enable_hr"] is True and again.images[0].size == (96, 96)
    assert np.array_equal(_pixels(first.images[0]), _pixels(again.images[0]))


def test_hires_strength_zero_keeps_the_first_pass(tiny_model) -> None:
    engine = Engine(tiny_model("sd15"))
    plain = engine.generate(_request())
    hires = engine.generate(_request(enable_hr=True, hr_scale=2, denoising_strength=0.0))
    assert hires.images[0].size == (64, 64)
    assert np.array_equal(_pixels(plain.images[0]), _pixels(hires.images[0]))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"hr_scale": 9.0}, "hr_scale"),
        ({"hr_resize_x": 8192, "hr_resize_y": 64}, "hr_resize_x"),
        ({"hr_second_pass_steps": -1}, "hr_second_pass_steps"),
    ],
)
def test_bad_hires_settings_are_refused_by_name(fields: dict, field: str) -> None:
    with pytest.raises(GenerationError) as caught:
        _request(enable_hr=True, **fields).validate()
    assert caught.value.field == field


def test_variation_strength_zero_is_the_plain_seed_and_one_is_the_subseed(tiny_model) -> None:
    engine = Engine(tiny_model("sd15"))
    plain = engine.generate(_request(sampler_name="DDIM", seed=5))
    zero = engine.generate(_request(sampler_name="DDIM", seed=5, subseed=9, subseed_strength=0.0))
    full = engine.generate(_request(sampler_name="DDIM", seed=5, subseed=9, subseed_strength=1.0))
    other = engine.generate(_request(sampler_name="DDIM", seed=9))
    half = engine.generate(_request(sampler_name="DDIM", seed=5, subseed=9, subseed_strength=0.5))
    assert np.array_equal(_pixels(plain.images[0]), _pixels(zero.images[0]))
    # strength 1 is the subseed's noise (to float rounding in the slerp)
    assert np.abs(_pixels(full.images[0]) - _pixels(other.images[0])).max() <= 2
    assert not np.array_equal(_pixels(half.images[0]), _pixels(plain.images[0]))
    assert not np.array_equal(_pixels(half.images[0]), _pixels(other.images[0]))


def test_variation_subseeds_count_up_per_image(tiny_model) -> None:
    result = Engine(tiny_model("sd15")).generate(
        _request(steps=2, batch_size=2, n_iter=2, subseed=40, subseed_strength=0.2)
    )
    assert result.subseeds == [40, 41, 42, 43]
    assert result.params["Variation seed strength"] == 0.2


def test_slerp_keeps_noise_statistics() -> None:
    mixed = image_noise(1, 64, 64, subseed=2, subseed_strength=0.5)
    straight_line = 0.5 * seeded_noise(1, 64, 64) + 0.5 * seeded_noise(2, 64, 64)
    assert abs(mixed.std().item() - 1.0) < 0.05  # a straight average would shrink it to ~0.71
    assert straight_line.std().item() < 0.8


def test_resize_seed_from_centres_the_old_noise() -> None:
    small = seeded_noise(3, 8, 8)
    larger = image_noise(3, 12, 10, resize_from=(8, 8))
    assert torch.equal(larger[:, :, 2:10, 1:9], small)
    smaller = image_noise(3, 6, 6, resize_from=(8, 8))
    assert torch.equal(smaller, small[:, :, 1:7, 1:7])


def test_resize_seed_from_keeps_the_composition_in_the_infotext(tiny_model) -> None:
    result = Engine(tiny_model("sd15")).generate(
        _request(width=96, seed_resize_from_w=64, seed_resize_from_h=64)
    )
    assert result.params["Seed resize from"] == "64x64"
    assert request_fields_from_params({"Seed resize from": "64x64"}) == {
        "seed_resize_from_w": 64,
        "seed_resize_from_h": 64,
    }


def test_tiled_vae_decode_is_shift_equivariant(tiny_model) -> None:
    """With every convolution wrapping, moving the latent by one cell moves the image by 8 px,
    edges included: the image's right edge continues into its left edge."""
    model = tiny_model("sd15")
    latent = seeded_noise(4, 8, 8)
    with circular_padding(model.vae):
        image = vae_decode(model, latent)
        shifted = vae_decode(model, torch.roll(latent, shifts=(3, 2), dims=(2, 3)))
    expected = torch.roll(image, shifts=(24, 16), dims=(2, 3))
    assert torch.allclose(shifted, expected, atol=1e-4)
    plain = vae_decode(model, torch.roll(latent, shifts=(3, 2), dims=(2, 3)))
    assert not torch.allclose(plain, expected, atol=1e-2)  # zero padding makes the edges differ


def test_tiling_makes_opposite_edges_continue(tiny_model) -> None:
    engine = Engine(tiny_model("sd15"))
    tiled = _pixels(engine.generate(_request(tiling=True, steps=3)).images[0])
    plain = _pixels(engine.generate(_request(steps=3)).images[0])

    def seam_ratio(image: np.ndarray) -> float:
        """The jump across the wrapped-around edges relative to the typical neighbour jump."""
        inner = (np.abs(np.diff(image, axis=0)).mean() + np.abs(np.diff(image, axis=1)).mean()) / 2
        seam = (np.abs(image[0] - image[-1]).mean() + np.abs(image[:, 0] - image[:, -1]).mean()) / 2
        return float(seam / inner)

    assert seam_ratio(tiled) < 1.05
    assert seam_ratio(tiled) < seam_ratio(plain)
    assert not np.array_equal(tiled, plain)


def test_tiling_restores_the_model_afterwards(tiny_model) -> None:
    model = tiny_model("sd15")
    engine = Engine(model)
    engine.generate(_request(tiling=True, steps=1))
    modes = {layer.padding_mode for layer in model.unet.modules() if isinstance(layer, torch.nn.Conv2d)}
    assert modes == {"zeros"}
    infos: list[StepInfo] = []
    result = engine.generate(_request(tiling=True, steps=1), on_step=infos.append)
    assert result.params["Tiling"] is True and len(infos) == 1


def _latents_per_step(engine: Engine, prompt: str, steps: int = 4) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    engine.generate(
        _request(prompt=prompt, steps=steps, sampler_name="DDIM"), on_step=lambda i: seen.append(i.latents)
    )
    return seen


def test_prompt_editing_switches_the_conditioning_at_the_given_step(tiny_model) -> None:
    engine = Engine(tiny_model("sd15"))
    edited = _latents_per_step(engine, "[a red fox:a blue car:2]")
    before = _latents_per_step(engine, "a red fox")
    after = _latents_per_step(engine, "a blue car")
    # Steps 1-2 use "a red fox" exactly; from step 3 on the other prompt drives the image.
    assert torch.equal(edited[0], before[0]) and torch.equal(edited[1], before[1])
    assert not torch.equal(edited[2], before[2])
    fraction = _latents_per_step(engine, "[a red fox:a blue car:0.5]")
    assert all(torch.equal(a, b) for a, b in zip(fraction, edited))
    alternating = _latents_per_step(engine, "[a red fox|a blue car]")
    assert torch.equal(alternating[0], before[0]) and not torch.equal(alternating[1], before[1])
    assert not torch.equal(after[0], before[0])


def test_composable_and_weights_reach_the_guidance(tiny_model) -> None:
    engine = Engine(tiny_model("sd15"))
    plain = _latents_per_step(engine, "a red fox", steps=2)
    zero_weight = _latents_per_step(engine, "a red fox AND a blue car :0", steps=2)
    both = _latents_per_step(engine, "a red fox AND a blue car", steps=2)
    assert torch.equal(plain[-1], zero_weight[-1])  # a part with weight 0 adds nothing
    assert not torch.equal(plain[-1], both[-1])


def test_long_prompts_and_malformed_syntax_still_generate(tiny_model) -> None:
    engine = Engine(tiny_model("sdxl"))
    long_prompt = ", ".join(f"detail {n}" for n in range(60))  # well over 75 tokens: 3 chunks
    assert engine.generate(_request(prompt=long_prompt, negative_prompt="", steps=1)).images
    broken = engine.generate(_request(prompt="[a:b:c:d] (unclosed", steps=1))
    assert len(broken.images) == 1
