"""Swap a loaded model's VAE for a file from models/VAE, or back to the checkpoint's own."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from webui.model_manager.detect import VAE_PREFIX
from webui.model_manager.load import LoadedModel, build_vae
from webui.model_manager.registry import checkpoint_sidecar_vae
from webui.model_manager.state_dict import CheckpointError, read_state_dict, read_tensors_with_prefix

log = logging.getLogger(__name__)

AUTOMATIC = "Automatic"  # the checkpoint's `<name>.vae.safetensors` if present, else its own
BUILT_IN = "None"  # A1111's name for "the checkpoint's own VAE"


def resolve_vae_file(choice: str, checkpoint: Path, named: dict[str, Path]) -> Path | None:
    """The file a VAE choice means for this checkpoint; None means the checkpoint's own VAE."""
    if choice in ("", BUILT_IN):
        return None
    if choice == AUTOMATIC:
        return checkpoint_sidecar_vae(checkpoint) if checkpoint.is_file() else None
    if choice in named:
        return named[choice]
    by_file_name = [path for path in named.values() if path.name == choice]  # A1111 clients send these
    if len(by_file_name) == 1:
        return by_file_name[0]
    raise CheckpointError(f"unknown VAE {choice!r}; known: {', '.join([AUTOMATIC, BUILT_IN, *named])}")


def swap_vae(model: LoadedModel, vae_file: Path | None) -> bool:
    """Give `model` the VAE from `vae_file` (None: its own), on the device its weights are on.

    The VAE config (and so the latent scaling factor) stays the checkpoint's: a VAE file holds
    weights only. Returns False when nothing had to change.
    """
    if model.vae_path == vae_file:
        return False
    started = time.perf_counter()
    label = vae_file.name if vae_file else f"{model.name}'s own VAE"
    config = dict(model.vae.config)
    if vae_file is None:
        vae = _builtin_vae(model, config)
    else:
        tensors = read_state_dict(vae_file).tensors
        try:
            vae = build_vae(tensors, config, vae_file.name)
        except (CheckpointError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"VAE {vae_file.name} does not fit {model.name}: {error}") from error
    device = next(model.unet.parameters()).device
    torch.nn.Module.to(vae, device=device, dtype=model.vae.dtype)
    model.vae, model.vae_path = vae, vae_file
    log.info("VAE of %s is now %s (%.2f s)", model.name, label, time.perf_counter() - started)
    return True


def _builtin_vae(model: LoadedModel, config: dict) -> AutoencoderKL:
    if model.path.is_dir():
        return AutoencoderKL.from_pretrained(model.path, subfolder="vae", local_files_only=True)
    return build_vae(read_tensors_with_prefix(model.path, VAE_PREFIX), config, model.path.name)
