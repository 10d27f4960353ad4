"""Read a checkpoint file into tensors without ever executing code from it."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
# safetensors' dtype names; shape-only reads keep the dtype so that checks can see it.
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# torch.save writes a zip archive; the legacy format is a bare pickle, which starts with PROTO.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message says why and names the file.

    `field` names the request field that chose the file, when one did.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class StateDict:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


@contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """`safe_open`, with a damaged file reported as a CheckpointError that names it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except CheckpointError:
        raise  # the caller's own verdict on a readable file (e.g. "cannot merge SD1 with SDXL")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{Path(path).name}: not a readable .safetensors file (truncated or corrupt?): {error}"
        ) from error


def load_weights_only_pickle(path: Path, error: type[CheckpointError] = CheckpointError) -> Any:
    """Unpickle a .ckpt/.pt/.bin with torch's weights-only loader: code in the file never runs."""
    _check_pickle_container(path, error)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as refused:
        raise error(
            f"{path.name}: refused to load: this pickle tries to run code or holds objects other than "
            "tensors. Convert it to .safetensors with a tool you trust, or get a .safetensors copy."
        ) from refused
    except (RuntimeError, EOFError, OSError, ValueError) as broken:
        raise error(f"{path.name}: not a readable file (truncated or corrupt?): {broken}") from broken


def _check_pickle_container(path: Path, error: type[CheckpointError]) -> None:
    """Refuse bytes that are neither of torch's formats before torch reads them: its weights-only
    loader would call any such file a pickle that "tries to run code", which misleads."""
    try:
        with Path(path).open("rb") as handle:
            head = handle.read(4)
    except OSError as unreadable:
        raise error(f"{path.name}: cannot read: {unreadable.strerror or unreadable}") from unreadable
    if not head:
        raise error(f"{path.name}: the file is empty")
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        raise error(f"{path.name}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")


def read_state_dict(path: Path) -> StateDict:
    """Tensors and header metadata of a `.safetensors` or weights-only pickle file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: no such file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return StateDict(_read_pickle(path))
    raise CheckpointError(f"{path.name}: not a checkpoint (expected one of {', '.join(CHECKPOINT_SUFFIXES)})")


def read_tensor_shapes(path: Path) -> StateDict:
    """Keys and shapes only, as meta tensors: a multi-GB `.safetensors` header reads in milliseconds.

    Pickles have no separate header, so they are read whole (weights-only) and their tensors
    turned into meta tensors; the caller caches what it derives from them.
    """
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        state = read_state_dict(path)
        return StateDict({key: value.to("meta") for key, value in state.tensors.items()}, state.metadata)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: no such file")
    with open_safetensors(path) as handle:
        metadata = dict(handle.metadata() or {})
        names = handle.keys()  # a safe_open handle is not iterable itself
        tensors = {key: _meta_tensor(handle.get_slice(key)) for key in names}
    if not tensors:
        raise CheckpointError(f"{path.name}: the file holds no tensors")
    return StateDict(tensors, metadata)


def _meta_tensor(view: Any) -> torch.Tensor:
    # A dtype torch has no name for here counts as not floating point: no model can use it.
    dtype = _SAFETENSORS_DTYPES.get(view.get_dtype(), torch.uint8)
    return torch.empty(view.get_shape(), dtype=dtype, device="meta")


def read_tensors_with_prefix(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Only the tensors under `prefix` (e.g. a checkpoint's VAE): safetensors reads just those bytes."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {k: v for k, v in read_state_dict(path).tensors.items() if k.startswith(prefix)}
    with open_safetensors(path) as handle:
        names = [key for key in handle.keys() if key.startswith(prefix)]  # noqa: SIM118
        return {key: handle.get_tensor(key) for key in names}


def _read_safetensors(path: Path) -> StateDict:
    with open_safetensors(path) as handle:
        metadata = dict(handle.metadata() or {})
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path.name}: not a readable .safetensors file (truncated or corrupt?): {error}"
        ) from error
    if not tensors:
        raise CheckpointError(f"{path.name}: the file holds no tensors")
    return StateDict(tensors, metadata)


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    loaded = load_weights_only_pickle(path)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path.name}: holds a {type(loaded).__name__}, not a dict of tensors")
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path.name}: the file holds no tensors")
    return tensors
