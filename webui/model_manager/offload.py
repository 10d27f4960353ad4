"""Low-memory modes: keep a model in host memory and bring only what is working to the GPU.

- text-offload: the denoiser and the VAE stay on the device; each text encoder visits it only to
  encode, and goes back before denoising (SD 3's T5 alone is 4.7 GB in fp8, 9.5 GB in fp16).
- medvram: one component at a time (a text encoder, the UNet or the VAE) is on the device;
  the next one to run sends the previous one back.
- lowvram: each layer's weights visit the device only for that layer's forward.

Both use torch's public forward hooks and keep one host copy of every weight, so sending
weights back is a pointer swap, not a copy; removing the hooks restores the model exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch.utils.hooks import RemovableHandle

from webui.model_manager.load import LoadedModel
from webui.model_manager.placement import HOST, model_modules, module_tensors, pin_available

_GIB = 1 << 30
_ENCODING_ROOM = _GIB // 2  # a text encoder's activations for one batch of prompts


class MemoryMode(str, Enum):
    AUTO = "auto"
    NORMAL = "normal"
    TEXT_OFFLOAD = "text-offload"
    MEDVRAM = "medvram"
    LOWVRAM = "lowvram"


def choose_memory_mode(
    requested: MemoryMode,
    device: torch.device,
    model_bytes: int,
    vram_bytes: int,
    encoder_bytes: Sequence[int] = (),
) -> MemoryMode:
    """`auto`: normal when the model and room to work fit in the VRAM budget, else the lighter modes.

    `encoder_bytes` (each text encoder's size) allows text-offload: chosen when the denoiser and
    VAE with room to work fit, and so does the largest encoder beside them while it encodes."""
    if requested is not MemoryMode.AUTO:
        return requested
    if device.type != "cuda":
        return MemoryMode.NORMAL  # CPU has one memory; MPS shares the host's
    if model_bytes + _working_room(model_bytes) <= vram_bytes:
        return MemoryMode.NORMAL
    if encoder_bytes:
        resident = model_bytes - sum(encoder_bytes)
        if (
            resident + _working_room(resident) <= vram_bytes
            and resident + max(encoder_bytes) + _ENCODING_ROOM <= vram_bytes
        ):
            return MemoryMode.TEXT_OFFLOAD
    if model_bytes // 2 + _working_room(model_bytes) <= vram_bytes:  # the UNet is most of a model
        return MemoryMode.MEDVRAM
    return MemoryMode.LOWVRAM


def _working_room(denoiser_bytes: int) -> int:
    # Activations need room too: about 1.5 GB at SD1.5 sizes, more for SDXL.
    return max(_GIB * 3 // 2, denoiser_bytes // 2)


@dataclass
class _Group:
    """Modules whose tensors move together (with or without their children's), and the host copies."""

    modules: list[torch.nn.Module]
    recurse: bool
    host: list[torch.Tensor] = field(default_factory=list)
    moved: list[torch.Tensor] = field(default_factory=list)
    on_device: bool = False

    def tensors(self) -> list[torch.Tensor]:
        # Read at each move, not once: a LoRA or an embedding may have added tensors since.
        return [t for module in self.modules for t in module_tensors(module, recurse=self.recurse)]


@dataclass
class Offloader:
    """The hooks attached to one model; `detach()` leaves it on the host, hook-free."""

    model: LoadedModel
    mode: MemoryMode
    device: torch.device
    handles: list[RemovableHandle] = field(default_factory=list)
    groups: list[_Group] = field(default_factory=list)
    resident: _Group | None = None  # text-offload: the denoiser and VAE, on the device until detached

    def park(self) -> None:
        """Send the visiting weights back to the host (between jobs); nothing is copied."""
        for group in self.groups:
            _to_host(group)

    def detach(self) -> None:
        self.park()
        if self.resident is not None:
            _to_host(self.resident)
            # A LoRA applied while they were on the device added tensors there: bring those too.
            for tensor in self.resident.tensors():
                if tensor.device != HOST:
                    tensor.data = tensor.data.to(HOST)
            self.resident = None
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.model.placed_on(HOST)


def attach_offload(model: LoadedModel, mode: MemoryMode, device: torch.device) -> Offloader:
    """Hook `model` (already on the host) so it runs on `device` in `mode` (text-offload, medvram or
    lowvram)."""
    if mode not in (MemoryMode.TEXT_OFFLOAD, MemoryMode.MEDVRAM, MemoryMode.LOWVRAM):
        raise ValueError(f"attach_offload needs text-offload, medvram or lowvram, not {mode.value}")
    pin = pin_available(device)
    if pin:
        for module in model_modules(model):
            for tensor in module_tensors(module):
                if not tensor.is_pinned():
                    tensor.data = tensor.data.pin_memory()
    offloader = Offloader(model, mode, device)
    if mode is MemoryMode.TEXT_OFFLOAD:
        _hook_text_encoders(offloader)
    elif mode is MemoryMode.MEDVRAM:
        _hook_components(offloader)
    else:
        _hook_layers(offloader)
    model.placed_on(device)
    return offloader


def _hook_components(offloader: Offloader) -> None:
    model = offloader.model
    components: list[tuple[torch.nn.Module, list[torch.nn.Module]]] = [
        (encoder, [encoder]) for encoder in model.text_encoders
    ]
    components.append((model.unet, [model.unet]))
    # vae.encode/decode bypass vae.forward, so the VAE's children carry its hooks.
    components.append((model.vae, list(model.vae.children())))
    for component, entry_points in components:
        group = _Group([component], recurse=True)
        offloader.groups.append(group)

        def bring(_module, _args, group=group) -> None:
            if group.on_device:
                return
            for other in offloader.groups:
                _to_host(other)
            _to_device(group, offloader.device)

        for entry in entry_points:
            offloader.handles.append(entry.register_forward_pre_hook(bring))


def _hook_text_encoders(offloader: Offloader) -> None:
    model = offloader.model
    offloader.resident = _Group([model.unet, model.vae], recurse=True)
    _to_device(offloader.resident, offloader.device)
    for encoder in model.text_encoders:
        group = _Group([encoder], recurse=True)
        offloader.groups.append(group)

        def bring(_module, _args, group=group) -> None:
            if group.on_device:
                return
            offloader.park()  # one encoder at a time: T5 beside the denoiser is the peak
            _to_device(group, offloader.device)

        offloader.handles.append(encoder.register_forward_pre_hook(bring))
    # The encoders' work is done when denoising starts: their room goes to its activations.
    offloader.handles.append(model.unet.register_forward_pre_hook(lambda _module, _args: offloader.park()))


def _hook_layers(offloader: Offloader) -> None:
    hooked: set[int] = set()
    for component in model_modules(offloader.model):
        _hook_new_layers(offloader, component, hooked)
        # LoRA adapters and new embedding rows arrive as new modules between jobs: hook them too.
        offloader.handles.append(
            component.register_forward_pre_hook(
                lambda module, _args: _hook_new_layers(offloader, module, hooked)
            )
        )


def _hook_new_layers(offloader: Offloader, component: torch.nn.Module, hooked: set[int]) -> None:
    for layer in component.modules():
        if id(layer) in hooked or next(module_tensors(layer, recurse=False), None) is None:
            continue
        hooked.add(id(layer))
        group = _Group([layer], recurse=False)
        offloader.groups.append(group)
        offloader.handles.append(
            layer.register_forward_pre_hook(lambda _m, _a, g=group: _to_device(g, offloader.device))
        )
        offloader.handles.append(layer.register_forward_hook(lambda _m, _a, _o, g=group: _to_host(g)))


def _to_device(group: _Group, device: torch.device) -> None:
    if group.on_device:
        return
    group.moved = group.tensors()
    group.host = [tensor.data for tensor in group.moved]
    for tensor in group.moved:
        tensor.data = tensor.data.to(device, non_blocking=tensor.data.is_pinned())
    group.on_device = True


def _to_host(group: _Group) -> None:
    # The host copies were never released, so going back is a pointer swap; the caching
    # allocator keeps freed device memory stream-ordered, so in-flight kernels stay safe.
    if not group.on_device:
        return
    for tensor, host in zip(group.moved, group.host, strict=True):
        tensor.data = host
    group.host, group.moved = [], []
    group.on_device = False
