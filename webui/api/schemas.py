"""Request bodies of AUTOMATIC1111's `/sdapi/v1`, field for field; unknown fields are ignored as there."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from webui.engine.parameters import declared, declared_parameters
from webui.engine.request import GenerationRequest, find_bad_value


class CleanBody(BaseModel):
    """A body with only text JSON can carry back and finite numbers: a lone surrogate or a NaN
    would otherwise reach the job and break its listing, its maths or its image."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bad_values(cls, value: Any) -> Any:
        problem = find_bad_value(value)
        if problem is not None:
            where, what = problem
            raise ValueError(f"{where.lstrip('.')}: {what}" if where else what)
        return value


class _Body(CleanBody):
    @field_validator("*", mode="before")
    @classmethod
    def _null_means_default(cls, value: Any, info: ValidationInfo) -> Any:
        """A1111 clients send `null` for "not set"; take the default instead of refusing it."""
        if value is None and info.field_name is not None:
            field = cls.model_fields[info.field_name]
            if not field.is_required():
                return field.get_default(call_default_factory=True)
        return value


def _declared_bounds(schema: dict[str, Any], _model: type) -> None:
    """The request's declared bounds (engine/request.py) on the body fields that carry them.

    They are checked once, when the request is validated, and only where they apply: a hires
    value, for one, is not refused while hires fix is off, as in A1111."""
    properties = schema.get("properties", {})
    for item in declared_parameters(GenerationRequest):
        shown = properties.get(item.api_name)
        if shown is None:
            continue
        for key, value in (
            ("minimum", item.minimum),
            ("maximum", item.maximum),
            ("multipleOf", item.multiple_of),
        ):
            if value is not None:
                shown[key] = value


class Txt2ImgBody(_Body):
    model_config = ConfigDict(json_schema_extra=_declared_bounds)

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = Field(None, description="old name of sampler_name")
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = Field(1, description="batch count")
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # Ours, not A1111's: skip-layer guidance on SD 3.5 models, defaults as declared (engine/request.py).
    slg_scale: float = declared(GenerationRequest, "slg_scale").default
    slg_layers: str = declared(GenerationRequest, "slg_layers").default
    slg_start: float = declared(GenerationRequest, "slg_start").default
    slg_stop: float = declared(GenerationRequest, "slg_stop").default
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = Field(None, description="A1111 infotext: fills every field not given")
    comments: dict[str, Any] | None = Field(None, description="refused when not empty: not stored")


class Img2ImgBody(Txt2ImgBody):
    init_images: list[Any] = Field(
        ..., description="base64 images: one, or one per batch item (then batch_size becomes their count)"
    )
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, description="base64 image: white is repainted")
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description="inpaint only the masked area, at full resolution")
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    include_init_images: bool = False
    denoising_strength: float | None = 0.75


class ExtrasOptions(_Body):
    resize_mode: int = Field(0, description="0: scale by upscaling_resize; 1: to upscaling_resize_w/h")
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class ExtrasSingleBody(ExtrasOptions):
    image: str = Field(..., description="a base64 image")


class ExtrasFile(_Body):
    data: str
    name: str = ""


class ExtrasBatchBody(ExtrasOptions):
    # Required, as in A1111: without it the call would answer 200 having done nothing.
    imageList: list[ExtrasFile] = Field(min_length=1)


class PngInfoBody(_Body):
    image: str = Field(..., description="a base64 image")
