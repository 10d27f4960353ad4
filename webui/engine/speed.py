"""How the UNet runs: attention kernel, memory format, fused projections, torch.compile, CUDA graphs.

Precision is picked when a model is loaded (`devices.resolve_dtype`); everything else here is
applied to a loaded model just before a job, idempotently, and kept on the model between jobs
so a compiled graph is built once per shape. Each option changes images by no more than
floating-point reordering (see tests/test_speed.py); the defaults are the safe subset.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    XFormersAttnProcessor,
)

from webui.engine.devices import cpu_has_native_bf16
from webui.engine.speed_options import ResolvedSpeed, SpeedOptions
from webui.model_manager.load import LoadedModel

log = logging.getLogger(__name__)

COMPILED_SHAPES_LIMIT = 64
# Below this many UNet parameters (the tiny test models) a step is bound by moving activations,
# not by arithmetic, and bf16's casts cost more than its faster matmuls save.
CPU_BF16_MIN_UNET_PARAMETERS = 100_000_000
_STATE_ATTRIBUTE = "_webui_speed_state"

UNetCall = Callable[..., torch.Tensor]


@dataclass
class _ModelSpeedState:
    """What has been done to one model's UNet so far (kept on the model between jobs)."""

    attention: str | None = None
    fused: bool = False
    projections_built: bool = False
    compiled: dict[str, Any] = field(default_factory=dict)  # compile mode -> compiled UNet


def resolve_for(model: LoadedModel, options: SpeedOptions) -> ResolvedSpeed:
    """`options` on this model's device: `auto` bf16 on CPU where the hardware and model make it pay."""
    pays = (
        model.device.type == "cpu"
        and model.dtype == torch.float32
        and cpu_has_native_bf16()
        and sum(p.numel() for p in model.unet.parameters()) >= CPU_BF16_MIN_UNET_PARAMETERS
    )
    return options.resolve(model.device, cpu_bf16_pays=pays)


def prepare_unet(model: LoadedModel, speed: ResolvedSpeed, loras_active: bool) -> UNetCall:
    """Bring the model's UNet to `speed` and return the function that runs it.

    Fused projections are left off while a LoRA is active: its adapters sit on the separate
    q/k/v layers, which the fused matmul would bypass.
    """
    unet = model.unet
    state = _state(model)
    fuse = speed.fuse_qkv and not loras_active
    if state.attention != speed.attention or state.fused != fuse:
        _set_attention(unet, state, speed.attention, fuse)
        state.attention, state.fused = speed.attention, fuse
    # Every job: a swap through pinned RAM brings the weights back in the default layout.
    _set_memory_format(unet, unet.conv_in.weight, _layout(speed.channels_last))
    # The VAE's layout is only changed for CPU bf16, whose decoder convolutions it speeds up most.
    vae_nhwc = speed.channels_last and speed.cpu_bf16
    _set_memory_format(model.vae, model.vae.decoder.conv_in.weight, _layout(vae_nhwc))
    call = _compiled(model, unet, state, speed)
    return _in_cpu_bf16(call) if speed.cpu_bf16 else call


@contextlib.contextmanager
def decoding(*, cpu_bf16: bool) -> Iterator[None]:
    """Around a VAE decode: the decoder's matmuls and convolutions in bf16 on CPU when asked."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
        yield


def _in_cpu_bf16(call: UNetCall) -> UNetCall:
    """Autocast keeps the weights fp32 (no second copy; LoRAs and turning it off stay exact; the
    bf16 weight copies are made per call, a small cost next to a full-size step); matmuls and
    convolutions run in bf16 with fp32 accumulation. The prediction comes back fp32, so guidance
    and the sampler work in fp32 as without it."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = call(*args, **kwargs)
        return (output[0].float(), *output[1:])

    return run


def _compiled(
    model: LoadedModel, unet: torch.nn.Module, state: _ModelSpeedState, speed: ResolvedSpeed
) -> UNetCall:
    mode = speed.compile_mode
    if mode is None:
        return unet
    if mode not in state.compiled:
        _raise_recompile_limit()
        log.info(
            "compiling the UNet of %s (%s); the first job at each new size waits for it", model.name, mode
        )
        state.compiled[mode] = torch.compile(unet, mode=mode, dynamic=False)
    compiled = state.compiled[mode]
    if not speed.cuda_graphs:
        return compiled
    return _graph_replay(compiled)


def use_compile_cache(folder: Path) -> None:
    """Keep compiled kernels in `folder` so a restart reuses them (unless the user chose a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))


def _graph_replay(compiled: UNetCall) -> UNetCall:
    """A CUDA-graph replay overwrites its last outputs, so each step marks a new run and keeps a copy
    (two UNet calls of one step, as for prompts of different lengths, must not share buffers)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        output = compiled(*args, **kwargs)
        return (output[0].clone(),)

    return call


def _set_attention(unet: torch.nn.Module, state: _ModelSpeedState, attention: str, fuse: bool) -> None:
    if fuse:
        if not state.projections_built:
            # diffusers concatenates q/k/v into new layers once; the originals stay for LoRAs.
            unet.fuse_qkv_projections()
            state.projections_built = True
        unet.set_attn_processor(FusedAttnProcessor2_0())
        return
    processor = {"sdpa": AttnProcessor2_0, "math": AttnProcessor, "xformers": XFormersAttnProcessor}[
        attention
    ]
    unet.set_attn_processor(processor())


def _layout(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _set_memory_format(
    module: torch.nn.Module, probe: torch.Tensor, memory_format: torch.memory_format
) -> None:
    """`probe`: a 4-d weight of `module` whose layout tells the whole module's."""
    if not probe.is_contiguous(memory_format=memory_format):
        module.to(memory_format=memory_format)


def _raise_recompile_limit() -> None:
    """Dynamo keeps 8 graphs per function by default; a studio meets more sizes and batches."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < COMPILED_SHAPES_LIMIT:
            setattr(config, name, COMPILED_SHAPES_LIMIT)


def _state(model: LoadedModel) -> _ModelSpeedState:
    state = getattr(model, _STATE_ATTRIBUTE, None)
    if state is None:
        state = _ModelSpeedState()
        setattr(model, _STATE_ATTRIBUTE, state)
    return state
