"""The one request model shared by the UI, the API, the CLI and the infotext parser."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import IntEnum

from PIL import Image

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


@dataclass
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    eta: float | None = None
    rng: str = "CPU"  # where the noise comes from: "CPU", "GPU" (the device) or "NV" (CUDA's, anywhere)
    disable_extra_networks: bool = False  # <lora:...> tags are taken out of the prompt but not applied
    # img2img and inpainting
    init_image: Image.Image | None = None
    # More init images, one per further batch item (A1111's several `init_images`); plain img2img only.
    more_init_images: list[Image.Image] = field(default_factory=list)
    initial_noise_multiplier: float = 1.0  # img2img: the added noise is scaled by this
    denoising_strength: float = 0.75
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    mask: Image.Image | None = None
    mask_blur: int = 4
    mask_blur_y: int | None = None  # a vertical radius of its own; None: mask_blur both ways
    inpainting_mask_invert: bool = False
    inpainting_fill: MaskedContent = MaskedContent.ORIGINAL
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    # variation seeds: noise slerped from `seed` towards `subseed` by `subseed_strength`
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = (
        0  # > 0: draw the noise as if the image were this size (A1111's "resize seed from")
    )
    seed_resize_from_h: int = 0
    tiling: bool = False  # seamless: opposite edges continue each other
    # hires fix (txt2img): a first pass, an upscale, then an img2img pass at `denoising_strength`
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0: as many as the first pass
    hr_resize_x: int = 0  # > 0 with hr_resize_y: an explicit target size instead of hr_scale
    hr_resize_y: int = 0
    hr_sampler_name: str = ""  # "": the first pass's sampler
    hr_scheduler: str = ""
    hr_prompt: str = ""  # "": the first pass's prompt
    hr_negative_prompt: str = ""
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

    def validate(self) -> None:
        """Raise GenerationError naming the first field that cannot work."""
        self._validate_values()
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise GenerationError(f"{name} must be a whole number, got {value!r}", name)
            if value % 8:
                raise GenerationError(f"{name} must be a multiple of 8, got {value}", name)
            if not MIN_SIDE <= value <= MAX_SIDE:
                raise GenerationError(f"{name} must be between {MIN_SIDE} and {MAX_SIDE}, got {value}", name)
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise GenerationError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps!r}", "steps")
        for name, ceiling in (("batch_size", MAX_BATCH), ("n_iter", MAX_BATCH_COUNT)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= ceiling:
                raise GenerationError(f"{name} must be between 1 and {ceiling}, got {value!r}", name)
        if not 0 <= self.cfg_scale <= 100:
            raise GenerationError(f"cfg_scale must be between 0 and 100, got {self.cfg_scale}", "cfg_scale")
        if not isinstance(self.clip_skip, int) or not 1 <= self.clip_skip <= 12:
            raise GenerationError(f"clip_skip must be between 1 and 12, got {self.clip_skip!r}", "clip_skip")
        if not isinstance(self.seed, int) or self.seed < -1 or self.seed >= 2**32:
            raise GenerationError(f"seed must be -1 or between 0 and {2**32 - 1}, got {self.seed!r}", "seed")
        if self.init_image is not None and not 0.0 <= self.denoising_strength <= 1.0:
            raise GenerationError(
                f"denoising_strength must be between 0 and 1, got {self.denoising_strength}",
                "denoising_strength",
            )
        self._validate_img2img_extras()
        if self.mask_blur < 0 or self.inpaint_full_res_padding < 0:
            raise GenerationError(
                "mask_blur and inpaint_full_res_padding must not be negative",
                "mask_blur" if self.mask_blur < 0 else "inpaint_full_res_padding",
            )
        if not isinstance(self.subseed, int) or self.subseed < -1 or self.subseed >= 2**32:
            raise GenerationError(
                f"subseed must be -1 or between 0 and {2**32 - 1}, got {self.subseed!r}", "subseed"
            )
        if not 0.0 <= self.subseed_strength <= 1.0:
            raise GenerationError(
                f"subseed_strength must be between 0 and 1, got {self.subseed_strength}", "subseed_strength"
            )
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(self, name)
            if value > MAX_SIDE:
                raise GenerationError(f"{name} must be at most {MAX_SIDE}, got {value}", name)
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
        if not 0.0 <= self.initial_noise_multiplier <= 2.0:
            raise GenerationError(
                f"initial_noise_multiplier must be between 0 and 2, got {self.initial_noise_multiplier}",
                "initial_noise_multiplier",
            )
        if self.mask_blur_y is not None and self.mask_blur_y < 0:
            raise GenerationError("mask_blur_y must not be negative", "mask_blur_y")
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
        if self.eta is not None and not 0.0 <= self.eta <= 1.0:
            raise GenerationError(f"eta must be between 0 and 1, got {self.eta}", "eta")

    def _validate_hires(self) -> None:
        if self.init_image is not None:
            raise GenerationError(
                "hires fix is for txt2img; img2img already takes a target size", "enable_hr"
            )
        if not 0.0 <= self.denoising_strength <= 1.0:
            raise GenerationError(
                f"denoising_strength must be between 0 and 1, got {self.denoising_strength}",
                "denoising_strength",
            )
        if not isinstance(self.hr_second_pass_steps, int) or not 0 <= self.hr_second_pass_steps <= MAX_STEPS:
            raise GenerationError(
                f"hr_second_pass_steps must be between 0 and {MAX_STEPS}, got {self.hr_second_pass_steps!r}",
                "hr_second_pass_steps",
            )
        if self.hr_resize_x <= 0 and self.hr_resize_y <= 0 and not 1.0 <= self.hr_scale <= 8.0:
            raise GenerationError(f"hr_scale must be between 1 and 8, got {self.hr_scale}", "hr_scale")
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


def _multiple_of_8(value: float) -> int:
    return max(8, int(value) // 8 * 8)


def _has_alpha_mask(image: Image.Image) -> bool:
    """An init image whose alpha channel has transparent pixels carries its own mask."""
    if image.mode not in ("RGBA", "LA"):
        return False
    low, _high = image.getchannel("A").getextrema()
    return low < 255
