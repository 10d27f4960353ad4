"""Each generation parameter is declared once (engine/request.py): its bounds reach the API schema,
the command line and the page's sliders; its infotext key reads back what was written; a value out
of bounds is refused naming the field and the bound."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from webui.api.fields import a1111_field
from webui.api.schemas import Img2ImgBody
from webui.cli import build_parser
from webui.engine.image_parameters import ImageParameters, ModelFacts
from webui.engine.parameters import Declared, declared_parameters, number_text
from webui.engine.request import GenerationError, GenerationRequest
from webui.jobs import Limits
from webui.outputs import format_infotext, parse_infotext, request_fields_from_params
from webui.ui.controls import build_prompts, build_sampling
from webui.ui.fields import same
from webui.ui.hires import build_hires
from webui.ui.img2img import build_resize_and_strength, resize_and_strength_fields

DECLARED = declared_parameters(GenerationRequest)
BOUNDED = [item for item in DECLARED if item.minimum is not None or item.maximum is not None]
WRITTEN = [item for item in DECLARED if item.param.infotext]
INIT = Image.new("RGB", (64, 64), "gray")
MASK = Image.new("L", (64, 64), 255)
# What a request needs besides the field for the field to count: img2img for its strength,
# a mask for the inpainting keys, hires fix for the hires ones.
IMG2IMG: dict[str, Any] = {"init_image": INIT}
INPAINT: dict[str, Any] = {"init_image": INIT, "mask": MASK, "inpaint_full_res": True}
HIRES: dict[str, Any] = {"enable_hr": True}
CONTEXT: dict[str, dict[str, Any]] = {
    "denoising_strength": IMG2IMG,
    "initial_noise_multiplier": IMG2IMG,
    "mask_blur": INPAINT,
    "inpaint_full_res": {"init_image": INIT, "mask": MASK},
    "inpaint_full_res_padding": INPAINT,
    "subseed": {"subseed_strength": 0.5},
    "seed_resize_from_w": {"seed_resize_from_h": 64},
    "seed_resize_from_h": {"seed_resize_from_w": 64},
    "hr_scale": HIRES,
    "hr_resize_x": {**HIRES, "hr_resize_y": 192},
    "hr_resize_y": {**HIRES, "hr_resize_x": 192},
    "hr_second_pass_steps": HIRES,
    "hr_upscaler": HIRES,
    "hr_sampler_name": HIRES,
    "hr_scheduler": HIRES,
    "hr_prompt": HIRES,
    "hr_negative_prompt": HIRES,
    "slg_layers": {"slg_scale": 2.5},
    "slg_start": {"slg_scale": 2.5},
    "slg_stop": {"slg_scale": 2.5},
}
# A value other than the default for each field an infotext carries.
EXAMPLES: dict[str, Any] = {
    "steps": 33,
    "sampler_name": "DPM++ 2M",
    "scheduler": "Karras",
    "cfg_scale": 5.5,
    "seed": 1234,
    "width": 320,
    "height": 192,
    "clip_skip": 2,
    "eta": 0.25,
    "denoising_strength": 0.4,
    "initial_noise_multiplier": 0.9,
    "mask_blur": 7,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 48,
    "subseed": 99,
    "subseed_strength": 0.3,
    "seed_resize_from_w": 256,
    "seed_resize_from_h": 128,
    "tiling": True,
    "rng": "NV",
    "enable_hr": True,
    "hr_scale": 1.5,
    "hr_resize_x": 256,
    "hr_resize_y": 320,
    "hr_second_pass_steps": 4,
    "hr_upscaler": "Lanczos",
    "hr_sampler_name": "DDIM",
    "hr_scheduler": "Exponential",
    "hr_prompt": "a lighthouse, at: dusk",
    "hr_negative_prompt": "blurry",
    "slg_scale": 2.5,
    "slg_layers": "6,9",
    "slg_start": 0.05,
    "slg_stop": 0.3,
}


def _image_parameters(request: GenerationRequest) -> ImageParameters:
    """As the engine makes them, with the names taken as given (no sampler table needed)."""
    return ImageParameters(
        request,
        seed=request.seed,
        sampler=request.sampler_name,
        schedule=request.scheduler,
        subseed=request.subseed if request.subseed_strength > 0 else None,
        hr_sampler=request.hr_sampler_name,
        hr_schedule=request.hr_scheduler,
        model=ModelFacts("model.safetensors", "0123456789", version="webui test"),
    )


def _infotext(request: GenerationRequest) -> str:
    return format_infotext(
        request.prompt, request.negative_prompt, _image_parameters(request).infotext_pairs()
    )


def _out_of_bounds(item: Declared) -> tuple[float, float]:
    """(a value past one bound, that bound)."""
    if item.maximum is not None:
        past = item.maximum + (item.multiple_of or 1) if item.type is int else item.maximum + 0.5
        return past, item.maximum
    assert item.minimum is not None
    return item.minimum - 1, item.minimum


@pytest.mark.parametrize(
    "item", [item for item in DECLARED if item.param.infotext], ids=lambda item: item.name
)
def test_every_infotext_field_reads_back_what_was_written(item: Declared) -> None:
    assert item.name in EXAMPLES, f"add an example value for {item.name}"
    value = EXAMPLES[item.name]
    request = GenerationRequest(prompt="a cat", **{**CONTEXT.get(item.name, {}), item.name: value})
    request.validate()
    text = _infotext(request)
    assert item.param.infotext in parse_infotext(text).params, text
    assert request_fields_from_params(parse_infotext(text).params)[item.name] == value, text


def test_prompts_and_a_whole_request_read_back() -> None:
    request = GenerationRequest(
        **{name: value for name, value in EXAMPLES.items() if not name.startswith("hr_")},
        prompt="a red fox,\nin snow",
        negative_prompt="blurry, dark",
        mask=MASK,
        init_image=INIT,
    )
    request.enable_hr = False
    request.validate()
    text = format_infotext(
        request.prompt, request.negative_prompt, _image_parameters(request).infotext_pairs()
    )
    parsed = parse_infotext(text)
    assert (parsed.prompt, parsed.negative_prompt) == (request.prompt, request.negative_prompt)
    found = request_fields_from_params(parsed.params)
    assert found.pop("model") == "model.safetensors" and found.pop("model_hash") == "0123456789"
    written = {
        item.name
        for item in DECLARED
        if item.param.infotext and item.name in EXAMPLES and not item.name.startswith("hr_")
    } - {"enable_hr"}
    assert found == {name: EXAMPLES[name] for name in written}


def test_the_model_keys_follow_the_size_and_the_version_ends_the_line() -> None:
    request = GenerationRequest(prompt="p", steps=5, seed=3, clip_skip=2)
    pairs = _image_parameters(request).infotext_pairs()
    keys = list(pairs)
    assert keys[: keys.index("Model") + 1] == [
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Model hash",
        "Model",
    ]
    assert keys[-1] == "Version" and keys[keys.index("Model") + 1] == "Clip skip"
    assert list(replace(_image_parameters(request), model=None).infotext_pairs())[-1] == "RNG"


@pytest.mark.parametrize("item", BOUNDED, ids=lambda item: item.name)
def test_a_value_out_of_bounds_is_refused_naming_the_field_and_the_bound(item: Declared) -> None:
    value, bound = _out_of_bounds(item)
    request = GenerationRequest(**{**CONTEXT.get(item.name, {}), item.name: value})
    with pytest.raises(GenerationError) as refused:
        request.validate()
    assert refused.value.field == item.name
    assert str(refused.value).startswith(f"{item.name} must be ")
    assert number_text(bound) in str(refused.value) and f"got {value!r}" in str(refused.value)


def test_a_whole_number_field_refuses_a_fraction_and_a_bool() -> None:
    for value in (20.0, True):
        with pytest.raises(GenerationError, match="steps must be a whole number") as refused:
            GenerationRequest(steps=value).validate()  # type: ignore[arg-type]
        assert refused.value.field == "steps"


def test_bounds_that_apply_to_hires_fix_wait_for_it() -> None:
    GenerationRequest(hr_scale=50, hr_second_pass_steps=-3).validate()  # hires fix off: not used
    with pytest.raises(GenerationError, match="hr_scale must be between 1 and 8"):
        GenerationRequest(enable_hr=True, hr_scale=50).validate()


@pytest.mark.parametrize("body", [Img2ImgBody], ids=["img2img"])
def test_the_api_schema_shows_each_bound(body: type) -> None:
    properties = body.model_json_schema()["properties"]
    shown = 0
    for item in BOUNDED:
        field = a1111_field(item.name)
        assert field is not None
        if "." in field:  # carried in override_settings, whose keys the schema does not list
            continue
        assert field in properties, item.name
        expected = {"minimum": item.minimum, "maximum": item.maximum, "multipleOf": item.multiple_of}
        for key, value in expected.items():
            assert properties[field].get(key) == value, (item.name, key)
        shown += 1
    assert shown >= 15


def _help_of(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {flag: action.help or "" for action in sub._actions for flag in action.option_strings}


@pytest.mark.parametrize("server", [True, False], ids=["server", "local"])
def test_the_command_line_shows_each_bound(server: bool) -> None:
    helps = _help_of(build_parser(server=server), "img2img")
    flagged = [item for item in BOUNDED if item.param.cli]
    assert len(flagged) >= 9
    for item in flagged:
        assert item.bounds_text() in helps[item.param.cli[0]], item.name


def test_the_page_sliders_show_the_declared_ends_within_the_bounds() -> None:
    with gr.Blocks():
        prompts = build_prompts("t")
        controls = build_sampling("t", prompts, Limits.engine_maxima(), 512)
        hires = build_hires("t", lambda: ["Latent"], controls)
        resize_mode, strength = build_resize_and_strength("i")
    fields = [*controls.fields, *hires.fields, *resize_and_strength_fields(resize_mode, strength)]
    checked = set()
    for field in fields:
        if not isinstance(field.component, gr.Slider):
            continue
        item = next(item for item in DECLARED if item.name == field.name)
        slider = item.param.slider
        assert slider is not None, field.name
        assert (field.component.minimum, field.component.maximum, field.component.step) == (
            slider.minimum,
            slider.maximum,
            slider.step,
        ), field.name
        assert item.minimum is None or slider.minimum >= item.minimum, field.name
        assert item.maximum is None or slider.maximum <= item.maximum, field.name
        assert item.multiple_of is None or slider.step % item.multiple_of == 0, field.name
        if field.to_ui is not same:  # a pasted value the slider cannot show is not put in
            assert field.to_ui(slider.maximum) == slider.maximum and field.to_ui(slider.maximum + 1) is None
        checked.add(field.name)
    assert {"steps", "width", "height", "cfg_scale", "hr_scale", "denoising_strength"} <= checked


def test_every_slider_lies_within_its_fields_bounds() -> None:
    for item in DECLARED:
        slider = item.param.slider
        if slider is None:
            continue
        assert item.minimum is None or slider.minimum >= item.minimum, item.name
        assert item.maximum is None or slider.maximum <= item.maximum, item.name
        assert slider.minimum < slider.maximum and slider.step > 0, item.name
