"""Resizing finished images for the Extras tab and endpoints: by a factor or to a size.

The plain resamplers always exist; `Upscalers` adds one ESRGAN-family model per file in a folder
(A1111's models/ESRGAN), loaded on first use and kept while it is among the last few used.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps

from webui.engine.request import GenerationError
from webui.model_manager.state_dict import CheckpointError
from webui.model_manager.upscaler_models import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    UPSCALER_SUFFIXES,
    UpscalerModel,
    load_upscaler_model,
)

# A1111 lists its plain resamplers as upscalers, before the model ones.
PIXEL_UPSCALERS: dict[str, Image.Resampling | None] = {
    "None": None,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
MAX_RESULT_SIDE = 8192
MAX_MODEL_PASSES = 3  # as A1111: a 2x model reaches 8x


class Upscalers:
    """The upscalers a user can pick: the plain resamplers, then one per model file in `folder`
    (or folders: A1111's ESRGAN and RealESRGAN, ComfyUI's upscale_models, extra ones)."""

    def __init__(
        self,
        folder: Path | Sequence[Path] | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_loaded: int = 1,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
    ) -> None:
        many = () if folder is None else (folder,) if isinstance(folder, str | Path) else tuple(folder)
        self.folders = tuple(Path(each) for each in many)
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_loaded = max(max_loaded, 1)
        self.tile = tile
        self.overlap = overlap
        self._lock = threading.Lock()  # API requests run in worker threads
        self._files: dict[str, Path] = {}
        self._loaded: OrderedDict[str, UpscalerModel] = OrderedDict()
        self.refresh()

    def refresh(self) -> None:
        """Rescan the folder; loaded models are dropped, since their files may have changed."""
        files: dict[str, Path] = {}
        for folder in self.folders:  # a name in an earlier folder wins
            files.update({name: path for name, path in _scan(folder).items() if name not in files})
        with self._lock:
            self._files = files
            self._loaded.clear()

    def names(self) -> list[str]:
        return list(PIXEL_UPSCALERS) + list(self._files)

    def model_files(self) -> dict[str, Path]:
        """Model upscaler name -> its file."""
        return dict(self._files)

    def loaded_names(self) -> list[str]:
        """Models in memory now, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def unload(self) -> None:
        with self._lock:
            self._loaded.clear()

    def model(self, name: str, field: str = "upscaler_1") -> UpscalerModel:
        """The loaded model for `name`, loading it (and dropping the least recently used) if needed."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            path = self._files.get(name)
            if path is None:
                raise self._unknown(name, field)
            try:
                model = load_upscaler_model(
                    path, self.device, self.dtype, tile=self.tile, overlap=self.overlap
                )
            except CheckpointError as error:
                raise CheckpointError(str(error), field) from error
            model.name = name
            self._loaded[name] = model
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return model

    def upscale(
        self,
        image: Image.Image,
        name: str,
        *,
        scale: float | None = None,
        size: tuple[int, int] | None = None,
        crop: bool = True,
        field: str = "upscaler_1",
    ) -> Image.Image:
        """Resize with a named upscaler; with `size` and `crop`, fill the size and crop the overflow.

        A model runs as often as the factor needs (at most MAX_MODEL_PASSES times), then Lanczos
        brings its result to the exact size.
        """
        if name not in PIXEL_UPSCALERS and name not in self._files:
            raise self._unknown(name, field)
        target = target_size(image, scale=scale, size=size)
        if name in PIXEL_UPSCALERS:
            return _resample(image, PIXEL_UPSCALERS[name], target, fit=size is not None and crop)
        upscaled = _run_model(self.model(name, field), image, target)
        return _resample(upscaled, Image.Resampling.LANCZOS, target, fit=size is not None and crop)

    def blend(
        self,
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
        result = self.upscale(image, first, scale=scale, size=size, crop=crop)
        if second != "None" and second_visibility > 0:
            other = self.upscale(image, second, scale=scale, size=size, crop=crop, field="upscaler_2")
            if result.size != other.size or result.mode != other.mode:
                other = other.convert(result.mode).resize(result.size)
            result = Image.blend(result, other, min(second_visibility, 1.0))
        return result

    def _unknown(self, name: str, field: str) -> GenerationError:
        return GenerationError(f"unknown upscaler {name!r}; choose one of: {', '.join(self.names())}", field)


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
    """`Upscalers.upscale` with the plain resamplers only."""
    return Upscalers().upscale(image, upscaler, scale=scale, size=size, crop=crop)


def _resample(
    image: Image.Image, resample: Image.Resampling | None, target: tuple[int, int], *, fit: bool
) -> Image.Image:
    """To `target`: stretched, or with `fit` scaled to cover it and the overflow cropped evenly."""
    if resample is None or target == image.size:
        return image.copy()
    if fit:
        return ImageOps.fit(image, target, method=resample)
    return image.resize(target, resample=resample)


def _run_model(model: UpscalerModel, image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Run the model until the image covers `target`: once at least, unless shrinking (as A1111).

    A later pass that would overshoot gets its input shrunk first, so its output just covers the
    target instead of being up to `scale` times larger than needed.
    """
    factor = max(target[0] / image.width, target[1] / image.height)
    if factor < 1:
        return image
    needed = (math.ceil(image.width * factor), math.ceil(image.height * factor))
    for index in range(_passes(model.scale, factor)):
        if index > 0 and image.width * model.scale > needed[0] and image.height * model.scale > needed[1]:
            smaller = (math.ceil(needed[0] / model.scale), math.ceil(needed[1] / model.scale))
            image = image.resize(smaller, Image.Resampling.LANCZOS)
        image = model.upscale(image)
    return image


def _passes(model_scale: int, factor: float) -> int:
    """A 1x model (denoise, de-JPEG) runs once; a larger one until its total scale reaches `factor`."""
    passes = 1
    while model_scale > 1 and model_scale**passes < factor and passes < MAX_MODEL_PASSES:
        passes += 1
    return passes


def _scan(folder: Path) -> dict[str, Path]:
    """Model name -> file: the stem, or the file name where stems clash; sorted case-blind."""
    if not folder.is_dir():
        return {}
    # .safetensors sorts first, so it keeps the plain stem when a .pth copy sits beside it.
    rank = {suffix: index for index, suffix in enumerate(UPSCALER_SUFFIXES)}
    paths = sorted(
        (path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in rank),
        key=lambda path: (path.stem.lower(), rank[path.suffix.lower()], str(path)),
    )
    files: dict[str, Path] = {}
    for path in paths:
        for name in (path.stem, path.name, str(path.relative_to(folder))):
            if name not in files and name not in PIXEL_UPSCALERS:
                files[name] = path
                break
    return dict(sorted(files.items(), key=lambda item: item[0].lower()))
