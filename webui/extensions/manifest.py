"""An extension's manifest (`extension.toml`): who it is, what it needs, where its code is."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from webui import __version__

MANIFEST_NAME = "extension.toml"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ManifestError(ValueError):
    """The manifest is missing, unreadable, or asks for what this install does not have."""


@dataclass(frozen=True)
class Manifest:
    name: str  # lower case, digits, '-' and '_': it is also the route prefix /api/v1/ext/<name>/
    version: str
    description: str = ""
    entry: str = "extension.py"  # the module whose `setup(ext)` registers everything
    webui: str = ""  # a version range of this app, e.g. ">=0.1"
    packages: tuple[str, ...] = ()  # installed Python packages it imports, e.g. "piexif>=1.1"

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_NAME
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"no {MANIFEST_NAME} in {folder.name}/") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ManifestError(f"{MANIFEST_NAME} cannot be read: {error}") from error
        needs = raw.get("needs", {})
        if not isinstance(needs, dict):
            raise ManifestError(f"{MANIFEST_NAME}: [needs] must be a table")
        manifest = cls(
            name=_text(raw, "name", required=True),
            version=_text(raw, "version", required=True),
            description=_text(raw, "description"),
            entry=_text(raw, "entry") or "extension.py",
            webui=_text(needs, "webui"),
            packages=_texts(needs, "packages"),
        )
        manifest._check(folder)
        return manifest

    def _check(self, folder: Path) -> None:
        if not _NAME.match(self.name):
            raise ManifestError(
                f"name {self.name!r}: use lower-case letters, digits, '-' and '_' (it names a route)"
            )
        entry = (folder / self.entry).resolve()
        if not entry.is_relative_to(folder.resolve()) or entry.suffix != ".py":
            raise ManifestError(f"entry {self.entry!r} must be a .py file inside the extension's folder")
        if not entry.is_file():
            raise ManifestError(f"entry {self.entry} does not exist")

    def unmet_needs(self) -> list[str]:
        """What this install lacks, in words; empty when everything the manifest asks for is here."""
        unmet: list[str] = []
        if self.webui:
            try:
                wanted = SpecifierSet(self.webui)
            except InvalidSpecifier:
                return [f"needs.webui {self.webui!r} is not a version range like '>=0.1'"]
            if Version(__version__) not in wanted:
                unmet.append(f"webui {self.webui} (this is {__version__})")
        for text in self.packages:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                unmet.append(f"package {text!r} (not a requirement like 'piexif>=1.1')")
                continue
            try:
                installed = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                unmet.append(f"package {text} (not installed)")
                continue
            if requirement.specifier and Version(installed) not in requirement.specifier:
                unmet.append(f"package {text} (installed: {installed})")
        return unmet


def _text(table: dict[str, object], key: str, *, required: bool = False) -> str:
    value = table.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise ManifestError(f"{MANIFEST_NAME}: {key} must be {'a non-empty ' if required else 'a '}string")
    return value.strip()


def _texts(table: dict[str, object], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ManifestError(f"{MANIFEST_NAME}: needs.{key} must be a list of strings")
    return tuple(value)
