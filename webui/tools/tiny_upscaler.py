"""Write seeded, random-weight, tiny ESRGAN-family upscaler files in the layouts people download.

    python -m webui.tools.tiny_upscaler esrgan --layout old --scale 4 models/ESRGAN/tiny-esrgan.pth
    python -m webui.tools.tiny_upscaler compact --scale 4 models/ESRGAN/tiny-compact.safetensors

Their output is noise, but they go through exactly the loading and tiling code of real models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from webui.model_manager.upscaler_models import (
    CompactConfig,
    RRDBConfig,
    RRDBNet,
    SRVGGNetCompact,
    rename_modules,
    rrdb_old_layout_names,
)

# scale -> (upsample stages, pixel-unshuffle factor), as Real-ESRGAN builds its x4, x2 and x1 nets.
_RRDB_SCALES = {1: (2, 4), 2: (2, 2), 4: (2, 1), 8: (3, 1)}
LAYOUTS = ("new", "old")
FORMATS = ("safetensors", "pth")


def write_tiny_esrgan(
    path: Path,
    layout: str = "new",
    scale: int = 4,
    fmt: str | None = None,
    *,
    seed: int = 0,
    num_feat: int = 8,
    num_block: int = 1,
    num_grow_ch: int = 4,
) -> Path:
    """An RRDBNet with BasicSR keys ("new", saved under `params_ema` in a .pth like Real-ESRGAN's
    releases) or original ESRGAN keys ("old"); `fmt` defaults to the path's suffix."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if scale not in _RRDB_SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(str, _RRDB_SCALES))}, not {scale}")
    num_upsample, unshuffle = _RRDB_SCALES[scale]
    config = RRDBConfig(3 * unshuffle**2, 3, num_feat, num_block, num_grow_ch, num_upsample, unshuffle)
    state = _random_state(RRDBNet(config), seed)
    if layout == "old":
        return _save(rename_modules(state, rrdb_old_layout_names(num_block, num_upsample)), path, fmt, None)
    return _save(state, path, fmt, "params_ema")


def write_tiny_compact(
    path: Path, scale: int = 4, fmt: str | None = None, *, seed: int = 0, num_feat: int = 8, num_conv: int = 2
) -> Path:
    """A Real-ESRGAN SRVGGNetCompact (PReLU); a .pth nests it under `params` like the real releases."""
    state = _random_state(SRVGGNetCompact(CompactConfig(3, num_feat, num_conv, scale)), seed)
    return _save(state, path, fmt, "params")


def _random_state(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights scaled so outputs vary around mid-grey instead of clipping at black or white."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in module.state_dict().items():
        if tensor.ndim == 4:
            fan_in = tensor.shape[1] * tensor.shape[2] * tensor.shape[3]
            value = torch.randn(tensor.shape, generator=generator) / fan_in**0.5
        elif key.endswith(".bias"):
            value = torch.randn(tensor.shape, generator=generator) * 0.05
        else:  # PReLU slopes
            value = torch.full(tensor.shape, 0.25)
        state[key] = value
    if "conv_last.bias" in state:  # RRDBNet predicts the image itself, not a residual
        state["conv_last.bias"] = torch.full_like(state["conv_last.bias"], 0.5)
    return state


def _save(state: dict[str, torch.Tensor], path: Path, fmt: str | None, container: str | None) -> Path:
    path = Path(path)
    fmt = fmt or ("safetensors" if path.suffix.lower() == ".safetensors" else "pth")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, not {fmt!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({container: state} if container else state, str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("esrgan", "compact"))
    parser.add_argument("--layout", choices=LAYOUTS, default="new", help="RRDBNet key layout (esrgan only)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("out", type=Path, help="the file to write (.safetensors or .pth)")
    args = parser.parse_args(argv)
    if args.kind == "esrgan":
        path = write_tiny_esrgan(args.out, args.layout, args.scale, seed=args.seed)
    else:
        path = write_tiny_compact(args.out, args.scale, seed=args.seed)
    print(f"wrote {path} ({args.kind}, x{args.scale}, seed {args.seed})")


if __name__ == "__main__":
    main()
