"""The registry: what is in each model folder, with hashes, architectures and reasons for refusal."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from webui.model_manager.detect import Arch
from webui.model_manager.facts import FileFactsCache
from webui.model_manager.registry import ModelFolders, ModelKind, ModelRegistry
from webui.model_manager.state_dict import CheckpointError
from webui.tools.tiny_checkpoint import write_tiny_vae


@pytest.fixture
def library(tiny_dir: Path, tmp_path: Path) -> Path:
    """An A1111-style data folder with one of everything, and some junk."""
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    (checkpoints / "xl").mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", checkpoints / "dreamy.safetensors")
    shutil.copy(tiny_dir / "tiny-sdxl.safetensors", checkpoints / "xl" / "base.safetensors")
    shutil.copy(tiny_dir / "tiny-sd2-v.safetensors", checkpoints / "wide.safetensors")
    write_tiny_vae(checkpoints / "dreamy.vae.safetensors", seed=1)  # a sidecar, not a checkpoint
    (checkpoints / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    write_tiny_vae(checkpoints / "stray-vae.safetensors")  # in the wrong folder
    write_tiny_vae(tmp_path / "models" / "VAE" / "clear.safetensors", seed=2)
    (tmp_path / "models" / "VAE" / "notes.ckpt").write_bytes(b"not a pickle")
    return tmp_path


def _registry(data_dir: Path) -> ModelRegistry:
    return ModelRegistry(ModelFolders.under(data_dir), FileFactsCache(data_dir / "cache.json"))


def test_scan_lists_usable_files_with_architecture_and_size(library: Path) -> None:
    registry = _registry(library)
    checkpoints = {f.name: f for f in registry.files(ModelKind.CHECKPOINT)}
    assert sorted(checkpoints) == ["dreamy", "wide", "xl/base"]
    assert checkpoints["dreamy"].arch is Arch.SD1 and checkpoints["dreamy"].label == "SD 1.x"
    assert checkpoints["wide"].label == "SD 2.x v-prediction"
    assert checkpoints["xl/base"].arch is Arch.SDXL
    assert checkpoints["dreamy"].size_bytes == checkpoints["dreamy"].path.stat().st_size
    assert [f.name for f in registry.files(ModelKind.VAE)] == ["clear"]


def test_unusable_files_are_listed_with_reasons_and_refused(library: Path) -> None:
    registry = _registry(library)
    reasons = {f.filename: f.error for f in registry.unusable()}
    assert set(reasons) == {"broken.safetensors", "stray-vae.safetensors", "notes.ckpt"}
    assert "corrupt" in reasons["broken.safetensors"]
    assert "VAE" in reasons["stray-vae.safetensors"]  # "...LoRA, VAE and embedding files go in..."
    with pytest.raises(CheckpointError, match="cannot be used"):
        registry.find(ModelKind.CHECKPOINT, "broken")


def test_titles_hashes_and_lookup(library: Path) -> None:
    registry = _registry(library)
    dreamy = registry.find(ModelKind.CHECKPOINT, "dreamy")
    assert registry.title(dreamy) == "dreamy"  # not hashed yet: a scan never reads whole files
    assert registry.hash_all() == 4  # three checkpoints and one VAE
    digest = hashlib.sha256(dreamy.path.read_bytes()).hexdigest()
    assert registry.sha256(dreamy) == digest and registry.short_hash(dreamy) == digest[:10]
    title = registry.title(dreamy)
    assert title == f"dreamy [{digest[:10]}]"
    for query in (title, "dreamy.safetensors", digest[:10], f"[{digest[:10]}]", digest):
        assert registry.find(ModelKind.CHECKPOINT, query) == dreamy
    with pytest.raises(CheckpointError, match="unknown checkpoint 'nope'; known: dreamy, wide, xl/base"):
        registry.find(ModelKind.CHECKPOINT, "nope")


def test_a_file_is_hashed_once_per_version_across_restarts(library: Path) -> None:
    registry = _registry(library)
    registry.hash_all()
    dreamy = registry.find(ModelKind.CHECKPOINT, "dreamy")
    restarted = _registry(library)
    assert restarted.hash_all() == 0  # everything was remembered in cache.json
    assert restarted.facts.cached_sha256(dreamy.path) == registry.sha256(dreamy)
    with dreamy.path.open("ab") as handle:
        handle.write(b" ")  # a new version of the file
    os.utime(dreamy.path, ns=(1, 1))
    assert restarted.facts.cached_sha256(dreamy.path) is None
    assert restarted.hash_all() == 1


def test_refresh_picks_up_added_and_removed_files(library: Path, tiny_dir: Path) -> None:
    registry = _registry(library)
    folder = library / "models" / "Stable-diffusion"
    shutil.copy(tiny_dir / "tiny-sd15-inpaint.safetensors", folder / "fixer.safetensors")
    (folder / "wide.safetensors").unlink()
    assert "fixer" not in [f.name for f in registry.files(ModelKind.CHECKPOINT)]
    registry.refresh()
    names = {f.name: f for f in registry.files(ModelKind.CHECKPOINT)}
    assert sorted(names) == ["dreamy", "fixer", "xl/base"]
    assert names["fixer"].label == "SD 1.x inpainting"


def test_extra_checkpoint_folder_and_files_outside_the_folders(library: Path, tiny_dir: Path) -> None:
    registry = ModelRegistry(ModelFolders.under(library, [tiny_dir]), FileFactsCache(library / "cache.json"))
    names = [f.name for f in registry.files(ModelKind.CHECKPOINT)]
    assert "dreamy" in names and "tiny-sdxl" in names
    outside = library / "elsewhere" / "solo.safetensors"
    outside.parent.mkdir()
    shutil.copy(tiny_dir / "tiny-sd2.safetensors", outside)
    added = registry.add(outside)
    registry.refresh()
    assert registry.find(ModelKind.CHECKPOINT, "solo") == added


def test_a_diffusers_folder_is_one_checkpoint(library: Path) -> None:
    folder = library / "models" / "Stable-diffusion" / "pipe"
    (folder / "text_encoder").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folder / "text_encoder" / "config.json").write_text('{"hidden_act": "gelu"}')
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"")
    files = {f.name: f for f in _registry(library).files(ModelKind.CHECKPOINT)}
    assert files["pipe"].arch is Arch.SD2 and "text_encoder/model" not in "".join(files)
