"""The "Script" dropdown of a generation tab and the always-on scripts' accordions, with each
script's controls drawn from its ScriptArgs.

Torch-free, like `webui.scripts`: building the UI must not load the model stack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.extensions.api import AlwaysOnScript
from webui.scripts import Script, ScriptArg

NONE = "None"
_RADIO_MAX_CHOICES = 4  # fewer choices read better as radio buttons (as A1111 draws them)


def slug(title: str) -> str:
    """`X/Y/Z plot` -> `x-y-z-plot`, for element ids."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


@dataclass
class ScriptsPanel:
    dropdown: gr.Dropdown
    groups: dict[str, gr.Group]  # by script title
    controls: dict[str, list[gr.components.Component]]  # by script title, in its positional order

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The dropdown, then every script's controls (script by script); `choice` reads their values."""
        return [self.dropdown, *(control for controls in self.controls.values() for control in controls)]

    def choice(self, values: Sequence[Any]) -> tuple[str | None, list[Any]]:
        """Values of `inputs` -> (the chosen script's title or None, its positional script_args)."""
        if len(values) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} values (one per input), got {len(values)}")
        chosen = values[0]
        offset = 1
        for title, controls in self.controls.items():
            if title == chosen:
                return title, list(values[offset : offset + len(controls)])
            offset += len(controls)
        if chosen in (None, "", NONE):
            return None, []
        raise ValueError(f"unknown script {chosen!r}")


def build_scripts_panel(
    tab: str, scripts: Sequence[Script], sources: Mapping[str, Sequence[str]] | None = None
) -> ScriptsPanel:
    """Inside a `gr.Blocks`: the dropdown and one hidden group per script, shown when chosen.

    `sources` gives lists known at run time (e.g. {"upscalers": [...]}) for arguments that name
    one; without it those arguments are free text. Ids: `<tab>-script` and `<tab>-script-<slug>-<arg>`.
    """
    dropdown = gr.Dropdown(
        [NONE, *(script.title for script in scripts)], value=NONE, label="Script", elem_id=f"{tab}-script"
    )
    groups: dict[str, gr.Group] = {}
    controls: dict[str, list[gr.components.Component]] = {}
    for script in scripts:
        prefix = f"{tab}-script-{slug(script.title)}"
        with gr.Group(visible=False, elem_id=prefix) as group:
            controls[script.title] = [
                script_control(f"{prefix}-{arg.name}", arg, sources or {}) for arg in script.args
            ]
        groups[script.title] = group
    titles = list(groups)
    dropdown.change(
        lambda chosen: group_updates(chosen, titles),
        inputs=dropdown,
        outputs=list(groups.values()),
        show_progress="hidden",
        queue=False,
    )
    return ScriptsPanel(dropdown, groups, controls)


@dataclass
class AlwaysOnPanel:
    """One accordion per always-on script with arguments; their values become `alwayson_scripts`."""

    controls: dict[str, list[gr.components.Component]]  # by script title, in its positional order

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [control for controls in self.controls.values() for control in controls]

    def args(self, values: Sequence[Any]) -> dict[str, list[Any]]:
        if len(values) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} values (one per input), got {len(values)}")
        chosen, offset = {}, 0
        for title, controls in self.controls.items():
            chosen[title] = list(values[offset : offset + len(controls)])
            offset += len(controls)
        return chosen


def build_alwayson_panel(
    tab: str, scripts: Sequence[AlwaysOnScript], sources: Mapping[str, Sequence[str]] | None = None
) -> AlwaysOnPanel:
    """Ids: `<tab>-alwayson-<slug>` for the accordion, `<tab>-alwayson-<slug>-<arg>` for controls."""
    controls: dict[str, list[gr.components.Component]] = {}
    for script in scripts:
        if not script.args:
            continue
        prefix = f"{tab}-alwayson-{slug(script.title)}"
        with gr.Accordion(script.title, open=False, elem_id=prefix):
            controls[script.title] = [
                script_control(f"{prefix}-{arg.name}", arg, sources or {}) for arg in script.args
            ]
    return AlwaysOnPanel(controls)


def group_updates(chosen: str | None, titles: Sequence[str]) -> list[dict[str, Any]]:
    """Visibility updates for the groups of `titles`: only the chosen script's group shows."""
    return [gr.update(visible=chosen == title) for title in titles]


def script_control(
    elem_id: str, arg: ScriptArg, sources: Mapping[str, Sequence[str]] | None = None
) -> gr.components.Component:
    """The control for one argument (or an extension's setting)."""
    sources = sources or {}
    if arg.source and arg.source in sources:
        return gr.Dropdown(
            list(sources[arg.source]),
            value=arg.default,
            label=arg.label,
            allow_custom_value=True,
            elem_id=elem_id,
        )
    if arg.kind == "bool":
        return gr.Checkbox(value=arg.default, label=arg.label, elem_id=elem_id)
    if arg.kind == "number":
        whole = isinstance(arg.default, int) and not isinstance(arg.default, bool)
        return gr.Number(
            value=arg.default,
            label=arg.label,
            precision=0 if whole else None,
            minimum=arg.minimum,
            maximum=arg.maximum,
            elem_id=elem_id,
        )
    if arg.kind == "choice":
        if len(arg.choices) <= _RADIO_MAX_CHOICES:
            return gr.Radio(list(arg.choices), value=arg.default, label=arg.label, elem_id=elem_id)
        return gr.Dropdown(list(arg.choices), value=arg.default, label=arg.label, elem_id=elem_id)
    if arg.kind == "multichoice":
        return gr.CheckboxGroup(list(arg.choices), value=list(arg.default), label=arg.label, elem_id=elem_id)
    lines = 5 if arg.kind == "multiline" else 1
    return gr.Textbox(value=arg.default, label=arg.label, lines=lines, elem_id=elem_id)
