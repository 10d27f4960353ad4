"""The inpaint tab: paint a mask on the image in the browser (or upload one) and redraw under it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from webui.engine.request import MaskedContent
from webui.ui.context import UiContext
from webui.ui.fields import Field
from webui.ui.generation_tab import GenerationTab, build_generation_tab
from webui.ui.image_inputs import Unreadable, tolerant
from webui.ui.img2img import build_resize_and_strength, fitted_size, resize_and_strength_fields
from webui.ui.masks import image_and_mask
from webui.ui.results import hide_error, show_error, stage_copy, wire_generation
from webui.ui.sliders import declared_slider, in_slider

MASKED_CONTENT = {
    "fill": MaskedContent.FILL,
    "original": MaskedContent.ORIGINAL,
    "latent noise": MaskedContent.LATENT_NOISE,
    "latent nothing": MaskedContent.LATENT_NOTHING,
}
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
AREAS = ("Whole picture", "Only masked")
# The editor's value with its painted layers dropped: the picture alone.
CLEAR_MASK_JS = (
    "(v) => v && v.background ? {background: v.background, layers: [], composite: v.background} : v"
)

# Gradio 6.31's editor keeps nothing of a picture given before its canvas is made (the first half
# second on the tab): it stays empty and Generate sends no picture. Hold such a file until then.
EDITOR_READY_HEAD = """
<script>
(() => {
  const early = (event) => {
    const editor = event.target.closest && event.target.closest("#inpaint-editor");
    return editor && !editor.querySelector("canvas") ? editor : null;
  };
  const later = (editor, resend) => {
    const wait = setInterval(() => {
      if (!editor.querySelector("canvas")) return;
      clearInterval(wait);
      setTimeout(resend, 100);
    }, 100);
  };
  document.addEventListener("change", (event) => {
    const editor = early(event);
    if (!editor || event.target.type !== "file") return;
    event.stopImmediatePropagation();
    later(editor, () => event.target.dispatchEvent(new Event("change", {bubbles: true})));
  }, true);
  document.addEventListener("drop", (event) => {
    const editor = early(event);
    if (!editor || !event.dataTransfer || !event.dataTransfer.files.length) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    const files = new DataTransfer(), target = event.target;
    for (const file of event.dataTransfer.files) files.items.add(file);
    later(editor, () => target.dispatchEvent(
      new DragEvent("drop", {bubbles: true, cancelable: true, dataTransfer: files})));
  }, true);
})();
</script>
"""


@dataclass
class InpaintInputs:
    editor: gr.ImageEditor
    staged: gr.ImageEditor  # hidden: the editor's value as Generate sends it (see `stage_copy`)
    clear_mask: gr.Button
    mask_upload: gr.Image
    mask_blur: gr.Slider
    mask_mode: gr.Radio
    masked_content: gr.Radio
    area: gr.Radio
    padding: gr.Slider
    resize_mode: gr.Radio
    denoising_strength: gr.Slider

    @property
    def request_inputs(self) -> list[gr.components.Component]:
        """What only this tab reads (the picture and the uploaded mask); the rest are `fields`."""
        return [self.staged, self.mask_upload]

    @property
    def fields(self) -> list[Field]:
        # A1111's infotext carries the mask blur and denoising strength; the mask options stay as set.
        return [
            Field("mask_blur", self.mask_blur, to_request=int, to_ui=in_slider("mask_blur")),
            Field(
                "inpainting_mask_invert",
                self.mask_mode,
                to_request=lambda mode: mode == MASK_MODES[1],
                pasted=False,
            ),
            Field(
                "inpainting_fill", self.masked_content, to_request=MASKED_CONTENT.__getitem__, pasted=False
            ),
            Field("inpaint_full_res", self.area, to_request=lambda area: area == AREAS[1], pasted=False),
            Field("inpaint_full_res_padding", self.padding, to_request=int, pasted=False),
            *resize_and_strength_fields(self.resize_mode, self.denoising_strength),
        ]


def build_inpaint(ctx: UiContext, allowed_roots: Callable[[], list[Path]]) -> GenerationTab:
    def inputs() -> InpaintInputs:
        editor = gr.ImageEditor(
            label="Image and mask: paint over what to change",
            type="pil",
            image_mode="RGBA",
            sources=["upload", "clipboard"],
            brush=gr.Brush(default_size=32, colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
            eraser=gr.Eraser(default_size=32),
            layers=False,
            transforms=(),
            format="png",
            height=420,
            elem_id="inpaint-editor",
        )
        staged = tolerant(
            gr.ImageEditor(type="pil", image_mode="RGBA", layers=False, format="png", visible=False)
        )
        clear_mask = gr.Button("Clear mask", size="sm", elem_id="inpaint-clear-mask")
        with gr.Accordion("Upload a mask instead (white = change)", open=False):
            mask_upload = gr.Image(
                label="Mask",
                type="pil",
                image_mode="L",
                sources=["upload", "clipboard"],
                elem_id="inpaint-mask",
            )
            tolerant(mask_upload)
        with gr.Row():
            mask_blur = declared_slider("mask_blur", "inpaint-mask-blur")
            padding = declared_slider("inpaint_full_res_padding", "inpaint-padding")
        mask_mode = gr.Radio(
            list(MASK_MODES), value=MASK_MODES[0], label="Mask mode", elem_id="inpaint-mask-mode"
        )
        masked_content = gr.Radio(
            list(MASKED_CONTENT), value="original", label="Masked content", elem_id="inpaint-masked-content"
        )
        area = gr.Radio(list(AREAS), value=AREAS[0], label="Inpaint area", elem_id="inpaint-area")
        resize_mode, strength = build_resize_and_strength("inpaint")
        return InpaintInputs(
            editor,
            staged,
            clear_mask,
            mask_upload,
            mask_blur,
            mask_mode,
            masked_content,
            area,
            padding,
            resize_mode,
            strength,
        )

    tab = build_generation_tab(ctx, "inpaint", inputs, alwayson_mode="img2img")
    extra: InpaintInputs = tab.extra
    own = len(extra.request_inputs)

    def make_request(values: list[Any], extra_values: list[Any]) -> Any:
        image, mask = image_and_mask(*extra_values[:own])
        request = tab.controls.to_request(values, init_image=image, mask=mask)
        return tab.with_script(request, extra_values[own:])

    tab.finished = wire_generation(
        ctx,
        tab.controls,
        tab.panel,
        tab.buttons,
        extra_inputs=[*extra.request_inputs, *tab.script_inputs()],
        make_request=make_request,
        allowed_roots=allowed_roots,
        staged=(extra.editor, extra.staged),
    )
    private: dict[str, Any] = {"api_visibility": "private"}
    # In the browser alone, so the editor never becomes an input of a server event (see `stage_copy`).
    extra.clear_mask.click(None, js=CLEAR_MASK_JS, inputs=extra.editor, outputs=extra.editor, **private)

    def uploaded(value: dict[str, Any] | Unreadable | None) -> tuple[Any, Any, Any]:
        """The sizes follow a new picture; a file that is not one is said so at once."""
        if isinstance(value, Unreadable):
            return gr.skip(), gr.skip(), show_error(value.message)
        return *fitted_size((value or {}).get("background")), hide_error()

    stage_copy(extra.editor.upload, extra.editor, extra.staged).then(
        uploaded,
        inputs=extra.staged,
        outputs=[tab.controls.width, tab.controls.height, tab.panel.error],
        **private,
    )
    return tab
