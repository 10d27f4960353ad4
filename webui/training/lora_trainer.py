"""LoRA training with peft, saved in the kohya key layout that our loader and A1111 read."""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from webui.model_manager.load import LoadedModel
from webui.training.progress import TrainingError

ADAPTER = "webui_training"  # not "training": nn.Module has an attribute of that name
# The attention projections of the UNet's transformer blocks: kohya's and most trainers' default.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(model: LoadedModel, rank: int, alpha: float | None = None) -> list[torch.nn.Parameter]:
    """Put fresh LoRA adapters on the model's UNet; only they will train. Returns their parameters."""
    targets = _target_layers(model.unet)
    if not targets:
        raise TrainingError(f"{model.name}: its UNet has no attention layers to put a LoRA on", "base")
    narrowest_name, narrowest = min(targets.items(), key=lambda item: min(_widths(item[1])))
    widths = _widths(narrowest)
    if rank > min(widths):
        raise TrainingError(
            f"rank {rank} is larger than the layer {narrowest_name} ({widths[0]} in, {widths[1]} out); "
            f"use a rank of at most {min(widths)}",
            "rank",
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        init_lora_weights="gaussian",
        target_modules=list(UNET_TARGETS),
    )
    model.unet.requires_grad_(False)
    for encoder in model.text_encoders:
        encoder.requires_grad_(False)
    inject_adapter_in_model(config, model.unet, adapter_name=ADAPTER)
    parameters = [
        p
        for name, p in model.unet.named_parameters()
        if f".{ADAPTER}." in name or name.endswith(f".{ADAPTER}")
    ]
    for parameter in parameters:
        parameter.requires_grad_(True)
        parameter.data = parameter.data.float()
    return parameters


def _target_layers(unet: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and ".attentions." in name and name.endswith(UNET_TARGETS)
    }


def _widths(layer: torch.nn.Linear) -> tuple[int, int]:
    return layer.in_features, layer.out_features


def kohya_state_dict(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The adapters as `lora_unet_<module path with _>.lora_down/lora_up/alpha` tensors."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.unet.named_modules():
        if not isinstance(module, LoraLayer) or ADAPTER not in module.lora_A:
            continue
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = module.lora_A[ADAPTER].weight.detach()
        tensors[f"{key}.lora_up.weight"] = module.lora_B[ADAPTER].weight.detach()
        tensors[f"{key}.alpha"] = torch.tensor(float(module.lora_alpha[ADAPTER]))
    if not tensors:
        raise RuntimeError("the model carries no training adapter")
    return {key: value.to("cpu", torch.float16).contiguous() for key, value in tensors.items()}
