"""The Extras tab: upscale finished images, one or a batch, by a factor or to a size, with one or
two upscalers blended. Results are saved (A1111's extras-images folder) with the source's infotext."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from webui.outputs import format_infotext, parse_infotext, read_infotext, request_fields_from_params
from webui.ui.context import PRIVATE
from webui.ui.controls import tool_button
from webui.ui.image_inputs import unreadable_message
from webui.ui.pnginfo import file_upload
from webui.ui.results import displayable_image, error_box, hide_error, image_gallery, show_error

if TYPE_CHECKING:
    from webui.studio import Studio

log = logging.getLogger(__name__)

SCALE_BY, SCALE_TO = "Scale by", "Scale to"
SINGLE, BATCH = "single", "batch"


@dataclass(frozen=True)
class UpscaleOptions:
    upscaler_1: str
    upscaler_2: str
    visibility: float
    scale: float | None  # "Scale by"
    size: tuple[int, int] | None  # "Scale to"
    crop: bool

    def params(self) -> dict[str, object]:
        """What the result's infotext adds, under A1111's extras keys."""
        if self.size is not None:
            resize: dict[str, object] = {
                "Postprocess upscale to": f"{self.size[0]}x{self.size[1]}",
                "Postprocess crop to fit": self.crop,
            }
        else:
            resize = {"Postprocess upscale by": self.scale}
        return {
            **resize,
            "Postprocess upscaler": self.upscaler_1,
            "Postprocess upscaler 2": self.upscaler_2,
            "Extras upscaler 2 visibility": self.visibility,
        }


@dataclass
class ExtrasTab:
    sources: gr.Tabs  # "Single image" / "Batch"
    source: gr.State  # which of the two Run reads
    image: gr.Image
    files: gr.File
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown
    refresh: gr.Button
    run: gr.Button
    gallery: gr.Gallery
    sizes: gr.Markdown
    error: gr.Markdown


def upscale_file(studio: Studio, path: Path, options: UpscaleOptions) -> tuple[Path, str]:
    """Upscale one file and save it; (saved path, "64x64 → 128x128"). Raises ValueError, OSError."""
    try:
        with Image.open(path) as opened:
            source_infotext = read_infotext(opened) or ""
            has_alpha = "A" in opened.getbands() or "transparency" in opened.info
            image = opened.convert("RGBA" if has_alpha else "RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ValueError(unreadable_message(path)) from error
    result = studio.upscale_image(
        image,
        options.upscaler_1,
        scale=options.scale,
        size=options.size,
        crop=options.crop,
        second=options.upscaler_2,
        second_visibility=options.visibility,
    )
    # The source's parameters stay in the file, so PNG Info still tells how it was made.
    info = parse_infotext(source_infotext)
    seed = request_fields_from_params(info.params).get("seed")
    infotext = format_infotext(info.prompt, info.negative_prompt, {**info.params, **options.params()})
    saved = studio.outputs.save(
        result, mode="extras", seed=seed if isinstance(seed, int) else -1, infotext=infotext
    )
    return saved, f"{image.width}x{image.height} → {result.width}x{result.height}"


def build_extras_tab(
    studio: Studio,
    allowed_roots: Callable[[], list[Path]],
    record_saved: Callable[[Path, gr.Request], None] = lambda _path, _request: None,
) -> ExtrasTab:
    with gr.Row(equal_height=False):
        with gr.Column():
            with gr.Tabs(elem_id="extras-sources") as sources:
                with gr.Tab("Single image", id=SINGLE, elem_id="extras-tab-single") as single_tab:
                    image = file_upload("extras-image", height=360)  # the infotext survives
                with gr.Tab("Batch", id=BATCH, elem_id="extras-tab-batch") as batch_tab:
                    files = gr.File(
                        label="Images", file_count="multiple", file_types=["image"], elem_id="extras-batch"
                    )
            source = gr.State(SINGLE)
            resize_mode = gr.Radio(
                [SCALE_BY, SCALE_TO], value=SCALE_BY, label="Resize", elem_id="extras-resize"
            )
            with gr.Group() as by_group:
                scale = gr.Slider(1, 8, value=2, step=0.05, label="Scale by", elem_id="extras-scale")
            with gr.Group(visible=False) as to_group, gr.Row():
                width = gr.Number(value=512, precision=0, minimum=1, label="Width", elem_id="extras-width")
                height = gr.Number(value=512, precision=0, minimum=1, label="Height", elem_id="extras-height")
                crop = gr.Checkbox(value=True, label="Crop to fit", elem_id="extras-crop")
            names = studio.models.upscaler_names()
            first_choice = next((name for name in names if name != "None"), "None")
            with gr.Row(equal_height=True):
                upscaler_1 = gr.Dropdown(
                    names, value=first_choice, label="Upscaler 1", elem_id="extras-upscaler-1"
                )
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras-upscaler-2")
                refresh = tool_button("Refresh", "extras-refresh")
            visibility = gr.Slider(
                0,
                1,
                value=0,
                step=0.01,
                label="Upscaler 2 visibility",
                elem_id="extras-upscaler-2-visibility",
            )
            run = gr.Button("Run", variant="primary", size="lg", elem_id="extras-run")
        with gr.Column():
            error = error_box("extras")
            sizes = gr.Markdown(elem_id="extras-sizes")
            gallery = image_gallery("Results", "extras-gallery", columns=2, height=520)

    def run_extras(
        which: str,
        image_path: str | None,
        file_paths: list[str] | None,
        mode: str,
        factor: float,
        to_width: float | None,
        to_height: float | None,
        to_crop: bool,
        first: str,
        second: str,
        second_visibility: float,
        request: gr.Request,
    ) -> tuple[Any, Any, Any]:
        paths = ([image_path] if image_path else []) if which == SINGLE else list(file_paths or [])
        if not paths:
            wanted = "drop or paste an image" if which == SINGLE else "add images to the batch"
            return gr.Gallery(value=None), "", show_error(f"{wanted} first")
        options = UpscaleOptions(
            first,
            second,
            float(second_visibility),
            float(factor) if mode == SCALE_BY else None,
            (int(to_width or 0), int(to_height or 0)) if mode == SCALE_TO else None,
            bool(to_crop),
        )
        done: list[tuple[Any, str]] = []
        problems: list[str] = []
        for path in map(Path, paths):
            try:
                saved, change = upscale_file(studio, path, options)
            except (ValueError, OSError) as problem:  # GenerationError is a ValueError: the user can fix it
                problems.append(str(problem) if which == SINGLE else f"{path.name}: {problem}")
                continue
            record_saved(saved, request)
            done.append((displayable_image(saved, allowed_roots()), change))
        lines = "\n".join(f"- {change}" for _, change in done)
        shown = show_error("; ".join(problems)) if problems else hide_error()
        # Nothing done: the last run's images go, or they read as this run's outcome.
        return gr.Gallery(value=done or None), lines, shown

    single_tab.select(lambda: SINGLE, outputs=source, **PRIVATE)
    batch_tab.select(lambda: BATCH, outputs=source, **PRIVATE)
    resize_mode.change(
        lambda mode: (gr.Group(visible=mode == SCALE_BY), gr.Group(visible=mode == SCALE_TO)),
        inputs=resize_mode,
        outputs=[by_group, to_group],
        queue=False,
        **PRIVATE,
    )
    refresh.click(
        lambda: [gr.Dropdown(choices=studio.models.upscaler_names())] * 2,
        outputs=[upscaler_1, upscaler_2],
        **PRIVATE,
    )
    run.click(
        run_extras,
        inputs=[
            source,
            image,
            files,
            resize_mode,
            scale,
            width,
            height,
            crop,
            upscaler_1,
            upscaler_2,
            visibility,
        ],
        outputs=[gallery, sizes, error],
        **PRIVATE,
    )
    return ExtrasTab(
        sources, source, image, files, upscaler_1, upscaler_2, refresh, run, gallery, sizes, error
    )
