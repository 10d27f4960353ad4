"""The generation controls txt2img, img2img and inpaint share, and filling them from an infotext."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.engine.request import MAX_BATCH, MAX_BATCH_COUNT, MAX_STEPS, GenerationRequest
from webui.engine.samplers import SCHEDULE_TYPES, sampler_names
from webui.jobs import Limits
from webui.outputs import parse_infotext, request_fields_from_params

MAX_UI_STEPS = min(150, MAX_STEPS)
MAX_UI_SIDE = 2048
SEED_MAX = 2**32 - 1


@dataclass
class GenerationControls:
    """One tab's prompt and sampling controls; element ids are `<tab>-<name>`."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    batch_count: gr.Slider
    batch_size: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    swap_size: gr.Button

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The components whose values `to_request` takes, in its order."""
        return [
            self.prompt,
            self.negative_prompt,
            self.sampler,
            self.scheduler,
            self.steps,
            self.width,
            self.height,
            self.batch_count,
            self.batch_size,
            self.cfg_scale,
            self.seed,
        ]

    @staticmethod
    def to_request(values: list[Any] | tuple[Any, ...], **extra: Any) -> GenerationRequest:
        """A request from the values of `inputs` (and mode-specific fields in `extra`)."""
        prompt, negative, sampler, scheduler, steps, width, height, count, size, cfg, seed = values
        return GenerationRequest(
            prompt=prompt or "",
            negative_prompt=negative or "",
            sampler_name=sampler,
            scheduler=scheduler,
            steps=int(steps),
            width=int(width),
            height=int(height),
            n_iter=int(count),
            batch_size=int(size),
            cfg_scale=float(cfg),
            seed=-1 if seed is None else int(seed),
            **extra,
        )

    def fill_targets(self) -> list[gr.components.Component]:
        """What `fill_values` updates, in its order: `inputs` without the batch settings."""
        return [c for c in self.inputs if c is not self.batch_count and c is not self.batch_size]


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


def build_sampling(tab: str, prompts: tuple[gr.Textbox, gr.Textbox], limits: Limits) -> GenerationControls:
    """Sampler, steps, size, batch, CFG and seed; wires the swap, random and reuse buttons' own parts."""
    with gr.Row():
        sampler = gr.Dropdown(
            choices=sampler_names(), value="Euler a", label="Sampling method", elem_id=f"{tab}-sampler"
        )
        scheduler = gr.Dropdown(
            choices=list(SCHEDULE_TYPES), value="Automatic", label="Schedule type", elem_id=f"{tab}-scheduler"
        )
    steps = gr.Slider(
        1,
        min(MAX_UI_STEPS, limits.max_steps),
        value=20,
        step=1,
        precision=0,
        label="Sampling steps",
        elem_id=f"{tab}-steps",
    )
    with gr.Row(equal_height=True):
        with gr.Column(scale=6, min_width=200):
            width = gr.Slider(
                64, MAX_UI_SIDE, value=512, step=8, precision=0, label="Width", elem_id=f"{tab}-width"
            )
            height = gr.Slider(
                64, MAX_UI_SIDE, value=512, step=8, precision=0, label="Height", elem_id=f"{tab}-height"
            )
        swap_size = gr.Button(
            "⇅", elem_id=f"{tab}-swap-size", elem_classes=["tool-button"], scale=0, min_width=44
        )
        with gr.Column(scale=4, min_width=160):
            batch_count = gr.Slider(
                1,
                min(MAX_BATCH_COUNT, limits.max_batch_count),
                value=1,
                step=1,
                precision=0,
                label="Batch count",
                elem_id=f"{tab}-batch-count",
            )
            batch_size = gr.Slider(
                1,
                min(MAX_BATCH, limits.max_batch_size),
                value=1,
                step=1,
                precision=0,
                label="Batch size",
                elem_id=f"{tab}-batch-size",
            )
    cfg_scale = gr.Slider(1, 30, value=7, step=0.5, label="CFG scale", elem_id=f"{tab}-cfg-scale")
    # Shown in the seed box's toolbar, where Gradio drops elem_id: tests find them by name.
    random_seed = gr.Button("🎲 Random", size="sm")
    reuse_seed = gr.Button("♻ Reuse last", size="sm")
    seed = gr.Number(
        value=-1,
        precision=0,
        minimum=-1,
        maximum=SEED_MAX,
        label="Seed (-1 = random)",
        elem_id=f"{tab}-seed",
        buttons=[random_seed, reuse_seed],
    )
    controls = GenerationControls(
        prompts[0],
        prompts[1],
        sampler,
        scheduler,
        steps,
        width,
        height,
        batch_count,
        batch_size,
        cfg_scale,
        seed,
        random_seed,
        reuse_seed,
        swap_size,
    )
    private = {"api_visibility": "private", "queue": False}
    swap_size.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], **private)
    random_seed.click(lambda: -1, outputs=seed, **private)
    return controls


def fill_values(infotext: str, *, sampler_choices: list[str] | None = None) -> list[Any]:
    """Updates for `GenerationControls.fill_targets()` from an A1111 infotext; what it lacks is skipped.

    An unknown sampler or schedule type is left as it was rather than put into the dropdown.
    """
    info = parse_infotext(infotext)
    found = request_fields_from_params(info.params)
    samplers = sampler_choices if sampler_choices is not None else sampler_names()
    if found.get("sampler_name") not in samplers:
        found.pop("sampler_name", None)
    if found.get("scheduler") not in SCHEDULE_TYPES:
        found.pop("scheduler", None)
    order = ["sampler_name", "scheduler", "steps", "width", "height", "cfg_scale", "seed"]
    return [info.prompt, info.negative_prompt] + [found.get(name, gr.skip()) for name in order]
