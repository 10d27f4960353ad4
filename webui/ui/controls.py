"""The generation controls txt2img, img2img and inpaint share, and filling them from an infotext."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from webui.engine.request import GenerationRequest
from webui.engine.samplers import SCHEDULE_TYPES, sampler_names
from webui.jobs import Limits
from webui.outputs import parse_infotext, request_fields_from_params
from webui.ui.context import PRIVATE_UNQUEUED
from webui.ui.fields import Field, one_of, paste_targets, paste_values, request_values, whole
from webui.ui.sliders import declared_item, declared_slider, in_slider, slider_of

MAX_UI_STEPS = int(slider_of("steps").maximum)
MAX_UI_SIDE = int(slider_of("width").maximum)
SEED_MAX = int(declared_item("seed").maximum or 2**32 - 1)
SEED_EXTRAS = "seed_extras"  # the "Extra" switch: the variation fields count only while it is ticked


@dataclass
class GenerationControls:
    """One tab's controls; element ids are `<tab>-<name>`.

    `fields` is the one ordered list behind the event inputs, the request and the paste targets;
    the named components are the ones other parts of the page wire to.
    """

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    swap_size: gr.Button
    fields: list[Field]

    def __post_init__(self) -> None:
        names = [field.name for field in self.fields]
        if len(names) != len(set(names)):
            raise ValueError(f"two controls set the same field: {names}")

    def with_fields(self, *more: Field) -> GenerationControls:
        return replace(self, fields=[*self.fields, *more])

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The components whose values `to_request` takes, in its order."""
        return [field.component for field in self.fields]

    def to_request(self, values: list[Any] | tuple[Any, ...], **extra: Any) -> GenerationRequest:
        """A request from the values of `inputs` (and what only the tab knows, e.g. the image)."""
        return GenerationRequest(**request_values(self.fields, values), **extra)

    def fill_targets(self) -> list[gr.components.Component]:
        """What `fill_values` updates, in its order (batch settings and mask options are kept)."""
        return paste_targets(self.fields)

    def fill_values(self, infotext: str) -> list[Any]:
        """Updates for `fill_targets()` from an A1111 infotext.

        What the infotext lacks goes back to its default (variation seed, hires fix, ...) or, for the
        basics such as the sampler, stays as it was; unknown samplers are never put into a dropdown.
        """
        found = infotext_fields(infotext)
        if found.get("enable_hr") and not any(field.name == "enable_hr" for field in self.fields):
            # The image this tab receives is the hires one: keep its size rather than the first pass's.
            found["width"], found["height"] = hires_size(found)
        return paste_values(self.fields, found)


def infotext_fields(infotext: str) -> dict[str, object]:
    """GenerationRequest field names and values an infotext sets, prompts included."""
    info = parse_infotext(infotext)
    return {
        **request_fields_from_params(info.params),
        "prompt": info.prompt,
        "negative_prompt": info.negative_prompt,
    }


def hires_size(found: Mapping[str, object]) -> tuple[int, int]:
    """The hires pass size the fields describe (the request's own rule, so the two cannot differ)."""

    def number(name: str, default: float) -> Any:
        value = found.get(name, default)
        return value if isinstance(value, int | float) else default

    request = GenerationRequest(
        width=int(number("width", 512)),
        height=int(number("height", 512)),
        hr_scale=float(number("hr_scale", 2.0)),
        hr_resize_x=int(number("hr_resize_x", 0)),
        hr_resize_y=int(number("hr_resize_y", 0)),
    )
    return request.hr_size


def build_prompts(tab: str) -> tuple[gr.Textbox, gr.Textbox]:
    prompt = gr.Textbox(
        label="Prompt",
        lines=3,
        placeholder="a lighthouse at dusk, oil painting (Ctrl+Enter to generate)",
        elem_id=f"{tab}-prompt",
        elem_classes=["prompt"],
    )
    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tab}-negative-prompt")
    return prompt, negative


def build_sampling(
    tab: str, prompts: tuple[gr.Textbox, gr.Textbox], limits: Limits, default_size: int = 512
) -> GenerationControls:
    """Sampler, steps, size, batch, CFG, tiling and seed with its variation extras.

    `default_size`: the sides the page starts with (the demo model's is 128)."""
    with gr.Row():
        sampler = gr.Dropdown(
            choices=sampler_names(), value="Euler a", label="Sampling method", elem_id=f"{tab}-sampler"
        )
        scheduler = gr.Dropdown(
            choices=list(SCHEDULE_TYPES), value="Automatic", label="Schedule type", elem_id=f"{tab}-scheduler"
        )
    steps = declared_slider("steps", f"{tab}-steps", maximum=limits.max_steps)
    with gr.Row(equal_height=True):
        with gr.Column(scale=6, min_width=200):
            width = declared_slider("width", f"{tab}-width", value=default_size)
            height = declared_slider("height", f"{tab}-height", value=default_size)
        swap_size = tool_button("Swap", f"{tab}-swap-size", min_width=64)
        with gr.Column(scale=4, min_width=160):
            batch_count = declared_slider("n_iter", f"{tab}-batch-count", maximum=limits.max_batch_count)
            batch_size = declared_slider("batch_size", f"{tab}-batch-size", maximum=limits.max_batch_size)
    with gr.Row(equal_height=True):
        cfg_scale = declared_slider("cfg_scale", f"{tab}-cfg-scale", scale=5)
        tiling = gr.Checkbox(label="Tiling", elem_id=f"{tab}-tiling", scale=1, min_width=100)
    # Shown in the seed box's toolbar, where Gradio drops elem_id: tests find them by name.
    random_seed = gr.Button("Random", size="sm")
    reuse_seed = gr.Button("Reuse last", size="sm")
    with gr.Row(equal_height=True):
        seed = seed_box("Seed (-1 = random)", f"{tab}-seed", [random_seed, reuse_seed], scale=5)
        seed_extras = gr.Checkbox(label="Extra", elem_id=f"{tab}-seed-extras", scale=1, min_width=100)
    variation = build_variation(tab, seed_extras)

    fields = [
        Field("prompt", prompts[0], to_request=lambda text: text or "", default=""),
        Field("negative_prompt", prompts[1], to_request=lambda text: text or "", default=""),
        Field("sampler_name", sampler, to_ui=one_of(sampler_names)),
        Field("scheduler", scheduler, to_ui=one_of(lambda: list(SCHEDULE_TYPES))),
        Field("steps", steps, to_request=int),
        Field("width", width, to_request=int),
        Field("height", height, to_request=int),
        Field("n_iter", batch_count, to_request=int, pasted=False),
        Field("batch_size", batch_size, to_request=int, pasted=False),
        Field("cfg_scale", cfg_scale, to_request=float),
        Field("seed", seed, to_request=_seed),
        Field("tiling", tiling, to_request=bool, default=False),
        Field(SEED_EXTRAS, seed_extras, sent=False, from_fields=_uses_seed_extras),
        *variation,
    ]
    controls = GenerationControls(
        prompts[0], prompts[1], width, height, seed, random_seed, reuse_seed, swap_size, fields
    )
    swap_size.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], **PRIVATE_UNQUEUED)
    random_seed.click(lambda: -1, outputs=seed, **PRIVATE_UNQUEUED)
    return controls


def seed_box(label: str, elem_id: str, buttons: list[gr.Button], **layout: Any) -> gr.Number:
    """A seed field: a whole number from -1 (random) to the largest 32-bit seed."""
    return gr.Number(
        value=-1,
        precision=0,
        minimum=-1,
        maximum=SEED_MAX,
        label=label,
        elem_id=elem_id,
        buttons=buttons,
        **layout,
    )


def optional_side(name: str, elem_id: str) -> gr.Slider:
    """Request field `name`'s slider: an image side in multiples of 8 where 0 means "not set"."""
    return declared_slider(name, elem_id)


def build_variation(tab: str, switch: gr.Checkbox) -> list[Field]:
    """A1111's seed extras, shown while `switch` is ticked: the variation seed and "resize seed from"."""
    random_subseed = gr.Button("Random", size="sm")
    with gr.Group(visible=False) as group:
        with gr.Row():
            subseed = seed_box("Variation seed (-1 = random)", f"{tab}-subseed", [random_subseed])
            strength = declared_slider("subseed_strength", f"{tab}-subseed-strength")
        with gr.Row():
            resize_w, resize_h = (
                optional_side(f"seed_resize_from_{side[0]}", f"{tab}-seed-resize-{side[0]}")
                for side in ("width", "height")
            )
    switch.change(lambda on: gr.Group(visible=on), inputs=switch, outputs=group, **PRIVATE_UNQUEUED)
    random_subseed.click(lambda: -1, outputs=subseed, **PRIVATE_UNQUEUED)
    gate = SEED_EXTRAS
    return [
        Field("subseed", subseed, to_request=_seed, default=-1, gate=gate),
        Field(
            "subseed_strength",
            strength,
            to_request=float,
            to_ui=in_slider("subseed_strength"),
            default=0,
            gate=gate,
        ),
        *(
            Field(name, slider, to_request=whole, to_ui=in_slider(name), default=0, gate=gate)
            for name, slider in (("seed_resize_from_w", resize_w), ("seed_resize_from_h", resize_h))
        ),
    ]


def _seed(value: Any) -> int:
    return -1 if value is None else int(value)  # an emptied box means random


def _uses_seed_extras(found: Mapping[str, object]) -> bool:
    """A pasted infotext with a variation or a seed resize opens the extras, as in A1111."""
    values = (found.get(name) for name in ("subseed_strength", "seed_resize_from_w", "seed_resize_from_h"))
    return any(isinstance(value, int | float) and value > 0 for value in values)


def tool_button(label: str, elem_id: str, min_width: int = 80) -> gr.Button:
    """A small text button beside a field (Refresh, Swap), styled by the page's `.tool-button`."""
    return gr.Button(
        label, size="sm", elem_id=elem_id, elem_classes=["tool-button"], scale=0, min_width=min_width
    )
