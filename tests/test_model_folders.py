"""Issue 21, item 6: an A1111 or a ComfyUI install as the data folder, and ComfyUI's
extra_model_paths.yaml (`--models-config`) for more folders; the lists over real HTTP."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from webui.jobs import JobQueue
from webui.model_manager.folders import ModelLibrary, ModelsConfigError, read_models_config
from webui.model_manager.registry import ModelFolders, ModelKind
from webui.server import BackgroundServer, create_app
from webui.settings import Settings
from webui.studio import Studio
from webui.tools.tiny_networks import write_tiny_embedding, write_tiny_lora
from webui.tools.tiny_upscaler import write_tiny_compact

EXTRA_PATHS = """
a111:
    base_path: ../a1111/
    checkpoints: models/Stable-diffusion
    loras: |
        models/Lora
        models/LyCORIS
    upscale_models: models/ESRGAN
    hypernetworks: models/hypernetworks
comfyui:
    base_path: {absolute}
    is_default: true
    embeddings: more-embeddings/
"""


def test_comfyui_layout_is_found_and_a1111_keeps_its_own(tmp_path: Path) -> None:
    comfy = tmp_path / "comfy"
    (comfy / "models" / "checkpoints").mkdir(parents=True)
    library = ModelLibrary.find(comfy)
    assert library.layout == "comfyui"
    assert library.checkpoints == (comfy / "models" / "checkpoints",)
    assert library.lora == (comfy / "models" / "loras",)
    assert library.upscalers == (comfy / "models" / "upscale_models",)
    assert library.vae_approx == (comfy / "models" / "vae_approx",)
    a1111 = ModelLibrary.find(tmp_path / "a1111")
    assert a1111.layout == "a1111"
    assert a1111.lora[1] == tmp_path / "a1111" / "models" / "LyCORIS"
    assert a1111.upscalers[1] == tmp_path / "a1111" / "models" / "RealESRGAN"


def test_extra_model_paths_yaml_is_read_as_comfyui_reads_it(tmp_path: Path) -> None:
    config = tmp_path / "comfy" / "extra_model_paths.yaml"
    config.parent.mkdir()
    config.write_text(EXTRA_PATHS.format(absolute=tmp_path / "shared"))
    found = read_models_config(config)
    a1111 = tmp_path / "comfy" / ".." / "a1111"  # base_path is relative to the file's folder
    assert found["checkpoints"] == [a1111 / "models" / "Stable-diffusion"]
    assert found["lora"] == [a1111 / "models" / "Lora", a1111 / "models" / "LyCORIS"]
    assert found["upscalers"] == [a1111 / "models" / "ESRGAN"]
    assert found["embeddings"] == [tmp_path / "shared" / "more-embeddings"]
    assert "hypernetworks" not in found


@pytest.mark.parametrize(
    ("text", "message"),
    [("a: [1, 2", "not valid YAML"), ("- a\n- b", "expected sections"), ("a:\n  loras: 3", "a.loras")],
)
def test_a_bad_models_config_is_refused_with_where(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "extra.yaml"
    config.write_text(text)
    with pytest.raises(ModelsConfigError, match=message):
        read_models_config(config)


def test_a1111_lycoris_folder_is_scanned_for_networks(tmp_path: Path) -> None:
    folders = ModelFolders.under(tmp_path)
    assert folders.lora == tmp_path / "models" / "Lora"
    assert folders.more[ModelKind.LORA] == (tmp_path / "models" / "LyCORIS",)


def test_a_comfyui_install_and_extra_folders_over_http(tiny_dir: Path, tmp_path: Path) -> None:
    comfy = tmp_path / "ComfyUI"
    models = comfy / "models"
    for folder in ("checkpoints", "loras", "vae", "embeddings", "upscale_models", "vae_approx"):
        (models / folder).mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", models / "checkpoints" / "tiny-sd15.safetensors")
    write_tiny_lora("sd15", models / "loras" / "comfy-lora.safetensors")
    write_tiny_embedding("sd15", models / "embeddings" / "comfy-emb.safetensors")
    write_tiny_compact(models / "upscale_models" / "comfy-up.safetensors", scale=2)
    # An A1111 install beside it, shared through extra_model_paths.yaml.
    a1111 = tmp_path / "a1111"
    (a1111 / "models" / "Lora").mkdir(parents=True)
    (a1111 / "models" / "RealESRGAN").mkdir(parents=True)
    write_tiny_lora("sd15", a1111 / "models" / "Lora" / "shared-lora.safetensors", seed=1)
    write_tiny_compact(a1111 / "models" / "RealESRGAN" / "shared-up.safetensors", scale=2)
    config = comfy / "extra_model_paths.yaml"
    config.write_text(
        "a111:\n  base_path: ../a1111\n  loras: models/Lora\n  upscale_models: models/RealESRGAN\n"
    )
    settings = Settings.for_data_dir(
        comfy, models_config=config, ckpt="tiny-sd15", watermark=False, device="cpu", precision="fp32"
    )
    studio = Studio(settings)
    jobs = JobQueue(studio).start()
    try:
        with (
            BackgroundServer(create_app(studio, jobs, with_ui=False)) as url,
            httpx.Client(base_url=url) as client,
        ):
            models_list = [item["model_name"] for item in client.get("/sdapi/v1/sd-models").json()]
            loras = {item["name"] for item in client.get("/sdapi/v1/loras").json()}
            upscalers = {item["name"] for item in client.get("/sdapi/v1/upscalers").json()}
            embeddings = client.get("/sdapi/v1/embeddings").json()["loaded"]
            assert models_list == ["tiny-sd15"]
            assert {"comfy-lora", "shared-lora"} <= loras
            assert {"comfy-up", "shared-up"} <= upscalers
            assert "comfy-emb" in embeddings
            answer = client.post(
                "/sdapi/v1/txt2img",
                json={"prompt": "a <lora:shared-lora:1> comfy-emb", "steps": 2, "width": 64, "height": 64},
            )
            assert answer.status_code == 200, answer.text
    finally:
        jobs.stop()
