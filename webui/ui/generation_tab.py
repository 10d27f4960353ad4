"""The layout txt2img, img2img and inpaint share: prompts, styles and buttons on top, inputs and
sampling controls on the left, live progress and results on the right."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gradio as gr

from webui.engine.request import GenerationRequest
from webui.ui.context import UiContext
from webui.ui.controls import GenerationControls, build_prompts, build_sampling
from webui.ui.fields import Field
from webui.ui.results import ResultsPanel, build_results
from webui.ui.scripts_panel import AlwaysOnPanel, ScriptsPanel, build_alwayson_panel, build_scripts_panel
from webui.ui.skip_layers import build_skip_layers
from webui.ui.styles_controls import StyleControls, build_style_controls


class TabPart(Protocol):
    """A tab's own group of controls; its `fields` join the tab's request and infotext paste."""

    @property
    def fields(self) -> list[Field]: ...


@dataclass
class GenerationTab:
    name: str  # "txt2img", "img2img" or "inpaint": the element id prefix and the Tab id
    controls: GenerationControls
    panel: ResultsPanel
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    styles: StyleControls
    extra: Any  # the tab's own inputs above the sampling controls (an image, a mask editor)
    options: Any  # the tab's own options below them (txt2img's hires fix)
    scripts: ScriptsPanel | None = None  # the "Script" menu (txt2img and img2img)
    alwayson: AlwaysOnPanel | None = None  # extensions' always-on scripts
    finished: Any = None  # the Generate event (set by `wire_generation`): the header follows it

    def script_inputs(self) -> list[gr.components.Component]:
        menu = self.scripts.inputs if self.scripts is not None else []
        return menu + (self.alwayson.inputs if self.alwayson is not None else [])

    def with_script(self, request: GenerationRequest, script_values: list[Any]) -> GenerationRequest:
        """`request` with the script chosen in the menu (if any) and its positional arguments, and
        the always-on scripts' arguments."""
        menu = len(self.scripts.inputs) if self.scripts is not None else 0
        if self.scripts is not None:
            title, args = self.scripts.choice(script_values[:menu])
            if title is not None:
                request.script_name, request.script_args = title, args
        if self.alwayson is not None:
            request.alwayson_scripts = self.alwayson.args(script_values[menu:])
        return request

    @property
    def buttons(self) -> tuple[gr.Button, gr.Button, gr.Button]:
        return self.generate, self.interrupt, self.skip


def build_generation_tab(
    ctx: UiContext,
    name: str,
    build_inputs: Callable[[], TabPart] | None = None,
    build_options: Callable[[GenerationControls], TabPart] | None = None,
    script_mode: str | None = None,
    alwayson_mode: str | None = None,
) -> GenerationTab:
    """`script_mode` ("txt2img"/"img2img") adds the Script menu with that mode's scripts;
    `alwayson_mode` (default: `script_mode`) the always-on scripts' controls of that mode."""
    alwayson_mode = alwayson_mode or script_mode
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            prompts = build_prompts(name)
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button(
                "Generate",
                variant="primary",
                size="lg",
                elem_id=f"{name}-generate",
                elem_classes=["generate"],
            )
            with gr.Row():
                interrupt = gr.Button("Interrupt", size="sm", elem_id=f"{name}-interrupt", min_width=60)
                skip = gr.Button("Skip", size="sm", elem_id=f"{name}-skip", min_width=60)
            styles = build_style_controls(name, ctx.studio.styles)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            extra = build_inputs() if build_inputs is not None else None
            controls = build_sampling(name, prompts, ctx.jobs.limits, ctx.studio.models.default_size)
            options = build_options(controls) if build_options is not None else None
            skip_layers = build_skip_layers(name)
            sources = {"upscalers": ctx.studio.models.upscaler_names()}
            scripts = (
                build_scripts_panel(name, ctx.studio.scripts(script_mode), sources)
                if script_mode is not None
                else None
            )
            alwayson = (
                build_alwayson_panel(
                    name, [script for _, script in ctx.studio.extensions.alwayson(alwayson_mode)], sources
                )
                if alwayson_mode is not None
                else None
            )
        with gr.Column(scale=1):
            panel = build_results(name)
    parts = [part for part in (extra, options, skip_layers) if part is not None]
    controls = controls.with_fields(styles.field, *(field for part in parts for field in part.fields))
    return GenerationTab(
        name, controls, panel, generate, interrupt, skip, styles, extra, options, scripts, alwayson
    )
