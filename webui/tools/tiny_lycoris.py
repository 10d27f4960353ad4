"""Write seeded, random-weight LyCORIS LoHa and LoKr files that fit the tiny SD 1.x/2.x checkpoints.

    python -m webui.tools.tiny_lycoris loha models/LyCORIS/tiny-loha.safetensors
    python -m webui.tools.tiny_lycoris lokr models/LyCORIS/tiny-lokr.safetensors

Keys are LyCORIS's as kohya names them (`lora_unet_*`, `lora_te_*` with `hada_*` / `lokr_*`
tensors and an `alpha`), half precision like downloaded files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from peft.tuners.lokr.layer import factorization

from webui.tools.tiny_networks import _save, _text_encoder_targets, _tiny_spec, _unet_targets

KINDS = ("loha", "lokr")
GAIN = 2.0  # big enough that the network visibly changes a tiny model's output


def write_tiny_lycoris(kind: str, path: Path, model_arch: str = "sd15", seed: int = 0, rank: int = 2) -> Path:
    """A LoHa or LoKr over the UNet's transformer layers and the text encoder's linear layers."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    spec = _tiny_spec(model_arch)
    generator = torch.Generator().manual_seed(seed)
    targets = list(_unet_targets(spec))
    for prefix, encoder in _text_encoder_targets(spec):
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(("q_proj", "v_proj", "fc1")):
                targets.append((f"{prefix}{name.replace('.', '_')}", module))
    tensors: dict[str, torch.Tensor] = {}
    for name, module in targets:
        make = _loha if kind == "loha" else _lokr
        tensors |= {f"{name}.{key}": value for key, value in make(module, rank, generator).items()}
    return _save(tensors, path, {"ss_network_module": f"lycoris.kohya ({kind})"})


def _widths(module: torch.nn.Module) -> tuple[int, int, int]:
    """(inputs, outputs, kernel cells) of a Linear or a Conv2d."""
    if isinstance(module, torch.nn.Conv2d):
        return module.in_channels, module.out_channels, module.kernel_size[0] * module.kernel_size[1]
    return module.in_features, module.out_features, 1


def _loha(module: torch.nn.Module, rank: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    fan_in, fan_out, cells = _widths(module)
    scale = (GAIN / fan_in**0.5) ** 0.5
    return {
        "hada_w1_a": torch.randn(fan_out, rank, generator=generator) * scale,
        "hada_w1_b": torch.randn(rank, fan_in * cells, generator=generator) * scale,
        "hada_w2_a": torch.randn(fan_out, rank, generator=generator) * scale,
        "hada_w2_b": torch.randn(rank, fan_in * cells, generator=generator) * scale,
        "alpha": torch.tensor(float(rank)),
    }


def _lokr(module: torch.nn.Module, rank: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """LyCORIS's default split (factor -1): a whole w1, and w2 low-rank where the rank is small."""
    fan_in, fan_out, cells = _widths(module)
    in_m, in_n = factorization(fan_in)
    out_l, out_k = factorization(fan_out)
    tensors = {"lokr_w1": torch.randn(out_l, in_m, generator=generator)}
    scale = GAIN / fan_in**0.5
    if rank < max(out_k, in_n) / 2:
        tensors["lokr_w2_a"] = torch.randn(out_k, rank, generator=generator) * scale**0.5
        tensors["lokr_w2_b"] = torch.randn(rank, in_n * cells, generator=generator) * scale**0.5
        tensors["alpha"] = torch.tensor(float(rank))
    else:
        kernel = tuple(module.kernel_size) if isinstance(module, torch.nn.Conv2d) else ()
        tensors["lokr_w2"] = torch.randn(out_k, in_n, *kernel, generator=generator) * scale
    return tensors


if __name__ == "__main__":
    write_tiny_lycoris(sys.argv[1], Path(sys.argv[2]))
