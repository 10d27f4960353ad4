"""How the UNet runs: attention kernel, memory format, fused projections, torch.compile, CUDA graphs.

Precision is picked when a model is loaded (`devices.resolve_dtype`); everything else here is
applied to a loaded model just before a job, idempotently, and kept on the model between jobs
so a compiled graph is built once per shape. Each option changes images by no more than
floating-point reordering (see tests/test_speed.py); the defaults are the safe subset.
"""

from __future__ import annotations

import importlib.util
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

from webui.model_manager.load import LoadedModel

log = logging.getLogger(__name__)

ATTENTION_KERNELS = ("auto", "sdpa", "xformers", "math")
SWITCHES = ("auto", "on", "off")
# off; "on": inductor's default mode; "max": max-autotune (slow to build, fastest to run).
COMPILE_MODES = ("off", "on", "max")
# Shapes (size x batch x prompt length) one process may compile before falling back to eager.
COMPILED_SHAPES_LIMIT = 64
_STATE_ATTRIBUTE = "_webui_speed_state"

UNetCall = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SpeedOptions:
    """What the user asked for; `auto` switches turn on where they pay off (CUDA)."""

    attention: str = "auto"  # auto (SDPA; flash/memory-efficient kernels on CUDA), sdpa, xformers, math
    channels_last: str = "auto"  # NHWC convolutions: on for CUDA
    fuse_qkv: str = "auto"  # one matmul for q, k and v (k and v in cross-attention): on for CUDA
    batch_cond_uncond: bool = True  # negative and positive prompt in one UNet call
    compile: str = "off"  # torch.compile the UNet; graphs are built per shape and cached on disk
    cuda_graphs: bool = False  # with compile on CUDA: replay each shape's kernels as one CUDA graph

    def __post_init__(self) -> None:
        _check("attention", self.attention, ATTENTION_KERNELS)
        _check("channels_last", self.channels_last, SWITCHES)
        _check("fuse_qkv", self.fuse_qkv, SWITCHES)
        _check("compile", self.compile, COMPILE_MODES)

    def resolve(self, device: torch.device) -> ResolvedSpeed:
        """The concrete choices on `device`; raises ValueError for one that cannot work there."""
        cuda = device.type == "cuda"
        attention = "sdpa" if self.attention == "auto" else self.attention
        if attention == "xformers" and not xformers_available():
            raise ValueError("--attention xformers was asked for, but the xformers package is not installed")
        if self.cuda_graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        if self.cuda_graphs and self.compile == "off":
            raise ValueError("CUDA graphs are built by torch.compile: turn compile on as well")
        return ResolvedSpeed(
            attention=attention,
            channels_last=_switch(self.channels_last, cuda),
            # The fused processor is an SDPA one: with another kernel the projections stay apart.
            fuse_qkv=_switch(self.fuse_qkv, cuda) and attention == "sdpa",
            batch_cond_uncond=self.batch_cond_uncond,
            compile=self.compile,
            cuda_graphs=self.cuda_graphs,
        )


@dataclass(frozen=True)
class ResolvedSpeed:
    attention: str
    channels_last: bool
    fuse_qkv: bool
    batch_cond_uncond: bool
    compile: str
    cuda_graphs: bool

    @property
    def compile_mode(self) -> str | None:
        if self.compile == "off":
            return None
        if self.cuda_graphs:
            return "max-autotune" if self.compile == "max" else "reduce-overhead"
        return "max-autotune-no-cudagraphs" if self.compile == "max" else "default"


@dataclass
class _ModelSpeedState:
    """What has been done to one model's UNet so far (kept on the model between jobs)."""

    attention: str | None = None
    fused: bool = False
    projections_built: bool = False
    compiled: dict[str, Any] = field(default_factory=dict)  # compile mode -> compiled UNet


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


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


def _switch(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "on"


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
