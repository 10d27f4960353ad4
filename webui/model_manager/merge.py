"""Merge two or three checkpoints of one architecture into a new `.safetensors` file, as A1111 does.

Weighted sum blends two models: A·(1−M) + B·M. Add difference transplants what turned C
into B onto A: A + (B − C)·M; with A an inpainting model, B a fine-tune and C the fine-tune's
base, the result is an inpainting version of B.

Safetensors inputs are read a tensor at a time, so at most the merged model plus one tensor
of each input is in memory; pickles (`.ckpt`) cannot be read piecewise and are loaded whole.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from webui.model_manager.detect import UNET_PREFIX, VAE_PREFIX, ModelSpec, detect_model
from webui.model_manager.ema import EMA_DECAY_KEY, EMA_UPDATES_KEY, ema_key, has_ema, is_ema_key
from webui.model_manager.load import spec_with_yaml_override
from webui.model_manager.state_dict import (
    SAFETENSORS_SUFFIXES,
    CheckpointError,
    open_safetensors,
    read_state_dict,
)

log = logging.getLogger(__name__)

OUTPUT_SUFFIX = ".safetensors"
SAVE_DTYPES: dict[str, torch.dtype | None] = {"fp16": torch.float16, "fp32": torch.float32, "keep": None}
# The UNet's first convolution: 4 input channels normally, 9 in inpainting models.
INPUT_CONV_KEY = f"{UNET_PREFIX}input_blocks.0.0.weight"
# Index buffers some exporters save; blending indices corrupts them (A1111 skips them too).
_NEVER_BLENDED_SUFFIXES = ("position_ids",)
# The autoencoder proper; VAE training files also carry discriminator ("loss.") weights.
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")

HashFunction = Callable[[Path], str | None]
ProgressFunction = Callable[[int, int], None]


class MergeMethod(str, Enum):
    WEIGHTED_SUM = "weighted_sum"
    ADD_DIFFERENCE = "add_difference"

    @property
    def label(self) -> str:
        """A1111's name for the method, as shown in its UI and its merge metadata."""
        return {"weighted_sum": "Weighted sum", "add_difference": "Add difference"}[self.value]


@dataclass(frozen=True)
class MergeRecipe:
    """What to merge and how; invalid combinations are refused when the recipe is made."""

    primary: Path
    secondary: Path
    tertiary: Path | None
    method: MergeMethod
    multiplier: float
    name: str  # the output file name, with or without ".safetensors"
    save_dtype: str = "fp16"
    vae: Path | None = None  # an LDM-layout VAE to bake in, replacing the merged one
    overwrite: bool = False

    def __post_init__(self) -> None:
        # Normalise in place: the dataclass is frozen so that a validated recipe stays valid.
        set_field = object.__setattr__
        set_field(self, "primary", Path(self.primary))
        set_field(self, "secondary", Path(self.secondary))
        set_field(self, "tertiary", None if self.tertiary is None else Path(self.tertiary))
        set_field(self, "vae", None if self.vae is None else Path(self.vae))
        set_field(self, "method", _parse_method(self.method))
        set_field(self, "multiplier", _parse_multiplier(self.multiplier, self.method))
        set_field(self, "name", _parse_name(self.name))
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save dtype {self.save_dtype!r}: choose one of {', '.join(SAVE_DTYPES)}")
        if self.method is MergeMethod.ADD_DIFFERENCE and self.tertiary is None:
            raise ValueError("add difference needs a tertiary model C: the result is A + (B - C) × M")
        if self.method is MergeMethod.WEIGHTED_SUM and self.tertiary is not None:
            raise ValueError("weighted sum merges two models; leave the tertiary model C empty")

    @property
    def file_name(self) -> str:
        return self.name + OUTPUT_SUFFIX

    @property
    def inputs(self) -> tuple[Path, ...]:
        """The models in the order A, B[, C]."""
        return (self.primary, self.secondary) + ((self.tertiary,) if self.tertiary else ())


def _parse_method(method: MergeMethod | str) -> MergeMethod:
    try:
        return MergeMethod(method)
    except ValueError:
        choices = ", ".join(m.value for m in MergeMethod)
        raise ValueError(f"unknown merge method {method!r}; choose one of {choices}") from None


def _parse_multiplier(multiplier: float, method: MergeMethod) -> float:
    try:
        value = float(multiplier)
    except (TypeError, ValueError):
        raise ValueError(f"the multiplier must be a number, not {multiplier!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"the multiplier must be a finite number, not {value}")
    if method is MergeMethod.WEIGHTED_SUM and not 0.0 <= value <= 1.0:
        raise ValueError(f"a weighted sum's multiplier is between 0 and 1, not {value}")
    return value


def _parse_name(name: str) -> str:
    name = str(name).strip()
    if name.lower().endswith(OUTPUT_SUFFIX):
        name = name[: -len(OUTPUT_SUFFIX)]
    if not name or name in (".", ".."):
        raise ValueError("the merged model needs a name")
    if any(separator in name for separator in ("/", "\\", "\0")):
        raise ValueError(f"the name {name!r} must be a plain file name, without path separators")
    if name.startswith("."):
        # The checkpoint scanner skips hidden files, so the model would never appear in the list.
        raise ValueError(f"the name {name!r} must not start with a dot")
    return name


@dataclass
class _Source:
    """One input checkpoint: its tensor shapes up front, the tensors themselves on demand."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]
    read: Callable[[str], torch.Tensor] = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def tensor(self, key: str) -> torch.Tensor:
        try:
            return self.read(key)
        except (SafetensorError, OSError, RuntimeError) as error:
            raise CheckpointError(f"{self.name}: cannot read tensor {key} (corrupt?): {error}") from error


def merge_checkpoints(
    recipe: MergeRecipe,
    out_dir: Path,
    hashes: HashFunction | None = None,
    *,
    progress: ProgressFunction | None = None,
) -> Path:
    """Write `<out_dir>/<name>.safetensors` and return its path; nothing is written on failure.

    `hashes(path)` gives an input's sha256 for the merge metadata (e.g. `HashCache.sha256`);
    `progress(done, total)` is called after each tensor.
    """
    out_dir = Path(out_dir)
    target = out_dir / recipe.file_name
    _check_target(recipe, target)
    with ExitStack() as stack:
        sources = [_open_source(path, stack) for path in recipe.inputs]
        specs = [_detect(source) for source in sources]
        _check_compatible(sources, specs)
        vae = _read_vae(recipe.vae, sources[0]) if recipe.vae else {}
        metadata = _metadata(recipe, sources, specs[0], hashes)
        tensors = _merge_tensors(recipe, sources, vae, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(tensors, metadata, target)
    log.info("merged %s into %s (%s)", " + ".join(s.name for s in sources), target, specs[0].kind)
    return target


def _check_target(recipe: MergeRecipe, target: Path) -> None:
    if target.exists() and not recipe.overwrite:
        raise ValueError(f"{target.name} already exists in {target.parent}; choose another name")
    resolved = target.resolve()
    for path in recipe.inputs + ((recipe.vae,) if recipe.vae else ()):
        if path.resolve() == resolved:
            raise ValueError(f"{target.name} is one of the inputs; the merge must not replace it")


def _open_source(path: Path, stack: ExitStack) -> _Source:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: no such file")
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        state = read_state_dict(path)
        shapes = {key: tuple(value.shape) for key, value in state.tensors.items()}
        return _Source(path, shapes, state.metadata, state.tensors.__getitem__)
    handle = stack.enter_context(open_safetensors(path))
    keys: list[str] = handle.keys()  # the handle itself is not iterable
    shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in keys}
    metadata = dict(handle.metadata() or {})
    if not shapes:
        raise CheckpointError(f"{path.name}: the file holds no tensors")
    return _Source(path, shapes, metadata, handle.get_tensor)


def _detect(source: _Source) -> ModelSpec:
    # Detection reads only keys and shapes, so storage-less tensors spare reading the weights.
    placeholders = {key: torch.empty(shape, device="meta") for key, shape in source.shapes.items()}
    spec = detect_model(placeholders, source.metadata, source.name)
    # A1111's same-named .yaml may declare v-prediction; the merge must keep declaring it.
    return spec_with_yaml_override(spec, source.path)


def _check_compatible(sources: list[_Source], specs: list[ModelSpec]) -> None:
    primary, primary_spec = sources[0], specs[0]
    for source, spec in zip(sources[1:], specs[1:]):
        if spec.arch is not primary_spec.arch:
            raise CheckpointError(
                f"cannot merge {primary.name} ({primary_spec.kind}) with {source.name} ({spec.kind}): "
                "the models must have the same architecture"
            )
        if spec.is_inpainting and not primary_spec.is_inpainting:
            raise CheckpointError(
                f"{source.name} is an inpainting model but the primary model {primary.name} is not; "
                "to merge an inpainting model with normal ones, make it the primary model (A)"
            )
        if spec.prediction_type != primary_spec.prediction_type:
            log.warning(
                "merging %s (%s) with %s (%s): the result keeps %s's prediction type",
                primary.name,
                primary_spec.kind,
                source.name,
                spec.kind,
                primary.name,
            )
        _check_shapes(primary, source)
    if len(sources) == 3 and specs[1].is_inpainting != specs[2].is_inpainting:
        raise CheckpointError(
            f"{sources[1].name} ({specs[1].kind}) and {sources[2].name} ({specs[2].kind}): "
            "the secondary and tertiary models must both be inpainting models or both normal ones"
        )


def _check_shapes(primary: _Source, other: _Source) -> None:
    """Refuse same-architecture models of different sizes before any tensor is read."""
    for key, shape in primary.shapes.items():
        other_shape = other.shapes.get(key)
        if other_shape is None or other_shape == shape or _fits_leading_channels(key, shape, other_shape):
            continue
        raise CheckpointError(
            f"cannot merge {primary.name} with {other.name}: tensor {key} has shape "
            f"{list(shape)} in the first but {list(other_shape)} in the second"
        )


def _fits_leading_channels(key: str, shape: tuple[int, ...], other_shape: tuple[int, ...]) -> bool:
    """An inpainting A's input conv takes a normal model's 4 channels first, then 5 of its own."""
    return (
        key == INPUT_CONV_KEY
        and len(shape) == len(other_shape) == 4
        and shape[0] == other_shape[0]
        and shape[2:] == other_shape[2:]
        and other_shape[1] < shape[1]
    )


def _read_vae(path: Path, primary: _Source) -> dict[str, torch.Tensor]:
    """An LDM-layout VAE (bare, or inside a full checkpoint) that fits the primary model's VAE."""
    state = read_state_dict(path)
    vae = {
        key.removeprefix(VAE_PREFIX): value
        for key, value in state.tensors.items()
        if key.removeprefix(VAE_PREFIX).startswith(_VAE_PARTS)
    }
    wanted = {
        key.removeprefix(VAE_PREFIX): shape
        for key, shape in primary.shapes.items()
        if key.startswith(VAE_PREFIX) and key.removeprefix(VAE_PREFIX).startswith(_VAE_PARTS)
    }
    missing = sorted(set(wanted) - set(vae))
    if missing:
        raise CheckpointError(
            f"{path.name}: not a VAE in the layout {primary.name} uses ({len(missing)} of its "
            f"{len(wanted)} VAE tensors missing, e.g. {missing[0]}); diffusers-format VAEs cannot be baked in"
        )
    for key, shape in wanted.items():
        if tuple(vae[key].shape) != shape:
            raise CheckpointError(
                f"{path.name}: VAE tensor {key} has shape {list(vae[key].shape)}, "
                f"but {primary.name} needs {list(shape)}"
            )
    return {key: vae[key] for key in wanted}


def _merge_tensors(
    recipe: MergeRecipe,
    sources: list[_Source],
    vae: dict[str, torch.Tensor],
    progress: ProgressFunction | None,
) -> dict[str, torch.Tensor]:
    primary = sources[0]
    keys = [key for key in primary.shapes if not is_ema_key(key)]
    # The result has EMA weights when any input has: each input gives its EMA tensor, or its
    # raw one when it has none, so the merged EMA is the merge of what each model samples with.
    averaged = [key for key in keys if key.startswith(UNET_PREFIX)] if _any_ema(sources) else []
    total = len(keys) + len(averaged)
    merged: dict[str, torch.Tensor] = {}
    for done, key in enumerate(keys, start=1):
        baked = vae.get(key.removeprefix(VAE_PREFIX)) if key.startswith(VAE_PREFIX) else None
        if baked is not None:
            merged[key] = _copy(baked, SAVE_DTYPES[recipe.save_dtype] or primary.tensor(key).dtype)
        else:
            merged[key] = _merge_key(recipe, sources, key)
        if progress is not None:
            progress(done, total)
    for done, key in enumerate(averaged, start=len(keys) + 1):
        target = ema_key(key)
        merged[target] = _merge_key(
            recipe, sources, key, lambda s, k=target, raw=key: k if k in s.shapes else raw
        )
        if progress is not None:
            progress(done, total)
    for counter in (EMA_DECAY_KEY, EMA_UPDATES_KEY) if averaged else ():
        owner = next((source for source in sources if counter in source.shapes), None)
        if owner is not None:
            merged[counter] = owner.tensor(counter).clone()
    return merged


def _any_ema(sources: list[_Source]) -> bool:
    return any(has_ema(source.shapes) for source in sources)


def _merge_key(
    recipe: MergeRecipe,
    sources: list[_Source],
    key: str,
    source_key: Callable[[_Source], str] | None = None,
) -> torch.Tensor:
    """`key` merged across the sources; `source_key(source)` names the tensor each one gives
    (by default `key` itself)."""
    keys = [source_key(source) if source_key else key for source in sources]
    a = sources[0].tensor(keys[0])
    target = SAVE_DTYPES[recipe.save_dtype] or a.dtype
    others = list(zip(sources[1:], keys[1:]))
    # Keys only in A are copied, as are keys that the other models lack (B − C counts as zero).
    if key.endswith(_NEVER_BLENDED_SUFFIXES) or any(name not in source.shapes for source, name in others):
        return _copy(a, target)
    b, *rest = (source.tensor(name) for source, name in others)
    c = rest[0] if rest else None
    if not all(t.is_floating_point() for t in (a, b, *rest)):
        return _copy(a, target)
    if b.shape == a.shape:
        return _cast(_blend(recipe, a.float(), b.float(), c), target)
    # An inpainting A with normal B (and C): blend the channels they share, keep A's extra ones.
    result = a.to(torch.float32, copy=True)
    shared = b.shape[1]
    result[:, :shared] = _blend(recipe, result[:, :shared], b.float(), c)
    return _cast(result, target)


def _blend(recipe: MergeRecipe, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """The merge formula, in float32 whatever the inputs' dtype."""
    m = recipe.multiplier
    if recipe.method is MergeMethod.WEIGHTED_SUM:
        # Not a + (b − a)·m: this form gives exactly A at m = 0 and exactly B at m = 1.
        return a * (1.0 - m) + b * m
    assert c is not None  # MergeRecipe guarantees C for add difference
    return a + (b - c.float()) * m


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype).contiguous()


def _copy(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Always a new tensor: pickled inputs may share storage between keys, which safetensors refuses.
    if not tensor.is_floating_point():
        return tensor.clone().contiguous()
    return tensor.to(dtype, copy=True).contiguous()


def _metadata(
    recipe: MergeRecipe, sources: list[_Source], primary_spec: ModelSpec, hashes: HashFunction | None
) -> dict[str, str]:
    recipe_info: dict[str, Any] = {
        "type": "webui",
        "method": recipe.method.value,
        "interp_method": recipe.method.label,
        "multiplier": recipe.multiplier,
        "save_dtype": recipe.save_dtype,
        "custom_name": recipe.name,
        "architecture": primary_spec.kind,
        "is_inpainting": primary_spec.is_inpainting,
        "bake_in_vae": recipe.vae.name if recipe.vae else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    models: dict[str, Any] = {}
    for role, index in (("primary", 0), ("secondary", 1), ("tertiary", 2)):
        source = sources[index] if index < len(sources) else None
        digest = hashes(source.path) if source is not None and hashes is not None else None
        recipe_info[f"{role}_model_name"] = source.path.stem if source else None
        recipe_info[f"{role}_model_hash"] = digest
        if source is not None:
            models.update(_lineage(source, digest))
    metadata = {
        "format": "pt",
        "sd_merge_recipe": json.dumps(recipe_info),
        "sd_merge_models": json.dumps(models),
    }
    if primary_spec.prediction_type == "v_prediction":
        # A's v-prediction may have been declared only in its metadata; keep declaring it.
        metadata["modelspec.prediction_type"] = "v"
    return metadata


def _lineage(source: _Source, digest: str | None) -> dict[str, Any]:
    """The input itself and, if it is a merge too, the models it was merged from."""
    models = _json_object(source.metadata.get("sd_merge_models"))
    entry: dict[str, Any] = {"name": source.path.stem}
    if digest:
        entry["sha256"] = digest
    inner_recipe = _json_object(source.metadata.get("sd_merge_recipe"))
    if inner_recipe:
        entry["sd_merge_recipe"] = inner_recipe
    models[digest or source.path.stem] = entry
    return models


def _json_object(text: str | None) -> dict[str, Any]:
    # Metadata from other tools is informational; a malformed entry must not stop a merge.
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _write_atomically(tensors: dict[str, torch.Tensor], metadata: dict[str, str], target: Path) -> None:
    # A hidden temporary in the same folder: the scanner skips it, and the rename is atomic.
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        save_file(tensors, str(temporary), metadata=metadata)
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
