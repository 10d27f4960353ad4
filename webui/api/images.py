"""Images in JSON: base64 in (with or without a `data:` prefix), base64 PNG out."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from webui.api.errors import ApiError


def decode_image(data: object, field: str) -> Image.Image:
    """A base64 string to a loaded image; anything else is a 422 naming `field`."""
    if not isinstance(data, str) or not data.strip():
        raise ApiError(422, f"{field}: expected a base64-encoded image", field)
    text = data.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{field}: not valid base64", field) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
                return _png_writable(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(422, f"{field}: the image has too many pixels to open safely", field) from None
    except UnidentifiedImageError:
        raise ApiError(
            422, f"{field}: the data is not an image in a format this server reads", field
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ApiError(422, f"{field}: the image is damaged or truncated ({error})", field) from None


# Modes a PNG can hold; anything else (a CMYK JPEG, a float TIFF) would fail later where the
# image is written as PNG (the job store, results, extras), so it is converted once here.
_PNG_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "P", "RGB", "RGBA")


def _png_writable(image: Image.Image) -> Image.Image:
    if image.mode in _PNG_MODES:
        return image
    return image.convert("RGBA" if image.mode in ("PA", "RGBa") else "RGB")


def encode_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def image_to_png(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def flatten_alpha(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An RGB image with transparency composited over `background`, as A1111 does for init images."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image
