"""The page's sliders for request fields: ends, step, default and label from the request's declaration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from webui.engine.parameters import Declared, Slider, declared
from webui.engine.request import GenerationRequest  # no torch
from webui.ui.fields import within


def declared_item(name: str) -> Declared:
    return declared(GenerationRequest, name)


def slider_of(name: str) -> Slider:
    """A request field's declared slider; KeyError for a field that has none."""
    slider = declared_item(name).param.slider
    if slider is None:
        raise KeyError(f"{name} declares no slider")
    return slider


def declared_slider(
    name: str, elem_id: str, *, maximum: float | None = None, value: Any = None, **options: Any
) -> gr.Slider:
    """The slider for request field `name`. `maximum` may lower its end (an admin's limit);
    `value` replaces the declared default and `label` its label."""
    item, slider = declared_item(name), slider_of(name)
    options.setdefault("label", item.param.label)
    return gr.Slider(
        slider.minimum,
        slider.maximum if maximum is None else min(maximum, slider.maximum),
        value=item.default if value is None else value,
        step=slider.step,
        precision=0 if item.type is int else None,
        elem_id=elem_id,
        **options,
    )


def in_slider(name: str) -> Callable[[Any], Any]:
    """`to_ui` for a pasted value: kept when it is within the field's slider."""
    slider = slider_of(name)
    return within(slider.minimum, slider.maximum)
