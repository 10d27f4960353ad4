"""Invisible watermark (invisible-watermark's 'dwtDct' method, as the original SD scripts used).

Reliability, measured on 512x512 images: the payload round-trips exactly on noisy or textured
images (colour noise, gradients with noise sigma >= 12: 10/10), flat mid-tone colours and the
plain smooth gradient used in the tests. It is NOT reliable on:
  - smooth or lightly textured areas: in a sweep, 5/10 shifted gradients and 4-7/10 gradients
    with noise sigma 4-8 lost a bit or two, with or without the clean-up below. dwtDct hides
    each bit in the largest coefficient of a block, and when a block's coefficients are nearly
    equal, lowering that one makes the decoder read a different one;
  - flat white, saturated blue or saturated yellow images: the chroma channel that carries the
    bits is already clipped, so nothing survives (decodes as all-zero or all-0xff bytes).
Treat a failed read as "unknown", never as proof that an image did not come from here.

The library's encoder also damages the image beyond the watermark (uint8 wrap-around on
saturated pixels, a clipping YUV round trip that dulls saturated reds, and swapped
horizontal/vertical detail bands in the U channel), so `embed_watermark` keeps only the change
in the band that carries the payload and applies it to the untouched original pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
import pywt
from PIL import Image

DEFAULT_PAYLOAD = b"SDwebui"
# dwtDct spreads each bit over 8x8-pixel blocks; below this side there are too few blocks per
# bit for the decoder's vote to be dependable (the library itself refuses under 256*256 pixels).
MIN_WATERMARK_SIDE = 256

_METHOD = "dwtDct"
_BLOCK = 4  # the library's block size in the DWT approximation band
# The library moves one approximation coefficient per block by at most 3/4 of its 36 step;
# smaller differences are rounding noise and larger ones are uint8 wrap-around.
_MIN_DELTA, _MAX_DELTA = 3.0, 30.0
# OpenCV's YUV -> BGR weights for U: a change in U alone moves blue and green by these factors.
_U_TO_BLUE, _U_TO_GREEN = 2.032, -0.395


def embed_watermark(image: Image.Image, payload: bytes = DEFAULT_PAYLOAD) -> Image.Image:
    """Return a watermarked copy; small or non-RGB(A) images come back unchanged."""
    if min(image.size) < MIN_WATERMARK_SIDE or image.mode not in ("RGB", "RGBA"):
        # The bits live in chroma, which L/P/CMYK images cannot hold through a round trip.
        return image
    # Imported here because imwatermark loads torch at import time (for its rivaGan method),
    # which would make every `import webui.outputs` cost a second.
    from imwatermark import WatermarkEncoder

    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", payload)
    marked = _keep_payload_change(bgr, encoder.encode(bgr, _METHOD))
    result = Image.fromarray(np.ascontiguousarray(marked[:, :, ::-1]), "RGB")
    if image.mode == "RGBA":
        result.putalpha(image.getchannel("A"))
    return result


def read_watermark(image: Image.Image, length: int = len(DEFAULT_PAYLOAD)) -> bytes:
    """Decode `length` bytes (garbage when no watermark); b"" when the image is too small."""
    if min(image.size) < MIN_WATERMARK_SIDE or length <= 0:
        return b""
    from imwatermark import WatermarkDecoder  # lazily, see embed_watermark

    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return bytes(WatermarkDecoder("bytes", length * 8).decode(bgr, _METHOD))


def _keep_payload_change(original: np.ndarray, encoded: np.ndarray) -> np.ndarray:
    """Apply only the library's intended edit (one U approximation coefficient per block)."""
    delta = _u_approximation(encoded) - _u_approximation(original)
    delta[(np.abs(delta) < _MIN_DELTA) | (np.abs(delta) > _MAX_DELTA)] = 0.0
    delta = _largest_per_block(delta)
    # A haar approximation coefficient is twice the mean of its 2x2 pixels.
    du = np.repeat(np.repeat(delta / 2.0, 2, axis=0), 2, axis=1)
    rows, cols = du.shape
    result = original.astype(np.float64)
    result[:rows, :cols, 0] += _U_TO_BLUE * du
    result[:rows, :cols, 1] += _U_TO_GREEN * du
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)


def _u_approximation(bgr: np.ndarray) -> np.ndarray:
    """The band the library writes into: haar approximation of U over the 4-aligned area."""
    u = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 1].astype(np.float64)
    rows, cols = u.shape[0] // 4 * 4, u.shape[1] // 4 * 4
    approximation, _details = pywt.dwt2(u[:rows, :cols], "haar")
    return approximation


def _largest_per_block(delta: np.ndarray) -> np.ndarray:
    """Zero all but the largest change in each block; the rest is conversion noise."""
    rows, cols = delta.shape[0] // _BLOCK * _BLOCK, delta.shape[1] // _BLOCK * _BLOCK
    blocks = delta[:rows, :cols].reshape(rows // _BLOCK, _BLOCK, cols // _BLOCK, _BLOCK)
    blocks = blocks.transpose(0, 2, 1, 3).reshape(rows // _BLOCK, cols // _BLOCK, _BLOCK * _BLOCK)
    largest = np.abs(blocks).argmax(axis=-1)[..., None]
    kept = np.zeros_like(blocks)
    np.put_along_axis(kept, largest, np.take_along_axis(blocks, largest, axis=-1), axis=-1)
    out = np.zeros_like(delta)
    out[:rows, :cols] = (
        kept.reshape(rows // _BLOCK, cols // _BLOCK, _BLOCK, _BLOCK).transpose(0, 2, 1, 3).reshape(rows, cols)
    )
    return out
