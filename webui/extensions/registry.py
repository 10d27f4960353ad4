"""Finding, loading and keeping track of extensions: one folder each, a manifest, a `setup(ext)`.

An extension that cannot be loaded (no manifest, unmet needs, an import error, a failing or
hanging `setup`) is recorded with the reason and skipped; the others load as usual.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.engine.request import GenerationError, GenerationRequest
from webui.extensions.api import AlwaysOnScript, ExtensionSetup, ExtensionTab
from webui.extensions.isolation import ExtensionThread, TookTooLong
from webui.extensions.manifest import Manifest, ManifestError
from webui.scripts.args import ScriptArg, read_args
from webui.scripts.base import Script
from webui.settings import ALL_EXTENSIONS as ALL

if TYPE_CHECKING:
    from fastapi import APIRouter

    from webui.settings import Settings

log = logging.getLogger(__name__)

BUILTIN_FOLDER = Path(__file__).resolve().parents[2] / "extensions-builtin"
_SETUP_TIMEOUT_S = 30.0  # importing and setting up one extension at start
_PROBLEMS_KEPT = 20


class Status:
    LOADED = "loaded"
    DISABLED = "disabled"  # by the user (Settings, --disable-extensions)
    FAILED = "failed"  # could not be loaded: see `error`
    STOPPED = "stopped"  # loaded, then switched off for this session after it hung: see `error`


@dataclass(eq=False)
class Extension:
    """One folder of `extensions/` or `extensions-builtin/` and what became of it."""

    folder: Path
    builtin: bool
    name: str  # the manifest's name, or the folder's when there is no usable manifest
    manifest: Manifest | None = None
    status: str = Status.FAILED
    error: str = ""
    setup: ExtensionSetup | None = None
    scripts_js: list[tuple[str, str]] = field(default_factory=list)  # (file name, source)
    css: str = ""
    thread: ExtensionThread | None = None
    _problems: deque[str] = field(default_factory=lambda: deque(maxlen=_PROBLEMS_KEPT))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def active(self) -> bool:
        return self.status == Status.LOADED and self.setup is not None

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else ""

    def additions(self) -> dict[str, list[str]]:
        """What the extension added, by kind (empty lists when it did not load)."""
        setup = self.setup
        if setup is None:
            return {"scripts": [], "alwayson_scripts": [], "tabs": [], "settings": [], "routes": []}
        return {
            "scripts": [script.title for script in setup.scripts],
            "alwayson_scripts": [script.title for script in setup.alwayson],
            "tabs": [tab.title for tab in setup.tabs],
            "settings": [setting.name for setting in setup.settings],
            "routes": [f"/api/v1/ext/{self.name}/"] if setup.routers else [],
        }

    def report(self, problem: str, error: BaseException | None = None) -> None:
        """A failure while the app runs, for the console, the Settings tab and /api/v1/extensions."""
        log.error("extension %s: %s", self.name, problem, exc_info=error)
        with self._lock:
            self._problems.append(problem)

    def problems(self) -> list[str]:
        with self._lock:
            return list(self._problems)

    def stop(self, reason: str) -> None:
        """Off for the rest of the session: its thread may be stuck in a call that never returns."""
        with self._lock:
            if self.status != Status.LOADED:
                return
            self.status, self.error = Status.STOPPED, reason
        self.report(f"{reason}; it is off until the app restarts")
        if self.thread is not None:
            self.thread.close()


@dataclass(frozen=True)
class ExtensionFolders:
    """Where extensions live: the built-in ones first, then the user's, each sorted by folder name."""

    user: Path
    builtin: Path | None = BUILTIN_FOLDER

    def each(self) -> list[tuple[Path, bool]]:
        found: list[tuple[Path, bool]] = []
        for root, builtin in ((self.builtin, True), (self.user, False)):
            if root is not None and root.is_dir():
                found += [
                    (folder, builtin)
                    for folder in sorted(root.iterdir())
                    if folder.is_dir() and not folder.name.startswith((".", "_"))
                ]
        return found


class Extensions:
    """The loaded extensions and what they added, in load order (which is also hook order)."""

    def __init__(self, extensions: Sequence[Extension], timeout_s: float = 10.0) -> None:
        self.extensions = list(extensions)
        self.timeout_s = timeout_s
        self._values: dict[str, dict[str, Any]] = {}

    @classmethod
    def none(cls) -> Extensions:
        return cls([])

    @classmethod
    def for_settings(cls, settings: Settings) -> Extensions:
        disabled = {*settings.disabled_extensions, *settings.skipped_extensions}
        extensions = cls.load(
            ExtensionFolders(settings.data_dir / "extensions"),
            data_dir=settings.data_dir,
            disabled=ALL if ALL in disabled else frozenset(disabled),
            timeout_s=settings.extension_timeout_s,
        )
        try:
            values = extensions.check_values(settings.extension_settings)
        except ValueError as error:  # a hand-edited settings file: the extension's defaults then
            log.warning("extension settings in the settings file: %s; using the defaults", error)
            values = {}
        extensions.set_values(values)
        return extensions

    @classmethod
    def load(
        cls,
        folders: ExtensionFolders,
        *,
        data_dir: Path,
        disabled: Iterable[str] | str = (),
        timeout_s: float = 10.0,
    ) -> Extensions:
        registry = cls([], timeout_s)
        names: set[str] = set()
        for folder, builtin in folders.each():
            extension = registry._load_one(folder, builtin, data_dir, disabled, names)
            names.add(extension.name)
            registry.extensions.append(extension)
        loaded = [e.name for e in registry.extensions if e.active]
        log.info("extensions loaded: %s", ", ".join(loaded) or "none")
        return registry

    def _load_one(
        self, folder: Path, builtin: bool, data_dir: Path, disabled: Iterable[str] | str, taken: set[str]
    ) -> Extension:
        extension = Extension(folder, builtin, folder.name)
        try:
            extension.manifest = Manifest.read(folder)
        except ManifestError as error:
            return _failed(extension, str(error))
        extension.name = extension.manifest.name
        if extension.name in taken:
            return _failed(extension, f"another extension is already named {extension.name!r}")
        if disabled == ALL or extension.name in disabled:
            extension.status = Status.DISABLED
            return extension
        unmet = extension.manifest.unmet_needs()
        if unmet:
            return _failed(extension, "needs " + "; ".join(unmet))
        setup = ExtensionSetup(
            extension.name,
            folder,
            data_dir,
            logging.getLogger(f"extensions.{extension.name}"),
            lambda name=extension.name: self._values.get(name, {}),
        )
        extension.thread = ExtensionThread(extension.name)
        try:
            extension.thread.call(lambda: _run_setup(extension, setup), _SETUP_TIMEOUT_S)
        except TookTooLong:
            extension.thread.close()
            return _failed(extension, f"setup() did not finish in {_SETUP_TIMEOUT_S:g} s")
        except Exception as error:
            extension.thread.close()
            return _failed(extension, describe_error(error), error)
        extension.setup, extension.status = setup, Status.LOADED
        extension.scripts_js, extension.css = _static_files(folder)
        return extension

    # -- what extensions added ----------------------------------------------------------------
    def scripts(self, mode: str) -> list[Script]:
        return [
            GuardedScript(extension, script)
            for extension in self.active()
            for script in extension.setup.scripts  # type: ignore[union-attr]
            if mode in script.modes
        ]

    def alwayson(self, mode: str | None = None) -> list[tuple[Extension, AlwaysOnScript]]:
        return [
            (extension, script)
            for extension in self.active()
            for script in extension.setup.alwayson  # type: ignore[union-attr]
            if mode is None or mode in script.modes
        ]

    def tabs(self) -> list[tuple[Extension, ExtensionTab]]:
        return [(e, tab) for e in self.active() for tab in e.setup.tabs]  # type: ignore[union-attr]

    def routers(self) -> list[tuple[Extension, APIRouter]]:
        return [(e, router) for e in self.active() for router in e.setup.routers]  # type: ignore[union-attr]

    def settings_sections(self) -> list[tuple[Extension, list[ScriptArg]]]:
        return [(e, list(e.setup.settings)) for e in self.active() if e.setup.settings]  # type: ignore[union-attr]

    def active(self) -> list[Extension]:
        return [extension for extension in self.extensions if extension.active]

    def find(self, name: str) -> Extension | None:
        return next((extension for extension in self.extensions if extension.name == name), None)

    def stopped_script(self, title: str) -> Extension | None:
        """The stopped extension that owned a selectable script titled `title`, if one did."""
        wanted = title.strip().lower()
        for extension in self.extensions:
            if (
                extension.status == Status.STOPPED
                and extension.setup is not None
                and any(script.title.lower() == wanted for script in extension.setup.scripts)
            ):
                return extension
        return None

    def head_html(self) -> str:
        """The extensions' `javascript/*.js`, as `<script>` elements for the page's head."""
        return "".join(
            f"\n<script>/* extension {e.name}: {file} */\n{source}\n</script>"
            for e in self.active()
            for file, source in e.scripts_js
        )

    def css(self) -> str:
        return "".join(f"\n/* extension {e.name} */\n{e.css}" for e in self.active() if e.css)

    # -- settings -----------------------------------------------------------------------------
    def set_values(self, values: Mapping[str, Mapping[str, Any]]) -> None:
        self._values = {name: dict(section) for name, section in values.items()}

    def check_values(self, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Settings values as their declarations read them; ValueError names the extension and the
        setting. Sections of extensions not loaded now are kept as they are."""
        checked: dict[str, dict[str, Any]] = {}
        declared = {extension.name: settings for extension, settings in self.settings_sections()}
        for name, section in values.items():
            if name not in declared:
                checked[name] = dict(section)
                continue
            unknown = set(section) - {setting.name for setting in declared[name]}
            if unknown:
                raise ValueError(f"extension {name} has no setting {', '.join(sorted(unknown))}")
            try:
                positional = [section.get(setting.name) for setting in declared[name]]
                checked[name] = read_args(f"extension {name}", declared[name], positional)
            except GenerationError as error:
                raise ValueError(str(error).replace("script_args", "setting")) from error
        return checked

    def values(self, name: str) -> dict[str, Any]:
        """An extension's settings, declared defaults filled in."""
        declared = dict(self.settings_sections())
        extension = self.find(name)
        saved = self._values.get(name, {})
        if extension is None or extension not in declared:
            return dict(saved)
        return {setting.name: saved.get(setting.name, setting.default) for setting in declared[extension]}

    # -- jobs -----------------------------------------------------------------------------------
    def alwayson_args(self, request: GenerationRequest) -> list[tuple[Extension, AlwaysOnScript, Any]]:
        """Each always-on script of the request's mode with its parsed arguments (defaults for
        those the request does not name). GenerationError for an unknown title or bad arguments."""
        scripts = self.alwayson(request.mode)
        by_title = {script.title.lower(): script for _, script in scripts}
        given: dict[str, Any] = {}
        for title, args in request.alwayson_scripts.items():
            key = title.strip().lower()
            if key not in by_title:
                available = ", ".join(repr(script.title) for _, script in scripts) or "none"
                raise GenerationError(
                    f"alwayson_scripts: no always-on script {title!r} for {request.mode}; available: "
                    f"{available}",
                    f"alwayson_scripts.{title}",
                )
            given[key] = args
        active = []
        for extension, script in scripts:
            active.append((extension, script, _parse(extension, script, given.get(script.title.lower()))))
        return active


class GuardedScript:
    """An extension's selectable script: its own failures become a clear job error naming it."""

    def __init__(self, extension: Extension, script: Script) -> None:
        self.extension, self.script = extension, script
        self.title, self.modes, self.args = script.title, script.modes, script.args

    def parse_args(self, args: Sequence[Any]) -> Any:
        return self._guard("parse_args", lambda: self.script.parse_args(args))

    def run(self, request: GenerationRequest, args: Any, run: Any) -> Any:
        return self._guard("run", lambda: self.script.run(request, args, run))

    def _guard(self, what: str, call: Callable[[], Any]) -> Any:
        from webui.engine.steps import Interrupted
        from webui.model_manager.state_dict import CheckpointError

        try:
            return call()
        except (GenerationError, CheckpointError, Interrupted):
            raise
        except Exception as error:
            message = f"script {self.title!r} failed in {what}: {describe_error(error)}"
            self.extension.report(message, error)
            raise GenerationError(f"extension {self.extension.name}: {message}") from error


def _parse(extension: Extension, script: AlwaysOnScript, values: Any) -> Any:
    try:
        return script.parse_args(values)
    except GenerationError as error:
        raise GenerationError(str(error), f"alwayson_scripts.{script.title}") from error
    except Exception as error:
        extension.report(f"{script.title}: parse_args failed: {describe_error(error)}", error)
        raise GenerationError(
            f"extension {extension.name}: {script.title} cannot read its arguments: {describe_error(error)}",
            f"alwayson_scripts.{script.title}",
        ) from error


def _run_setup(extension: Extension, setup: ExtensionSetup) -> None:
    assert extension.manifest is not None
    package = "webui_extension_" + extension.name.replace("-", "_")
    entry = extension.folder / extension.manifest.entry
    # The extension's folder is a package of its own, so its modules import each other relatively.
    package_spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
    package_spec.submodule_search_locations = [str(extension.folder)]
    sys.modules[package] = importlib.util.module_from_spec(package_spec)
    module_name = f"{package}.{entry.stem}"
    spec = importlib.util.spec_from_file_location(module_name, entry)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {entry.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        setup_function = getattr(module, "setup", None)
        if not callable(setup_function):
            raise AttributeError(f"{entry.name} has no setup(ext) function")
        setup_function(setup)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise


def _static_files(folder: Path) -> tuple[list[tuple[str, str]], str]:
    scripts = [
        (path.name, path.read_text(encoding="utf-8", errors="replace"))
        for path in sorted((folder / "javascript").glob("*.js"))
    ]
    style = folder / "style.css"
    return scripts, style.read_text(encoding="utf-8", errors="replace") if style.is_file() else ""


def _failed(extension: Extension, reason: str, error: BaseException | None = None) -> Extension:
    extension.status, extension.error = Status.FAILED, reason
    log.error("extension %s (%s) not loaded: %s", extension.name, extension.folder, reason, exc_info=error)
    return extension


def describe_error(error: BaseException) -> str:
    """`SyntaxError: invalid syntax (extension.py, line 3)`: the type, the message, and for an
    error raised in the extension's code, its last frame."""
    text = f"{type(error).__name__}: {error}"
    frames = traceback.extract_tb(error.__traceback__)
    if frames and not isinstance(error, SyntaxError):
        last = frames[-1]
        text += f" ({Path(last.filename).name}, line {last.lineno})"
    return text
