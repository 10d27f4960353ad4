"""A1111 request bodies -> our GenerationRequest, and finished jobs -> A1111's `info` JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from webui import __version__
from webui.api.errors import ApiError
from webui.api.fields import (
    CHECKPOINT_OPTION,
    CLIP_SKIP_OPTION,
    RNG_OPTION,
    SAVE_OPTION,
    VAE_OPTION,
    settings_fields,
)
from webui.api.images import decode_image, flatten_alpha
from webui.api.schemas import Img2ImgBody, Txt2ImgBody
from webui.engine.request import RNG_SOURCES, GenerationRequest, MaskedContent, ResizeMode
from webui.jobs import Job
from webui.outputs import parse_infotext, request_fields_from_params
from webui.results import StudioResult


@dataclass(frozen=True)
class JobChoices:
    """What a request picks besides its generation parameters."""

    checkpoint: str | None  # None: the selected one
    vae: str | None  # None: the selected one
    save: bool


def txt2img_request(
    body: Txt2ImgBody, default_clip_skip: int, default_rng: str = "CPU"
) -> tuple[GenerationRequest, JobChoices]:
    body = with_infotext(body)
    _refuse_unsupported(body)
    overrides = body.override_settings
    request = GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        sampler_name=body.sampler_name or body.sampler_index or "Euler",  # A1111 API default
        scheduler=body.scheduler or "Automatic",
        steps=body.steps,
        cfg_scale=body.cfg_scale,
        width=body.width,
        height=body.height,
        seed=body.seed,
        batch_size=body.batch_size,
        n_iter=body.n_iter,
        clip_skip=_clip_skip(overrides, default_clip_skip),
        eta=body.eta,
        rng=_rng(overrides, default_rng),
        disable_extra_networks=body.disable_extra_networks,
        styles=list(body.styles),
        subseed=body.subseed,
        subseed_strength=body.subseed_strength,
        seed_resize_from_w=max(body.seed_resize_from_w, 0),
        seed_resize_from_h=max(body.seed_resize_from_h, 0),
        tiling=bool(body.tiling),
        enable_hr=body.enable_hr,
        hr_scale=body.hr_scale,
        hr_upscaler=body.hr_upscaler or "Latent",
        hr_second_pass_steps=body.hr_second_pass_steps,
        hr_resize_x=body.hr_resize_x,
        hr_resize_y=body.hr_resize_y,
        hr_sampler_name=_same_as_first(body.hr_sampler_name),
        hr_scheduler=_same_as_first(body.hr_scheduler),
        hr_prompt=body.hr_prompt,
        hr_negative_prompt=body.hr_negative_prompt,
        slg_scale=body.slg_scale,
        slg_layers=body.slg_layers,
        slg_start=body.slg_start,
        slg_stop=body.slg_stop,
        script_name=body.script_name or "",
        script_args=list(body.script_args),
        alwayson_scripts=_alwayson_args(body.alwayson_scripts),
        save_grid=not body.do_not_save_grid,
    )
    if body.denoising_strength is not None:
        request.denoising_strength = body.denoising_strength
    if body.enable_hr and body.firstphase_width > 0 and body.firstphase_height > 0:
        # A1111's first hires fix API: the first pass at firstphase size, upscaled to width x height.
        request.width, request.height = body.firstphase_width, body.firstphase_height
        request.hr_resize_x, request.hr_resize_y = body.width, body.height
    save = body.save_images and not body.do_not_save_samples and overrides.get(SAVE_OPTION, True) is not False
    checkpoint = overrides.get(CHECKPOINT_OPTION)
    vae = overrides.get(VAE_OPTION)
    for key, value in ((CHECKPOINT_OPTION, checkpoint), (VAE_OPTION, vae)):
        if value is not None and not isinstance(value, str):
            raise ApiError(422, f"override_settings.{key}: expected a name", f"override_settings.{key}")
    return request, JobChoices(checkpoint or None, vae or None, save)


def img2img_request(
    body: Img2ImgBody, default_clip_skip: int, default_rng: str = "CPU"
) -> tuple[GenerationRequest, JobChoices]:
    body = with_infotext(body)
    request, choices = txt2img_request(body, default_clip_skip, default_rng)
    if not body.init_images:
        raise ApiError(422, "init_images: img2img needs a base64 image", "init_images")
    images = [decode_image(data, f"init_images.{i}") for i, data in enumerate(body.init_images)]
    request.mask = decode_image(body.mask, "mask") if body.mask else None
    if request.mask is None:
        # A1111's API flattens transparency; only our own page and CLI read alpha as a mask.
        images = [flatten_alpha(image) for image in images]
    elif len(images) > 1:
        raise ApiError(422, "init_images: with a mask, send one image", "init_images")
    if len(images) > 1:
        # As A1111: several images make one batch of as many, an image each.
        if len(images) > body.batch_size:
            raise ApiError(
                422,
                f"init_images: {len(images)} images need batch_size of at least as many, "
                f"got {body.batch_size}",
                "init_images",
            )
        request.batch_size = len(images)
    request.init_image, request.more_init_images = images[0], images[1:]
    request.denoising_strength = 0.75 if body.denoising_strength is None else body.denoising_strength
    request.resize_mode = _enum(ResizeMode, body.resize_mode, "resize_mode")
    request.initial_noise_multiplier = (
        1.0 if body.initial_noise_multiplier is None else body.initial_noise_multiplier
    )
    if body.mask_blur is not None:
        request.mask_blur = body.mask_blur
    else:
        request.mask_blur, request.mask_blur_y = body.mask_blur_x, body.mask_blur_y
    request.inpainting_fill = _enum(MaskedContent, body.inpainting_fill, "inpainting_fill")
    request.inpaint_full_res = body.inpaint_full_res
    request.inpaint_full_res_padding = body.inpaint_full_res_padding
    if body.inpainting_mask_invert not in (0, 1):
        raise ApiError(422, "inpainting_mask_invert: expected 0 or 1", "inpainting_mask_invert")
    request.inpainting_mask_invert = bool(body.inpainting_mask_invert)
    return request, choices


# k-diffusion's churn options and their values that mean "off" (A1111's defaults).
_SIGMA_OPTIONS = {"s_churn": 0.0, "s_tmin": 0.0, "s_noise": 1.0, "s_min_uncond": 0.0}


def _refuse_unsupported(body: Txt2ImgBody) -> None:
    """Features this server does not have yet fail loudly instead of being silently dropped."""
    unsupported = (
        ("restore_faces", body.restore_faces, "face restoration (GFPGAN/CodeFormer) is not built"),
        ("refiner_checkpoint", body.refiner_checkpoint, "a refiner is not available yet"),
        ("hr_checkpoint_name", body.hr_checkpoint_name, "hires fix uses the job's checkpoint"),
        ("comments", body.comments, "comments are not stored; put notes in the prompt or a style"),
        (
            "mask_round",
            isinstance(body, Img2ImgBody) and not body.mask_round,
            "only a rounded latent mask (A1111's default) is built",
        ),
        # A1111 ignores the switch point without a refiner, and so do we; with one it is refused above.
        *(
            (
                name,
                getattr(body, name) is not None and getattr(body, name) != off,
                "k-diffusion's churn options are not available in diffusers' schedulers",
            )
            for name, off in _SIGMA_OPTIONS.items()
        ),
        (
            "s_tmax",
            body.s_tmax is not None and math.isfinite(body.s_tmax) and body.s_tmax != 0,
            "k-diffusion's churn options are not available in diffusers' schedulers",
        ),
    )
    for field, used, reason in unsupported:
        if used:
            raise ApiError(422, f"{field}: {reason}", field)


# A1111 settings an infotext carries, by our request field, and their override_settings key.
_INFOTEXT_SETTINGS = settings_fields()


def with_infotext(body: Txt2ImgBody) -> Txt2ImgBody:
    """A1111 1.9+: the fields (and settings) a body does not give are taken from its `infotext`."""
    if not body.infotext:
        return body
    parsed = parse_infotext(body.infotext)
    found: dict[str, Any] = {"prompt": parsed.prompt, "negative_prompt": parsed.negative_prompt}
    found.update(request_fields_from_params(parsed.params))
    if "rng" not in found and not parsed.params.get("Version", "").startswith("webui "):
        found["rng"] = "GPU"  # A1111 writes no RNG for its default, the GPU (our own texts always do)
    given = body.model_fields_set
    update: dict[str, Any] = {
        name: value
        for name, value in found.items()
        if name in type(body).model_fields and name not in given and name not in _INFOTEXT_SETTINGS
    }
    overrides = dict(body.override_settings)
    for name, key in _INFOTEXT_SETTINGS.items():
        if name in found:
            overrides.setdefault(key, found[name])
    update["override_settings"] = overrides
    update["infotext"] = None  # applied once: img2img's builder passes the body on to txt2img's
    try:
        return body.model_validate({**body.model_dump(), **update})
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise ApiError(422, f"infotext: {where}: {problem['msg']}", "infotext") from None


def _alwayson_args(scripts: dict[str, Any]) -> dict[str, list[object]]:
    """A1111's {"title": {"args": [...]}} (a bare list is taken too) -> {"title": [...]}."""
    read: dict[str, list[object]] = {}
    for title, value in scripts.items():
        args = value.get("args", []) if isinstance(value, dict) else value
        if not isinstance(args, list):
            raise ApiError(
                422, f'alwayson_scripts.{title}: expected {{"args": [...]}}', f"alwayson_scripts.{title}"
            )
        read[title] = args
    return read


def _same_as_first(value: str | None) -> str:
    """A1111 clients send "Use same sampler"/"Use same scheduler" (or nothing) for the first pass's."""
    return "" if not value or value.lower().startswith("use same") else value


def _rng(overrides: dict[str, Any], default: str) -> str:
    value = overrides.get(RNG_OPTION, default)
    if not isinstance(value, str) or value.strip().upper() not in RNG_SOURCES:
        raise ApiError(
            422,
            f"override_settings.{RNG_OPTION}: expected one of {', '.join(RNG_SOURCES)}",
            f"override_settings.{RNG_OPTION}",
        )
    return value.strip().upper()


def _clip_skip(overrides: dict[str, Any], default: int) -> int:
    value = overrides.get(CLIP_SKIP_OPTION, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or int(value) != value
    ):
        raise ApiError(
            422,
            f"override_settings.{CLIP_SKIP_OPTION}: expected a whole number",
            f"override_settings.{CLIP_SKIP_OPTION}",
        )
    return int(value)


def _enum(kind: type, value: int, field: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(f"{member.value} ({member.name.lower()})" for member in kind)
        raise ApiError(422, f"{field}: expected one of {choices}, got {value}", field) from None


def response_info(job: Job, body: Txt2ImgBody) -> str:
    """A1111's `info`: a JSON string describing the images, with each one's infotext."""
    result = job.result
    request = job.request
    infotexts = list(result.infotexts) if result else []
    seeds = list(result.seeds) if result else []
    images = _images_made(result)
    params = images[0].params if images else {}
    count = len(seeds)
    subseeds = (
        [int(str(image.params.get("Variation seed", -1))) for image in images]
        if request.subseed_strength > 0
        else []
    )
    info = {
        "prompt": request.prompt,
        # As A1111: the prompts each image was made from, styles applied.
        "all_prompts": [image.prompt for image in images] or [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [image.negative_prompt for image in images]
        or [request.negative_prompt] * count,
        "seed": seeds[0] if seeds else request.seed,
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else request.subseed,
        "all_subseeds": subseeds or [-1] * count,
        "subseed_strength": request.subseed_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": params.get("Sampler", request.sampler_name),
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": params.get("Model", job.checkpoint),
        "sd_model_hash": params.get("Model hash"),
        "sd_vae_name": params.get("VAE"),
        "sd_vae_hash": params.get("VAE hash"),
        "seed_resize_from_w": request.seed_resize_from_w or -1,
        "seed_resize_from_h": request.seed_resize_from_h or -1,
        "denoising_strength": (
            request.denoising_strength if request.init_image is not None or request.enable_hr else 0
        ),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "extension_warnings": list(result.warnings) if result else [],
        "styles": list(body.styles),
        "job_timestamp": job.timestamp,
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": request.is_inpaint,
        "version": __version__,
    }
    return json.dumps(info)


@dataclass(frozen=True)
class _Made:
    prompt: str
    negative_prompt: str
    params: Mapping[str, object]  # the infotext's pairs, typed or as text


def _images_made(result: StudioResult | None) -> list[_Made]:
    """Each image's prompts and infotext pairs: from its typed parameters when the job has them,
    else read back from its infotext (a job restored after a restart, a script's grids and cells)."""
    if result is None:
        return []
    if len(result.parameters) == len(result.infotexts):
        return [
            _Made(made.request.prompt, made.request.negative_prompt, made.infotext_pairs())
            for made in result.parameters
        ]
    parsed = [parse_infotext(text) for text in result.infotexts]
    return [_Made(each.prompt, each.negative_prompt, each.params) for each in parsed]
