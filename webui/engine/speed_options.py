"""What the user can ask of the UNet's speed, and what that comes to on a device: torch-free, so
that settings and flags can be read without loading torch (webui.engine.speed applies them)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ATTENTION_KERNELS = ("auto", "sdpa", "xformers", "math")
SWITCHES = ("auto", "on", "off")
# off; "on": inductor's default mode; "max": max-autotune (slow to build, fastest to run).
COMPILE_MODES = ("off", "on", "max")
# Shapes (size x batch x prompt length) one process may compile before falling back to eager.


@dataclass(frozen=True)
class SpeedOptions:
    """What the user asked for; `auto` switches turn on where they pay off (CUDA)."""

    attention: str = "auto"  # auto (SDPA; flash/memory-efficient kernels on CUDA), sdpa, xformers, math
    channels_last: str = "auto"  # NHWC convolutions: on for CUDA
    fuse_qkv: str = "auto"  # one matmul for q, k and v (k and v in cross-attention): on for CUDA
    batch_cond_uncond: bool = True  # negative and positive prompt in one UNet call
    compile: str = "off"  # torch.compile the UNet; graphs are built per shape and cached on disk
    cuda_graphs: bool = False  # with compile on CUDA: replay each shape's kernels as one CUDA graph
    # CPU: the UNet's and the VAE decoder's matmuls and convolutions in bf16 (fp32 weights, norms,
    # latents and sums); auto: full-size fp32 models on CPUs with native bf16 (AMX, AVX512-BF16)
    cpu_bf16: str = "auto"

    def __post_init__(self) -> None:
        _check("attention", self.attention, ATTENTION_KERNELS)
        _check("channels_last", self.channels_last, SWITCHES)
        _check("fuse_qkv", self.fuse_qkv, SWITCHES)
        _check("compile", self.compile, COMPILE_MODES)
        _check("cpu_bf16", self.cpu_bf16, SWITCHES)

    def resolve(self, device: torch.device, *, cpu_bf16_pays: bool = False) -> ResolvedSpeed:
        """The concrete choices on `device`; raises ValueError for one that cannot work there.

        `cpu_bf16_pays`: the CPU computes bf16 natively and the model is a full-size fp32 one
        (`webui.engine.speed.resolve_for` knows); where it does not, bf16 stays off unless asked for.
        """
        cuda = device.type == "cuda"
        cpu_bf16 = device.type == "cpu" and _switch(self.cpu_bf16, cpu_bf16_pays)
        attention = "sdpa" if self.attention == "auto" else self.attention
        if attention == "xformers" and not xformers_available():
            raise ValueError("--attention xformers was asked for, but the xformers package is not installed")
        if self.cuda_graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        if self.cuda_graphs and self.compile == "off":
            raise ValueError("CUDA graphs are built by torch.compile: turn compile on as well")
        return ResolvedSpeed(
            attention=attention,
            # oneDNN's bf16 convolutions want NHWC as much as cuDNN does.
            channels_last=_switch(self.channels_last, cuda or cpu_bf16),
            # The fused processor is an SDPA one: with another kernel the projections stay apart.
            fuse_qkv=_switch(self.fuse_qkv, cuda) and attention == "sdpa",
            batch_cond_uncond=self.batch_cond_uncond,
            compile=self.compile,
            cuda_graphs=self.cuda_graphs,
            cpu_bf16=cpu_bf16,
        )


@dataclass(frozen=True)
class ResolvedSpeed:
    attention: str
    channels_last: bool
    fuse_qkv: bool
    batch_cond_uncond: bool
    compile: str
    cuda_graphs: bool
    cpu_bf16: bool = False

    @property
    def compile_mode(self) -> str | None:
        if self.compile == "off":
            return None
        if self.cuda_graphs:
            return "max-autotune" if self.compile == "max" else "reduce-overhead"
        return "max-autotune-no-cudagraphs" if self.compile == "max" else "default"


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def _switch(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "on"


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
