"""How the UNet runs: attention kernel, memory format, fused projections, torch.compile, CUDA graphs.

Precision is picked when a model is loaded (`devices.resolve_dtype`); everything else here is
applied to a loaded model just before a job, idempotently, and kept on the model between jobs
so a compiled graph is built once per shape. Each option changes images by no more than
floating-point reordering (see tests/test_speed.py); the defaults are the safe subset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
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

from webui.engine.speed_options import ResolvedSpeed
from webui.model_manager.load import LoadedModel

log = logging.getLogger(__name__)

COMPILED_SHAPES_LIMIT = 64
_STATE_ATTRIBUTE = "_webui_speed_state"

UNetCall = Callable[..., torch.Tensor]


@dataclass
class _ModelSpeedState:
    """What has been done to one model's UNet so far (kept on the model between jobs)."""

    attention: str | None = None
    fused: bool = False
    projections_built: bool = False
    compiled: dict[str, Any] = field(default_factory=dict)  # compile mode -> compiled UNet


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
    _set_memory_format(unet, torch.channels_last if speed.channels_last else torch.contiguous_format)
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


def _set_memory_format(unet: torch.nn.Module, memory_format: torch.memory_format) -> None:
    if not unet.conv_in.weight.is_contiguous(memory_format=memory_format):
        unet.to(memory_format=memory_format)


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
