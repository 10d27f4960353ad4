"""SD 3.5's skip-layer guidance: a closed accordion under the sampling controls (scale 0 = off)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from webui.ui.fields import Field
from webui.ui.sliders import declared_item, declared_slider, in_slider

SLG_SLIDERS = ("slg_scale", "slg_start", "slg_stop")


@dataclass
class SkipLayerControls:
    fields: list[Field]


def build_skip_layers(tab: str) -> SkipLayerControls:
    layers_item = declared_item("slg_layers")
    with gr.Accordion("Skip-layer guidance (SD 3.5)", open=False, elem_id=f"{tab}-slg"):
        gr.Markdown(
            "Sharper structure on SD 3.5 Medium (Stability suggests scale 3 on layers 7, 8, 9); "
            "other models refuse it while the scale is above 0.",
            elem_classes=["hint"],
        )
        with gr.Row():
            scale = declared_slider("slg_scale", f"{tab}-slg-scale")
            layers = gr.Textbox(
                value=layers_item.default,
                label=layers_item.param.label,
                elem_id=f"{tab}-slg-layers",
                max_lines=1,
            )
        with gr.Row():
            start = declared_slider("slg_start", f"{tab}-slg-start")
            stop = declared_slider("slg_stop", f"{tab}-slg-stop")
    sliders = dict(zip(SLG_SLIDERS, (scale, start, stop)))
    fields = [
        Field(name, slider, to_request=float, to_ui=in_slider(name), default=declared_item(name).default)
        for name, slider in sliders.items()
    ]
    fields.append(
        Field("slg_layers", layers, to_request=lambda text: text or "", default=layers_item.default)
    )
    return SkipLayerControls(fields)
