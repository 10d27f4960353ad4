"""The built-in scripts, and finding a script by its title."""

from __future__ import annotations

from collections.abc import Sequence

from webui.engine.request import GenerationError
from webui.scripts.base import Script
from webui.scripts.outpainting import Outpainting
from webui.scripts.prompt_matrix import PromptMatrix
from webui.scripts.prompts_from_file import PromptsFromFile
from webui.scripts.sd_upscale import SdUpscale
from webui.scripts.xyz_plot import XyzPlot


def builtin_scripts() -> dict[str, Script]:
    """The scripts that ship with the app, keyed by lower-case title."""
    scripts: list[Script] = [XyzPlot(), PromptMatrix(), PromptsFromFile(), Outpainting(), SdUpscale()]
    return {script.title.lower(): script for script in scripts}


def scripts_for(mode: str) -> list[Script]:
    return [script for script in builtin_scripts().values() if mode in script.modes]


def find_script(name: str, mode: str, available: Sequence[Script] | None = None) -> Script:
    """The script titled `name` (ignoring case) of `available` (default: the built-in scripts of
    `mode`); GenerationError lists the others."""
    if available is None:
        available = scripts_for(mode)
    wanted = (name or "").strip().lower()
    for script in available:
        if script.title.lower() == wanted:
            return script
    titles = ", ".join(repr(script.title) for script in available)
    raise GenerationError(f"no script {name!r} for {mode}; available: {titles}", "script_name")
