"""A1111's "NV" noise: torch's CUDA `randn` computed with numpy, so any device draws an NVIDIA GPU's noise.

CUDA's default generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", 2011). For a tensor of n values, value i takes counter (offset, 0, i, 0) and key
(seed low 32 bits, seed high 32 bits); the first two output words go through Box-Muller (the
sine branch), in float32 as curand does. Each draw advances the offset by one.
"""

from __future__ import annotations

import numpy as np

# Philox4x32 multipliers and Weyl key increments (Random123's PHILOX_M4x32_0/1, PHILOX_W32_0/1).
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint32(0x9E3779B9)
_W1 = np.uint32(0xBB67AE85)
_ROUNDS = 10
_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
# curand's uniform: x * 2^-32 + 2^-33, and the angle's scale 2^-32 * 2pi, both float32.
_TWO_POW32_INV = np.float32(2.3283064e-10)
_TWO_POW32_INV_2PI = np.float32(2.3283064e-10) * np.float32(6.2831855)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = _ROUNDS) -> np.ndarray:
    """Philox4x32 with `rounds` rounds: counter (4, n) uint32, key (2, n) uint32 -> (4, n) uint32."""
    c0, c1, c2, c3 = (counter[i].astype(np.uint64) for i in range(4))
    k0, k1 = key[0].astype(np.uint32), key[1].astype(np.uint32)
    for round_index in range(rounds):
        if round_index:
            k0 = k0 + _W0  # uint32 arithmetic wraps, as the key bump should
            k1 = k1 + _W1
        product0 = c0 * _M0
        product1 = c2 * _M1
        c0, c1, c2, c3 = (
            (product1 >> _SHIFT) ^ c1 ^ k0.astype(np.uint64),
            product1 & _LOW,
            (product0 >> _SHIFT) ^ c3 ^ k1.astype(np.uint64),
            product0 & _LOW,
        )
    return np.stack([c0, c1, c2, c3]).astype(np.uint32)


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two uint32 words -> one standard normal, in float32 as CUDA's randn computes it."""
    u = x.astype(np.float32) * _TWO_POW32_INV + _TWO_POW32_INV / np.float32(2)
    v = y.astype(np.float32) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / np.float32(2)
    radius = np.sqrt(np.float32(-2.0) * np.log(u))
    return (radius * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """Draws like `torch.Generator("cuda").manual_seed(seed)` followed by `torch.randn` calls."""

    def __init__(self, seed: int) -> None:
        self.seed = seed % 2**64
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        counter = np.zeros((4, count), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(count, dtype=np.uint32)
        self.offset += 1
        key = np.empty((2, count), dtype=np.uint32)
        key[0] = self.seed & 0xFFFFFFFF
        key[1] = self.seed >> 32
        words = philox4x32(counter, key)
        return box_muller(words[0], words[1]).reshape(shape)
