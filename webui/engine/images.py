"""Pixel-space preparation for img2img and inpainting: resize modes, masks, crops, compositing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from webui.engine.request import GenerationError, GenerationRequest, MaskedContent, ResizeMode


def resize_image(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    if mode is ResizeMode.LATENT_UPSCALE:
        # Encoded at its own size (whole latent cells); the latents are then resized, not the pixels.
        size = (max(8, image.width // 8 * 8), max(8, image.height // 8 * 8))
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
    if mode is ResizeMode.JUST_RESIZE or image.size == (width, height):
        return image.resize((width, height), Image.Resampling.LANCZOS)
    scale_cover = max(width / image.width, height / image.height)
    if mode is ResizeMode.CROP_AND_RESIZE:
        resized = image.resize(_scaled(image, scale_cover), Image.Resampling.LANCZOS)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    # Resize and fill: fit inside, then fill the bars with a stretched, blurred copy.
    scale_fit = min(width / image.width, height / image.height)
    fitted = image.resize(_scaled(image, scale_fit), Image.Resampling.LANCZOS)
    canvas = image.resize((width, height), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(8))
    canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    return canvas


def _scaled(image: Image.Image, scale: float) -> tuple[int, int]:
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


@dataclass
class InpaintInputs:
    """Everything the loop and the final compositing need, at generation size."""

    image: Image.Image  # RGB at width x height, masked content already applied
    mask: Image.Image  # L at width x height, blurred: 255 = repaint
    original: Image.Image  # RGB the result is composited onto (full size when only-masked)
    full_mask: Image.Image  # L, blurred, same size as `original`
    crop_box: tuple[int, int, int, int] | None  # where the generated image goes in `original`


def prepare_init_image(request: GenerationRequest, image: Image.Image | None = None) -> Image.Image:
    """The init image (or `image`, one of the further ones) ready to encode."""
    image = image or request.init_image
    assert image is not None
    return resize_image(image.convert("RGB"), request.width, request.height, request.resize_mode)


def prepare_inpaint(request: GenerationRequest) -> InpaintInputs:
    init = request.init_image
    assert init is not None
    if request.mask is not None:
        mask = request.mask.convert("L")
    else:
        mask = ImageOps.invert(init.getchannel("A"))  # transparent pixels are the ones to repaint
    if request.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    if mask.getextrema()[1] == 0:
        raise GenerationError("the mask is empty: paint (white) the area to change, or untick invert", "mask")
    rgb = init.convert("RGB")
    if request.inpaint_full_res:
        original = rgb
        blurred = _blur(mask, _blur_radius(request))
        box = _crop_box(mask, request.width, request.height, request.inpaint_full_res_padding)
        size = (request.width, request.height)
        image = original.crop(box).resize(size, Image.Resampling.LANCZOS)
        work_mask = blurred.crop(box).resize(size, Image.Resampling.LANCZOS)
        full_mask = blurred
    else:
        original = resize_image(rgb, request.width, request.height, request.resize_mode)
        mask = resize_image(mask, request.width, request.height, request.resize_mode)
        work_mask = full_mask = _blur(mask, _blur_radius(request))
        image, box = original, None
    if request.inpainting_fill is MaskedContent.FILL:
        image = _fill_masked(image, work_mask)
    return InpaintInputs(image, work_mask, original, full_mask, box)


def _blur_radius(request: GenerationRequest) -> int | tuple[int, int]:
    """A1111's mask_blur_x/mask_blur_y: one radius, or (horizontal, vertical) when they differ."""
    if request.mask_blur_y is None or request.mask_blur_y == request.mask_blur:
        return request.mask_blur
    return request.mask_blur, request.mask_blur_y


def _blur(mask: Image.Image, radius: int | tuple[int, int]) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius != 0 and radius != (0, 0) else mask


def _crop_box(mask: Image.Image, width: int, height: int, padding: int) -> tuple[int, int, int, int]:
    """The masked area plus padding, grown to the generation's aspect ratio, inside the image."""
    left, top, right, bottom = mask.point(lambda v: 255 if v > 0 else 0).getbbox() or (0, 0, *mask.size)
    left, top = max(left - padding, 0), max(top - padding, 0)
    right, bottom = min(right + padding, mask.width), min(bottom + padding, mask.height)
    ratio = width / height
    box_w, box_h = right - left, bottom - top
    if box_w / box_h < ratio:
        box_w = min(round(box_h * ratio), mask.width)
    else:
        box_h = min(round(box_w / ratio), mask.height)
    center_x, center_y = (left + right) / 2, (top + bottom) / 2
    left = int(min(max(center_x - box_w / 2, 0), mask.width - box_w))
    top = int(min(max(center_y - box_h / 2, 0), mask.height - box_h))
    return left, top, left + box_w, top + box_h


def _fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": start the masked area from the colours around it, not the old content."""
    pixels = np.asarray(image, dtype=np.float32)
    keep = np.asarray(mask) < 128
    colour = pixels[keep].mean(axis=0) if keep.any() else np.full(3, 127.0)
    flat = Image.new("RGB", image.size, tuple(int(c) for c in colour))
    blurred_surroundings = Image.composite(flat, image, mask).filter(ImageFilter.GaussianBlur(16))
    return Image.composite(blurred_surroundings, image, mask.point(lambda v: 255 if v >= 128 else 0))


def composite(result: Image.Image, inputs: InpaintInputs) -> Image.Image:
    """Put the generated pixels back where the mask says; everything else stays the original's."""
    canvas = inputs.original.copy()
    if inputs.crop_box is not None:
        left, top, right, bottom = inputs.crop_box
        canvas.paste(result.resize((right - left, bottom - top), Image.Resampling.LANCZOS), (left, top))
    else:
        canvas = result
    return Image.composite(canvas, inputs.original, inputs.full_mask)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, h, w) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """L image -> (1, 1, h, w) in [0, 1]."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
