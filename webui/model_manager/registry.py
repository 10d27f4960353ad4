"""The model files on disk: checkpoints, VAEs, LoRAs and embeddings, with hashes and architectures.

A scan reads only file headers (keys and shapes), so it is fast even for a library of
multi-GB checkpoints; what it learns about a file, and its sha256, are remembered in the
facts cache by path, size and mtime, so each file version is read and hashed once, ever.
Files that cannot be used are listed too, with the reason, and never stop the scan.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from webui.model_manager.archs import DenoisingFamily, architecture, diffusers_folder_architecture
from webui.model_manager.detect import VAE_PREFIX, Arch, detect_model
from webui.model_manager.facts import FileFactsCache
from webui.model_manager.few_step import FewStepHint, few_step_hint
from webui.model_manager.folders import ModelLibrary
from webui.model_manager.sd3.folder import is_sd3_folder
from webui.model_manager.sd3.spec import detect_sd3, is_sd3_checkpoint
from webui.model_manager.state_dict import (
    CHECKPOINT_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    CheckpointError,
    open_safetensors,
    read_tensor_shapes,
)

log = logging.getLogger(__name__)

# Bumped when what `_inspect_*` derives changes, so cached facts from older versions are redone.
_FACTS_VERSION = 4
# A1111 keeps a checkpoint's own VAE beside it as `<name>.vae.safetensors`; that is not a checkpoint.
VAE_SIDECAR_SUFFIX = ".vae"


class ModelKind(str, Enum):
    CHECKPOINT = "checkpoint"
    VAE = "vae"
    LORA = "lora"
    EMBEDDING = "embedding"


@dataclass(frozen=True)
class ModelFolders:
    """Where each kind lives; the A1111 (or ComfyUI) layout under one data folder by default.

    `vae`, `lora` and `embeddings` are where new files go; `more` lists further folders scanned.
    """

    checkpoints: tuple[Path, ...]
    vae: Path
    lora: Path
    embeddings: Path
    more: dict[ModelKind, tuple[Path, ...]] = field(default_factory=dict)

    @classmethod
    def under(
        cls, data_dir: Path, extra_checkpoint_dirs: Iterable[Path] = (), models_config: Path | None = None
    ) -> ModelFolders:
        return cls.of(ModelLibrary.find(Path(data_dir), models_config), extra_checkpoint_dirs)

    @classmethod
    def of(cls, library: ModelLibrary, extra_checkpoint_dirs: Iterable[Path] = ()) -> ModelFolders:
        checkpoint_dirs = list(library.checkpoints)
        for folder in extra_checkpoint_dirs:
            if Path(folder).resolve() not in {d.resolve() for d in checkpoint_dirs}:
                checkpoint_dirs.append(Path(folder))
        more = {ModelKind.VAE: library.vae[1:], ModelKind.LORA: library.lora[1:]}
        more[ModelKind.EMBEDDING] = library.embeddings[1:]
        return cls(tuple(checkpoint_dirs), library.vae[0], library.lora[0], library.embeddings[0], more)


@dataclass(frozen=True)
class ModelFile:
    kind: ModelKind
    name: str  # path relative to its folder, without the extension: what prompts and lists use
    path: Path
    size_bytes: int
    arch: Arch | None  # None when the file does not say (VAEs, tiny test files)
    label: str  # "SD 1.x inpainting", "VAE", "LoRA (SDXL)"
    error: str | None = None  # why the file cannot be used; None when it can
    has_ema: bool = False  # a checkpoint that also holds CompVis EMA weights of its UNet
    few_step: FewStepHint | None = None  # a checkpoint or LoRA distilled for few steps (few_step.py)

    @property
    def usable(self) -> bool:
        return self.error is None

    @property
    def filename(self) -> str:
        return self.path.name


class ModelRegistry:
    """Scans the model folders on demand; `refresh()` picks up added and removed files."""

    def __init__(self, folders: ModelFolders, facts: FileFactsCache) -> None:
        self.folders = folders
        self.facts = facts
        self._files: dict[ModelKind, list[ModelFile]] = {kind: [] for kind in ModelKind}
        self._added: dict[ModelKind, list[Path]] = {kind: [] for kind in ModelKind}
        self.refresh()

    def refresh(self, kinds: Iterable[ModelKind] = tuple(ModelKind)) -> None:
        for kind in kinds:
            self._files[kind] = self._scan(kind)
            scanned = {file.path for file in self._files[kind]}
            for path in self._added[kind]:
                if path not in scanned and path.exists():
                    self._files[kind].append(self._describe(kind, path.parent, path))
            for file in self._files[kind]:
                if not file.usable:
                    log.warning("%s %s cannot be used: %s", kind.value, file.path, file.error)

    def files(self, kind: ModelKind, usable_only: bool = True) -> list[ModelFile]:
        return [f for f in self._files[kind] if f.usable or not usable_only]

    def unusable(self) -> list[ModelFile]:
        return [f for kind in ModelKind for f in self._files[kind] if not f.usable]

    def add(self, path: Path, kind: ModelKind = ModelKind.CHECKPOINT) -> ModelFile:
        """Describe a file outside the folders (`--ckpt /some/file`) or just written (a merge)."""
        path = Path(path)
        known = next((f for f in self._files[kind] if f.path == path), None)
        if known is not None:
            return known
        folder = next((d for d in self._folders(kind) if d in path.parents), path.parent)
        described = self._describe(kind, folder, path)
        self._files[kind].append(described)
        if folder == path.parent and not any(d in path.parents for d in self._folders(kind)):
            self._added[kind].append(path)
        return described

    def find(self, kind: ModelKind, title: str) -> ModelFile:
        """By name, A1111 title ("name [hash]"), file name, or short/full hash of a known file."""
        wanted = title.strip()
        name = wanted.split(" [")[0].strip()
        candidates = self.files(kind, usable_only=False)
        for file in candidates:
            if name in (file.name, file.path.name, file.path.stem) or wanted == str(file.path):
                return self.require_usable(file)
        lowered = wanted.lower().strip("[]")
        if len(lowered) >= 8:
            for file in candidates:
                digest = self.facts.cached_sha256(file.path)
                if digest and digest.startswith(lowered):
                    return self.require_usable(file)
        known = ", ".join(f.name for f in self.files(kind)) or "none"
        raise CheckpointError(f"unknown {kind.value} {title!r}; known: {known}")

    def sha256(self, file: ModelFile) -> str | None:
        if file.path.is_dir():
            return None
        return self.facts.sha256(file.path)

    def short_hash(self, file: ModelFile) -> str | None:
        digest = self.sha256(file)
        return digest[:10] if digest else None

    def title(self, file: ModelFile) -> str:
        """A1111's "name [shorthash]"; just the name while the file is not hashed yet."""
        digest = self.facts.cached_sha256(file.path) if file.path.is_file() else None
        return f"{file.name} [{digest[:10]}]" if digest else file.name

    def hash_all(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Hash every usable file not hashed yet (a background thread runs this); returns the count."""
        hashed = 0
        for kind in ModelKind:
            for file in self.files(kind):
                if should_stop():
                    return hashed
                if file.path.is_file() and self.facts.cached_sha256(file.path) is None:
                    self.facts.sha256(file.path)
                    hashed += 1
        return hashed

    @staticmethod
    def require_usable(file: ModelFile) -> ModelFile:
        if not file.usable:
            raise CheckpointError(f"{file.filename} cannot be used: {file.error}")
        return file

    # -- scanning ---------------------------------------------------------------------------
    def _folders(self, kind: ModelKind) -> tuple[Path, ...]:
        return {
            ModelKind.CHECKPOINT: self.folders.checkpoints,
            ModelKind.VAE: (self.folders.vae,),
            ModelKind.LORA: (self.folders.lora,),
            ModelKind.EMBEDDING: (self.folders.embeddings,),
        }[kind] + self.folders.more.get(kind, ())

    def _scan(self, kind: ModelKind) -> list[ModelFile]:
        found: list[ModelFile] = []
        for folder in self._folders(kind):
            for path in _candidate_paths(folder, kind):
                found.append(self._describe(kind, folder, path))
        return found

    def _describe(self, kind: ModelKind, folder: Path, path: Path) -> ModelFile:
        relative = path.relative_to(folder) if folder in path.parents else Path(path.name)
        name = relative.as_posix() if path.is_dir() else relative.with_suffix("").as_posix()
        try:
            size = _size_on_disk(path)
            facts = self.facts.remember(path, f"inspect-{kind.value}-v{_FACTS_VERSION}", _INSPECTORS[kind])
        except OSError as error:
            size, facts = 0, {"error": f"cannot read: {error.strerror or error}"}
        except Exception as error:  # one file's surprise must not end the scan, the start or a refresh
            log.exception("inspecting %s failed", path)
            size, facts = 0, {"error": f"could not be inspected ({type(error).__name__}: {error})"}
        arch = Arch(facts["arch"]) if facts.get("arch") else None
        return ModelFile(
            kind,
            name,
            path,
            size,
            arch,
            facts.get("label", kind.value),
            facts.get("error"),
            bool(facts.get("ema")),
            FewStepHint.from_dict(facts.get("few_step")),
        )


def _candidate_paths(folder: Path, kind: ModelKind) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
            if kind is ModelKind.CHECKPOINT and (
                path.stem.endswith(VAE_SIDECAR_SUFFIX) or _inside_diffusers_folder(path, folder)
            ):
                continue
            found.append(path)
        elif kind is ModelKind.CHECKPOINT and path.is_dir() and (path / "model_index.json").is_file():
            found.append(path)
    return found


def _inside_diffusers_folder(path: Path, root: Path) -> bool:
    return any((parent / "model_index.json").is_file() for parent in path.parents if root in parent.parents)


def _size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# -- what each kind of file is, from its header -------------------------------------------------
Facts = dict[str, Any]  # JSON values: strings, and the few-step hint as a mapping


def _inspect_checkpoint(path: Path) -> Facts:
    if path.is_dir():
        return _inspect_diffusers_folder(path)
    from webui.model_manager.load import check_single_file, spec_with_yaml_override

    try:
        state = read_tensor_shapes(path)
        if is_sd3_checkpoint(state.tensors):
            return _inspect_sd3(path, state.tensors, state.metadata)
        spec = detect_model(state.tensors, state.metadata, path.name)
        # Every tensor, not only those detection reads, must fit: else the first job would fail.
        check_single_file(state.tensors, spec, path.name)
    except CheckpointError as error:
        return {"error": str(error).removeprefix(f"{path.name}: ")}
    spec = spec_with_yaml_override(spec, path)
    facts: Facts = {"arch": spec.arch.value, "label": spec.kind}
    if spec.has_ema:
        facts["ema"] = "yes"
    return facts | _few_step_facts(path, state.metadata, spec.kind)


def _inspect_sd3(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> Facts:
    spec = detect_sd3(tensors, metadata, path.name)  # CheckpointError: the caller's
    label = spec.kind
    if spec.missing_encoders:
        label += f" (without {', '.join(spec.missing_encoders)}: taken from the text encoder folders)"
    family = architecture(Arch.SD3).family
    return {"arch": Arch.SD3.value, "label": label} | _few_step_facts(path, metadata, label, family)


def _inspect_diffusers_folder(path: Path) -> Facts:
    if is_sd3_folder(path):
        return {"arch": Arch.SD3.value, "label": Arch.SD3.label + " (diffusers)"}
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        config = json.loads((path / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return {"error": f"not a readable diffusers folder: {error}"}
    # A folder always has `text_encoder`; its index names the further ones.
    encoder_count = 1 + sum(1 for key in index if key.startswith("text_encoder_"))
    described = diffusers_folder_architecture(encoder_count, config.get("hidden_act", ""))
    if described is None:
        return {"error": "a diffusers folder whose text encoders no architecture we know has"}
    return {"arch": described.arch.value, "label": described.label + " (diffusers)"}


def _inspect_vae(path: Path) -> Facts:
    try:
        keys = set(read_tensor_shapes(path).tensors)
    except CheckpointError as error:
        return {"error": str(error).removeprefix(f"{path.name}: ")}
    stripped = {key.removeprefix(VAE_PREFIX) for key in keys}
    if "decoder.conv_in.weight" not in stripped or "encoder.conv_in.weight" not in stripped:
        return {"error": "not a VAE: it has no encoder and decoder weights"}
    # SD1, SD2 and SDXL VAEs have the same shapes; only their weights tell them apart.
    return {"label": "VAE"}


def _inspect_lora(path: Path) -> Facts:
    from webui.model_manager.lora import detect_lora_arch

    try:
        arch = detect_lora_arch(path)
    except CheckpointError as error:
        return {"error": str(error).removeprefix(f"{path.name}: ")}
    facts = {"arch": arch.value, "label": f"LoRA ({arch.label})"} if arch else {"label": "LoRA"}
    return facts | _few_step_facts(path, _header_metadata(path), facts["label"])


def _few_step_facts(
    path: Path, metadata: dict[str, str], label: str, family: DenoisingFamily = DenoisingFamily.UNET
) -> Facts:
    hint = few_step_hint(path.name, metadata, family)
    if hint is None:
        return {}
    return {"few_step": hint.as_dict(), "label": f"{label}, {hint.family} {hint.steps}-step"}


def _header_metadata(path: Path) -> dict[str, str]:
    """A .safetensors file's header metadata (kohya's training facts live there); {} otherwise."""
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    try:
        with open_safetensors(path) as handle:
            return dict(handle.metadata() or {})
    except CheckpointError:
        return {}


def _inspect_embedding(path: Path) -> Facts:
    from webui.model_manager.embeddings import read_embedding

    try:
        embedding = read_embedding(path)
    except CheckpointError as error:
        return {"error": str(error).removeprefix(f"{path.name}: ")}
    arch = embedding.arch
    label = f"embedding, {embedding.vector_count} vector{'s' if embedding.vector_count != 1 else ''}"
    return {"arch": arch.value, "label": f"{label} ({arch.label})"} if arch else {"label": label}


_INSPECTORS: dict[ModelKind, Callable[[Path], Facts]] = {
    ModelKind.CHECKPOINT: _inspect_checkpoint,
    ModelKind.VAE: _inspect_vae,
    ModelKind.LORA: _inspect_lora,
    ModelKind.EMBEDDING: _inspect_embedding,
}


def checkpoint_sidecar_vae(checkpoint: Path) -> Path | None:
    """A1111's "Automatic" VAE: `<checkpoint>.vae.safetensors` (or .pt/.ckpt) beside the checkpoint."""
    for suffix in (".safetensors", ".pt", ".ckpt"):
        candidate = checkpoint.with_name(checkpoint.stem + VAE_SIDECAR_SUFFIX + suffix)
        if candidate.is_file():
            return candidate
    return None
