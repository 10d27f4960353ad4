"""A fine-tuned model written back over its base file's tensors, in the same single-file layout."""

from __future__ import annotations

import torch

from webui.model_manager.detect import UNET_PREFIX
from webui.model_manager.ema import is_ema_key
from webui.model_manager.ldm_export import hf_clip_to_ldm, open_clip_to_ldm, unet_to_ldm
from webui.model_manager.load import LoadedModel


def trained_checkpoint_tensors(
    model: LoadedModel, original: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`original` with the model's UNet and text encoders replaced; every other tensor (the VAE,
    markers, an SD 2 file's unused last text layer) is kept as it was."""
    dtype = next(iter(original.values())).dtype if original else torch.float16
    # The base's EMA weights go too: they average the weights before this training, and a loader
    # that prefers EMA weights would otherwise undo it.
    tensors = {
        key: value
        for key, value in original.items()
        if not key.startswith(UNET_PREFIX) and not is_ema_key(key)
    }
    tensors |= unet_to_ldm(model.unet.state_dict(), dict(model.unet.config))
    for spec, encoder in zip(model.spec.text_encoders, model.text_encoders):
        weights = {k: v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
        if spec.layout == "hf":
            # Files name these with or without a `text_model.` level: write one canonical set.
            tensors = {key: value for key, value in tensors.items() if not key.startswith(spec.prefix)}
            tensors |= hf_clip_to_ldm(weights, spec.prefix)
        else:
            tensors |= open_clip_to_ldm(weights, spec.prefix)
    floating = dtype if dtype.is_floating_point else torch.float16
    return {
        key: (
            value.detach().to("cpu", floating) if value.is_floating_point() else value.detach().cpu()
        ).contiguous()
        for key, value in tensors.items()
    }
