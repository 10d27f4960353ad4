"""What an extension's `setup(ext)` is given, and the events its hooks receive (docs/extensions.md).

The one module extensions import from the app: everything they need is here (re-exported where
it lives elsewhere), so the app's own modules can move without breaking them. Torch- and
web-framework-free to import (`DenoiseStep`, the step hook's type, loads the engine on first
use); an extension pulls in Gradio or FastAPI itself, inside the functions that build its tab or
its routes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from webui.engine.request import GenerationError, GenerationRequest
from webui.outputs.infotext import format_infotext, parse_infotext
from webui.results import StudioResult
from webui.scripts.args import ScriptArg, read_args
from webui.scripts.base import ResultParts, Script, ScriptRun, fixed_seed

if TYPE_CHECKING:
    from fastapi import APIRouter

    from webui.engine.steps import DenoiseStep

__all__ = [
    "HOOKS",
    "MODES",
    "AlwaysOnScript",
    "DenoiseStep",
    "ExtensionSetup",
    "ExtensionTab",
    "GenerationError",
    "GenerationRequest",
    "ImageDone",
    "ImageSaved",
    "JobStart",
    "ResultParts",
    "Script",
    "ScriptArg",
    "ScriptRun",
    "StudioResult",
    "fixed_seed",
    "format_infotext",
    "parse_infotext",
    "read_args",
]


def __getattr__(name: str) -> Any:
    # The step hook's type lives with the engine, which needs torch: loaded only when asked for.
    if name == "DenoiseStep":
        from webui.engine.steps import DenoiseStep

        return DenoiseStep
    raise AttributeError(f"module 'webui.extensions.api' has no attribute {name!r}")


MODES = frozenset({"txt2img", "img2img"})
HOOKS = ("before_job", "on_step", "after_image", "after_save")  # the order they run in, per job


@dataclass
class JobStart:
    """Before a generation starts: assign a changed `request` (or edit it) to change the job.

    Raising `GenerationError` refuses the request with that message; any other exception is
    the extension's own failure and leaves the request as it was.
    """

    request: GenerationRequest


@dataclass
class ImageDone:
    """An image made, before it is saved: assign `image` to change it; add to `params` to write
    more `Key: value` pairs into its infotext."""

    image: Image.Image
    index: int  # of the generation's images
    seed: int
    request: GenerationRequest
    params: dict[str, object]


@dataclass(frozen=True)
class ImageSaved:
    """An image written to the outputs folder (not called when the job does not save)."""

    path: Path
    image: Image.Image
    infotext: str
    seed: int
    request: GenerationRequest


class AlwaysOnScript:
    """A script that takes part in every job of its `modes`, through the hooks it overrides.

    Each hook receives the event and this job's arguments (from `alwayson_scripts` in the API or
    the script's controls in the UI; defaults when a job does not mention the script). Hooks
    run in the documented order (docs/extensions.md); the step hook gets a
    `webui.engine.steps.DenoiseStep`. Override `parse_args` to turn the positional values into a
    typed object; the default gives {arg name: value}.
    """

    title: str = ""
    modes: frozenset[str] = MODES
    args: tuple[ScriptArg, ...] = ()

    def parse_args(self, values: Sequence[Any] | None) -> Any:
        return read_args(self.title, self.args, values)

    def before_job(self, job: JobStart, args: Any) -> None:
        """Called once per generation, before anything runs (and before the request is checked)."""

    def on_step(self, step: Any, args: Any) -> None:
        """Called before each denoising step's UNet call with a `DenoiseStep` to read or change."""

    def after_image(self, image: ImageDone, args: Any) -> None:
        """Called for each image after it is decoded and before it is saved."""

    def after_save(self, saved: ImageSaved, args: Any) -> None:
        """Called for each image right after it is saved."""

    def hooks(self) -> tuple[str, ...]:
        """The hooks this script overrides: only those are called."""
        return tuple(name for name in HOOKS if getattr(type(self), name) is not getattr(AlwaysOnScript, name))


@dataclass(frozen=True)
class ExtensionTab:
    title: str
    build: Callable[[], None]  # called inside `gr.Tab(title)` while the page is built


@dataclass
class ExtensionSetup:
    """Given to an extension's `setup(ext)`; everything it adds goes through here."""

    name: str
    folder: Path  # the extension's own folder (for files it ships)
    data_dir: Path  # the app's data folder (models/, outputs/, ...)
    log: logging.Logger
    _values: Callable[[], Mapping[str, Any]]  # this extension's saved settings
    scripts: list[Script] = field(default_factory=list)
    alwayson: list[AlwaysOnScript] = field(default_factory=list)
    tabs: list[ExtensionTab] = field(default_factory=list)
    settings: list[ScriptArg] = field(default_factory=list)
    routers: list[APIRouter] = field(default_factory=list)

    def add_script(self, script: Script) -> None:
        """A script for the Script menu and `script_name`: see `webui.scripts.base.Script`."""
        if not script.title:
            raise ValueError("a script needs a title")
        self.scripts.append(script)

    def add_alwayson(self, script: AlwaysOnScript) -> None:
        if not script.title:
            raise ValueError("an always-on script needs a title")
        if not script.hooks():
            raise ValueError(f"{script.title}: an always-on script must override at least one hook")
        self.alwayson.append(script)

    def add_tab(self, title: str, build: Callable[[], None]) -> None:
        """A tab of the page after the built-in ones; `build` adds its Gradio components."""
        self.tabs.append(ExtensionTab(title, build))

    def add_settings(self, *settings: ScriptArg) -> None:
        """Settings shown in a section of the Settings tab titled with the extension's name."""
        names = {setting.name for setting in self.settings}
        for setting in settings:
            if setting.name in names:
                raise ValueError(f"setting {setting.name!r} is declared twice")
            names.add(setting.name)
            self.settings.append(setting)

    def add_router(self, router: APIRouter) -> None:
        """FastAPI routes, served under /api/v1/ext/<name>/ behind the app's login."""
        self.routers.append(router)

    def setting(self, name: str) -> Any:
        """The setting's current value: saved from the Settings tab, else its declared default."""
        for declared in self.settings:
            if declared.name == name:
                return self._values().get(name, declared.default)
        raise KeyError(f"{self.name} declares no setting {name!r}")
