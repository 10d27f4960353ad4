"""Invisible watermark in the 'dwtDct' layout of invisible-watermark (as the original SD scripts
used), written and read here: the payload's bits, repeated, set one coefficient per 4x4 block of
the haar approximation band of the image's U (chroma) channel, each quantised to a quarter
(bit 0) or three quarters (bit 1) of a 36-wide step. Images marked here read back with that
library's decoder, and images it marked read back here (tested against it while it was a
dependency). The library itself is not used: it requires `opencv-python`, whose cv2 needs libGL
(missing on slim images) and replaces the pinned `opencv-python-headless` when both install.

Reliability, measured on 512x512 images: the payload round-trips exactly on noisy or textured
images (colour noise, gradients with noise sigma >= 12: 10/10), flat mid-tone colours and the
plain smooth gradient used in the tests. It is NOT reliable on:
  - smooth or lightly textured areas: in a sweep, 5/10 shifted gradients and 4-7/10 gradients
    with noise sigma 4-8 lost a bit or two. dwtDct hides each bit in the largest coefficient
    of a block, and when a block's coefficients are nearly equal, moving that one makes the
    decoder read a different one;
  - flat white, saturated blue or saturated yellow images: the chroma channel that carries the
    bits is already clipped, so nothing survives (decodes as all-zero or all-0xff bytes).
Treat a failed read as "unknown", never as proof that an image did not come from here.

Only the U channel changes, and only by the payload's edit: the other pixels, and red, are
left exactly as they were.
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

_BLOCK = 4  # block side in the DWT approximation band
_STEP = 36.0  # dwtDct's quantisation step for U
# OpenCV's YUV -> BGR weights for U: a change in U alone moves blue and green by these factors.
_U_TO_BLUE, _U_TO_GREEN = 2.032, -0.395


def embed_watermark(image: Image.Image, payload: bytes = DEFAULT_PAYLOAD) -> Image.Image:
    """Return a watermarked copy; small or non-RGB(A) images come back unchanged."""
    if min(image.size) < MIN_WATERMARK_SIDE or image.mode not in ("RGB", "RGBA"):
        # The bits live in chroma, which L/P/CMYK images cannot hold through a round trip.
        return image
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    blocks, positions = _blocks_and_positions(_u_approximation(bgr))
    values = np.take_along_axis(blocks, positions, axis=-1)[..., 0]
    bits = _bit_of_block(_payload_bits(payload), blocks.shape[:2])
    magnitude = (np.floor(np.abs(values) / _STEP) + 0.25 + 0.5 * bits) * _STEP
    targets = np.where(values < 0, -magnitude, magnitude)
    delta = np.zeros_like(blocks)
    np.put_along_axis(delta, positions, (targets - values)[..., None], axis=-1)
    marked = _apply_u_change(bgr, _unblock(delta))
    result = Image.fromarray(np.ascontiguousarray(marked[:, :, ::-1]), "RGB")
    if image.mode == "RGBA":
        result.putalpha(image.getchannel("A"))
    return result


def read_watermark(image: Image.Image, length: int = len(DEFAULT_PAYLOAD)) -> bytes:
    """Decode `length` bytes (garbage when no watermark); b"" when the image is too small."""
    if min(image.size) < MIN_WATERMARK_SIDE or length <= 0:
        return b""
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    blocks, positions = _blocks_and_positions(_u_approximation(bgr))
    values = np.take_along_axis(blocks, positions, axis=-1)[..., 0]
    read = (np.abs(values) % _STEP > _STEP / 2).ravel()
    # Each bit is written in every block whose number is its index modulo the payload's bits:
    # the majority of those blocks decides it.
    count = length * 8
    which = np.arange(read.size) % count
    ones = np.bincount(which, weights=read, minlength=count)
    seen = np.bincount(which, minlength=count)
    bits = (ones * 255 > 127 * seen).astype(np.uint8)  # the library's threshold, ties read as 1
    return np.packbits(bits).tobytes()


def _payload_bits(payload: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(payload, dtype=np.uint8)).astype(np.float64)


def _bit_of_block(bits: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """The payload bit each block carries: blocks are numbered row by row, bits repeat."""
    numbers = np.arange(grid[0] * grid[1]).reshape(grid)
    return bits[numbers % bits.size]


def _u_approximation(bgr: np.ndarray) -> np.ndarray:
    """The band that carries the bits: haar approximation of U over the 4-aligned area."""
    u = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 1].astype(np.float64)
    rows, cols = u.shape[0] // 4 * 4, u.shape[1] // 4 * 4
    approximation, _details = pywt.dwt2(u[:rows, :cols], "haar")
    return approximation


def _blocks_and_positions(band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The band's whole 4x4 blocks as (block rows, block cols, 16), and in each the position of
    the largest coefficient other than the first (the one that carries the bit)."""
    rows, cols = band.shape[0] // _BLOCK, band.shape[1] // _BLOCK
    blocks = band[: rows * _BLOCK, : cols * _BLOCK].reshape(rows, _BLOCK, cols, _BLOCK)
    blocks = blocks.transpose(0, 2, 1, 3).reshape(rows, cols, _BLOCK * _BLOCK)
    positions = np.abs(blocks[..., 1:]).argmax(axis=-1)[..., None] + 1
    return blocks, positions


def _unblock(blocks: np.ndarray) -> np.ndarray:
    rows, cols = blocks.shape[:2]
    grid = blocks.reshape(rows, cols, _BLOCK, _BLOCK).transpose(0, 2, 1, 3)
    return grid.reshape(rows * _BLOCK, cols * _BLOCK)


def _apply_u_change(original: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Move U by `delta` (in approximation coefficients) without touching Y or V."""
    # A haar approximation coefficient is twice the mean of its 2x2 pixels.
    du = np.repeat(np.repeat(delta / 2.0, 2, axis=0), 2, axis=1)
    rows, cols = du.shape
    result = original.astype(np.float64)
    result[:rows, :cols, 0] += _U_TO_BLUE * du
    result[:rows, :cols, 1] += _U_TO_GREEN * du
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)
