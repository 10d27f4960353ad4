"""Where each kind of model file lives: an A1111 install, a ComfyUI install, and extra folders
from a ComfyUI `extra_model_paths.yaml` (`--models-config`).

A1111 (models/...): Stable-diffusion, VAE, Lora and LyCORIS, ESRGAN and RealESRGAN, VAE-approx,
and embeddings/ beside models/. ComfyUI (models/...): checkpoints, vae, loras, embeddings,
upscale_models, vae_approx. A data folder with models/checkpoints and no models/Stable-diffusion
is read as ComfyUI's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

# Our kinds -> the folders of each layout, relative to the data folder.
_A1111 = {
    "checkpoints": ("models/Stable-diffusion",),
    "vae": ("models/VAE",),
    "lora": ("models/Lora", "models/LyCORIS"),
    "embeddings": ("embeddings",),
    "upscalers": ("models/ESRGAN", "models/RealESRGAN"),
    "vae_approx": ("models/VAE-approx",),
}
_COMFYUI = {
    "checkpoints": ("models/checkpoints",),
    "vae": ("models/vae",),
    "lora": ("models/loras",),
    "embeddings": ("models/embeddings",),
    "upscalers": ("models/upscale_models",),
    "vae_approx": ("models/vae_approx",),
}
# extra_model_paths.yaml keys (ComfyUI's folder names) -> our kinds; other keys are ignored.
_YAML_KEYS = {
    "checkpoints": "checkpoints",
    "vae": "vae",
    "loras": "lora",
    "embeddings": "embeddings",
    "upscale_models": "upscalers",
    "vae_approx": "vae_approx",
}


class ModelsConfigError(ValueError):
    """The `--models-config` file cannot be read; the message says where."""


@dataclass(frozen=True)
class ModelLibrary:
    """Every folder of each kind, the first one being where new files go."""

    checkpoints: tuple[Path, ...]
    vae: tuple[Path, ...]
    lora: tuple[Path, ...]
    embeddings: tuple[Path, ...]
    upscalers: tuple[Path, ...]
    vae_approx: tuple[Path, ...]
    layout: str = "a1111"  # or "comfyui"

    @classmethod
    def find(cls, data_dir: Path, models_config: Path | None = None) -> ModelLibrary:
        data_dir = Path(data_dir)
        comfy = (data_dir / "models" / "checkpoints").is_dir() and not (
            data_dir / "models" / "Stable-diffusion"
        ).is_dir()
        layout = _COMFYUI if comfy else _A1111
        kinds: dict[str, list[Path]] = {
            kind: [data_dir / rel for rel in rels] for kind, rels in layout.items()
        }
        if models_config is not None:
            for kind, folders in read_models_config(Path(models_config)).items():
                kinds[kind].extend(folders)
        return cls(**{kind: _unique(kinds[kind]) for kind in kinds}, layout="comfyui" if comfy else "a1111")

    def kinds(self) -> dict[str, tuple[Path, ...]]:
        return {item.name: getattr(self, item.name) for item in fields(self) if item.name != "layout"}


def read_models_config(path: Path) -> dict[str, list[Path]]:
    """Folders by our kind from ComfyUI's extra_model_paths.yaml format.

    Each top-level section may have `base_path` (relative to the file's folder when not absolute)
    and, per ComfyUI folder name, one path or several, one a line, relative to base_path.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ModelsConfigError(f"{path}: cannot read: {error}") from error
    except yaml.YAMLError as error:
        raise ModelsConfigError(f"{path}: not valid YAML: {error}") from error
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ModelsConfigError(f"{path}: expected sections of folder names, got {type(document).__name__}")
    found: dict[str, list[Path]] = {}
    for section, entries in document.items():
        if not isinstance(entries, dict):
            raise ModelsConfigError(f"{path}: section {section!r}: expected `name: folder` lines")
        base = Path(str(entries.get("base_path", ""))).expanduser()
        base = base if base.is_absolute() else path.parent / base
        for key, value in entries.items():
            kind = _YAML_KEYS.get(str(key))
            if kind is None:
                continue  # base_path, is_default, and folders of kinds this server does not use
            if not isinstance(value, str):
                raise ModelsConfigError(f"{path}: {section}.{key}: expected a folder (or one a line)")
            for line in value.splitlines():
                if line.strip():
                    found.setdefault(kind, []).append(base / line.strip())
    return found


def _unique(folders: Iterable[Path]) -> tuple[Path, ...]:
    seen: set[Path] = set()
    kept = []
    for folder in folders:
        key = folder.resolve()
        if key not in seen:
            seen.add(key)
            kept.append(folder)
    return tuple(kept)
