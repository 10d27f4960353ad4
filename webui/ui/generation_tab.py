"""The layout txt2img, img2img and inpaint share: prompts and buttons on top, inputs and sampling
controls on the left, live progress and results on the right."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.ui.context import UiContext
from webui.ui.controls import GenerationControls, build_prompts, build_sampling
from webui.ui.results import ResultsPanel, build_results


@dataclass
class GenerationTab:
    name: str  # "txt2img", "img2img" or "inpaint": the element id prefix and the Tab id
    controls: GenerationControls
    panel: ResultsPanel
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    extra: Any  # the tab's own inputs (an image, a mask editor), as its builder returned them

    @property
    def buttons(self) -> tuple[gr.Button, gr.Button, gr.Button]:
        return self.generate, self.interrupt, self.skip


def build_generation_tab(
    ctx: UiContext, name: str, build_inputs: Callable[[], Any] | None = None
) -> GenerationTab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            prompts = build_prompts(name)
        with gr.Column(scale=1, min_width=180):
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
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            extra = build_inputs() if build_inputs is not None else None
            controls = build_sampling(name, prompts, ctx.jobs.limits)
        with gr.Column(scale=1):
            panel = build_results(name)
    return GenerationTab(name, controls, panel, generate, interrupt, skip, extra)
