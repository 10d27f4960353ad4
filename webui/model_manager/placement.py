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
PINNED_CHUNK_BYTES = 1 << 28  # 256 MiB
_ALIGNMENT = 512  # bytes; keeps every view aligned for any dtype and for fast DMA


def model_modules(model: LoadedModel) -> list[torch.nn.Module]:
    # SD 3's parts are these same modules (denoiser, VAE, CLIP-L, CLIP-G, T5): nothing is left out.
    return [model.unet, model.vae, *model.text_encoders]


def module_tensors(module: torch.nn.Module, recurse: bool = True) -> Iterator[torch.Tensor]:
    yield from module.parameters(recurse=recurse)
    yield from (buffer for buffer in module.buffers(recurse=recurse) if buffer is not None)


def model_bytes(model: LoadedModel) -> int:
    return sum(module_bytes(module) for module in model_modules(model))


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module_tensors(module))


def move_model(model: LoadedModel, device: torch.device, pin: bool = False) -> int:
    """Move every tensor to `device` (into pinned memory when it goes to the host and `pin`).

    Returns the bytes moved.
    """
    tensors = [t for module in model_modules(model) for t in module_tensors(module)]
    to_pinned = pin and device.type == "cpu"
    tensors = [t for t in tensors if t.device != device or (to_pinned and not t.is_pinned())]
    if to_pinned:
        destinations = host_views(tensors)
        for tensor, destination in zip(tensors, destinations, strict=True):
            destination.copy_(tensor.data, non_blocking=True)
    else:
        destinations = [t.data.to(device, non_blocking=t.data.is_pinned()) for t in tensors]
    synchronize(device, model.device)
    for tensor, destination in zip(tensors, destinations, strict=True):
        tensor.data = destination
    model.placed_on(device)
    return sum(t.numel() * t.element_size() for t in tensors)


def host_views(
    tensors: list[torch.Tensor], chunk_bytes: int = PINNED_CHUNK_BYTES, pin: bool = True
) -> list[torch.Tensor]:
    """Empty (pinned) host tensors shaped like `tensors`, carved out of a few large blocks.

    PyTorch's pinned allocator rounds every block up to a power of two, so one block per
    tensor would cost about a third more RAM than the model (and thousands of slow pinned
    allocations); power-of-two-sized chunks lose nothing but the tail of the last one.
    """
    largest = max((_aligned(t.numel() * t.element_size()) for t in tensors), default=0)
    chunk_bytes = max(chunk_bytes, 1 << max(largest - 1, 0).bit_length())
    # First fit: small tensors fill the room big ones leave at the end of a chunk.
    chunks: list[list[tuple[int, torch.Tensor]]] = []
    used: list[int] = []
    for tensor in tensors:
        size = _aligned(tensor.numel() * tensor.element_size())
        index = next((i for i, u in enumerate(used) if u + size <= chunk_bytes), len(chunks))
        if index == len(chunks):
            chunks.append([])
            used.append(0)
        chunks[index].append((used[index], tensor))
        used[index] += size
    placed: dict[int, torch.Tensor] = {}
    for members, span in zip(chunks, used, strict=True):
        block = torch.empty(1 << max(span - 1, 0).bit_length(), dtype=torch.uint8, pin_memory=pin)
        for offset, tensor in members:
            nbytes = tensor.numel() * tensor.element_size()
            placed[id(tensor)] = block[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
    return [placed[id(tensor)] for tensor in tensors]


def _aligned(nbytes: int) -> int:
    return (nbytes + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT


def synchronize(*devices: torch.device) -> None:
    """Wait for non-blocking copies, so that timings are true and host copies are complete."""
    if any(d.type == "cuda" for d in devices) and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    if any(d.type == "mps" for d in devices):
        torch.mps.synchronize()


def pin_available(device: torch.device) -> bool:
    """Pinned host memory only helps (and only exists) with a CUDA device."""
    return device.type == "cuda" and torch.cuda.is_available()
