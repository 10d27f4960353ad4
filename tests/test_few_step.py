"""Few-step models and LoRAs: recognised from their names and metadata, listed with their
settings, a note when a job runs them far from those, and CFG 1 skipping the unconditional pass."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file, save_file

from tests.http_helpers import served_without_login
from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest
from webui.model_manager.archs import DenoisingFamily
from webui.model_manager.few_step import FewStepHint, few_step_hint
from webui.model_manager.registry import ModelKind
from webui.settings import Settings
from webui.studio import Studio
from webui.tools.tiny_networks import write_tiny_lora


@pytest.mark.parametrize(
    ("name", "metadata", "expected"),
    [
        ("sdxl_lightning_4step_lora.safetensors", {}, ("Lightning", 4, 1.0, "Euler", "SGM Uniform")),
        ("sdxl_lightning_8step.safetensors", {}, ("Lightning", 8, 1.0, "Euler", "SGM Uniform")),
        ("Hyper-SDXL-8steps-lora.safetensors", {}, ("Hyper-SD", 8, 1.0, "Euler", "SGM Uniform")),
        ("Hyper-SD15-12steps-CFG-lora.safetensors", {}, ("Hyper-SD", 12, 6.0, "Euler", "SGM Uniform")),
        ("lcm-lora-sdv1-5.safetensors", {}, ("LCM", 4, 1.0, "LCM", "Automatic")),
        ("sd_xl_turbo_1.0_fp16.safetensors", {}, ("Turbo", 4, 1.0, "Euler a", "Automatic")),
        ("dmd2_sdxl_4step_lora.safetensors", {}, ("DMD2", 4, 1.0, "LCM", "Automatic")),
        (
            "pytorch_lora_weights.safetensors",
            {"ss_output_name": "lcm-lora-sdxl"},
            ("LCM", 4, 1.0, "LCM", "Automatic"),
        ),
        (
            "model.safetensors",
            {"modelspec.title": "SDXL Lightning 2-step"},
            ("Lightning", 2, 1.0, "Euler", "SGM Uniform"),
        ),
    ],
)
def test_families_and_steps_are_read_from_names_and_metadata(name, metadata, expected) -> None:
    assert few_step_hint(name, metadata) == FewStepHint(*expected)


def test_sd35_large_turbo_gets_four_flow_euler_steps_without_guidance() -> None:
    hint = few_step_hint("sd3.5_large_turbo.safetensors", {}, DenoisingFamily.FLOW)
    assert hint == FewStepHint("Turbo", 4, 1.0, "Euler", "Automatic")
    assert few_step_hint("sd3.5_medium.safetensors", {}, DenoisingFamily.FLOW) is None


@pytest.mark.parametrize(
    "name",
    ["v1-5-pruned-emaonly.safetensors", "dreamshaper_8.safetensors", "realisticVision_v51.safetensors"],
)
def test_ordinary_models_get_no_hint(name: str) -> None:
    assert few_step_hint(name, {"ss_output_name": "my-style"}) is None


def test_cfg_1_runs_the_unet_once_per_step(tiny_model) -> None:
    model = tiny_model("sd15")
    calls: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda _module, args: calls.append(args[0].shape[0]))
    try:
        request = GenerationRequest(
            prompt="a fox", negative_prompt="blur", steps=3, width=64, height=64, seed=1
        )
        Engine(model).generate(replace(request, cfg_scale=1.0))
        assert calls == [1, 1, 1]  # no negative-prompt pass
        calls.clear()
        Engine(model).generate(request)
        assert calls == [2, 2, 2]
    finally:
        hook.remove()


@pytest.fixture
def data_dir(tiny_dir: Path, tmp_path: Path) -> Path:
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", checkpoints / "dreamshaper-lcm.safetensors")
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", checkpoints / "plain.safetensors")
    loras = tmp_path / "models" / "Lora"
    loras.mkdir(parents=True)
    lora = write_tiny_lora("sd15", loras / "speedy.safetensors")
    save_file(load_file(str(lora)), str(lora), metadata={"ss_output_name": "Hyper-SD15-8steps-lora"})
    return tmp_path


def test_the_registry_lists_hints_and_jobs_far_from_them_get_a_note(data_dir: Path) -> None:
    studio = Studio(Settings.for_data_dir(data_dir, watermark=False))
    lcm = studio.models.find_checkpoint("dreamshaper-lcm")
    assert lcm.few_step == FewStepHint("LCM", 4, 1.0, "LCM", "Automatic")
    assert lcm.label == "SD 1.x, LCM 4-step"
    assert studio.models.find_checkpoint("plain").few_step is None
    (lora,) = studio.models.registry.files(ModelKind.LORA)
    assert lora.few_step is not None and lora.few_step.family == "Hyper-SD"

    usual = GenerationRequest(prompt="a fox", steps=20, cfg_scale=7, width=64, height=64, seed=1)
    warned = studio.generate(usual, checkpoint="dreamshaper-lcm", save=False)
    assert any(
        "dreamshaper-lcm is a LCM model" in note and "Try LCM, Automatic, 4 steps, CFG 1" in note
        for note in warned.warnings
    )
    fitting = GenerationRequest(
        prompt="a fox", steps=4, cfg_scale=1, sampler_name="LCM", width=64, height=64, seed=1
    )
    assert studio.generate(fitting, checkpoint="dreamshaper-lcm", save=False).warnings == []
    with_lora = GenerationRequest(
        prompt="a fox <lora:speedy:1>", steps=20, cfg_scale=7, width=64, height=64, seed=1
    )
    notes = studio.generate(with_lora, checkpoint="plain", save=False).warnings
    assert any(note.startswith("speedy is a Hyper-SD model") for note in notes)

    with served_without_login(studio) as url:
        listed = httpx.get(f"{url}/api/v1/models", timeout=30).json()
    entries = {entry["name"]: entry for entry in listed}
    assert entries["dreamshaper-lcm"]["few_step"]["summary"] == "LCM 4-step: LCM, Automatic, 4 steps, CFG 1"
    assert entries["plain"]["few_step"] is None
