"""Build diffusers components from a single-file checkpoint or a diffusers folder, offline."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from webui.model_manager.archs import Architecture, architecture, diffusers_folder_architecture
from webui.model_manager.detect import Arch, ModelSpec, TextEncoderSpec, detect_model
from webui.model_manager.ema import select_weights
from webui.model_manager.ldm_export import canonical_text_keys
from webui.model_manager.sd3.build import SD3Components, load_sd3
from webui.model_manager.sd3.folder import is_sd3_folder, load_sd3_folder
from webui.model_manager.sd3.spec import is_sd3_checkpoint
from webui.model_manager.state_dict import CheckpointError, read_state_dict, read_tensor_shapes
from webui.model_manager.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

TextEncoder = CLIPTextModel | CLIPTextModelWithProjection
# Buffers some exporters save that today's modules rebuild themselves.
_IGNORED_TEXT_KEYS = ("text_model.embeddings.position_ids", "logit_scale")


@dataclass
class LoadedModel:
    """Everything the engine needs from one checkpoint, already on its device."""

    name: str
    path: Path
    spec: ModelSpec
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[TextEncoder]
    tokenizers: list[CLIPTokenizer]
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0
    vae_path: Path | None = None  # a VAE file used instead of the checkpoint's own; None: built-in
    uses_ema: bool = False  # the UNet holds the file's EMA weights rather than its raw ones
    # An architecture's own bundle of the same modules, for its family loop (SD 3: SD3Components).
    # `unet` is then its denoiser (SD 3's MMDiT) and `text_encoders` all of its encoders.
    parts: SD3Components | None = None

    def placed_on(self, device: torch.device) -> None:
        """Record that the modules now run on `device`, in `parts` too (its family loop reads it there)."""
        self.device = device
        if self.parts is not None:
            self.parts = replace(self.parts, device=device)

    @property
    def weights_label(self) -> str | None:
        """`EMA` or `raw` for files that hold both (as the infotext writes it); None otherwise."""
        if not self.spec.has_ema:
            return None
        return "EMA" if self.uses_ema else "raw"

    @property
    def arch(self) -> Arch:
        return self.spec.arch

    @property
    def architecture(self) -> Architecture:
        return architecture(self.spec.arch)

    @property
    def size_bytes(self) -> int:
        modules = [self.unet, self.vae, *self.text_encoders]
        return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def load_model(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    use_ema: bool = True,
    encoder_folders: tuple[Path, ...] = (),
) -> LoadedModel:
    """Load a `.safetensors`/`.ckpt` file or a diffusers folder; CheckpointError says what is wrong.

    `use_ema`: a file with CompVis EMA weights is built with them (as CompVis samples); False
    takes its raw weights. Files without EMA weights load the same either way.
    `encoder_folders`: where text encoders a file lacks are looked for (SD 3 files without them)."""
    path = Path(path)
    started = time.perf_counter()
    if path.is_dir() and is_sd3_folder(path):
        model = _from_sd3(path, path.name, load_sd3_folder(path, device, dtype))
    elif path.is_dir():
        model = _load_diffusers_folder(path, device, dtype)
    elif _is_sd3_file(path):
        model = _from_sd3(path, path.stem, load_sd3(path, device, dtype, encoder_folders=encoder_folders))
    else:
        model = _load_single_file(path, device, dtype, use_ema)
    model.load_seconds = time.perf_counter() - started
    log.info(
        "loaded %s (%s) to %s as %s: %.2f GB in %.2f s",
        model.name,
        model.spec.kind,
        device,
        str(dtype).removeprefix("torch."),
        model.size_bytes / 1e9,
        model.load_seconds,
    )
    return model


def _load_single_file(path: Path, device: torch.device, dtype: torch.dtype, use_ema: bool) -> LoadedModel:
    state = read_state_dict(path)
    spec = detect_model(state.tensors, state.metadata, path.name)
    spec = spec_with_yaml_override(spec, path)
    tensors = select_weights(state.tensors, use_ema, path.name)
    unet = _load_weights(
        _empty(lambda: UNet2DConditionModel.from_config(spec.unet_config)),
        convert_ldm_unet_checkpoint(tensors, spec.unet_config),
        "UNet",
        path.name,
    )
    vae = build_vae(tensors, spec.vae_config, path.name)
    encoders = [_build_text_encoder(tensors, encoder, path.name) for encoder in spec.text_encoders]
    tokenizers = [
        build_clip_tokenizer(pad_with_exclamation=e.pad_with_exclamation) for e in spec.text_encoders
    ]
    del tensors, state
    model = _place(path.stem, path, spec, unet, vae, encoders, tokenizers, device, dtype)
    model.uses_ema = use_ema and spec.has_ema
    return model


def _is_sd3_file(path: Path) -> bool:
    try:
        return is_sd3_checkpoint(read_tensor_shapes(path).tensors)
    except CheckpointError:
        return False  # the LDM reader says what is wrong with it


def _from_sd3(path: Path, name: str, parts: SD3Components) -> LoadedModel:
    """SD 3's components as a LoadedModel: the cache moves the same modules the flow loop uses."""
    sd3 = parts.spec
    spec = ModelSpec(
        arch=Arch.SD3,
        unet_config=dict(sd3.transformer_config),
        vae_config=dict(sd3.vae_config or parts.vae.config),
        text_encoders=(),
        prediction_type="flow",
        is_inpainting=False,
        label=sd3.kind,
    )
    encoders: list[Any] = [parts.clip_l, parts.clip_g] + ([parts.t5] if parts.t5 is not None else [])
    tokenizers: list[Any] = [parts.tokenizer_l, parts.tokenizer_g]
    tokenizers += [parts.tokenizer_t5] if parts.tokenizer_t5 is not None else []
    return LoadedModel(
        name,
        path,
        spec,
        parts.transformer,
        parts.vae,
        encoders,
        tokenizers,
        parts.device,
        parts.dtype,
        parts=parts,
    )


def build_vae(tensors: dict[str, torch.Tensor], config: dict[str, Any], name: str) -> AutoencoderKL:
    """A VAE from LDM-layout tensors (with or without the checkpoint prefix) or diffusers-layout ones."""
    if not any(key.startswith("encoder.down_blocks.") for key in tensors):
        tensors = convert_ldm_vae_checkpoint(tensors, config)
    return _load_weights(_empty(lambda: AutoencoderKL.from_config(config)), tensors, "VAE", name)


def _empty(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A module whose weights are not allocated: it takes the file's tensors as they are."""
    with init_empty_weights(include_buffers=False):
        return factory()


def _load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], part: str, name: str):
    try:
        module.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1:3]
        raise CheckpointError(
            f"{name}: the {part} tensors do not fit the architecture read from the file: {' '.join(first)}"
        ) from error
    return module.eval().requires_grad_(False)


def _build_text_encoder(tensors: dict[str, torch.Tensor], encoder: TextEncoderSpec, name: str) -> TextEncoder:
    config = CLIPTextConfig(**encoder.config)
    model_class = CLIPTextModelWithProjection if encoder.with_projection else CLIPTextModel
    inner = {key: value for key, value in tensors.items() if key.startswith(encoder.prefix)}
    if encoder.layout == "hf":
        weights = canonical_text_keys(convert_ldm_clip_checkpoint(inner, remove_prefix=encoder.prefix))
    else:
        if encoder.drop_last_layer:
            last = f"{encoder.prefix}transformer.resblocks.{config.num_hidden_layers}."
            inner = {key: value for key, value in inner.items() if not key.startswith(last)}
        if not encoder.with_projection:
            inner.pop(f"{encoder.prefix}text_projection", None)
        weights = convert_open_clip_checkpoint(_Shell(config), inner, prefix=encoder.prefix)
    weights = {key: value for key, value in weights.items() if key not in _IGNORED_TEXT_KEYS}
    module = _empty(lambda: model_class(config))
    if "text_model.embeddings.token_embedding.weight" not in module.state_dict():
        # transformers 5's CLIPTextModel names its weights without the `text_model.` level.
        weights = {key.removeprefix("text_model."): value for key, value in weights.items()}
    return _load_weights(module, weights, "text encoder", name)


@dataclass
class _Shell:
    """What diffusers' OpenCLIP converter reads from the model it converts for: its config."""

    config: CLIPTextConfig


def _place(
    name: str,
    path: Path,
    spec: ModelSpec,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    encoders: list[TextEncoder],
    tokenizers: list[CLIPTokenizer],
    device: torch.device,
    dtype: torch.dtype,
) -> LoadedModel:
    for module in (unet, vae, *encoders):
        # nn.Module.to: diffusers' override warns about fp32-only modules these models do not have.
        torch.nn.Module.to(module, device=device, dtype=dtype)
    return LoadedModel(name, path, spec, unet, vae, encoders, tokenizers, device, dtype)


def spec_with_yaml_override(spec: ModelSpec, path: Path) -> ModelSpec:
    override = _yaml_prediction_type(path)
    if override and override != spec.prediction_type:
        return _with_prediction_type(spec, override)
    return spec


def _yaml_prediction_type(path: Path) -> str | None:
    """A1111's convention: `parameterization: "v"` in a same-named .yaml beside the checkpoint."""
    config_path = path.with_suffix(".yaml")
    if not config_path.is_file():
        return None
    try:
        found = _find_key(yaml.safe_load(config_path.read_text(encoding="utf-8")), "parameterization")
    except (yaml.YAMLError, OSError) as error:
        log.warning("ignoring %s: %s", config_path.name, error)
        return None
    if found is None:
        return None
    return "v_prediction" if str(found).lower() in ("v", "v_prediction") else "epsilon"


def _find_key(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for value in node.values():
            if (found := _find_key(value, key)) is not None:
                return found
    return None


def _with_prediction_type(spec: ModelSpec, prediction_type: str) -> ModelSpec:
    unet_config = dict(spec.unet_config)
    if spec.architecture.upcast_attention_for_v:
        unet_config["upcast_attention"] = prediction_type == "v_prediction"
    return replace(spec, prediction_type=prediction_type, unet_config=unet_config)


def _load_diffusers_folder(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(f"{path.name}: a folder without model_index.json is not a diffusers model")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    options = {"local_files_only": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **options)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **options)
        encoders: list[TextEncoder] = [
            CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **options)
        ]
        if "text_encoder_2" in index:
            encoders.append(
                CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **options)
            )
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path.name}: cannot read the diffusers folder: {error}") from error
    described = diffusers_folder_architecture(len(encoders), encoders[0].config.hidden_act)
    if described is None:
        raise CheckpointError(
            f"{path.name}: a diffusers folder whose text encoders no architecture we know has"
        )
    arch = described.arch
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    prediction_type = scheduler.get("prediction_type", "epsilon")
    pad_flags = [slot.pad_with_exclamation for slot in described.text_encoders]
    tokenizers = [
        _folder_tokenizer(path, sub, pad) for sub, pad in zip(("tokenizer", "tokenizer_2"), pad_flags)
    ]
    spec = ModelSpec(
        arch=arch,
        unet_config=dict(unet.config),
        vae_config=dict(vae.config),
        text_encoders=tuple(
            TextEncoderSpec(
                "", "diffusers", e.config.to_dict(), isinstance(e, CLIPTextModelWithProjection), False, p
            )
            for e, p in zip(encoders, pad_flags)
        ),
        prediction_type=prediction_type,
        is_inpainting=unet.config.in_channels == 9,
    )
    for module in (unet, vae, *encoders):
        module.eval().requires_grad_(False)
    return _place(path.name, path, spec, unet, vae, encoders, tokenizers, device, dtype)


def _folder_tokenizer(path: Path, subfolder: str, pad_with_exclamation: bool) -> CLIPTokenizer:
    # A folder's own tokenizer files win; without them, the built-in CLIP vocabulary is the same one.
    folder = path / subfolder
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    return build_clip_tokenizer(pad_with_exclamation=pad_with_exclamation)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def check_single_file(tensors: dict[str, torch.Tensor], spec: ModelSpec, name: str) -> None:
    """Build each component of `spec` from `tensors` as a load does, or CheckpointError saying
    which part does not fit. Meta tensors (a header read) suffice: nothing is allocated or read,
    so a scan refuses a damaged file up front instead of its first job failing."""
    builds: dict[str, Callable[[], object]] = {
        "UNet": lambda: _load_weights(
            _empty(lambda: UNet2DConditionModel.from_config(spec.unet_config)),
            convert_ldm_unet_checkpoint(tensors, spec.unet_config),
            "UNet",
            name,
        ),
        "VAE": lambda: build_vae(tensors, spec.vae_config, name),
    }
    for index, encoder in enumerate(spec.text_encoders, start=1):
        builds[f"text encoder {index}"] = lambda e=encoder: _build_text_encoder(tensors, e, name)
    for part, build in builds.items():
        try:
            build()
        except CheckpointError:
            raise
        except KeyError as error:
            raise CheckpointError(f"{name}: the {part} lacks the tensor {error}") from error
        except Exception as error:  # diffusers' converters on damaged input fail in many ways
            raise CheckpointError(f"{name}: the {part} cannot be built from its tensors: {error}") from error
