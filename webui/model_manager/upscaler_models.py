"""ESRGAN-family upscaler models in plain torch, built from nothing but a state dict's tensor shapes.

Supported: RRDBNet (ESRGAN, Real-ESRGAN x4plus/x2plus, 4x-UltraSharp, ...) with either BasicSR
keys (`conv_first`, `body.N.rdb1.conv1`) or the original ESRGAN keys (`model.1.sub.N.RDB1.conv1.0`),
and Real-ESRGAN's SRVGGNetCompact (`body.N`, PReLU activations). Images run in blended tiles,
so memory stays bounded by the tile size rather than the image size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from webui.model_manager.state_dict import CheckpointError, load_weights_only_pickle, read_state_dict

UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt")
SUPPORTED_ARCHITECTURES = (
    "RRDBNet (ESRGAN / Real-ESRGAN, BasicSR keys conv_first/body.N.rdb1... "
    "or original ESRGAN keys model.0/model.1.sub.N.RDB1...) and "
    "SRVGGNetCompact (Real-ESRGAN general-x4v3 / animevideov3, keys body.N)"
)
RRDB = "RRDBNet"
COMPACT = "SRVGGNetCompact"
DEFAULT_TILE = 192  # input pixels per tile side
DEFAULT_OVERLAP = 16  # input pixels shared by neighbouring tiles, cross-faded to hide seams
LRELU_SLOPE = 0.2
RESIDUAL_SCALE = 0.2  # ESRGAN scales each dense block's residual down to keep 23 stacked blocks stable
# Training scripts save EMA weights beside the raw ones; the EMA copy is what releases are meant to use.
_CONTAINER_KEYS = ("params_ema", "params", "state_dict")
_OLD_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight")
_RDB_CONVS = 5


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each fed the block input and every earlier conv's output."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        for index in range(1, _RDB_CONVS + 1):
            width = num_feat + (index - 1) * num_grow_ch
            out = num_feat if index == _RDB_CONVS else num_grow_ch
            self.add_module(f"conv{index}", nn.Conv2d(width, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for index in range(1, _RDB_CONVS):
            conv = getattr(self, f"conv{index}")
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), LRELU_SLOPE))
        return self.conv5(torch.cat(features, 1)) * RESIDUAL_SCALE + x


class ResidualInResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


@dataclass(frozen=True)
class RRDBConfig:
    in_ch: int
    out_ch: int
    num_feat: int
    num_block: int
    num_grow_ch: int
    num_upsample: int  # nearest x2 + conv stages at the end
    unshuffle: int  # 1, or 2/4: the input is pixel-unshuffled first (Real-ESRGAN x2plus / x1)

    @property
    def scale(self) -> int:
        return 2**self.num_upsample // self.unshuffle


class RRDBNet(nn.Module):
    """Module names follow BasicSR's keys, so its state dicts load directly."""

    def __init__(self, config: RRDBConfig) -> None:
        super().__init__()
        self.config = config
        feat = config.num_feat
        self.conv_first = nn.Conv2d(config.in_ch, feat, 3, 1, 1)
        self.body = nn.Sequential(
            *(ResidualInResidualDenseBlock(feat, config.num_grow_ch) for _ in range(config.num_block))
        )
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        for index in range(1, config.num_upsample + 1):
            self.add_module(f"conv_up{index}", nn.Conv2d(feat, feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, config.out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for index in range(1, self.config.num_upsample + 1):
            conv = getattr(self, f"conv_up{index}")
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), LRELU_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), LRELU_SLOPE))


@dataclass(frozen=True)
class CompactConfig:
    channels: int  # image channels in and out
    num_feat: int
    num_conv: int  # hidden convs between the first and the last
    scale: int


class SRVGGNetCompact(nn.Module):
    """A plain conv/PReLU stack predicting the residual over a nearest-neighbour upscale."""

    def __init__(self, config: CompactConfig) -> None:
        super().__init__()
        self.config = config
        feat = config.num_feat
        layers: list[nn.Module] = [nn.Conv2d(config.channels, feat, 3, 1, 1), nn.PReLU(feat)]
        for _ in range(config.num_conv):
            layers += [nn.Conv2d(feat, feat, 3, 1, 1), nn.PReLU(feat)]
        layers.append(nn.Conv2d(feat, config.channels * config.scale**2, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        base = F.interpolate(x, scale_factor=self.config.scale, mode="nearest")
        return F.pixel_shuffle(out, self.config.scale) + base


def rrdb_old_layout_names(num_block: int, num_upsample: int) -> dict[str, str]:
    """BasicSR module name -> original ESRGAN module name (append `.weight` / `.bias`).

    The original net is one flat Sequential: model.0 first conv, model.1 the trunk (its last entry
    the trunk conv), then per upsample stage (Upsample, conv, LeakyReLU), then HR conv, act, last conv.
    """
    names = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}"}
    for block in range(num_block):
        for rdb in range(1, 4):
            for conv in range(1, _RDB_CONVS + 1):
                names[f"body.{block}.rdb{rdb}.conv{conv}"] = f"model.1.sub.{block}.RDB{rdb}.conv{conv}.0"
    for index in range(1, num_upsample + 1):
        names[f"conv_up{index}"] = f"model.{3 * index}"
    names["conv_hr"] = f"model.{3 * num_upsample + 2}"
    names["conv_last"] = f"model.{3 * num_upsample + 4}"
    return names


def rename_modules(tensors: Mapping[str, torch.Tensor], names: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Rename `module.param` keys by module; keys of unknown modules are kept, for strict loading to name."""
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        module, dot, param = key.rpartition(".")
        renamed[f"{names.get(module, module)}{dot}{param}"] = tensor
    return renamed


@dataclass
class UpscalerModel:
    """A loaded upscaler; `upscale` turns an image into one exactly `scale` times larger."""

    module: nn.Module
    name: str
    architecture: str
    scale: int
    channels: int  # 3: reads and writes RGB; 1: greyscale
    multiple: int  # the model needs input sides that are multiples of this (pixel-unshuffle)
    device: torch.device
    dtype: torch.dtype
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP

    def upscale(
        self, image: Image.Image, *, tile: int | None = None, overlap: int | None = None
    ) -> Image.Image:
        """RGB (or RGBA, the alpha resized with Lanczos) in, `scale` times larger out.

        `tile` 0 runs the whole image in one pass; None uses the model's defaults.
        """
        tile = self.tile if tile is None else tile
        overlap = self.overlap if overlap is None else overlap
        alpha = _alpha_channel(image)
        mode = "RGB" if self.channels == 3 else "L"
        pixels = np.asarray(image.convert(mode), dtype=np.uint8).reshape(image.height, image.width, -1)
        result = self.upscale_array(pixels, tile=tile, overlap=overlap)
        upscaled = Image.fromarray(result if self.channels == 3 else result[:, :, 0], mode).convert("RGB")
        if alpha is not None:
            upscaled.putalpha(alpha.resize(upscaled.size, Image.Resampling.LANCZOS))
        return upscaled

    def upscale_array(self, pixels: np.ndarray, *, tile: int, overlap: int) -> np.ndarray:
        """uint8 HxWxC -> uint8 (H*scale)x(W*scale)xC, in tiles cross-faded over `overlap` pixels."""
        height, width = pixels.shape[:2]
        padded = _pad_to_multiple(pixels, self.multiple)
        tile, overlap = _tile_geometry(tile, overlap, self.multiple, padded.shape[:2])
        out = np.empty(
            (padded.shape[0] * self.scale, padded.shape[1] * self.scale, pixels.shape[2]), np.uint8
        )
        with torch.inference_mode():
            for top, strip in _finished_rows(self._strips(padded, tile, overlap)):
                out[top : top + strip.shape[1]] = _to_uint8(strip)
        return out[: height * self.scale, : width * self.scale]

    def _strips(self, pixels: np.ndarray, tile: int, overlap: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Per row of tiles: (output top row, the row's weighted output), weights already normalised."""
        height, width = pixels.shape[:2]
        scale = self.scale
        rows = _axis_tiles(height, tile, overlap, scale, self.multiple)
        columns = _axis_tiles(width, tile, overlap, scale, self.multiple)
        for top, tile_h, row_weight in rows:
            strip = torch.zeros(pixels.shape[2], tile_h * scale, width * scale)
            for left, tile_w, column_weight in columns:
                result = self._run(pixels[top : top + tile_h, left : left + tile_w])
                strip[:, :, left * scale : (left + tile_w) * scale] += result * column_weight
            yield top * scale, strip * row_weight[:, None]

    def _run(self, pixels: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]  # the image's array is read-only
        batch = batch.to(self.device, self.dtype) / 255
        return self.module(batch)[0].float().clamp_(0, 1).cpu()


def load_upscaler_model(
    path: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> UpscalerModel:
    """Read, recognise and load an upscaler file; any failure is a CheckpointError naming the file."""
    path = Path(path)
    tensors = read_upscaler_tensors(path)
    module, architecture, state, multiple = build_upscaler(tensors, path.name)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())  # torch's message spans lines; an API error wants one
        raise CheckpointError(
            f"{path.name}: the weights do not fit the {architecture} their keys describe: {detail}"
        ) from error
    module.requires_grad_(False).eval().to(device=torch.device(device), dtype=dtype)
    config = module.config
    channels = config.out_ch if isinstance(config, RRDBConfig) else config.channels
    return UpscalerModel(
        module=module,
        name=path.stem,
        architecture=architecture,
        scale=config.scale,
        channels=channels,
        multiple=multiple,
        device=torch.device(device),
        dtype=dtype,
        tile=tile,
        overlap=overlap,
    )


def read_upscaler_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors`, or of a `.pth`/`.pt` unpickled weights-only (no code runs)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in UPSCALER_SUFFIXES:
        raise CheckpointError(f"{path.name}: not an upscaler file (expected {', '.join(UPSCALER_SUFFIXES)})")
    if suffix == ".safetensors":
        return read_state_dict(path).tensors
    if not path.is_file():
        raise CheckpointError(f"{path.name}: no such file")
    loaded = _unwrap(load_weights_only_pickle(path))
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path.name}: the file holds no tensors")
    return tensors


def build_upscaler(
    tensors: Mapping[str, torch.Tensor], filename: str
) -> tuple[RRDBNet | SRVGGNetCompact, str, dict[str, torch.Tensor], int]:
    """(empty module, architecture, state dict in the module's key names, input side multiple)."""
    if "conv_first.weight" in tensors and "body.0.rdb1.conv1.weight" in tensors:
        config = _rrdb_config(tensors, filename)
        return RRDBNet(config), RRDB, dict(tensors), config.unshuffle
    if "model.0.weight" in tensors and "model.1.sub.0.RDB1.conv1.0.weight" in tensors:
        state = _rename_old_rrdb(tensors, filename)
        config = _rrdb_config(state, filename)
        return RRDBNet(config), RRDB, state, config.unshuffle
    if _shape(tensors, "body.0.weight", 4) and _shape(tensors, "body.1.weight", 1):
        return SRVGGNetCompact(_compact_config(tensors, filename)), COMPACT, dict(tensors), 1
    raise CheckpointError(
        f"{filename}: not an upscaler model this app can run (no known key layout); "
        f"supported: {SUPPORTED_ARCHITECTURES}"
    )


def _unwrap(loaded: Any) -> dict[str, Any]:
    """Training checkpoints nest the weights under `params_ema`/`params`/`state_dict`."""
    while isinstance(loaded, dict):
        inner = next((loaded[key] for key in _CONTAINER_KEYS if isinstance(loaded.get(key), dict)), None)
        if inner is None:
            return loaded
        loaded = inner
    return {}


def _shape(tensors: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...] | None:
    tensor = tensors.get(key)
    return tuple(tensor.shape) if tensor is not None and tensor.ndim == ndim else None


def _count(tensors: Mapping[str, torch.Tensor], pattern: str, start: int) -> int:
    """How many consecutive indices from `start` have `pattern.format(index)` as a key."""
    index = start
    while pattern.format(index) in tensors:
        index += 1
    return index - start


def _rrdb_config(tensors: Mapping[str, torch.Tensor], filename: str) -> RRDBConfig:
    first, last = _shape(tensors, "conv_first.weight", 4), _shape(tensors, "conv_last.weight", 4)
    grow = _shape(tensors, "body.0.rdb1.conv1.weight", 4)
    if first is None or last is None or grow is None:
        raise CheckpointError(f"{filename}: an RRDBNet without 4-D first, last or dense-block convs")
    in_ch, out_ch = first[1], last[0]
    unshuffle = math.isqrt(in_ch // out_ch) if in_ch % out_ch == 0 else 0
    num_upsample = _count(tensors, "conv_up{}.weight", 1)
    if unshuffle not in (1, 2, 4) or unshuffle**2 * out_ch != in_ch or 2**num_upsample < unshuffle:
        raise CheckpointError(
            f"{filename}: an RRDBNet reading {in_ch} channels and writing {out_ch} with "
            f"{num_upsample} upsample stages has no whole scale"
        )
    if out_ch not in (1, 3):
        raise CheckpointError(f"{filename}: an RRDBNet writing {out_ch} channels; only RGB or grey images")
    return RRDBConfig(
        in_ch=in_ch,
        out_ch=out_ch,
        num_feat=first[0],
        num_block=_count(tensors, "body.{}.rdb1.conv1.weight", 0),
        num_grow_ch=grow[0],
        num_upsample=num_upsample,
        unshuffle=unshuffle,
    )


def _rename_old_rrdb(tensors: Mapping[str, torch.Tensor], filename: str) -> dict[str, torch.Tensor]:
    num_block = sum(1 for key in tensors if _OLD_BLOCK.fullmatch(key))
    last = max(int(key.split(".")[1]) for key in tensors if re.fullmatch(r"model\.\d+\.weight", key))
    num_upsample, remainder = divmod(last - 4, 3)
    if remainder or num_upsample < 0:
        raise CheckpointError(
            f"{filename}: an ESRGAN-layout model whose last conv (model.{last}) fits no scale"
        )
    names = rrdb_old_layout_names(num_block, num_upsample)
    return rename_modules(tensors, {old: new for new, old in names.items()})


def _compact_config(tensors: Mapping[str, torch.Tensor], filename: str) -> CompactConfig:
    first = _shape(tensors, "body.0.weight", 4)
    convs = _count(tensors, "body.{}.weight", 0)  # alternating conv / PReLU keys
    last = _shape(tensors, f"body.{convs - 1}.weight", 4)
    if first is None or last is None or convs < 3 or convs % 2 == 0:
        raise CheckpointError(f"{filename}: an SRVGGNetCompact-like model whose layers do not alternate")
    channels = first[1]
    scale = math.isqrt(last[0] // channels)
    if scale < 1 or scale**2 * channels != last[0] or channels not in (1, 3):
        raise CheckpointError(
            f"{filename}: an SRVGGNetCompact reading {channels} channels and writing {last[0]} "
            "fits no whole scale"
        )
    return CompactConfig(channels=channels, num_feat=first[0], num_conv=(convs - 3) // 2, scale=scale)


def _alpha_channel(image: Image.Image) -> Image.Image | None:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA").getchannel("A")
    return None


def _pad_to_multiple(pixels: np.ndarray, multiple: int) -> np.ndarray:
    """Repeat the last row/column so both sides divide by `multiple`; the extra output is cropped off."""
    pad_h, pad_w = (-pixels.shape[0]) % multiple, (-pixels.shape[1]) % multiple
    if not pad_h and not pad_w:
        return pixels
    return np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _tile_geometry(tile: int, overlap: int, multiple: int, size: tuple[int, ...]) -> tuple[int, int]:
    """Tile and overlap in input pixels, rounded to the model's input multiple so every tile starts on one.

    A pixel-unshuffled net works at 1/multiple resolution, so each conv reaches `multiple` times
    further in input pixels; its overlap grows alike, up to half a tile.
    """
    if tile < 0 or overlap < 0:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must not be negative")
    if tile == 0:
        return max(size), 0
    tile = max(tile - tile % multiple, multiple)
    if overlap >= tile:
        raise ValueError(f"the tile overlap ({overlap}) must be smaller than the tile ({tile})")
    overlap = min(overlap * multiple, max(overlap, tile // 2))
    return tile, overlap - overlap % multiple


def _axis_tiles(
    length: int, tile: int, overlap: int, scale: int, unit: int
) -> list[tuple[int, int, torch.Tensor]]:
    """(start, size, output weight) per tile along one axis; the weights sum to 1 at every output pixel."""
    size = min(tile, length)
    starts = _tile_starts(length, size, overlap, unit)
    raw = [_tile_weight(size * scale, overlap * scale, start > 0, start + size < length) for start in starts]
    total = torch.zeros(length * scale)
    for start, weight in zip(starts, raw):
        total[start * scale : (start + size) * scale] += weight
    return [
        (start, size, weight / total[start * scale : (start + size) * scale])
        for start, weight in zip(starts, raw)
    ]


def _tile_starts(length: int, size: int, overlap: int, unit: int) -> list[int]:
    """Evenly spaced starts, on multiples of `unit`, with neighbours sharing at least `overlap`.

    `length`, `size` and `overlap` are multiples of `unit` already.
    """
    if size >= length:
        return [0]
    span, stride = (length - size) // unit, (size - overlap) // unit
    gaps = -(-span // stride)
    return [index * span // gaps * unit for index in range(gaps + 1)]


def _tile_weight(size: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """1 inside; towards a cut edge, 0 over the outer quarter of the overlap and a ramp over its middle half.

    The outer quarter is where zero padding at the cut edge distorts the tile's output, so the
    neighbour alone decides there; the ramp hides any difference that reaches further in.
    """
    weight = torch.ones(size)
    if overlap == 0:
        return weight
    position = torch.arange(size, dtype=torch.float32) + 0.5
    fade = ((position - overlap / 4) / (overlap / 2)).clamp(0, 1)
    if fade_in:
        weight = torch.minimum(weight, fade)
    if fade_out:
        weight = torch.minimum(weight, fade.flip(0))
    # A floor keeps every pixel's weight sum above zero whatever the tile spacing; it is too small to show.
    return weight.clamp_(min=1e-3)


def _finished_rows(strips: Iterator[tuple[int, torch.Tensor]]) -> Iterator[tuple[int, torch.Tensor]]:
    """Sum overlapping row strips; yield each run of rows once no later strip can add to it."""
    pending: torch.Tensor | None = None
    pending_top = 0
    for top, strip in strips:
        if pending is not None:
            done = top - pending_top
            yield pending_top, pending[:, :done]
            carried = pending[:, done:]
            strip[:, : carried.shape[1]] += carried
        pending, pending_top = strip, top
    if pending is not None:
        yield pending_top, pending


def _to_uint8(values: torch.Tensor) -> np.ndarray:
    return (values * 255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
