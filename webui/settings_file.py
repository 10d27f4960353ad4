"""The settings file (`DATA_DIR/settings.json`): what the Settings tab changed, kept across restarts."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from webui.jobs.limits import Limits
from webui.settings import EDITABLE_FIELDS, Settings

log = logging.getLogger(__name__)

SETTINGS_FILE_NAME = "settings.json"


class SettingsFileError(ValueError):
    """The file cannot be used as it is; the message names the file and the key at fault."""


class SettingsFile:
    """Reads and writes the editable settings as JSON. Only keys that differ from defaults mean
    anything special: every editable key is written, so the file documents itself."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        """Values for `Settings.from_args(..., saved=)`; {} when there is no file yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise SettingsFileError(f"{self.path}: cannot read it ({error})") from error
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise SettingsFileError(
                f"{self.path} is not valid JSON ({error}); fix it or delete it to start from defaults"
            ) from error
        if not isinstance(raw, dict):
            raise SettingsFileError(f"{self.path}: expected a JSON object of settings")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in EDITABLE_FIELDS:
                log.warning("%s: ignoring unknown setting %r", self.path, key)
                continue
            values[key] = self._decode(key, value)
        try:
            # Every value is checked now, by the same rules as flags, so a bad one is named at start.
            Settings.for_data_dir(self.path.parent, **values)
        except (TypeError, ValueError) as error:
            raise SettingsFileError(f"{self.path}: {error}") from error
        return values

    def _decode(self, key: str, value: Any) -> Any:
        if key == "outputs_dir":
            if not isinstance(value, str) or not value:
                raise SettingsFileError(f"{self.path}: outputs_dir must be a folder path")
            return Path(value)
        if key == "limits":
            if not isinstance(value, dict):
                raise SettingsFileError(f"{self.path}: limits must be an object")
            try:
                return replace(Limits(), **value)
            except (TypeError, ValueError) as error:
                raise SettingsFileError(f"{self.path}: limits: {error}") from error
        if key == "disabled_extensions":
            if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
                raise SettingsFileError(f"{self.path}: disabled_extensions must be a list of names")
            return tuple(value)
        return value

    def save(self, settings: Settings) -> None:
        """Write atomically, so a crash mid-write leaves the previous file whole."""
        values: dict[str, Any] = {}
        for key in EDITABLE_FIELDS:
            value = getattr(settings, key)
            if key == "limits":
                value = asdict(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            values[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.tmp")
        temp.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
        os.replace(temp, self.path)


def settings_from_args(args: argparse.Namespace) -> tuple[Settings, SettingsFile]:
    """Settings for this run: flags over `DATA_DIR/settings.json` over defaults; and that file."""
    file = SettingsFile(Path(args.data_dir) / SETTINGS_FILE_NAME)
    return Settings.from_args(args, file.load()), file
