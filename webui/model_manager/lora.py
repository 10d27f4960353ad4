"""LoRA networks as peft adapters on a loaded model: read, checked against the model, switched per job.

Files are kohya/A1111 `lora_unet_*`/`lora_te*_*` safetensors (or diffusers/peft-format
LoRAs); diffusers converts their keys and loads them as peft adapters. Adapters are never
merged into the base weights: a job switches them on with its weights and every other
job switches them off, which leaves each layer computing exactly its base weights again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.loaders import (
    SD3LoraLoaderMixin,
    StableDiffusionLoraLoaderMixin,
    StableDiffusionXLLoraLoaderMixin,
)
from diffusers.utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
    delete_adapter_layers,
    set_adapter_layers,
    set_weights_and_activate_adapters,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError, safe_open

from webui.model_manager.archs import Arch, architectures
from webui.model_manager.load import LoadedModel
from webui.model_manager.lycoris import LycorisError, inject_lycoris, is_lycoris, unwrap_empty
from webui.model_manager.sd3.kohya_lora import KohyaLoraError, is_kohya_sd3, kohya_sd3_to_diffusers
from webui.model_manager.state_dict import SAFETENSORS_SUFFIXES, CheckpointError, read_state_dict

log = logging.getLogger(__name__)

# A LoRA's weight: one number for every part, or (text encoders, UNet) as in `<lora:name:0.5:1>`.
LoraWeight = float | tuple[float, float]
# Idle adapters kept on a model after a job, most recently used first; older ones are unloaded.
MAX_IDLE_ADAPTERS = 8
# Which of diffusers' loader mixins reads an architecture's LoRAs (its `lora_loader`).
_LOADERS = {
    "sd": StableDiffusionLoraLoaderMixin,
    "sdxl": StableDiffusionXLLoraLoaderMixin,
    "sd3": SD3LoraLoaderMixin,
}
# The part name diffusers' loaders give the denoiser: SD 3's MMDiT is its "transformer".
_DENOISER_PARTS = {"sd3": "transformer"}
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_DOWN = r"(?:lora_down|lora_A|lora\.down|down)\.weight$"
_CROSS_ATTENTION_KEY = re.compile(rf"attn2[._](?:processor\.)?to_k(?:_lora)?[._]{_DOWN}")
_TEXT_QUERY_KEY = re.compile(rf"^(?:lora_te1?_|text_encoder\.).*(?:q_proj|to_q)(?:_lora)?[._]{_DOWN}")
_PROJ_IN_KEY = re.compile(rf"^(?:lora_unet_|unet\.).*proj[._]in[._]{_DOWN}")
_LDM_UNET_KEY = re.compile(r"^lora_unet_(?:input_blocks|middle_block|output_blocks)_")
# The names diffusers' converter gives the text encoder parts, in the model's encoder order.
_TEXT_PARTS = ("text_encoder", "text_encoder_2")
# A layer's down (rank x inputs) and up (outputs x rank) projections, in each format's spelling.
_PAIR_SUFFIXES = (
    (".lora_down.weight", ".lora_up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    ("_lora.down.weight", "_lora.up.weight"),
)
_STATE_ATTRIBUTE = "_webui_lora_state"


class LoraError(CheckpointError):
    """A LoRA file that cannot be used with the current model; the message names it and says why."""


@dataclass
class _Adapter:
    name: str  # the name users write in `<lora:name>`
    adapter: str  # the peft adapter name inside the modules
    path: Path
    signature: tuple[int, int]  # (mtime_ns, size): an edited file is read again
    parts: tuple[str, ...]  # "unet" (or "transformer"), "text_encoder", "text_encoder_2": where it has layers
    lycoris: bool = False  # a LoHa/LoKr network (webui/model_manager/lycoris.py)
    last_job: int = 0


@dataclass
class LoraState:
    """The adapters a model's modules carry; see `lora_state` for where it lives."""

    adapters: dict[str, _Adapter] = field(default_factory=dict)
    files_read: int = 0  # lets callers (and tests) see that a weight change reused an adapter
    jobs: int = 0

    @property
    def loaded(self) -> dict[str, Path]:
        return {name: adapter.path for name, adapter in self.adapters.items()}


def lora_state(model: LoadedModel) -> LoraState | None:
    """The model's LoRA state, or None while no LoRA was ever loaded into it.

    It is an attribute of the UNet rather than of LoadedModel: it describes adapters injected
    into these very modules, so it lives and dies with them, also when a model cache wraps
    the same modules in a new LoadedModel or drops them.
    """
    return getattr(model.unet, _STATE_ATTRIBUTE, None)


def _attach_lora_state(model: LoadedModel) -> LoraState:
    state = lora_state(model)
    if state is None:
        state = LoraState()
        setattr(model.unet, _STATE_ATTRIBUTE, state)
    return state


def detect_lora_arch(path: Path) -> Arch | None:
    """The architecture a LoRA file was trained for, from key names and shapes only; None if unsure.

    Raises LoraError for a file that cannot be read or holds no LoRA layers.
    """
    path = Path(path)
    shapes = _read_shapes(path)
    if not any("lora" in key for key in shapes):
        raise LoraError(f"{path.name}: not a LoRA (no lora_* tensors)")
    if problem := lora_shape_problem(shapes):
        raise LoraError(f"{path.name}: {problem}")
    return lora_arch_from_shapes(shapes)


def lora_shape_problem(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """What makes these LoRA tensors unusable whatever the model (a missing half of a pair,
    ranks that differ, a projection that is not a matrix or a 1x1 kernel), or None."""
    for key in sorted(shapes):
        for down_suffix, up_suffix in _PAIR_SUFFIXES:
            if key.endswith(up_suffix) and key.removesuffix(up_suffix) + down_suffix not in shapes:
                return f"layer {key.removesuffix(up_suffix)} has an up projection and no down projection"
            if not key.endswith(down_suffix):
                continue
            base = key.removesuffix(down_suffix)
            down, up = tuple(shapes[key]), shapes.get(base + up_suffix)
            if up is None:
                return f"layer {base} has a down projection and no up projection"
            up = tuple(up)
            if len(down) not in (2, 4) or len(up) not in (2, 4):
                return f"layer {base} has projections of shapes {down} and {up}, not matrices"
            if down[0] == 0 or down[0] != up[1]:
                return f"layer {base} has projections of ranks {down[0]} (down) and {up[1]} (up)"
        if key.endswith(".alpha") and math.prod(shapes[key]) != 1:
            return f"{key} holds {math.prod(shapes[key])} numbers, not one"
    return None


def lora_value_problem(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """A tensor that is not floating point or holds NaN or infinity (which would blacken every
    image), or None."""
    for key in sorted(tensors):
        value = tensors[key]
        if not value.is_floating_point():
            return f"{key} holds {str(value.dtype).removeprefix('torch.')} values, not floating point"
        if not bool(torch.isfinite(value).all()):
            return f"its weights contain NaN or infinite values (in {key})"
    return None


def lora_arch_from_shapes(shapes: Mapping[str, Sequence[int]]) -> Arch | None:
    """Tell SD1/SD2/SDXL from LoRA key names and tensor shapes."""
    # Key prefixes only one architecture's LoRAs use; where two match (SDXL's and SD 3's both
    # name a "text_encoder_2"), the one naming more of the file's layers.
    matches = {
        described.arch: sum(key.startswith(described.lora_key_prefixes) for key in shapes)
        for described in architectures()
        if described.lora_key_prefixes
    }
    if any(matches.values()):
        return max(matches, key=lambda arch: matches[arch])
    # Down projections take the layer's input: for cross-attention keys, the text context; a
    # single-encoder model's text width is its context width.
    context = _first_input_width(shapes, _CROSS_ATTENTION_KEY)
    text = _first_input_width(shapes, _TEXT_QUERY_KEY)
    for described in architectures():
        if context == described.context_width:
            return described.arch
    for described in architectures():
        if text == described.context_width and len(described.text_encoders) == 1:
            return described.arch
    # Unusual widths (small test models): the layout can still tell. Kohya names SDXL's UNet
    # layers after the LDM UNet, and SD2's transformers project in with linear layers where
    # SD1 uses 1x1 convolutions.
    if any(_LDM_UNET_KEY.match(key) for key in shapes):
        return Arch.SDXL
    proj_in = next((shape for key, shape in shapes.items() if _PROJ_IN_KEY.match(key)), None)
    if proj_in is not None:
        return Arch.SD2 if len(proj_in) == 2 else Arch.SD1
    return None


def _first_input_width(shapes: Mapping[str, Sequence[int]], pattern: re.Pattern[str]) -> int | None:
    for key in sorted(shapes):
        if pattern.search(key) and len(shapes[key]) >= 2:
            return int(shapes[key][1])
    return None


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {key: tuple(value.shape) for key, value in _read_tensors(path).items()}
    if not path.is_file():
        raise LoraError(f"{path.name}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())  # a safe_open handle is not itself iterable
            return {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraError(
            f"{path.name}: not a readable .safetensors file (truncated or corrupt?): {error}"
        ) from error


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path).tensors
    except CheckpointError as error:
        raise LoraError(str(error)) from error


def activate_loras(model: LoadedModel, wanted: Sequence[tuple[str, Path, LoraWeight]]) -> None:
    """Make exactly `wanted` (name, file, weight) active on `model`, loading files not loaded yet.

    Call it before every job, with an empty list when the prompt has no LoRA: that switches
    every adapter off, and the model computes bit for bit what it did before any LoRA.
    A LoRA that cannot be used raises LoraError, and leaves every adapter switched off.
    """
    state = lora_state(model) if not wanted else _attach_lora_state(model)
    if state is None:
        return  # never had a LoRA: nothing to switch off
    state.jobs += 1
    weights: dict[str, tuple[float, float]] = {}
    try:
        for name, path, weight in wanted:
            te_weight, unet_weight = weight if isinstance(weight, tuple) else (weight, weight)
            weights[name] = (float(te_weight), float(unet_weight))  # given twice: the last one wins
            _ensure_loaded(model, state, name, Path(path)).last_job = state.jobs
        for name, path, _weight in wanted:  # LyCORIS ones a later LoRA took out come back
            _ensure_loaded(model, state, name, Path(path)).last_job = state.jobs
    except LoraError:
        _switch(model, state, {})  # whoever uses the model next gets its plain weights
        raise
    _switch(model, state, weights)
    _unload_idle(model, state, keep=weights.keys())


def _ensure_loaded(model: LoadedModel, state: LoraState, name: str, path: Path) -> _Adapter:
    signature = _signature(path, name)
    known = state.adapters.get(name)
    if known is not None and known.path == path and known.signature == signature:
        return known
    if known is not None:
        _unload(model, state, known)
    if any(other.lycoris for other in state.adapters.values()) and not is_lycoris(_read_shapes(path)):
        # peft's LoRA layers cannot wrap LyCORIS ones (the other way round works): take those
        # out; they are loaded again, around the LoRA layers, when next wanted.
        for other in [other for other in state.adapters.values() if other.lycoris]:
            _unload(model, state, other)
    adapter = _load(model, name, path, signature)
    state.files_read += 1
    state.adapters[name] = adapter
    return adapter


def _signature(path: Path, name: str) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as error:
        raise LoraError(f"LoRA '{name}': cannot read {path}: {error.strerror or error}") from error
    return stat.st_mtime_ns, stat.st_size


def _load(model: LoadedModel, name: str, path: Path, signature: tuple[int, int]) -> _Adapter:
    tensors = _read_tensors(path)
    if not any("lora" in key for key in tensors):
        raise LoraError(f"LoRA '{name}' ({path.name}): not a LoRA (no lora_* tensors)")
    problem = lora_shape_problem({key: tuple(value.shape) for key, value in tensors.items()})
    if problem := problem or lora_value_problem(tensors):
        raise LoraError(f"LoRA '{name}' could not be used: {problem}")
    file_arch = lora_arch_from_shapes({key: tuple(value.shape) for key, value in tensors.items()})
    if file_arch is not None and file_arch is not model.arch:
        raise LoraError(f"LoRA '{name}' is for {file_arch.label}, the current model is {model.arch.label}")
    if is_lycoris(tensors):
        return _load_lycoris(model, name, path, signature, tensors)
    parts = _convert(model, name, tensors)
    _check_fits(model, name, file_arch, parts)
    adapter = _Adapter(name, _adapter_name(name), path, signature, tuple(parts))
    try:
        _inject(model, adapter.adapter, parts)
    except (ValueError, RuntimeError, KeyError) as error:
        _delete_layers(model, adapter)
        raise LoraError(f"LoRA '{name}': diffusers could not load it: {error}") from error
    log.info("loaded LoRA %s (%s) into %s", name, ", ".join(parts), model.name)
    return adapter


def _load_lycoris(
    model: LoadedModel, name: str, path: Path, signature: tuple[int, int], tensors: dict[str, torch.Tensor]
) -> _Adapter:
    """LoHa/LoKr files: peft's own layers, put in by webui/model_manager/lycoris.py."""
    adapter = _Adapter(name, _adapter_name(name), path, signature, (), lycoris=True)
    try:
        with torch.no_grad():
            adapter.parts = inject_lycoris(_components(model), adapter.adapter, tensors)
    except (LycorisError, ValueError, RuntimeError, TypeError) as error:
        _delete_layers(model, adapter)
        unwrap_empty(_components(model))
        raise LoraError(
            f"LoRA '{name}' (LyCORIS) does not fit the current model {model.name}: {error}"
        ) from error
    log.info("loaded LyCORIS network %s (%s) into %s", name, ", ".join(adapter.parts), model.name)
    return adapter


def _adapter_name(name: str) -> str:
    # peft adapter names become ModuleDict keys (no dots), and transformers' load_adapter treats
    # any parameter whose name contains the adapter name as an adapter weight: so a prefix, a
    # tame slug and a digest that keeps distinct names distinct.
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_")[:40]
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"webui_lora_{slug}_{digest}"


def _convert(model: LoadedModel, name: str, tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Diffusers-format state dicts per model part ("unet", "text_encoder", "text_encoder_2")."""
    loader = _LOADERS[model.architecture.lora_loader]
    denoiser = _denoiser_part(model)
    if all(key.startswith(_KOHYA_PREFIXES) for key in tensors):
        tensors = _fold_alphas(tensors)
    if denoiser == "transformer" and is_kohya_sd3(tensors):
        # diffusers reads SD 3 LoRAs in its own layout only (transformer.*, text_encoder*.*).
        try:
            tensors = kohya_sd3_to_diffusers(_fold_alphas(tensors), model.unet.config.num_layers)
        except KohyaLoraError as error:
            raise LoraError(f"LoRA '{name}': {error}") from error
    if denoiser == "transformer" and not any(key.startswith(f"{denoiser}.") for key in tensors):
        raise LoraError(
            f"LoRA '{name}': not an SD 3.5 LoRA in diffusers' layout (transformer.* keys) or "
            "kohya's (lora_unet_joint_blocks_* keys)"
        )
    try:
        if denoiser == "transformer":
            converted = loader.lora_state_dict(dict(tensors))
        else:
            converted, _alphas = loader.lora_state_dict(dict(tensors), unet_config=model.unet.config)
    except (ValueError, KeyError, IndexError) as error:
        raise LoraError(
            f"LoRA '{name}': a layout diffusers cannot convert (LyCORIS LoHa/LoKr, or damaged?): {error}"
        ) from error
    parts: dict[str, dict] = {}
    for key, value in converted.items():
        part, _, rest = key.partition(".")
        parts.setdefault(part, {})[rest] = value
    unknown = set(parts) - {denoiser, *_TEXT_PARTS}
    if unknown or not parts:
        raise LoraError(f"LoRA '{name}': unexpected layer names ({', '.join(sorted(unknown)) or 'none'})")
    return parts


def _fold_alphas(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scale each kohya `lora_up` by its `alpha / rank` and drop the alphas.

    Diffusers turns per-layer alphas into a peft `alpha_pattern` whose text encoder keys match
    no module (they name `self_attn`, and keep the `text_model.` level that transformers 5's
    CLIPTextModel no longer has), so a file whose alphas differ by layer would be scaled wrong.
    Folded, every layer has scale 1 and the file's own scaling is exact.
    """
    folded: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.endswith(".alpha"):
            continue
        if key.endswith(".lora_up.weight"):
            base = key.removesuffix(".lora_up.weight")
            alpha, down = tensors.get(f"{base}.alpha"), tensors.get(f"{base}.lora_down.weight")
            if alpha is not None and down is not None:
                value = (value.float() * (float(alpha) / down.shape[0])).to(value.dtype)
        folded[key] = value
    return folded


def _denoiser_part(model: LoadedModel) -> str:
    return _DENOISER_PARTS.get(model.architecture.lora_loader, "unet")


def _components(model: LoadedModel) -> dict[str, torch.nn.Module]:
    """The parts LoRAs patch: the denoiser and the CLIP text encoders (never SD 3's T5)."""
    return {_denoiser_part(model): model.unet, **dict(zip(_TEXT_PARTS, model.text_encoders))}


def _check_fits(model: LoadedModel, name: str, file_arch: Arch | None, parts: dict[str, dict]) -> None:
    """Every layer the LoRA patches exists in the model with the LoRA's widths, or LoraError."""
    components = _components(model)
    for part, weights in parts.items():
        component = components.get(part)
        problem = (
            f"it has layers for a second text encoder ({part})"
            if component is None
            else _first_misfit(component, _peft_layout(part, component, weights))
        )
        if problem:
            made_for = f"it was made for {file_arch.label}" if file_arch else "it was made for another model"
            raise LoraError(
                f"LoRA '{name}' does not fit the current model {model.name} ({model.arch.label}): "
                f"{problem}; {made_for}"
            )


def _peft_layout(part: str, component: torch.nn.Module, weights: dict) -> dict[str, torch.Tensor]:
    # The same key conversions diffusers applies when it loads each part.
    if part in ("unet", "transformer"):
        return convert_unet_state_dict_to_peft(dict(weights))
    converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(dict(weights)))
    if not hasattr(component, "text_model"):
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    return converted


def _first_misfit(component: torch.nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    for key, value in sorted(weights.items()):
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        layer_name = key.split(".lora_")[0]
        try:
            layer = component.get_submodule(layer_name)
        except AttributeError:
            return f"the model has no layer '{layer_name}'"
        widths = _layer_widths(layer)
        if widths is None:
            return f"layer '{layer_name}' is a {type(layer).__name__}, which LoRA cannot patch"
        if ".lora_A." in key and value.shape[1] != widths[0]:
            return f"layer '{layer_name}' takes {widths[0]} inputs, the LoRA gives it {value.shape[1]}"
        if ".lora_B." in key and value.shape[0] != widths[1]:
            return f"layer '{layer_name}' has {widths[1]} outputs, the LoRA {value.shape[0]}"
    return None


def _layer_widths(layer: torch.nn.Module) -> tuple[int, int] | None:
    if isinstance(layer, BaseTunerLayer):
        layer = layer.get_base_layer()  # already wrapped by another LoRA's adapter
    if isinstance(layer, torch.nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, torch.nn.Conv2d):
        return layer.in_channels, layer.out_channels
    return None


def _inject(model: LoadedModel, adapter: str, parts: dict[str, dict]) -> None:
    loader = _LOADERS[model.architecture.lora_loader]
    components = _components(model)
    with torch.no_grad(), warnings.catch_warnings(), _without_load_report():
        # Several adapters in one module is the point here, not the mistake peft warns about.
        warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
        for part, weights in parts.items():
            prefixed = {f"{part}.{key}": value for key, value in weights.items()}
            if part == "unet":
                loader.load_lora_into_unet(prefixed, None, model.unet, adapter_name=adapter)
            elif part == "transformer":
                loader.load_lora_into_transformer(prefixed, model.unet, adapter_name=adapter)
            else:
                loader.load_lora_into_text_encoder(
                    prefixed, None, components[part], prefix=part, adapter_name=adapter
                )
    # A new adapter starts active; the caller's switch decides.
    for part in parts:
        components[part].requires_grad_(False)


@contextmanager
def _without_load_report() -> Iterator[None]:
    """Mute transformers' load report while an adapter goes into a text encoder.

    Loading a second adapter, it lists the first one's weights as "MISSING ... newly
    initialized" because they are not in this file; they are untouched, and `_check_fits`
    has already matched every layer of the new one.
    """
    reporter = logging.getLogger("transformers.integrations.peft")
    level = reporter.level
    reporter.setLevel(logging.ERROR)
    try:
        yield
    finally:
        reporter.setLevel(level)


def _switch(model: LoadedModel, state: LoraState, weights: Mapping[str, tuple[float, float]]) -> None:
    """Activate the wanted adapters with their weights in each part; switch the rest off."""
    for part, component in _components(model).items():
        which = 1 if part in ("unet", "transformer") else 0
        active = [
            (adapter.adapter, weights[adapter.name][which])
            for adapter in state.adapters.values()
            if adapter.name in weights and part in adapter.parts
        ]
        if not any(part in adapter.parts for adapter in state.adapters.values()):
            continue  # no LoRA layers in this module at all
        if not active:
            # Disabled LoRA layers call their base layer alone: the exact original computation.
            set_adapter_layers(component, enabled=False)
            continue
        set_adapter_layers(component, enabled=True)
        set_weights_and_activate_adapters(component, [a for a, _ in active], [w for _, w in active])
        # Activating marks adapter weights trainable; nothing here trains.
        component.requires_grad_(False)


def _unload_idle(model: LoadedModel, state: LoraState, keep: Iterable[str]) -> None:
    kept = set(keep)
    idle = sorted((a for a in state.adapters.values() if a.name not in kept), key=lambda a: -a.last_job)
    for adapter in idle[MAX_IDLE_ADAPTERS:]:
        _unload(model, state, adapter)


def _unload(model: LoadedModel, state: LoraState, adapter: _Adapter) -> None:
    _delete_layers(model, adapter)
    if adapter.lycoris:
        unwrap_empty(_components(model))
    state.adapters.pop(adapter.name, None)
    log.info("unloaded LoRA %s from %s", adapter.name, model.name)


def _delete_layers(model: LoadedModel, adapter: _Adapter) -> None:
    # Every part, not only those listed: a load that failed halfway may have left layers anywhere.
    with warnings.catch_warnings():
        # peft re-activates a remaining adapter when an active one goes; the next switch decides.
        warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
        for component in _components(model).values():
            delete_adapter_layers(component, adapter.adapter)
            if isinstance(config := getattr(component, "peft_config", None), dict):
                config.pop(adapter.adapter, None)
