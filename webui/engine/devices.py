"""Pick the torch device and dtype from the user's flags and what the machine has."""

from __future__ import annotations

import torch

from webui.engine.device_choices import DEVICES, PRECISIONS


def resolve_device(choice: str = "auto") -> torch.device:
    if choice not in DEVICES:
        raise ValueError(f"unknown device {choice!r}; choose one of {', '.join(DEVICES)}")
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for, but this torch build or machine has no MPS")
    return torch.device(choice)


def resolve_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """fp16 on GPUs, fp32 on CPU (CPU half-precision kernels are slow or missing)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16); elsewhere bf16 is
    emulated and slower than fp32."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch build without these probes: assume not
        return False
