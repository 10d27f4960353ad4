"""Write seeded, random-weight LoRA and textual-inversion files that fit the tiny checkpoints.

    python -m webui.tools.tiny_networks lora --arch sd15 models/Lora/tiny-sd15.safetensors
    python -m webui.tools.tiny_networks embedding --arch sdxl embeddings/tiny-sdxl.safetensors

The files use the formats people download (kohya/A1111 LoRA keys with `.alpha` tensors,
A1111 embedding layouts), so they go through exactly the code paths of real ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from webui.model_manager.detect import UNET_PREFIX, Arch, ModelSpec, detect_model
from webui.model_manager.ldm_export import unet_to_ldm
from webui.tools.tiny_checkpoint import ARCHES, build_tiny_state_dict

# A LoRA's delta is `up @ down * alpha / rank`; a non-trivial alpha checks that it is honoured.
ALPHA_FRACTION = 0.5
# Big enough that one LoRA visibly changes a tiny model's output.
LORA_GAIN = 2.0
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def write_tiny_lora(model_arch: str, path: Path, seed: int = 0, rank: int = 4) -> Path:
    """A kohya-format LoRA covering the UNet's transformer layers and every text encoder."""
    spec = _tiny_spec(model_arch)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in _unet_targets(spec):
        tensors |= _lora_pair(name, module, rank, generator)
    for prefix, encoder in _text_encoder_targets(spec):
        for name, module in encoder.named_modules():
            if name.endswith(_TEXT_TARGETS):
                # Kohya names text layers after transformers' module tree, `text_model.` level included.
                full = name if name.startswith("text_model.") else f"text_model.{name}"
                tensors |= _lora_pair(prefix + full.replace(".", "_"), module, rank, generator)
    return _save(tensors, path, {"ss_network_dim": str(rank), "webui.tiny_arch": model_arch})


def write_tiny_embedding(model_arch: str, path: Path, vectors: int = 2, seed: int = 0) -> Path:
    """An A1111 embedding: `.pt` with string_to_param, `.safetensors` with emb_params.

    SDXL embeddings are `.safetensors` with a `clip_l` and a `clip_g` table.
    """
    spec = _tiny_spec(model_arch)
    generator = torch.Generator().manual_seed(seed)
    widths = [encoder.config["hidden_size"] for encoder in spec.text_encoders]
    # Token embeddings of the tiny encoders have a std of about 0.02; these stand far out of that.
    tables = [torch.randn(vectors, width, generator=generator) for width in widths]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.arch is Arch.SDXL:
        if path.suffix != ".safetensors":
            raise ValueError("SDXL embeddings are written as .safetensors (clip_l + clip_g)")
        save_file({"clip_l": tables[0], "clip_g": tables[1]}, str(path))
    elif path.suffix == ".safetensors":
        save_file({"emb_params": tables[0]}, str(path))
    else:
        torch.save(
            {
                "string_to_token": {"*": 265},
                "string_to_param": {"*": tables[0]},
                "name": path.stem,
                "step": 1000,
            },
            str(path),
        )
    return path


def _tiny_spec(model_arch: str) -> ModelSpec:
    tensors = build_tiny_state_dict(model_arch)
    return detect_model(tensors, {}, f"tiny-{model_arch}")


def _unet_targets(spec: ModelSpec) -> list[tuple[str, torch.nn.Module]]:
    """(kohya name, module) of every linear or 1x1 conv layer inside the UNet's transformers."""
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(spec.unet_config)
    found = []
    for name, module in unet.named_modules():
        if ".attentions." not in name or not _is_lora_target(module):
            continue
        if spec.arch is Arch.SDXL:
            # Kohya trains SDXL on the original (LDM) UNet, so its keys use that UNet's names.
            ldm_key = next(iter(unet_to_ldm({f"{name}.weight": torch.empty(0)}, spec.unet_config)))
            name = ldm_key.removeprefix(UNET_PREFIX).removesuffix(".weight")
        found.append((f"lora_unet_{name.replace('.', '_')}", module))
    return found


def _is_lora_target(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    return isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)


def _text_encoder_targets(spec: ModelSpec) -> list[tuple[str, torch.nn.Module]]:
    prefixes = ["lora_te1_", "lora_te2_"] if spec.arch is Arch.SDXL else ["lora_te_"]
    encoders = []
    for prefix, encoder in zip(prefixes, spec.text_encoders):
        with init_empty_weights():
            encoders.append((prefix, CLIPTextModel(CLIPTextConfig(**encoder.config))))
    return encoders


def _lora_pair(
    name: str, module: torch.nn.Module, rank: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    if isinstance(module, torch.nn.Conv2d):
        fan_in, fan_out, tail = module.in_channels, module.out_channels, (1, 1)
    else:
        fan_in, fan_out, tail = module.in_features, module.out_features, ()
    down = torch.randn(rank, fan_in, *tail, generator=generator) / fan_in**0.5
    up = torch.randn(fan_out, rank, *tail, generator=generator) * LORA_GAIN / rank**0.5
    return {
        f"{name}.lora_down.weight": down,
        f"{name}.lora_up.weight": up,
        f"{name}.alpha": torch.tensor(rank * ALPHA_FRACTION),
    }


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Downloaded LoRAs are mostly half precision; so are these.
    half = {key: value.to(torch.float16).contiguous() for key, value in tensors.items()}
    save_file(half, str(path), metadata=metadata)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("lora", "embedding"))
    parser.add_argument("--arch", choices=ARCHES, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("out", type=Path, help="the file to write (.safetensors, or .pt for an embedding)")
    args = parser.parse_args(argv)
    if args.kind == "lora":
        path = write_tiny_lora(args.arch, args.out, args.seed)
    else:
        path = write_tiny_embedding(args.arch, args.out, seed=args.seed)
    print(f"wrote {path} ({args.kind}, {args.arch}, seed {args.seed})")


if __name__ == "__main__":
    main()
