"""Load an SD 3 / 3.5 diffusers folder (StableDiffusion3Pipeline's layout), offline.

The folder's own configs say the shapes; its `text_encoder_3` is optional (CLIP only without
it). CLIP tokenizers come from the BPE list shipped with the app, T5's from the folder's
`tokenizer_3/tokenizer.json` when it has one, else from the shipped vocabulary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import CLIPTextModelWithProjection, T5EncoderModel

from webui.model_manager.sd3.build import SD3Components, place_components
from webui.model_manager.sd3.spec import SCHEDULER_CONFIG, ClipSpec, SD3Spec, T5Spec, variant_of
from webui.model_manager.state_dict import CheckpointError
from webui.model_manager.t5_tokenizer import T5TokenizerError, build_t5_tokenizer, find_t5_tokenizer_json
from webui.model_manager.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

PIPELINE_CLASS = "StableDiffusion3Pipeline"


def is_sd3_folder(path: Path) -> bool:
    """Whether `path` is a diffusers folder of an SD 3.x pipeline (by its model_index.json)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text(encoding="utf-8")).get("_class_name") == PIPELINE_CLASS
    except (OSError, ValueError):
        return False


def load_sd3_folder(
    path: Path, device: torch.device, dtype: torch.dtype, *, use_t5: bool = True
) -> SD3Components:
    """The components of an SD 3.x diffusers folder; CheckpointError says what is wrong with it."""
    path = Path(path)
    if not is_sd3_folder(path):
        raise CheckpointError(
            f"{path.name}: not an SD 3 diffusers folder (model_index.json names no {PIPELINE_CLASS})"
        )
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    options: dict[str, Any] = {"local_files_only": True}
    has_t5 = use_t5 and _listed(index, "text_encoder_3") and (path / "text_encoder_3").is_dir()
    try:
        transformer = SD3Transformer2DModel.from_pretrained(path, subfolder="transformer", **options)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **options)
        clip_l = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder", **options)
        clip_g = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **options)
        t5 = T5EncoderModel.from_pretrained(path, subfolder="text_encoder_3", **options) if has_t5 else None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path.name}: cannot read the diffusers folder: {error}") from error
    notes = []
    tokenizer_t5 = None
    if t5 is not None:
        folder_tokenizer = path / "tokenizer_3"
        try:
            tokenizer_t5 = build_t5_tokenizer(
                folder_tokenizer if find_t5_tokenizer_json(folder_tokenizer) else None
            )
        except T5TokenizerError as error:
            notes.append(f"T5 is not used: {error}")
            t5 = None
    elif use_t5:
        notes.append("the folder has no text_encoder_3 (T5-XXL): CLIP only")
    transformer_config = {key: value for key, value in transformer.config.items() if not key.startswith("_")}
    transformer_config["dual_attention_layers"] = tuple(transformer_config.get("dual_attention_layers") or ())
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    spec = SD3Spec(
        variant=variant_of(transformer_config, path.name),
        transformer_config=transformer_config,
        vae_config=dict(vae.config),
        clip_l=ClipSpec("clip_l", "", clip_l.config.to_dict(), True),
        clip_g=ClipSpec("clip_g", "", clip_g.config.to_dict(), True),
        t5=T5Spec("", t5.config.to_dict(), "float") if t5 is not None else None,
        shift=float(scheduler.get("shift", SCHEDULER_CONFIG["shift"])),
    )
    components = SD3Components(
        spec=spec,
        transformer=transformer.eval().requires_grad_(False),
        vae=vae.eval().requires_grad_(False),
        clip_l=clip_l.eval().requires_grad_(False),
        clip_g=clip_g.eval().requires_grad_(False),
        t5=t5.eval().requires_grad_(False) if t5 is not None else None,
        tokenizer_l=build_clip_tokenizer(pad_with_exclamation=False),
        tokenizer_g=build_clip_tokenizer(pad_with_exclamation=True),
        tokenizer_t5=tokenizer_t5,
        device=device,
        dtype=dtype,
        sources={
            role: str(path) for role in ("clip_l", "clip_g", "t5xxl") if role != "t5xxl" or t5 is not None
        },
        notes=notes,
    )
    for note in notes:
        log.warning("%s: %s", path.name, note)
    place_components(components, device, dtype)
    return components


def _listed(index: dict[str, Any], name: str) -> bool:
    """model_index.json lists a component as [library, class]; a missing one as [null, null]."""
    entry = index.get(name)
    return isinstance(entry, list) and entry[:1] != [None]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
