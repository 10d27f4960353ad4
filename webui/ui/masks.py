"""Turn what the inpaint editor sends (a background and painted layers) into an image and a mask."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageChops

from webui.engine.request import GenerationError
from webui.ui.image_inputs import Unreadable


def painted_mask(layers: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """White where any layer has paint (alpha > 0), black elsewhere, at the background's size."""
    mask = Image.new("L", size, 0)
    for layer in layers:
        if layer is None:
            continue
        alpha = layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        mask = ImageChops.lighter(mask, alpha.point(lambda value: 255 if value > 0 else 0))
    return mask


def image_and_mask(
    editor: dict[str, Any] | Unreadable | None, uploaded: Image.Image | Unreadable | None
) -> tuple[Image.Image, Image.Image]:
    """The picture to inpaint and its mask: the painted strokes and an uploaded mask, combined."""
    if isinstance(editor, Unreadable):
        raise GenerationError(editor.message, "init_image")
    if isinstance(uploaded, Unreadable):
        raise GenerationError(f"the mask: {uploaded.message}", "mask")
    background = (editor or {}).get("background")
    if background is None:
        raise GenerationError("drop, paste or send an image to inpaint first", "init_image")
    size = background.size
    mask = painted_mask(list((editor or {}).get("layers") or []), size)
    if uploaded is not None:
        upload = uploaded.convert("L")
        if upload.size != size:
            upload = upload.resize(size, Image.Resampling.LANCZOS)
        mask = ImageChops.lighter(mask, upload)
    if mask.getbbox() is None:
        if uploaded is not None:
            raise GenerationError(
                "the uploaded mask is empty (all black): white marks what to change", "mask"
            )
        raise GenerationError("paint over the part to change (or upload a mask) first", "mask")
    return _flatten(background), mask


def _flatten(image: Image.Image) -> Image.Image:
    """Transparent pixels become white, as A1111 does for uploads with alpha."""
    if "A" not in image.getbands():
        return image.convert("RGB")
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
    return canvas


def editor_value(image: Image.Image | None) -> dict[str, Any] | None:
    """An editor holding `image` with nothing painted on it (send-to, and Clear mask)."""
    if image is None:
        return None
    return {"background": image, "layers": [], "composite": image}
