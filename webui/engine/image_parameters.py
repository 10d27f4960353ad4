"""What one image was made with, typed; its infotext pairs are derived only when it is written.

The request's declared parameters (engine/parameters.py) say which infotext keys exist, in which
order and how each value is written; this adds what only the finished image knows (its seed and
variation seed, the sampler and schedule the names resolved to) and what only the caller that
found the files knows (`ModelFacts`). No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from webui.engine.parameters import declared_parameters, fields_from_pairs
from webui.engine.request import GenerationRequest

# The infotext key the model's keys follow, as A1111 writes them.
_MODEL_KEYS_AFTER = "Size"


@dataclass(frozen=True)
class ModelFacts:
    """The files behind an image: the checkpoint, the VAE, the networks' hashes, the program."""

    name: str  # the checkpoint's file name, without its folder ("Model")
    hash: str | None  # its short hash ("Model hash")
    vae: str | None = None
    vae_hash: str | None = None
    # Further pairs written after the request's ("Lora hashes", "TI hashes", "Weights").
    more: Mapping[str, object] = field(default_factory=dict)
    version: str = ""  # "Version"; "" leaves it out


@dataclass(frozen=True)
class ImageParameters:
    """One image's parameters: the request as it ran (styles applied) and what the image adds."""

    request: GenerationRequest
    seed: int
    sampler: str  # the resolved A1111 name ("k_euler_a" asked: "Euler a")
    schedule: str
    subseed: int | None = None  # the image's variation seed, when variation seeds were used
    hr_sampler: str = ""  # hires fix's own sampler, resolved; "": the first pass's
    hr_schedule: str = ""  # hires fix's own schedule type; "": the first pass's
    model: ModelFacts | None = None

    def infotext_pairs(self) -> dict[str, object]:
        """A1111's `Key: value` pairs in its order; a value of None is not written."""
        pairs: dict[str, object] = {}
        for item in declared_parameters(GenerationRequest):
            key = item.param.infotext
            if key is None or key in pairs or item.param.size_axis:  # a `WxH` is written by its first half
                continue
            write = item.param.write
            value = write(self) if write is not None else getattr(self.request, item.name)
            if value is not None:
                pairs[key] = value
            if key == _MODEL_KEYS_AFTER and self.model is not None:
                pairs.update(self._model_pairs())
        if self.model is not None:
            pairs.update({key: value for key, value in self.model.more.items() if key not in pairs})
            if self.model.version:
                pairs["Version"] = self.model.version
        return pairs

    def _model_pairs(self) -> dict[str, object]:
        assert self.model is not None
        pairs: dict[str, object] = {"Model hash": self.model.hash, "Model": self.model.name}
        if self.model.vae is not None:
            pairs["VAE hash"] = self.model.vae_hash
            pairs["VAE"] = self.model.vae
        return pairs


def request_fields_from_pairs(pairs: Mapping[str, str]) -> dict[str, object]:
    """GenerationRequest field names and values an infotext's pairs give (values that do not
    convert are left out), and the model's `model` and `model_hash` when it names them."""
    found = fields_from_pairs(GenerationRequest, pairs)
    for key, name in (("Model", "model"), ("Model hash", "model_hash")):
        value = str(pairs.get(key, "")).strip()
        if value:
            found[name] = value
    return found
