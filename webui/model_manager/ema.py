"""CompVis EMA weights: the exponential moving average of the UNet that "full-ema" files carry.

CompVis's LitEma keeps one buffer per UNet parameter, named after the parameter with its dots
removed, under `model_ema.` (`model.diffusion_model.out.2.weight` becomes
`model_ema.diffusion_modelout2weight`), plus `model_ema.decay` and `model_ema.num_updates`.
CompVis's configs sample with these, so a file that has them is loaded with them unless the
user asks for the raw weights.

diffusers' converter can pick EMA weights too, but only in files with over 100 of them (so never
in tiny test files) and it fills missing ones with None; this module refuses such files instead.
"""

from __future__ import annotations

import torch

from webui.model_manager.detect import UNET_PREFIX, has_ema
from webui.model_manager.state_dict import CheckpointError

EMA_PREFIX = "model_ema."
EMA_DECAY_KEY = "model_ema.decay"
EMA_UPDATES_KEY = "model_ema.num_updates"
# The part of a UNet key that LitEma sees: it wraps `model`, whose child is `diffusion_model`.
_WRAPPED_PREFIX = "model."


def ema_key(unet_key: str) -> str:
    """The EMA buffer's key of a UNet parameter key (`model.diffusion_model.…`)."""
    return EMA_PREFIX + unet_key.removeprefix(_WRAPPED_PREFIX).replace(".", "")


def is_ema_key(key: str) -> bool:
    return key.startswith(EMA_PREFIX)


def select_weights(tensors: dict[str, torch.Tensor], use_ema: bool, name: str) -> dict[str, torch.Tensor]:
    """The tensors to build a model from: the UNet's EMA weights in place of the raw ones when
    `use_ema` and the file has them; EMA buffers are dropped either way.

    Each UNet tensor needs its EMA copy: a file with only some of them is refused rather than
    mixed, since half-averaged weights would be neither model.
    """
    chosen = {key: value for key, value in tensors.items() if not is_ema_key(key)}
    if not use_ema or not has_ema(tensors):
        return chosen
    unet_keys = [key for key in chosen if key.startswith(UNET_PREFIX) and chosen[key].is_floating_point()]
    missing = [key for key in unet_keys if ema_key(key) not in tensors]
    if missing:
        raise CheckpointError(
            f"{name}: its EMA weights are incomplete ({len(missing)} of {len(unet_keys)} UNet tensors "
            f"have none, e.g. {missing[0]}); load it with the raw weights (--no-ema, or EMA off for "
            "this checkpoint in the Models tab)"
        )
    for key in unet_keys:
        averaged = tensors[ema_key(key)]
        if averaged.shape != chosen[key].shape:
            raise CheckpointError(
                f"{name}: EMA tensor {ema_key(key)} has shape {list(averaged.shape)}, "
                f"but {key} has {list(chosen[key].shape)}"
            )
        chosen[key] = averaged
    return chosen


def ema_tensors(
    unet_tensors: dict[str, torch.Tensor], decay: float, num_updates: int
) -> dict[str, torch.Tensor]:
    """EMA buffers in CompVis's layout for UNet tensors in LDM layout (`model.diffusion_model.…`)."""
    tensors = {
        ema_key(key): value
        for key, value in unet_tensors.items()
        if key.startswith(UNET_PREFIX) and value.is_floating_point()
    }
    tensors[EMA_DECAY_KEY] = torch.tensor(decay, dtype=torch.float32)
    tensors[EMA_UPDATES_KEY] = torch.tensor(num_updates, dtype=torch.int32)
    return tensors
