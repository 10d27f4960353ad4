"""Resizing finished images for the Extras tab and endpoints: by a factor or to a size."""

from __future__ import annotations

from PIL import Image, ImageOps

from webui.engine.request import GenerationError

# A1111 lists its plain resamplers as upscalers; model upscalers (ESRGAN family) come later.
PIXEL_UPSCALERS: dict[str, Image.Resampling | None] = {
    "None": None,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
MAX_RESULT_SIDE = 8192


def upscaler_names() -> list[str]:
    return list(PIXEL_UPSCALERS)


def target_size(
    image: Image.Image, *, scale: float | None = None, size: tuple[int, int] | None = None
) -> tuple[int, int]:
    if size is not None:
        width, height = size
    elif scale is not None:
        if not 0 < scale <= 8:
            raise GenerationError(
                f"upscaling_resize must be above 0 and at most 8, got {scale}", "upscaling_resize"
            )
        width, height = round(image.width * scale), round(image.height * scale)
    else:
        raise ValueError("give a scale or a size")
    if not (1 <= width <= MAX_RESULT_SIDE and 1 <= height <= MAX_RESULT_SIDE):
        raise GenerationError(
            f"the result would be {width}x{height}; each side must be from 1 to {MAX_RESULT_SIDE}",
            "upscaling_resize_w" if size is not None else "upscaling_resize",
        )
    return width, height


def upscale(
    image: Image.Image,
    upscaler: str,
    *,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    crop: bool = True,
) -> Image.Image:
    """Resize with a named upscaler; with `size` and `crop`, fill the size and crop the overflow."""
    if upscaler not in PIXEL_UPSCALERS:
        raise GenerationError(
            f"unknown upscaler {upscaler!r}; choose one of: {', '.join(PIXEL_UPSCALERS)}", "upscaler_1"
        )
    resample = PIXEL_UPSCALERS[upscaler]
    width, height = target_size(image, scale=scale, size=size)
    if resample is None or (width, height) == image.size:
        return image.copy()
    if size is not None and crop:
        return ImageOps.fit(image, (width, height), method=resample)
    return image.resize((width, height), resample=resample)


def blend_upscalers(
    image: Image.Image,
    first: str,
    second: str,
    second_visibility: float,
    *,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    crop: bool = True,
) -> Image.Image:
    """A1111's two-upscaler mix: the second result blended over the first by its visibility."""
    result = upscale(image, first, scale=scale, size=size, crop=crop)
    if second != "None" and second_visibility > 0:
        other = upscale(image, second, scale=scale, size=size, crop=crop)
        if result.size != other.size or result.mode != other.mode:
            other = other.convert(result.mode).resize(result.size)
        result = Image.blend(result, other, min(second_visibility, 1.0))
    return result
