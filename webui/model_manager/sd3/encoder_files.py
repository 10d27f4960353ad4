"""Find the text encoders an SD 3.x file leaves out, in the folders people keep them in.

Stability's own SD 3.5 files hold no text encoders; they come as `clip_l.safetensors`,
`clip_g.safetensors` and `t5xxl_fp16.safetensors` (or `t5xxl_fp8_e4m3fn[_scaled]`), kept in
A1111-style `models/text_encoder` or ComfyUI's `models/clip` and `models/text_encoders`. Files
are told apart by their keys and widths, never by their names: CLIP in transformers' layout
(`text_model.…`), T5 as `encoder.block.N.…`; CLIP-L is the narrower CLIP, CLIP-G the wider, and
together they must be as wide as the transformer's pooled input; T5 as wide as its text input.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from webui.model_manager.sd3.spec import SD3Spec
from webui.model_manager.state_dict import CHECKPOINT_SUFFIXES, CheckpointError, read_tensor_shapes

log = logging.getLogger(__name__)

# Folder names under `models/` where text encoders are kept (A1111 style, then ComfyUI's two).
ENCODER_FOLDER_NAMES = ("text_encoder", "clip", "text_encoders")
ROLE_LABELS = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}
_CLIP_KEY = "text_model.embeddings.token_embedding.weight"
_T5_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
_T5_BLOCK_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
# The released encoders' widths: OpenAI CLIP ViT-L/14 and OpenCLIP bigG/14.
REAL_CLIP_L_WIDTH = 768
REAL_CLIP_G_WIDTH = 1280


@dataclass(frozen=True)
class EncoderFile:
    path: Path
    kind: str  # "clip" or "t5"
    width: int


def encoder_folders(models_dirs: Iterable[Path]) -> list[Path]:
    """The text-encoder folders that exist under each `models/` folder, in search order."""
    return [
        Path(root) / name
        for root in models_dirs
        for name in ENCODER_FOLDER_NAMES
        if (Path(root) / name).is_dir()
    ]


def scan_encoder_files(folders: Iterable[Path]) -> list[EncoderFile]:
    """Every CLIP or T5 text-encoder file in `folders` (subfolders too), from headers only."""
    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
                described = describe_encoder_file(path)
                if described is not None:
                    found.append(described)
    return found


def describe_encoder_file(path: Path) -> EncoderFile | None:
    """What text encoder a file holds, by its keys; None for anything else (or unreadable)."""
    try:
        tensors = read_tensor_shapes(path).tensors
    except CheckpointError as error:
        log.warning("skipping %s while looking for text encoders: %s", path, error)
        return None
    if _CLIP_KEY in tensors:
        return EncoderFile(Path(path), "clip", int(tensors[_CLIP_KEY].shape[1]))
    embedding = next((tensors[key] for key in _T5_KEYS if key in tensors), None)
    if embedding is not None and _T5_BLOCK_KEY in tensors:
        return EncoderFile(Path(path), "t5", int(embedding.shape[1]))
    return None


def resolve_missing_encoders(
    spec: SD3Spec, folders: Sequence[Path], name: str, *, want_t5: bool = True
) -> dict[str, EncoderFile]:
    """Files for the encoders `spec` lacks ("clip_l", "clip_g", "t5xxl" -> file).

    Both CLIPs are required: CheckpointError names the one missing and where it was looked for.
    T5 is optional: left out of the result when no file fits (the caller generates with CLIP only)."""
    missing = [role for role in spec.missing_encoders if role != "t5xxl" or want_t5]
    if not missing:
        return {}
    files = scan_encoder_files(folders)
    clips = [file for file in files if file.kind == "clip"]
    chosen: dict[str, EncoderFile] = {}
    if "clip_l" in missing or "clip_g" in missing:
        chosen |= _choose_clips(spec, clips)
        absent = [role for role in ("clip_l", "clip_g") if role in missing and role not in chosen]
        if absent:
            raise CheckpointError(_missing_clip_message(spec, absent, folders, clips, name))
    if "t5xxl" in missing:
        t5 = next((file for file in files if file.kind == "t5" and file.width == spec.joint_width), None)
        if t5 is not None:
            chosen["t5xxl"] = t5
    return chosen


def _choose_clips(spec: SD3Spec, clips: list[EncoderFile]) -> dict[str, EncoderFile]:
    pooled = spec.pooled_width
    if spec.clip_l is not None:
        return _first_of_width(clips, pooled - spec.clip_l.width, "clip_g")
    if spec.clip_g is not None:
        return _first_of_width(clips, pooled - spec.clip_g.width, "clip_l")
    # Both missing: the narrower of a pair whose widths add up is CLIP-L (768 + 1280 = 2048).
    for narrow in clips:
        wide = next((c for c in clips if c.width == pooled - narrow.width and c.width > narrow.width), None)
        if wide is not None:
            return {"clip_l": narrow, "clip_g": wide}
    # No pair: with the real widths, still take the one that is there, so the message names the other.
    if pooled == REAL_CLIP_L_WIDTH + REAL_CLIP_G_WIDTH:
        real = (("clip_l", REAL_CLIP_L_WIDTH), ("clip_g", REAL_CLIP_G_WIDTH))
        return {role: match for role, width in real for match in clips if match.width == width}
    return {}


def _first_of_width(clips: list[EncoderFile], width: int, role: str) -> dict[str, EncoderFile]:
    match = next((file for file in clips if file.width == width), None)
    return {role: match} if match is not None else {}


def _missing_clip_message(
    spec: SD3Spec, roles: list[str], folders: Sequence[Path], clips: list[EncoderFile], name: str
) -> str:
    labels = " and ".join(ROLE_LABELS[role] for role in roles)
    if len(roles) == 1:
        other = spec.clip_g if roles[0] == "clip_l" else spec.clip_l
        width = f"{spec.pooled_width - other.width} wide" if other is not None else ""
    else:
        width = f"together {spec.pooled_width} wide"
    where = ", ".join(str(folder) for folder in folders) or "(no text-encoder folder is configured)"
    files = " and ".join(f"{role}.safetensors" for role in roles)
    widths = sorted({clip.width for clip in clips})
    seen = f" (CLIP files there are {', '.join(map(str, widths))} wide)" if widths else ""
    return (
        f"{name}: needs its {labels} text encoder{'s' if len(roles) > 1 else ''} ({width}), which "
        f"{'are' if len(roles) > 1 else 'is'} not in the file, and none was found in: {where}{seen}. "
        f"Put {files} in models/text_encoder "
        "(ComfyUI's models/clip and models/text_encoders are searched too)."
    )
