"""LyCORIS LoHa and LoKr networks as peft adapters (peft's `loha`/`lokr` layers).

Files use kohya's names (`lora_unet_<module path with _>`, `lora_te_`, `lora_te1_`, `lora_te2_`)
with LyCORIS's tensors per layer: LoHa `hada_w1_a/b`, `hada_w2_a/b`; LoKr `lokr_w1` (or
`lokr_w1_a/b`) and `lokr_w2` (or `lokr_w2_a/b`); each with an optional `alpha`. Layer names are
matched against the model's own modules, so a file whose names are the LDM UNet's (kohya's SDXL
layout) does not fit and says which layer. Tucker-decomposed convolutions (`hada_t1`,
`lokr_t2`) are refused by name.

The adapters use the same switches as LoRA ones (diffusers' peft helpers act on any peft
layer), so weights, switching off and unloading behave alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from peft import LoHaConfig, LoKrConfig
from peft.tuners.loha import layer as loha
from peft.tuners.lokr import layer as lokr
from peft.tuners.tuners_utils import BaseTunerLayer

# kohya prefixes -> model part
_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"))
_TE_PREFIX = ("lora_te_", "text_encoder")
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
_TUCKER = ("hada_t1", "hada_t2", "lokr_t2")


class LycorisError(ValueError):
    """A LoHa/LoKr file that cannot be used with this model; the message says which layer and why."""


def is_lycoris(keys: object) -> bool:
    """Whether tensor names are LyCORIS LoHa/LoKr ones."""
    return any(str(key).rsplit(".", 1)[-1] in (*_LOHA, *_LOKR) for key in keys)  # type: ignore[attr-defined]


def inject_lycoris(
    components: Mapping[str, torch.nn.Module], adapter: str, tensors: Mapping[str, torch.Tensor]
) -> tuple[str, ...]:
    """Add `adapter` to every layer the file names; the parts ("unet", "text_encoder", ...) it touched.

    On LycorisError some layers may already carry the adapter: the caller deletes it.
    """
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        base, _, param = key.rpartition(".")
        if param in _TUCKER:
            raise LycorisError(f"layer {base}: Tucker-decomposed convolutions ({param}) are not supported")
        layers.setdefault(base, {})[param] = value
    lookups = {part: _module_lookup(module) for part, module in components.items()}
    parts: set[str] = set()
    for base, params in sorted(layers.items()):
        if not any(name in params for name in (*_LOHA, *_LOKR)):
            continue  # an alpha alone, or a plain LoRA pair in a mixed file: not ours
        part, path = _locate(base, lookups)
        module = components[part].get_submodule(path)
        if "hada_w1_a" in params:
            _add_loha(components[part], path, module, adapter, params)
        else:
            _add_lokr(components[part], path, module, adapter, params)
        parts.add(part)
    if not parts:
        raise LycorisError("no LoHa or LoKr layers")
    for part in parts:
        components[part].requires_grad_(False)
    return tuple(sorted(parts))


def _module_lookup(component: torch.nn.Module) -> dict[str, str]:
    """kohya's flattened name -> module path, for the layers an adapter can wrap."""
    lookup: dict[str, str] = {}
    for path, module in component.named_modules():
        if ".base_layer" in f".{path}" or not isinstance(
            module, torch.nn.Linear | torch.nn.Conv2d | BaseTunerLayer
        ):
            continue
        flat = path.replace(".", "_")
        lookup[flat] = path
        lookup.setdefault(f"text_model_{flat}", path)  # transformers 5's CLIPTextModel lost that level
    return lookup


def _locate(base: str, lookups: Mapping[str, Mapping[str, str]]) -> tuple[str, str]:
    for prefix, part in (*_PREFIXES, _TE_PREFIX):
        if base.startswith(prefix):
            if part not in lookups:
                raise LycorisError(f"layer {base}: the model has no {part}")
            path = lookups[part].get(base.removeprefix(prefix))
            if path is None:
                raise LycorisError(f"layer {base}: the model has no such layer (made for another model?)")
            return part, path
    raise LycorisError(f"layer {base}: not a kohya layer name (lora_unet_, lora_te_, lora_te1_, lora_te2_)")


def _alpha(params: Mapping[str, torch.Tensor], rank: int) -> float:
    alpha = params.get("alpha")
    value = float(alpha) if alpha is not None else 0.0
    return value if value else float(rank)  # LyCORIS: no alpha (or 0) means a scale of 1


def _add_loha(
    component: torch.nn.Module, path: str, module: torch.nn.Module, adapter: str, params: dict
) -> None:
    rank = int(params["hada_w1_b"].shape[0])
    config = LoHaConfig(r=rank, alpha=_alpha(params, rank), init_weights=False)
    layer = _wrap(component, path, module, adapter, config, loha.LoHaLayer, loha.Linear, loha.Conv2d)
    _copy(layer, adapter, path, {name: params.get(name) for name in _LOHA})


def _add_lokr(
    component: torch.nn.Module, path: str, module: torch.nn.Module, adapter: str, params: dict
) -> None:
    full_w1, full_w2 = "lokr_w1" in params, "lokr_w2" in params
    w1 = params["lokr_w1"].shape if full_w1 else (params["lokr_w1_a"].shape[0], params["lokr_w1_b"].shape[1])
    if not full_w2:
        rank = int(params["lokr_w2_a"].shape[1])
    elif not full_w1:
        rank = int(params["lokr_w1_a"].shape[1])
    else:
        # Both factors whole: LyCORIS scales by 1; a rank this large makes peft keep them whole too.
        rank = max(int(params["lokr_w2"].shape[0]), int(params["lokr_w2"].shape[1]))
        params = {**params, "alpha": torch.tensor(float(rank))}
    alpha = _alpha(params, rank)
    factor = _factor_for(module, int(w1[0]), int(w1[1]))
    config = LoKrConfig(
        r=rank, alpha=alpha, decompose_both=not full_w1, decompose_factor=factor, init_weights=False
    )
    layer = _wrap(component, path, module, adapter, config, lokr.LoKrLayer, lokr.Linear, lokr.Conv2d)
    _copy(layer, adapter, path, {name: params.get(name) for name in _LOKR})


def _factor_for(module: torch.nn.Module, out_l: int, in_m: int) -> int:
    """The decompose factor under which peft splits this layer's widths as the file did."""
    base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    out_dim = base.out_features if isinstance(base, torch.nn.Linear) else base.out_channels
    in_dim = base.in_features if isinstance(base, torch.nn.Linear) else base.in_channels
    for factor in (-1, out_l, in_m):
        if lokr.factorization(out_dim, factor)[0] == out_l and lokr.factorization(in_dim, factor)[0] == in_m:
            return factor
    raise LycorisError(f"its Kronecker factors {out_l}x{in_m} do not split a {out_dim}x{in_dim} layer")


def _wrap(
    component: torch.nn.Module,
    path: str,
    module: torch.nn.Module,
    adapter: str,
    config: LoHaConfig | LoKrConfig,
    kind: type,
    linear: type,
    conv: type,
) -> torch.nn.Module:
    """The layer carrying `adapter`: the module itself when it is already of this kind, else a new
    peft layer around it (around another kind's layer too: peft layers nest)."""
    if isinstance(module, kind):
        module.update_layer(adapter, config.r, config.alpha, config=config)
        return module
    base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    if isinstance(base, torch.nn.Conv2d):
        layer = conv(module, adapter, config, r=config.r, alpha=config.alpha)
    elif isinstance(base, torch.nn.Linear):
        layer = linear(module, adapter, config, r=config.r, alpha=config.alpha)
    else:
        raise LycorisError(f"layer {path} is a {type(base).__name__}, which LyCORIS cannot patch")
    parent_path, _, child = path.rpartition(".")
    setattr(component.get_submodule(parent_path) if parent_path else component, child, layer)
    return layer


def _copy(layer: torch.nn.Module, adapter: str, path: str, values: Mapping[str, torch.Tensor | None]) -> None:
    for name, value in values.items():
        if value is None:
            continue
        holder = getattr(layer, name, None)
        target = holder[adapter] if holder is not None and adapter in holder else None
        if target is None:
            raise LycorisError(
                f"layer {path}: {name} is not part of this layer's {type(layer).__name__} layout"
            )
        if tuple(target.shape) != tuple(value.shape):
            raise LycorisError(
                f"layer {path}: {name} is {tuple(value.shape)}, the model's layer needs {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(value.to(target.dtype))


def unwrap_empty(components: Mapping[str, torch.nn.Module]) -> None:
    """Put back the plain layer wherever a LyCORIS layer has no adapter left, so that other
    adapters (peft's LoRA layers cannot wrap LyCORIS ones) find the model's own layers."""
    for component in components.values():
        empty = [
            path
            for path, module in component.named_modules()
            if isinstance(module, loha.LoHaLayer | lokr.LoKrLayer) and not module._available_adapters
        ]
        for path in sorted(empty, key=len, reverse=True):  # inner ones first
            parent_path, _, child = path.rpartition(".")
            parent = component.get_submodule(parent_path) if parent_path else component
            setattr(parent, child, getattr(parent, child).base_layer)
