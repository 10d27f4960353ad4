"""Build SD 3.x's components from a Stability single file (and encoder files), offline.

Every module is made on the meta device (no memory, no random init) and takes the file's tensors
as they are; then it moves to the device and compute dtype. Nothing is fetched: configs come
from tensor shapes (spec.py), tokenizers from the vocabularies shipped in assets/.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

from webui.model_manager.sd3.convert import convert_clip, convert_t5, convert_transformer, convert_vae
from webui.model_manager.sd3.encoder_files import ROLE_LABELS, resolve_missing_encoders
from webui.model_manager.sd3.spec import (
    T5_PREFIX,
    ClipSpec,
    SD3Spec,
    T5Spec,
    check_encoders_fit,
    clip_spec,
    detect_sd3,
    t5_spec,
)
from webui.model_manager.state_dict import (
    SAFETENSORS_SUFFIXES,
    CheckpointError,
    open_safetensors,
    read_state_dict,
    read_tensor_shapes,
)
from webui.model_manager.t5_tokenizer import T5TokenizerError, build_t5_tokenizer
from webui.model_manager.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

# T5's feed-forward output overflows fp16; transformers keeps these weights in fp32 for it.
_T5_FP32_MODULES = ("wo",)


@dataclass
class SD3Components:
    """What the flow-matching loop needs, already on its device; `t5` None: CLIP only."""

    spec: SD3Spec
    transformer: SD3Transformer2DModel
    vae: AutoencoderKL
    clip_l: CLIPTextModelWithProjection
    clip_g: CLIPTextModelWithProjection
    t5: T5EncoderModel | None
    tokenizer_l: CLIPTokenizer
    tokenizer_g: CLIPTokenizer
    tokenizer_t5: CLIPTokenizer | None  # a T5TokenizerFast; None with `t5`
    device: torch.device
    dtype: torch.dtype
    sources: dict[str, str] = field(default_factory=dict)  # role -> "checkpoint" or the file used
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. "no T5")

    def make_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler(**self.spec.scheduler_config)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.transformer, self.vae, self.clip_l, self.clip_g, self.t5) if m is not None]


def load_sd3(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    encoder_folders: Sequence[Path] = (),
    t5_tokenizer_folder: Path | None = None,
    use_t5: bool = True,
) -> SD3Components:
    """Load an SD 3 / 3.5 single file; encoders it lacks come from `encoder_folders`.

    CLIP-L and CLIP-G are required (CheckpointError names the one missing); T5 is optional, and
    `use_t5=False` skips it even when present (CLIP only, as diffusers does without T5).
    `t5_tokenizer_folder`: a ComfyUI install or tokenizer folder; None uses the shipped vocabulary."""
    path = Path(path)
    header = read_tensor_shapes(path)
    spec = detect_sd3(header.tensors, header.metadata, path.name)
    if spec.vae_config is None:
        raise CheckpointError(f"{path.name}: no VAE under 'first_stage_model.'; SD 3 files carry theirs")
    notes: list[str] = []
    tokenizer_t5 = None
    if use_t5:
        try:
            tokenizer_t5 = build_t5_tokenizer(t5_tokenizer_folder)
        except T5TokenizerError as error:
            notes.append(f"T5 is not used: {error}")
            use_t5 = False
    # T5-XXL is 4.7-9.5 GB: when it is not used, its bytes are never read.
    tensors = _read_tensors(path, skip=() if use_t5 else (T5_PREFIX,))
    if not use_t5:
        spec = replace(spec, t5=None)
    sources = {role: "checkpoint" for role in ("clip_l", "clip_g", "t5xxl") if spec.encoder(role) is not None}
    encoder_tensors: dict[str, Mapping[str, torch.Tensor]] = {role: tensors for role in sources}
    for role, file in resolve_missing_encoders(spec, encoder_folders, path.name, want_t5=use_t5).items():
        weights = read_state_dict(file.path).tensors
        spec = _with_encoder(spec, role, weights, file.path.name)
        encoder_tensors[role] = weights
        sources[role] = str(file.path)
    check_encoders_fit(spec, path.name)
    if use_t5 and spec.t5 is None:
        notes.append(
            f"no {ROLE_LABELS['t5xxl']} text encoder in the file or the text-encoder folders: CLIP only"
        )
        tokenizer_t5 = None

    transformer = _materialize(
        lambda: SD3Transformer2DModel(**spec.transformer_config),
        convert_transformer(tensors),
        "MMDiT transformer",
        path.name,
        include_buffers=True,  # its position table is in the file; do not compute it first
    )
    vae = _materialize(
        lambda: AutoencoderKL(**spec.vae_config), convert_vae(tensors, spec.vae_config), "VAE", path.name
    )
    clip_l = _build_clip(encoder_tensors["clip_l"], spec.clip_l, sources["clip_l"])
    clip_g = _build_clip(encoder_tensors["clip_g"], spec.clip_g, sources["clip_g"])
    t5 = (
        _build_t5(encoder_tensors["t5xxl"], spec.t5, dtype, sources["t5xxl"]) if spec.t5 is not None else None
    )
    del tensors, encoder_tensors
    components = SD3Components(
        spec=spec,
        transformer=transformer,
        vae=vae,
        clip_l=clip_l,
        clip_g=clip_g,
        t5=t5,
        tokenizer_l=build_clip_tokenizer(pad_with_exclamation=False),
        tokenizer_g=build_clip_tokenizer(pad_with_exclamation=True),
        tokenizer_t5=tokenizer_t5,
        device=device,
        dtype=dtype,
        sources=sources,
        notes=notes,
    )
    for note in notes:
        log.warning("%s: %s", path.name, note)
    place_components(components, device, dtype)
    return components


def _read_tensors(path: Path, skip: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The file's tensors but those under the `skip` prefixes (which a .safetensors never reads)."""
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {
            key: value for key, value in read_state_dict(path).tensors.items() if not key.startswith(skip)
        }
    with open_safetensors(path) as handle:
        return {key: handle.get_tensor(key) for key in handle.keys() if not skip or not key.startswith(skip)}  # noqa: SIM118


def place_components(components: SD3Components, device: torch.device, dtype: torch.dtype) -> None:
    """Move every module to `device` in `dtype`; T5's fp32-only layers stay fp32 under fp16."""
    for module in components.modules:
        # nn.Module.to: diffusers' override warns about fp32-only modules these models do not have.
        torch.nn.Module.to(module, device=device, dtype=dtype)
    if components.t5 is not None and dtype == torch.float16:
        for name, parameter in components.t5.named_parameters():
            if any(part in _T5_FP32_MODULES for part in name.split(".")):
                parameter.data = parameter.data.to(torch.float32)
    components.device, components.dtype = device, dtype


def _with_encoder(spec: SD3Spec, role: str, weights: Mapping[str, torch.Tensor], name: str) -> SD3Spec:
    if role == "t5xxl":
        return replace(spec, t5=t5_spec(weights, "", name))
    return replace(spec, **{role: clip_spec(weights, role, "", name)})


def _build_clip(
    tensors: Mapping[str, torch.Tensor], spec: ClipSpec | None, source: str
) -> CLIPTextModelWithProjection:
    assert spec is not None  # resolve_missing_encoders raised otherwise
    config = CLIPTextConfig(**spec.config)
    weights = convert_clip(tensors, spec)
    return _materialize(
        lambda: CLIPTextModelWithProjection(config),
        weights,
        f"{ROLE_LABELS[spec.role]} text encoder",
        Path(source).name,
    )


def _build_t5(
    tensors: Mapping[str, torch.Tensor], spec: T5Spec, dtype: torch.dtype, source: str
) -> T5EncoderModel:
    config = T5Config(**spec.config)
    weights = convert_t5(tensors, spec, dtype)
    model = _materialize(lambda: T5EncoderModel(config), weights, "T5-XXL text encoder", Path(source).name)
    model.set_input_embeddings(model.shared)  # one embedding under both names, as transformers ties them
    return model


def _materialize(
    factory: Callable[[], torch.nn.Module],
    weights: dict[str, torch.Tensor],
    part: str,
    name: str,
    *,
    include_buffers: bool = False,
) -> torch.nn.Module:
    """A module built without memory that takes `weights` as they are; a mismatch is a CheckpointError."""
    with init_empty_weights(include_buffers=include_buffers):
        module = factory()
    if "text_model.embeddings.token_embedding.weight" in weights and not hasattr(module, "text_model"):
        weights = {key.removeprefix("text_model."): value for key, value in weights.items()}
    try:
        module.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:
        first = " ".join(str(error).splitlines()[1:3])
        raise CheckpointError(
            f"{name}: the {part} tensors do not fit the architecture read from the file: {first}"
        ) from error
    on_meta = [key for key, value in (*module.named_parameters(), *module.named_buffers()) if value.is_meta]
    if on_meta:
        raise CheckpointError(f"{name}: the {part} lacks tensors the model needs: {', '.join(on_meta[:3])}")
    return module.eval().requires_grad_(False)
