"""Issue 21: the new samplers and schedule types against diffusers, and the NV (Philox) RNG."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, EulerDiscreteScheduler

from webui.engine.noise import image_noise, seeded_noise
from webui.engine.philox import PhiloxGenerator, box_muller, philox4x32
from webui.engine.request import GenerationError
from webui.engine.samplers import make_scheduler

# The SD 1.x/2.x reference scheduler config, as a checkpoint's spec carries it.
CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
BASE = {**CONFIG, "timestep_spacing": "leading", "steps_offset": 1}


def _run(scheduler, steps: int = 5) -> torch.Tensor:
    """Drive a scheduler through a pass with a fixed stand-in model; its final latents."""
    scheduler.set_timesteps(steps)
    latents = (
        torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1)) * scheduler.init_noise_sigma
    )
    generator = torch.Generator().manual_seed(2)
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, timestep)
        prediction = torch.tanh(model_input) * 0.5 + 0.01 * float(timestep) / 1000
        latents = scheduler.step(prediction, timestep, latents, generator=generator).prev_sample
    return latents


@pytest.mark.parametrize(
    ("name", "stock"),
    [
        (
            "DPM++ 3M SDE",
            lambda: DPMSolverMultistepScheduler(**BASE, solver_order=3, algorithm_type="sde-dpmsolver++"),
        ),
        (
            "DPM++ 2S a",
            # It has no timestep spacing options: its own spacing, as make_scheduler leaves it.
            lambda: DPMSolverSinglestepScheduler(
                **CONFIG, solver_order=2, algorithm_type="sde-dpmsolver++", lower_order_final=True
            ),
        ),
    ],
)
def test_new_samplers_are_bit_equal_to_their_diffusers_scheduler(name: str, stock) -> None:
    assert torch.equal(_run(make_scheduler(name, "Automatic", CONFIG)), _run(stock()))


@pytest.mark.parametrize(
    ("schedule", "options"),
    [
        ("Polyexponential", {"use_exponential_sigmas": True}),
        ("Simple", {"timestep_spacing": "trailing"}),
        ("Normal", {"timestep_spacing": "linspace", "steps_offset": 0}),
        ("DDIM", {}),
    ],
)
def test_new_schedule_types_are_bit_equal_to_diffusers_options(schedule: str, options: dict) -> None:
    ours = _run(make_scheduler("Euler", schedule, CONFIG))
    assert torch.equal(ours, _run(EulerDiscreteScheduler(**{**BASE, **options})))


def _trained_sigmas() -> tuple[float, float]:
    alphas = EulerDiscreteScheduler(**BASE).alphas_cumprod.numpy()
    sigmas = np.sqrt((1 - alphas) / alphas)
    return float(sigmas[0]), float(sigmas[-1])


def test_kl_optimal_and_align_your_steps_are_euler_with_their_sigmas() -> None:
    sigma_min, sigma_max = _trained_sigmas()
    steps = 5
    kl = [*np.tan(np.linspace(math.atan(sigma_max), math.atan(sigma_min), steps)), 0.0]
    stock = EulerDiscreteScheduler(**BASE)
    stock.set_timesteps = lambda n, sigmas=kl, plain=stock.set_timesteps: plain(sigmas=sigmas)
    assert torch.equal(_run(make_scheduler("Euler", "KL Optimal", CONFIG), steps), _run(stock, steps))
    # Align Your Steps at its native 10 steps is NVIDIA's published SD 1.5 table as it stands.
    ays = make_scheduler("Euler", "Align Your Steps", CONFIG)
    ays.set_timesteps(10)
    published = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0]
    assert np.allclose(ays.sigmas.numpy(), published, atol=1e-3)
    sdxl = make_scheduler("Euler", "Align Your Steps", CONFIG, ays_table="StableDiffusionXLSigmas")
    sdxl.set_timesteps(10)
    assert float(sdxl.sigmas[1]) == pytest.approx(6.315, abs=1e-3)
    sdxl.set_timesteps(20)
    assert len(sdxl.sigmas) == 21 and float(sdxl.sigmas[0]) == pytest.approx(14.615, abs=1e-3)


def test_schedule_types_diffusers_cannot_do_are_refused_by_name() -> None:
    with pytest.raises(GenerationError, match="KL Optimal.*DPM\\+\\+ 2M") as error:
        make_scheduler("DPM++ 2M", "KL Optimal", CONFIG)
    assert error.value.field == "scheduler"
    with pytest.raises(GenerationError, match="'Restart' is not available") as error:
        make_scheduler("Restart", "Automatic", CONFIG)
    assert error.value.field == "sampler_name"


# --- Philox4x32-10 and the NV source ----------------------------------------------------------

# Known answers of Philox4x32-10 from Random123's kat_vectors (Salmon et al. 2011):
# (counter words, key words) -> output words.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF,) * 4,
        (0xFFFFFFFF,) * 2,
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_matches_the_reference_known_answers(counter, key, expected) -> None:
    words = philox4x32(np.array(counter, dtype=np.uint32)[:, None], np.array(key, dtype=np.uint32)[:, None])
    assert tuple(int(word) for word in words[:, 0]) == expected


def test_nv_noise_is_box_muller_over_philox_with_cudas_counter_layout() -> None:
    seed, shape = 2**33 + 7, (1, 4, 3, 5)
    generator = PhiloxGenerator(seed)
    first, second = generator.randn(shape), generator.randn(shape)
    count = int(np.prod(shape))
    # Value i of the first draw: counter (offset 0, 0, i, 0), key (seed low, seed high).
    counter = np.zeros((4, count), dtype=np.uint32)
    counter[2] = np.arange(count)
    key = np.array([[seed & 0xFFFFFFFF] * count, [seed >> 32] * count], dtype=np.uint32)
    words = philox4x32(counter, key)
    assert np.array_equal(first.ravel(), box_muller(words[0], words[1]))
    counter[0] = 1  # the next draw of the same generator moves the offset on
    words = philox4x32(counter, key)
    assert np.array_equal(second.ravel(), box_muller(words[0], words[1]))
    big = PhiloxGenerator(1).randn((4, 64, 64))
    assert big.dtype == np.float32 and abs(big.mean()) < 0.05 and abs(big.std() - 1) < 0.05


def test_first_philox_value_by_hand() -> None:
    # Counter 0, key 0: the Random123 answer's first two words through curand's Box-Muller.
    u = np.float32(0x6627E8D5) * np.float32(2.3283064e-10) + np.float32(2.3283064e-10) / 2
    v = (
        np.float32(0xE169C58D) * np.float32(2.3283064e-10 * 6.2831855)
        + np.float32(2.3283064e-10 * 6.2831855) / 2
    )
    expected = math.sqrt(-2 * math.log(u)) * math.sin(v)
    assert PhiloxGenerator(0).randn((1,))[0] == pytest.approx(expected, rel=1e-5)


def test_noise_sources() -> None:
    nv = seeded_noise(42, 8, 8, source="NV")
    assert torch.equal(nv, torch.from_numpy(PhiloxGenerator(42).randn((1, 4, 8, 8))))
    assert torch.equal(seeded_noise(42, 8, 8), seeded_noise(42, 8, 8, source="GPU"))  # device: CPU
    assert not torch.equal(nv, seeded_noise(42, 8, 8))
    mixed = image_noise(42, 8, 8, subseed=3, subseed_strength=0.5, source="NV")
    assert not torch.equal(mixed, nv) and mixed.shape == nv.shape
