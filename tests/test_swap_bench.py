"""The swap benchmark runs end to end (tiny, CPU stand-in), and the full-size random checkpoints
have the real layouts: checked on meta tensors, so no multi-GB file is written here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import webui.model_manager.load as load_module
from webui.model_manager.detect import Arch, detect_model
from webui.model_manager.load import load_model
from webui.model_manager.state_dict import StateDict
from webui.tools import swap_bench
from webui.tools.random_checkpoint import checkpoint_bytes, checkpoint_shapes, write_random_tensors
from webui.tools.tiny_checkpoint import build_tiny_state_dict

GB = 1_000_000_000


def test_tiny_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "swap.json"
    argv = ["--tiny", "--device", "cpu", "--repeats", "1", "--bandwidth-mib", "16"]
    swap_bench.main([*argv, "--json", str(out), "--dir", str(tmp_path / "checkpoints")])

    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["stand_in"] is True and report["tiny"] is True
    assert report["target_ratio"] == 1.25 and report["repeats"] == 1
    assert report["device"]["type"] == "cpu" and report["versions"]["torch"] == torch.__version__
    assert "date" in report and "git_commit" in report  # the commit may be None outside a checkout
    bandwidth = report["bandwidth"]
    assert bandwidth["h2d_bytes_per_s"] > 0 and bandwidth["d2h_bytes_per_s"] > 0
    assert [r["arch"] for r in report["results"]] == ["sd15", "sdxl"]
    for result in report["results"]:
        for name in ("disk_to_vram_s", "ram_to_vram_s", "vram_to_ram_s", "floor_s", "ratio", "load_s"):
            assert result[name] > 0, name
        assert result["model_bytes"] > 0 and result["file_bytes"] > 0
        assert len(result["ram_to_vram_samples_s"]) == len(result["vram_to_ram_samples_s"]) == 1
        assert result["passed"] == (result["ratio"] <= 1.25)
        assert Path(result["checkpoint"]).is_file()


def test_benchmark_checkpoints_are_reused(tmp_path: Path) -> None:
    first = swap_bench.checkpoint_for("sd15", tmp_path, tiny=True)
    written = first.stat().st_mtime_ns
    assert swap_bench.checkpoint_for("sd15", tmp_path, tiny=True) == first
    assert first.stat().st_mtime_ns == written


@pytest.mark.parametrize(
    ("arch", "expected", "cross_attention", "text_layers", "gigabytes"),
    [("sd15", Arch.SD1, 768, [12], 2.13), ("sdxl", Arch.SDXL, 2048, [12, 32], 6.94)],
)
def test_full_size_layout_is_detected_as_the_real_architecture(
    arch: str, expected: Arch, cross_attention: int, text_layers: list[int], gigabytes: float
) -> None:
    shapes = checkpoint_shapes(arch)
    assert all(t.device.type == "meta" and t.dtype == torch.float16 for t in shapes.values())
    assert checkpoint_bytes(shapes) / GB == pytest.approx(gigabytes, abs=0.01)

    spec = detect_model(shapes, {}, f"{arch}.safetensors")
    assert spec.arch is expected
    assert spec.unet_config["cross_attention_dim"] == cross_attention
    assert [e.config["num_hidden_layers"] for e in spec.text_encoders] == text_layers
    assert spec.vae_config["block_out_channels"] == [128, 256, 512, 512]
    if expected is Arch.SDXL:
        assert spec.unet_config["transformer_layers_per_block"] == [1, 2, 10]
        assert spec.unet_config["addition_time_embed_dim"] == 256
        assert spec.text_encoders[1].config["projection_dim"] == 1280


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_full_size_layout_goes_through_the_real_loader(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The loader's own code path, fed meta tensors instead of a file: every key must be used.
    shapes = checkpoint_shapes(arch)
    monkeypatch.setattr(load_module, "read_state_dict", lambda path: StateDict(dict(shapes), {}))
    model = load_model(Path(f"{arch}.safetensors"), torch.device("meta"), torch.float16)
    assert model.size_bytes == checkpoint_bytes(shapes)
    assert model.arch is (Arch.SDXL if arch == "sdxl" else Arch.SD1)


def test_streamed_file_reads_back_and_loads(tmp_path: Path) -> None:
    shapes = {key: value.to("meta") for key, value in build_tiny_state_dict("sdxl").items()}
    out = write_random_tensors(tmp_path / "tiny.safetensors", shapes, seed=3, metadata={"who": "test"})

    tensors = load_file(str(out))
    assert {k: (v.shape, v.dtype) for k, v in tensors.items()} == {
        k: (v.shape, v.dtype) for k, v in shapes.items()
    }
    assert all(torch.isfinite(t.float()).all() and t.abs().max() <= 1 for t in tensors.values() if t.numel())
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata() == {"who": "test"}
    assert load_model(out, torch.device("cpu"), torch.float16).arch is Arch.SDXL
    assert not out.with_name(out.name + ".partial").exists()


def test_streamed_file_is_seeded_and_keeps_dtypes(tmp_path: Path) -> None:
    meta = torch.device("meta")
    shapes = {
        "half": torch.empty(3, 5, dtype=torch.float16, device=meta),
        "brain": torch.empty(7, dtype=torch.bfloat16, device=meta),
        "full": torch.empty(2, 2, 2, dtype=torch.float32, device=meta),
        "empty": torch.empty(0, 4, dtype=torch.float16, device=meta),
    }
    paths = [
        write_random_tensors(tmp_path / f"{name}.safetensors", shapes, seed)
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    ]
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    assert digests[0] == digests[1] != digests[2]
    tensors = load_file(str(paths[0]))
    assert {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in shapes.items()
    }
