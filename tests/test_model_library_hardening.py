"""The model library on a real server: damaged files never stop a start or a refresh, and an
A1111 install's own files in the data folder are never rewritten."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.http_helpers import live_server
from webui.model_manager.facts import FACTS_FILE_NAME
from webui.settings import Settings
from webui.studio import Studio
from webui.ui.models_tab import unusable_rows

SMALL = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64}


def test_the_server_starts_beside_damaged_checkpoints_lists_them_and_refreshes(
    tmp_path: Path, tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="webui.model_manager.registry")
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    # A readable file with a tensor missing: detection used to raise KeyError and stop the start.
    tensors = load_file(tiny_dir / "tiny-sd15.safetensors")
    del tensors["cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"]
    save_file(tensors, str(folder / "incomplete.safetensors"))
    good = (tiny_dir / "tiny-sd15.safetensors").read_bytes()
    with live_server(tmp_path, [tiny_dir / "tiny-sd15.safetensors"], auth=False) as server:
        with server.client(None) as client:
            listed = client.get("/api/v1/models").json()
            assert [m["name"] for m in listed if m["usable"]] == ["tiny-sd15"]
            refused = {m["file"]: m for m in listed if not m["usable"]}
            assert "missing" in refused["incomplete.safetensors"]["error"]
            assert refused["incomplete.safetensors"]["kind"] == "checkpoint"

            (folder / "noise.safetensors").write_bytes(bytes(range(256)) * 64)
            (folder / "half.safetensors").write_bytes(good[: len(good) // 2])
            (folder / "fake.ckpt").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
            assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
            listed = client.get("/api/v1/models").json()
            refused = {m["file"]: m["error"] for m in listed if not m["usable"]}
            assert set(refused) == {
                "incomplete.safetensors",
                "noise.safetensors",
                "half.safetensors",
                "fake.ckpt",
            }
            assert "truncated or corrupt" in refused["half.safetensors"]
            assert "not a PyTorch checkpoint" in refused["fake.ckpt"]
            assert [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()] == ["tiny-sd15"]
            # And it still serves.
            assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
        rows = {row[1]: row for row in unusable_rows(server.studio)}  # the Models tab's list
    assert set(rows) == set(refused) and rows["fake.ckpt"][0] == "checkpoint"
    assert rows["half.safetensors"][2] == refused["half.safetensors"]
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "half.safetensors cannot be used: not a readable .safetensors file" in logged


def test_an_a1111_cache_json_is_left_byte_for_byte(tmp_path: Path, tiny_dir: Path) -> None:
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", folder / "tiny.safetensors")
    a1111_cache = {
        "hashes": {"checkpoint/tiny": {"mtime": 1700000000.0, "sha256": "0" * 64}},
        "hashes-addnet": {"lora/x": {"mtime": 1.0, "sha256": "1" * 64}},
        "safetensors-metadata": {"checkpoint/tiny": {"mtime": 1.0, "value": {}}},
    }
    cache_json = tmp_path / "cache.json"
    cache_json.write_text(json.dumps(a1111_cache, indent=4), encoding="utf-8")
    before = cache_json.read_bytes()

    studio = Studio(Settings.for_data_dir(tmp_path, watermark=False, device="cpu", precision="fp32"))
    assert studio.models.registry.hash_all() >= 1
    assert cache_json.read_bytes() == before
    ours = json.loads((tmp_path / FACTS_FILE_NAME).read_text(encoding="utf-8"))
    assert str((folder / "tiny.safetensors").resolve()) in ours["files"]
    # A restart reads our own file back: nothing is hashed twice.
    again = Studio(Settings.for_data_dir(tmp_path, watermark=False, device="cpu", precision="fp32"))
    assert again.models.registry.hash_all() == 0
    assert cache_json.read_bytes() == before
