"""The PNG Info tab: drop an image, read the parameters it was made with."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from webui.outputs import parse_infotext, read_infotext
from webui.ui.image_inputs import DECODE_ERRORS, tolerant, unreadable_message

NO_PARAMETERS = "This image carries no generation parameters."


@dataclass
class PngInfoTab:
    image: gr.Image
    infotext: gr.Textbox
    table: gr.HTML
    send_txt2img: gr.Button
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_extras: gr.Button


def parameters_html(infotext: str) -> str:
    """The parsed infotext as a small table: prompt, negative prompt, then each parameter."""
    info = parse_infotext(infotext)
    rows = [("Prompt", info.prompt), ("Negative prompt", info.negative_prompt), *info.params.items()]
    body = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in rows
        if value
    )
    return f'<table class="pnginfo-table">{body}</table>'


def read_parameters(path: str | None) -> tuple[str, str]:
    if not path:
        return "", ""
    try:
        with Image.open(path):  # read_infotext finds no text in any file that is not an image
            pass
        infotext = read_infotext(path)
    except DECODE_ERRORS:
        # The parameters shown before are cleared too: "→ txt2img" must not send them.
        return "", f'<p class="error-box">{html.escape(unreadable_message(path))}</p>'
    if not infotext:
        return "", f"<p>{NO_PARAMETERS}</p>"
    return infotext, parameters_html(infotext)


def file_upload(elem_id: str, *, height: int) -> gr.Image:
    """An image drop zone that hands over the uploaded file itself (its path), text chunks intact:
    type="filepath" with no image_mode keeps Gradio from re-encoding it. A file that is not an
    image arrives as its path too; the handler says so."""
    image = gr.Image(
        label="Image",
        type="filepath",
        image_mode=None,
        sources=["upload", "clipboard"],
        elem_id=elem_id,
        height=height,
    )
    return tolerant(image)


def build_pnginfo_tab() -> PngInfoTab:
    with gr.Row(equal_height=False):
        with gr.Column():
            image = file_upload("pnginfo-image", height=420)
        with gr.Column():
            infotext = gr.Textbox(
                label="Parameters", lines=6, interactive=False, buttons=["copy"], elem_id="pnginfo-infotext"
            )
            table = gr.HTML(elem_id="pnginfo-table")
            with gr.Row():
                send_txt2img = gr.Button("→ txt2img", elem_id="pnginfo-send-txt2img")
                send_img2img = gr.Button("→ img2img", elem_id="pnginfo-send-img2img")
                send_inpaint = gr.Button("→ Inpaint", elem_id="pnginfo-send-inpaint")
                send_extras = gr.Button("→ Extras", elem_id="pnginfo-send-extras")
    private: dict[str, Any] = {"api_visibility": "private"}
    image.change(read_parameters, inputs=image, outputs=[infotext, table], **private)
    return PngInfoTab(image, infotext, table, send_txt2img, send_img2img, send_inpaint, send_extras)
