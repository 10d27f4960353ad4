"""The img2img tab: an uploaded or pasted image redrawn from a prompt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from webui.engine.request import GenerationError, ResizeMode
from webui.ui.context import UiContext
from webui.ui.controls import MAX_UI_SIDE
from webui.ui.fields import Field
from webui.ui.generation_tab import GenerationTab, build_generation_tab
from webui.ui.image_inputs import Unreadable, tolerant
from webui.ui.results import hide_error, show_error, wire_generation
from webui.ui.sliders import declared_slider, in_slider

RESIZE_MODES = {
    "Just resize": ResizeMode.JUST_RESIZE,
    "Crop and resize": ResizeMode.CROP_AND_RESIZE,
    "Resize and fill": ResizeMode.RESIZE_AND_FILL,
}


@dataclass
class Img2ImgInputs:
    image: gr.Image
    resize_mode: gr.Radio
    denoising_strength: gr.Slider

    @property
    def fields(self) -> list[Field]:
        return resize_and_strength_fields(self.resize_mode, self.denoising_strength)


def build_resize_and_strength(name: str) -> tuple[gr.Radio, gr.Slider]:
    resize_mode = gr.Radio(
        list(RESIZE_MODES), value="Just resize", label="Resize mode", elem_id=f"{name}-resize-mode"
    )
    strength = declared_slider("denoising_strength", f"{name}-denoising-strength")
    return resize_mode, strength


def resize_and_strength_fields(resize_mode: gr.Radio, strength: gr.Slider) -> list[Field]:
    return [
        Field("resize_mode", resize_mode, to_request=RESIZE_MODES.__getitem__, pasted=False),
        Field("denoising_strength", strength, to_request=float, to_ui=in_slider("denoising_strength")),
    ]


def fitted_size(image: Image.Image | Unreadable | None) -> tuple[Any, Any]:
    """The image's size in multiples of 8 within the sliders, so a new upload keeps its shape."""
    if not isinstance(image, Image.Image):
        return gr.skip(), gr.skip()
    scale = min(1.0, MAX_UI_SIDE / max(image.width, image.height))
    return tuple(max(64, int(side * scale) // 8 * 8) for side in image.size)  # type: ignore[return-value]


def build_img2img(ctx: UiContext, allowed_roots: Callable[[], list[Path]]) -> GenerationTab:
    def inputs() -> Img2ImgInputs:
        image = gr.Image(
            label="Image",
            type="pil",
            image_mode="RGB",
            sources=["upload", "clipboard"],
            elem_id="img2img-image",
            height=360,
        )
        return Img2ImgInputs(tolerant(image), *build_resize_and_strength("img2img"))

    tab = build_generation_tab(ctx, "img2img", inputs, script_mode="img2img")
    extra: Img2ImgInputs = tab.extra

    def make_request(values: list[Any], extra_values: list[Any]) -> Any:
        image, *script_values = extra_values
        if image is None:
            raise GenerationError("drop, paste or send an image to img2img first", "init_image")
        if isinstance(image, Unreadable):
            raise GenerationError(image.message, "init_image")
        return tab.with_script(tab.controls.to_request(values, init_image=image), script_values)

    tab.finished = wire_generation(
        ctx,
        tab.controls,
        tab.panel,
        tab.buttons,
        extra_inputs=[extra.image, *tab.script_inputs()],
        make_request=make_request,
        allowed_roots=allowed_roots,
    )

    def uploaded(image: Image.Image | Unreadable | None) -> tuple[Any, Any, Any]:
        """The sizes follow a new picture; a file that is not one is said so at once."""
        if isinstance(image, Unreadable):
            return gr.skip(), gr.skip(), show_error(image.message)
        return *fitted_size(image), hide_error()

    extra.image.upload(
        uploaded,
        inputs=extra.image,
        outputs=[tab.controls.width, tab.controls.height, tab.panel.error],
        api_visibility="private",
    )
    return tab
