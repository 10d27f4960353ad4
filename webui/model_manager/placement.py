"""Moving a loaded model's tensors between host memory and the compute device, in place.

The modules stay the same objects: only each parameter's and buffer's storage moves, so a
RAM-warm model becomes active without rebuilding anything. On CUDA, host copies live in
pinned memory and copies are issued non-blocking, then synchronised once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from webui.model_manager.load import LoadedModel

HOST = torch.device("cpu")


def model_modules(model: LoadedModel) -> list[torch.nn.Module]:
    return [model.unet, model.vae, *model.text_encoders]


def module_tensors(module: torch.nn.Module, recurse: bool = True) -> Iterator[torch.Tensor]:
    yield from module.parameters(recurse=recurse)
    yield from (buffer for buffer in module.buffers(recurse=recurse) if buffer is not None)


def model_bytes(model: LoadedModel) -> int:
    return sum(t.numel() * t.element_size() for m in model_modules(model) for t in module_tensors(m))


def move_model(model: LoadedModel, device: torch.device, pin: bool = False) -> int:
    """Move every tensor to `device` (pinned when it goes to the host and `pin`); returns the bytes."""
    moved = 0
    for module in model_modules(model):
        moved += move_tensors(module_tensors(module), device, pin)
    synchronize(device, model.device)
    model.device = device
    return moved


def move_tensors(tensors: Iterator[torch.Tensor], device: torch.device, pin: bool = False) -> int:
    moved = 0
    for tensor in tensors:
        if tensor.device == device and not (pin and device.type == "cpu" and not tensor.is_pinned()):
            continue
        tensor.data = _copy_to(tensor.data, device, pin)
        moved += tensor.numel() * tensor.element_size()
    return moved


def _copy_to(tensor: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    if device.type == "cpu" and pin:
        host = torch.empty(tensor.shape, dtype=tensor.dtype, device=HOST, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        return host
    return tensor.to(device, non_blocking=tensor.is_pinned() or tensor.device.type != "cpu")


def synchronize(*devices: torch.device) -> None:
    """Wait for non-blocking copies, so that timings are true and host copies are complete."""
    if any(d.type == "cuda" for d in devices) and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    if any(d.type == "mps" for d in devices):
        torch.mps.synchronize()


def pin_available(device: torch.device) -> bool:
    """Pinned host memory only helps (and only exists) with a CUDA device."""
    return device.type == "cuda" and torch.cuda.is_available()
