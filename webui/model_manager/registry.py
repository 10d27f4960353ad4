"""The checkpoints on disk: scanning, titles and A1111-compatible short hashes."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from webui.model_manager.state_dict import CHECKPOINT_SUFFIXES

log = logging.getLogger(__name__)
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class CheckpointInfo:
    name: str  # the file name without extension, relative to the folder
    path: Path

    @property
    def is_diffusers_folder(self) -> bool:
        return self.path.is_dir()


def scan_checkpoints(folder: Path) -> list[CheckpointInfo]:
    """Single files anywhere under `folder`, and diffusers folders (those with model_index.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
            if any(
                parent.joinpath("model_index.json").is_file()
                for parent in path.parents
                if folder in parent.parents
            ):
                continue  # weights inside a diffusers folder belong to that folder
            found.append(CheckpointInfo(relative.with_suffix("").as_posix(), path))
        elif path.is_dir() and (path / "model_index.json").is_file():
            found.append(CheckpointInfo(relative.as_posix(), path))
    return found


class HashCache:
    """sha256 of checkpoint files, remembered by path, size and mtime across restarts.

    A1111's "Model hash" is the first 10 hex digits of the whole file's sha256; hashing a
    7 GB file takes seconds, so it is done once per file version.
    """

    def __init__(self, cache_file: Path) -> None:
        self._file = Path(cache_file)
        self._lock = threading.Lock()

    def sha256(self, path: Path) -> str | None:
        path = Path(path)
        if not path.is_file():
            return None
        stat = path.stat()
        key = str(path.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns]
        with self._lock:
            entries = self._read()
            entry = entries.get(key)
            if entry and entry.get("stamp") == stamp:
                return entry["sha256"]
        digest = _file_sha256(path)
        with self._lock:
            entries = self._read()
            entries[key] = {"stamp": stamp, "sha256": digest}
            self._write(entries)
        return digest

    def short_hash(self, path: Path) -> str | None:
        digest = self.sha256(path)
        return digest[:10] if digest else None

    def _read(self) -> dict[str, dict]:
        try:
            return json.loads(self._file.read_text(encoding="utf-8")).get("sha256", {})
        except (OSError, ValueError, AttributeError):
            return {}

    def _write(self, entries: dict[str, dict]) -> None:
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._file.with_name(self._file.name + ".tmp")
            temporary.write_text(json.dumps({"sha256": entries}, indent=1), encoding="utf-8")
            temporary.replace(self._file)
        except OSError as error:
            log.warning("cannot write the hash cache %s: %s", self._file, error)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
