"""txt2img's "Hires. fix": a first pass, an upscale, a second pass; shows the size it will reach."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.engine.request import MAX_SIDE, MIN_SIDE, GenerationRequest
from webui.engine.samplers import SCHEDULE_TYPES, sampler_names
from webui.ui.context import PRIVATE_UNQUEUED
from webui.ui.controls import GenerationControls, optional_side
from webui.ui.fields import Field, one_of, whole
from webui.ui.sliders import declared_slider, in_slider

SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
DEFAULT_UPSCALER = "Latent"
HIRES_DENOISING = 0.7  # the page's start for hires fix (img2img's is the request's 0.75)


@dataclass
class HiresControls:
    enable: gr.Checkbox
    size: gr.Markdown
    fields: list[Field]


def hires_size_text(width: Any, height: Any, scale: Any, resize_x: Any, resize_y: Any) -> str:
    """The size line, e.g. "from 512x512 to 1024x1024", by the request's own rule (and out-of-range note)."""
    request = GenerationRequest(
        width=whole(width),
        height=whole(height),
        hr_scale=float(scale or 0),
        hr_resize_x=whole(resize_x),
        hr_resize_y=whole(resize_y),
    )
    target_w, target_h = request.hr_size
    text = f"from {request.width}x{request.height} to {target_w}x{target_h}"
    if not (MIN_SIDE <= target_w <= MAX_SIDE and MIN_SIDE <= target_h <= MAX_SIDE):
        text += f" (out of range: each side must be from {MIN_SIDE} to {MAX_SIDE})"
    return text


def build_hires(tab: str, upscalers: Callable[[], list[str]], controls: GenerationControls) -> HiresControls:
    enable = gr.Checkbox(label="Hires. fix", elem_id=f"{tab}-enable-hr")
    with gr.Group(visible=False, elem_id=f"{tab}-hires") as group:
        with gr.Row():
            upscaler = gr.Dropdown(
                choices=upscalers(), value=DEFAULT_UPSCALER, label="Upscaler", elem_id=f"{tab}-hr-upscaler"
            )
            steps = declared_slider("hr_second_pass_steps", f"{tab}-hr-steps")
            denoising = declared_slider("denoising_strength", f"{tab}-hr-denoising", value=HIRES_DENOISING)
        with gr.Row():
            scale = declared_slider("hr_scale", f"{tab}-hr-scale")
            resize_x, resize_y = (
                optional_side(f"hr_resize_{axis}", f"{tab}-hr-resize-{axis}") for axis in "xy"
            )
        size = gr.Markdown(
            hires_size_text(512, 512, 2, 0, 0), elem_id=f"{tab}-hr-size", elem_classes=["hr-size"]
        )
        with gr.Row():
            sampler = gr.Dropdown(
                choices=[SAME_SAMPLER, *sampler_names()],
                value=SAME_SAMPLER,
                label="Hires sampling method",
                elem_id=f"{tab}-hr-sampler",
            )
            scheduler = gr.Dropdown(
                choices=[SAME_SCHEDULER, *SCHEDULE_TYPES],
                value=SAME_SCHEDULER,
                label="Hires schedule type",
                elem_id=f"{tab}-hr-scheduler",
            )
        prompt = gr.Textbox(label="Hires prompt (empty = same)", lines=2, elem_id=f"{tab}-hr-prompt")
        negative = gr.Textbox(
            label="Hires negative prompt (empty = same)", lines=2, elem_id=f"{tab}-hr-negative-prompt"
        )

    enable.change(lambda on: gr.Group(visible=on), inputs=enable, outputs=group, **PRIVATE_UNQUEUED)
    sizes = [controls.width, controls.height, scale, resize_x, resize_y]
    gr.on(
        [component.change for component in sizes],
        hires_size_text,
        inputs=sizes,
        outputs=size,
        **PRIVATE_UNQUEUED,
    )

    fields = [
        Field("enable_hr", enable, to_request=bool, default=False),
        Field("hr_upscaler", upscaler, to_ui=one_of(upscalers), default=DEFAULT_UPSCALER),
        Field(
            "hr_second_pass_steps",
            steps,
            to_request=whole,
            to_ui=in_slider("hr_second_pass_steps"),
            default=0,
        ),
        Field(
            "denoising_strength",
            denoising,
            to_request=float,
            to_ui=in_slider("denoising_strength"),
            default=HIRES_DENOISING,
        ),
        Field("hr_scale", scale, to_request=float, to_ui=in_slider("hr_scale"), default=2),
        Field("hr_resize_x", resize_x, to_request=whole, to_ui=in_slider("hr_resize_x"), default=0),
        Field("hr_resize_y", resize_y, to_request=whole, to_ui=in_slider("hr_resize_y"), default=0),
        _same_or("hr_sampler_name", sampler, SAME_SAMPLER, sampler_names),
        _same_or("hr_scheduler", scheduler, SAME_SCHEDULER, lambda: list(SCHEDULE_TYPES)),
        Field("hr_prompt", prompt, to_request=lambda text: text or "", default=""),
        Field("hr_negative_prompt", negative, to_request=lambda text: text or "", default=""),
    ]
    return HiresControls(enable, size, fields)


def _same_or(name: str, dropdown: gr.Dropdown, same: str, choices: Callable[[], list[str]]) -> Field:
    """A dropdown whose first choice means "as the first pass": "" in the request and the infotext."""
    return Field(
        name,
        dropdown,
        to_request=lambda value: "" if value in (None, same) else value,
        to_ui=one_of(choices),
        default=same,
    )
