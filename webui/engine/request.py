"""The one request model shared by the UI, the API, the CLI and the infotext parser."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Annotated

from PIL import Image
from pydantic import Field

from webui.engine.parameters import Param, Slider, bounds_problem

MIN_SIDE = 64
MAX_SIDE = 4096
MAX_STEPS = 500
MAX_BATCH = 64  # images sampled together
MAX_BATCH_COUNT = 100  # batches run one after another (A1111's batch count)
RNG_SOURCES = ("CPU", "GPU", "NV")  # A1111's randn_source; see engine/noise.py


class GenerationError(ValueError):
    """A request the engine cannot run; the message names the problem for the user.

    `field` names the request field at fault, when there is one, so an API can point at it.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InterruptedError_(Exception):
    """Raised inside the loop when the caller asks to stop the whole job."""


class ResizeMode(IntEnum):
    JUST_RESIZE = 0
    CROP_AND_RESIZE = 1
    RESIZE_AND_FILL = 2
    LATENT_UPSCALE = 3  # A1111's "Just resize (latent upscale)": encode at its size, upscale latents


class MaskedContent(IntEnum):
    """A1111's `inpainting_fill`: what the masked area starts from."""

    FILL = 0
    ORIGINAL = 1
    LATENT_NOISE = 2
    LATENT_NOTHING = 3


# The infotext key a pasted A1111 text starts its hires keys with; see `enable_hr` below.
_HIRES_KEYS = ("Hires upscale", "Hires resize")


@dataclass
class GenerationRequest:
    """One job's parameters. Each field that is a generation parameter is declared here once, with
    its bounds and a `Param` (see engine/parameters.py); the declaration order is the infotext's."""

    prompt: Annotated[str, Param("Prompt", cli=("--prompt", "-p"))] = ""
    negative_prompt: Annotated[str, Param("Negative prompt", cli=("--negative-prompt", "-n"))] = ""
    steps: Annotated[
        int,
        Field(ge=1, le=MAX_STEPS),
        Param("Sampling steps", cli=("--steps",), infotext="Steps", slider=Slider(1, 150, 1)),
    ] = 20
    sampler_name: Annotated[
        str,
        Param(
            "Sampling method",
            cli=("--sampler",),
            help='A1111 name, e.g. "DPM++ 2M" or "Euler a"',
            infotext="Sampler",
            write=lambda image: image.sampler,  # the sampler's own name, "k_euler_a" read as "Euler a"
        ),
    ] = "Euler a"
    scheduler: Annotated[
        str,
        Param(
            "Schedule type",
            cli=("--scheduler",),
            infotext="Schedule type",
            write=lambda image: image.schedule,
        ),
    ] = "Automatic"
    cfg_scale: Annotated[
        float,
        Field(ge=0, le=100),
        Param("CFG scale", cli=("--cfg-scale",), infotext="CFG scale", slider=Slider(1, 30, 0.5)),
    ] = 7.0
    seed: Annotated[
        int,
        Field(ge=-1, le=2**32 - 1),
        Param(
            "Seed (-1 = random)",
            cli=("--seed",),
            help="-1 picks one and reports it",
            infotext="Seed",
            write=lambda image: image.seed,  # the image's own seed, never -1
        ),
    ] = -1
    width: Annotated[
        int,
        Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8),
        Param(
            "Width",
            cli=("--width",),
            infotext="Size",
            size_axis=0,
            write=lambda image: f"{image.request.width}x{image.request.height}",
            slider=Slider(MIN_SIDE, 2048, 8),
        ),
    ] = 512
    height: Annotated[
        int,
        Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8),
        Param("Height", cli=("--height",), infotext="Size", size_axis=1, slider=Slider(MIN_SIDE, 2048, 8)),
    ] = 512
    batch_size: Annotated[
        int,
        Field(ge=1, le=MAX_BATCH),
        Param("Batch size", cli=("--batch-size",), slider=Slider(1, MAX_BATCH, 1)),
    ] = 1
    n_iter: Annotated[
        int,
        Field(ge=1, le=MAX_BATCH_COUNT),
        Param("Batch count", cli=("--n-iter",), help="batch count", slider=Slider(1, MAX_BATCH_COUNT, 1)),
    ] = 1
    clip_skip: Annotated[
        int,
        Field(ge=1, le=12),
        Param(
            "Clip skip",
            cli=("--clip-skip",),
            api="override_settings.CLIP_stop_at_last_layers",
            infotext="Clip skip",
            write=lambda image: image.request.clip_skip if image.request.clip_skip > 1 else None,
        ),
    ] = 1
    # A1111 writes "Eta DDIM" for DDIM and "Eta" for other samplers.
    eta: Annotated[float | None, Field(ge=0, le=1), Param("Eta", infotext="Eta", aliases=("Eta DDIM",))] = (
        None
    )
    # img2img and inpainting
    denoising_strength: Annotated[
        float,
        Field(ge=0, le=1),
        Param(
            "Denoising strength",
            cli=("--denoising-strength",),
            infotext="Denoising strength",
            # hires fix writes its own further down (see enable_hr)
            write=lambda image: image.request.denoising_strength if image.request.init_image else None,
            checked=lambda request: request.init_image is not None or request.enable_hr,
            slider=Slider(0, 1, 0.01),
        ),
    ] = 0.75
    initial_noise_multiplier: Annotated[
        float,
        Field(ge=0, le=2),
        Param(
            "Noise multiplier",
            infotext="Noise multiplier",  # img2img: the added noise is scaled by this
            write=lambda image: (
                image.request.initial_noise_multiplier
                if image.request.init_image is not None and image.request.initial_noise_multiplier != 1.0
                else None
            ),
        ),
    ] = 1.0
    init_image: Annotated[Image.Image | None, Param("Image", api="init_images.0")] = None
    # More init images, one per further batch item (A1111's several `init_images`); plain img2img only.
    more_init_images: Annotated[list[Image.Image], Param("Images", api="init_images")] = field(
        default_factory=list
    )
    resize_mode: Annotated[ResizeMode, Param("Resize mode", cli=("--resize-mode",))] = ResizeMode.JUST_RESIZE
    mask: Image.Image | None = None
    mask_blur: Annotated[
        int,
        Field(ge=0),
        Param(
            "Mask blur",
            cli=("--mask-blur",),
            infotext="Mask blur",
            write=lambda image: (  # A1111 writes it only when both axes agree
                image.request.mask_blur
                if image.request.is_inpaint and image.request.mask_blur_y in (None, image.request.mask_blur)
                else None
            ),
            slider=Slider(0, 64, 1),
        ),
    ] = 4
    # a vertical radius of its own; None: mask_blur both ways
    mask_blur_y: Annotated[int | None, Field(ge=0), Param("Mask blur, vertical")] = None
    inpainting_mask_invert: Annotated[bool, Param("Invert mask", cli=("--invert-mask",))] = False
    inpainting_fill: Annotated[MaskedContent, Param("Masked content", cli=("--inpainting-fill",))] = (
        MaskedContent.ORIGINAL
    )
    inpaint_full_res: Annotated[
        bool,
        Param(
            "Only masked",
            cli=("--only-masked",),
            help="inpaint the masked area at full size",
            infotext="Inpaint area",
            write=lambda image: "Only masked" if _only_masked(image.request) else None,
            read_pairs=lambda pairs: (
                str(pairs.get("Inpaint area", "")).strip().lower() == "only masked" or None
            ),
        ),
    ] = False
    inpaint_full_res_padding: Annotated[
        int,
        Field(ge=0),
        Param(
            "Only masked padding, pixels",
            cli=("--only-masked-padding",),
            infotext="Masked area padding",
            write=lambda image: (
                image.request.inpaint_full_res_padding if _only_masked(image.request) else None
            ),
            slider=Slider(0, 256, 4),
        ),
    ] = 32
    # variation seeds: noise slerped from `seed` towards `subseed` by `subseed_strength`
    subseed: Annotated[
        int,
        Field(ge=-1, le=2**32 - 1),
        Param("Variation seed (-1 = random)", infotext="Variation seed", write=lambda image: image.subseed),
    ] = -1
    subseed_strength: Annotated[
        float,
        Field(ge=0, le=1),
        Param(
            "Variation strength",
            infotext="Variation seed strength",
            write=lambda image: image.request.subseed_strength or None,
            slider=Slider(0, 1, 0.01),
        ),
    ] = 0.0
    # > 0: draw the noise as if the image were this size (A1111's "resize seed from")
    seed_resize_from_w: Annotated[
        int,
        Field(le=MAX_SIDE),
        Param(
            "Resize seed from width (0 = off)",
            infotext="Seed resize from",
            size_axis=0,
            write=lambda image: _size_text(
                image.request.seed_resize_from_w, image.request.seed_resize_from_h
            ),
            slider=Slider(0, 2048, 8),
        ),
    ] = 0
    seed_resize_from_h: Annotated[
        int,
        Field(le=MAX_SIDE),
        Param(
            "Resize seed from height (0 = off)",
            infotext="Seed resize from",
            size_axis=1,
            slider=Slider(0, 2048, 8),
        ),
    ] = 0
    # seamless: opposite edges continue each other
    tiling: Annotated[
        bool, Param("Tiling", infotext="Tiling", write=lambda image: image.request.tiling or None)
    ] = False
    # where the noise comes from: "CPU", "GPU" (the device) or "NV" (CUDA's, anywhere)
    rng: Annotated[
        str,
        Param(
            "Random number generator source",
            api="override_settings.randn_source",
            infotext="RNG",
            write=lambda image: image.request.rng if image.request.rng != "GPU" else None,  # A1111's default
            read=lambda text: text.strip().upper() if text.strip().upper() in RNG_SOURCES else None,
        ),
    ] = "CPU"
    # Skip-layer guidance (SD 3.5): while the steps are between `slg_start` and `slg_stop` (fractions
    # of a pass), a pass without the transformer blocks `slg_layers` pushes the guided velocity away
    # from that weaker prediction by `slg_scale`; 0 is off. Stability's advice for Medium: 7,8,9.
    slg_scale: Annotated[
        float,
        Field(ge=0, le=10),
        Param(
            "Skip-layer guidance scale (0 = off)",
            cli=("--slg-scale",),
            infotext="SLG scale",
            write=lambda image: image.request.slg_scale or None,
            slider=Slider(0, 10, 0.1),
        ),
    ] = 0.0
    slg_layers: Annotated[
        str,
        Param(
            "Skip-layer guidance layers",
            cli=("--slg-layers",),
            infotext="SLG layers",
            write=lambda image: _with_slg(image.request, ",".join(map(str, image.request.slg_layer_numbers))),
        ),
    ] = "7,8,9"
    slg_start: Annotated[
        float,
        Field(ge=0, le=1),
        Param(
            "Skip-layer guidance start",
            cli=("--slg-start",),
            infotext="SLG start",
            write=lambda image: _with_slg(image.request, image.request.slg_start),
            checked=lambda request: request.slg_scale > 0,
            slider=Slider(0, 1, 0.01),
        ),
    ] = 0.01
    slg_stop: Annotated[
        float,
        Field(ge=0, le=1),
        Param(
            "Skip-layer guidance stop",
            cli=("--slg-stop",),
            infotext="SLG stop",
            write=lambda image: _with_slg(image.request, image.request.slg_stop),
            checked=lambda request: request.slg_scale > 0,
            slider=Slider(0, 1, 0.01),
        ),
    ] = 0.2
    disable_extra_networks: bool = False  # <lora:...> tags are taken out of the prompt but not applied
    # hires fix (txt2img): a first pass, an upscale, then an img2img pass at `denoising_strength`.
    # A1111 starts its hires keys with that strength, so this switch writes it; pasted, the hires
    # keys switch it on.
    enable_hr: Annotated[
        bool,
        Param(
            "Hires. fix",
            infotext="Denoising strength",
            write=lambda image: image.request.denoising_strength if image.request.enable_hr else None,
            read_pairs=lambda pairs: any(key in pairs for key in _HIRES_KEYS) or None,
        ),
    ] = False
    hr_scale: Annotated[
        float,
        Field(ge=1, le=8),
        Param(
            "Upscale by",
            infotext="Hires upscale",
            write=lambda image: (
                None if _hires_resized(image.request) else _hires_value(image.request, "hr_scale")
            ),
            checked=lambda request: request.enable_hr and not _hires_resized(request),
            slider=Slider(1, 4, 0.05),
        ),
    ] = 2.0
    # > 0 with hr_resize_y: an explicit target size instead of hr_scale
    hr_resize_x: Annotated[
        int,
        Field(le=MAX_SIDE),
        Param(
            "Resize width to",
            infotext="Hires resize",
            size_axis=0,
            write=lambda image: _size_text(*image.request.hr_size) if _hires_resized(image.request) else None,
            checked=lambda request: request.enable_hr,
            slider=Slider(0, 2048, 8),
        ),
    ] = 0
    hr_resize_y: Annotated[
        int,
        Field(le=MAX_SIDE),
        Param(
            "Resize height to",
            infotext="Hires resize",
            size_axis=1,
            checked=lambda request: request.enable_hr,
            slider=Slider(0, 2048, 8),
        ),
    ] = 0
    # 0: as many as the first pass
    hr_second_pass_steps: Annotated[
        int,
        Field(ge=0, le=MAX_STEPS),
        Param(
            "Hires steps",
            infotext="Hires steps",
            write=lambda image: _hires_value(image.request, "hr_second_pass_steps") or None,
            checked=lambda request: request.enable_hr,
            slider=Slider(0, 150, 1),
        ),
    ] = 0
    hr_upscaler: Annotated[
        str,
        Param(
            "Upscaler",
            infotext="Hires upscaler",
            write=lambda image: _hires_value(image.request, "hr_upscaler"),
        ),
    ] = "Latent"
    # "": the first pass's sampler
    hr_sampler_name: Annotated[
        str,
        Param(
            "Hires sampling method",
            infotext="Hires sampler",
            write=lambda image: _differs(image.request, image.hr_sampler, image.sampler),
        ),
    ] = ""
    hr_scheduler: Annotated[
        str,
        Param(
            "Hires schedule type",
            infotext="Hires schedule type",
            write=lambda image: _differs(image.request, image.hr_schedule, image.schedule),
        ),
    ] = ""
    # "": the first pass's prompt
    hr_prompt: Annotated[
        str,
        Param(
            "Hires prompt",
            infotext="Hires prompt",
            write=lambda image: _differs(image.request, image.request.hr_prompt, image.request.prompt),
        ),
    ] = ""
    hr_negative_prompt: Annotated[
        str,
        Param(
            "Hires negative prompt",
            infotext="Hires negative prompt",
            write=lambda image: _differs(
                image.request, image.request.hr_negative_prompt, image.request.negative_prompt
            ),
        ),
    ] = ""
    styles: list[str] = field(default_factory=list)  # styles.csv names, applied to the prompts
    script_name: str = ""  # a script's title ("X/Y/Z plot", ...): the job runs the script instead
    script_args: list[object] = field(default_factory=list)  # the script's positional arguments
    save_grid: bool = True  # a script's grid is saved with the job's images (False: A1111's do_not_save_grid)
    # Always-on scripts' positional arguments by title (A1111's `alwayson_scripts`); others get defaults.
    alwayson_scripts: dict[str, list[object]] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        """`txt2img` or `img2img` (inpainting is img2img with a mask, as in A1111's folders)."""
        return "txt2img" if self.init_image is None else "img2img"

    @property
    def is_inpaint(self) -> bool:
        return self.init_image is not None and (self.mask is not None or _has_alpha_mask(self.init_image))

    @property
    def hr_size(self) -> tuple[int, int]:
        """The hires pass size: the explicit one, else the first pass scaled (multiples of 8)."""
        if self.hr_resize_x > 0 and self.hr_resize_y > 0:
            return self.hr_resize_x, self.hr_resize_y
        if self.hr_resize_x > 0 or self.hr_resize_y > 0:
            # A1111: one given side sets the scale and the other follows the aspect ratio.
            scale = self.hr_resize_x / self.width if self.hr_resize_x > 0 else self.hr_resize_y / self.height
        else:
            scale = self.hr_scale
        return _multiple_of_8(self.width * scale), _multiple_of_8(self.height * scale)

    @property
    def slg_layer_numbers(self) -> tuple[int, ...]:
        """`slg_layers` as block numbers ("7, 8,9" -> (7, 8, 9)); GenerationError when it is not a list
        of whole numbers."""
        parts = [part.strip() for part in self.slg_layers.replace(";", ",").split(",") if part.strip()]
        if not parts or not all(part.isdigit() for part in parts):
            raise GenerationError(
                "slg_layers: expected block numbers separated by commas, like 7,8,9; "
                f"got {self.slg_layers!r}",
                "slg_layers",
            )
        return tuple(dict.fromkeys(int(part) for part in parts))

    def validate(self) -> None:
        """Raise GenerationError naming the first field that cannot work.

        Every declared bound is checked in one pydantic validation (engine/parameters.py); what
        follows are the rules between fields.
        """
        self._validate_values()
        problem = bounds_problem(self)
        if problem is not None:
            name, message = problem
            raise GenerationError(message, name)
        self._validate_img2img_extras()
        if self.slg_scale > 0:
            self._validate_skip_layers()
        if self.enable_hr:
            self._validate_hires()
        if self.mask is not None:
            if self.init_image is None:
                raise GenerationError("a mask needs an init image", "mask")
            if self.mask.size != self.init_image.size:
                raise GenerationError(
                    f"mask size {self.mask.size[0]}x{self.mask.size[1]} differs from init image size "
                    f"{self.init_image.size[0]}x{self.init_image.size[1]}",
                    "mask",
                )

    def _validate_img2img_extras(self) -> None:
        if self.rng not in RNG_SOURCES:
            raise GenerationError(f"rng must be one of {', '.join(RNG_SOURCES)}, got {self.rng!r}", "rng")
        if self.more_init_images:
            if self.init_image is None or self.is_inpaint:
                raise GenerationError(
                    "several init images work for img2img without a mask only", "more_init_images"
                )
            if len(self.more_init_images) + 1 != self.batch_size:
                raise GenerationError(
                    f"{len(self.more_init_images) + 1} init images need a batch size of as many, "
                    f"got {self.batch_size}",
                    "more_init_images",
                )
        if self.resize_mode is ResizeMode.LATENT_UPSCALE and self.is_inpaint:
            raise GenerationError(
                "resize_mode 3 (latent upscale) is for img2img without a mask", "resize_mode"
            )

    def _validate_values(self) -> None:
        """Text a JSON answer can carry and finite numbers everywhere: a lone UTF-16 surrogate
        would break every later listing of the job, and NaN or infinity its image or the maths."""
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Image.Image):
                continue
            problem = find_bad_value(value)
            if problem is not None:
                where, what = problem
                raise GenerationError(f"{item.name}{where}: {what}", item.name)

    def _validate_skip_layers(self) -> None:
        # Reading the layer numbers refuses a malformed list before any work.
        if self.slg_layer_numbers and self.slg_start >= self.slg_stop:
            raise GenerationError(
                "skip-layer guidance must start before it stops "
                f"(start {self.slg_start}, stop {self.slg_stop})",
                "slg_start",
            )

    def _validate_hires(self) -> None:
        if self.init_image is not None:
            raise GenerationError(
                "hires fix is for txt2img; img2img already takes a target size", "enable_hr"
            )
        width, height = self.hr_size
        for name, value in (("hr_resize_x", width), ("hr_resize_y", height)):
            if not MIN_SIDE <= value <= MAX_SIDE:
                raise GenerationError(
                    f"the hires size would be {width}x{height}; each side must be between "
                    f"{MIN_SIDE} and {MAX_SIDE}",
                    name,
                )


def find_bad_value(value: object, where: str = "") -> tuple[str, str] | None:
    """(where inside `value`, what is wrong) for the first lone surrogate or non-finite number."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where, "the text holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not a character"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return where, f"expected a finite number, got {value}"
    elif isinstance(value, dict):
        for key, item in value.items():
            inside = f"{where}.{_printable(str(key))}"
            problem = find_bad_value(key, inside) or find_bad_value(item, inside)
            if problem is not None:
                return problem
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = find_bad_value(item, f"{where}.{index}")
            if problem is not None:
                return problem
    return None


def _printable(text: str) -> str:
    """`text` with lone surrogates written as escapes, so an error message can name it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _only_masked(request: GenerationRequest) -> bool:
    return request.is_inpaint and request.inpaint_full_res


def _with_slg(request: GenerationRequest, value: object) -> object:
    """A skip-layer guidance detail, written only when the guidance is on."""
    return value if request.slg_scale > 0 else None


def _hires_resized(request: GenerationRequest) -> bool:
    """Whether hires fix goes to a size given explicitly rather than by `hr_scale`."""
    return request.hr_resize_x > 0 or request.hr_resize_y > 0


def _hires_value(request: GenerationRequest, name: str) -> object:
    """A hires field's value for the infotext: written only when hires fix is on."""
    return getattr(request, name) if request.enable_hr else None


def _differs(request: GenerationRequest, value: str, first_pass: str) -> str | None:
    """A hires pass's own sampler, schedule or prompt: written when it differs from the first pass's."""
    return value if request.enable_hr and value and value != first_pass else None


def _size_text(width: int, height: int) -> str | None:
    """`WxH` when both sides are set (> 0)."""
    return f"{width}x{height}" if width > 0 and height > 0 else None


def _multiple_of_8(value: float) -> int:
    return max(8, int(value) // 8 * 8)


def _has_alpha_mask(image: Image.Image) -> bool:
    """An init image whose alpha channel has transparent pixels carries its own mask."""
    if image.mode not in ("RGBA", "LA"):
        return False
    low, _high = image.getchannel("A").getextrema()
    return low < 255
