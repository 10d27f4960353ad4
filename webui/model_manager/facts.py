"""What the app learned about a file, remembered across restarts by path, size and mtime.

A1111's "Model hash" is the first 10 hex digits of the whole file's sha256; hashing a 7 GB
file takes seconds, and reading a pickle's shapes means reading it whole, so each is done
once per file version and kept in one JSON file.

That file has a name of our own: a data folder may be an A1111 install, whose `cache.json`
(A1111's hash cache, with keys we do not know) is A1111's to write, never ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_HASH_CHUNK = 1 << 20
FACTS_FILE_NAME = "webui-file-facts.json"


class FileFactsCache:
    def __init__(self, cache_file: Path) -> None:
        self._file = Path(cache_file)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._read()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> FileFactsCache:
        return cls(Path(data_dir) / FACTS_FILE_NAME)

    # -- hashes -------------------------------------------------------------------------------
    def sha256(self, path: Path) -> str | None:
        """The file's sha256, computed now if this version of it was never hashed."""
        path = Path(path)
        if not path.is_file():
            return None
        return self.remember(path, "sha256", file_sha256)

    def cached_sha256(self, path: Path) -> str | None:
        """The sha256 if already known; never reads the file."""
        return self._lookup(Path(path), "sha256")

    def short_hash(self, path: Path) -> str | None:
        digest = self.sha256(path)
        return digest[:10] if digest else None

    # -- any fact -----------------------------------------------------------------------------
    def remember(self, path: Path, fact: str, compute: Callable[[Path], Any]) -> Any:
        """`compute(path)` once per file version; later calls return the stored value."""
        path = Path(path)
        known = self._lookup(path, fact)
        if known is not None:
            return known
        value = compute(path)
        key, stamp = _key_and_stamp(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.get("stamp") != stamp:
                entry = self._entries[key] = {"stamp": stamp}
            entry[fact] = value
            self._write()
        return value

    def _lookup(self, path: Path, fact: str) -> Any:
        try:
            key, stamp = _key_and_stamp(path)
        except OSError:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry and entry.get("stamp") == stamp:
                return entry.get(fact)
        return None

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            loaded = json.loads(self._file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = loaded.get("files") if isinstance(loaded, dict) else None
        return files if isinstance(files, dict) else {}

    def _write(self) -> None:
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._file.with_name(self._file.name + ".tmp")
            temporary.write_text(json.dumps({"files": self._entries}, indent=1), encoding="utf-8")
            temporary.replace(self._file)
        except OSError as error:
            log.warning("cannot write the file facts cache %s: %s", self._file, error)


def _key_and_stamp(path: Path) -> tuple[str, list[int]]:
    stat = path.stat()
    if path.is_dir():
        # A diffusers folder changes when its model_index.json does.
        stat = (path / "model_index.json").stat() if (path / "model_index.json").exists() else stat
    return str(path.resolve()), [stat.st_size, stat.st_mtime_ns]


def file_sha256(path: Path) -> str:
    """The whole file's sha256, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
