"""Seamless tiling: convolutions that wrap around the image edges instead of padding with zeros."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def circular_padding(*modules: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every padded Conv2d in `modules` pads circularly; the old modes come back after.

    With every convolution wrapping, the left edge of the image is computed from the right
    edge's neighbours (and top from bottom), so copies of the image tile without a seam.
    """
    if not enabled:
        yield
        return
    changed: list[tuple[torch.nn.Conv2d, str]] = []
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, torch.nn.Conv2d) and any(p > 0 for p in _padding(layer)):
                changed.append((layer, layer.padding_mode))
                layer.padding_mode = "circular"
    try:
        yield
    finally:
        for layer, mode in changed:
            layer.padding_mode = mode


def _padding(layer: torch.nn.Conv2d) -> tuple[int, ...]:
    padding = layer.padding
    return (0,) if isinstance(padding, str) else tuple(padding)
