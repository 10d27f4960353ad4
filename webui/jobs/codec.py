"""A job's validated request as JSON, so a queued job can run again after a restart.

Pictures (init image, mask, any an always-on script was given) become PNG in base64; enum fields
come back as their enums. A value JSON cannot hold raises TypeError: that job is not kept.
"""

from __future__ import annotations

import base64
import enum
import io
import json
from dataclasses import fields
from typing import Any

from PIL import Image

from webui.engine.request import GenerationRequest
from webui.training.request import TrainingRequest

_IMAGE_KEY = "__png__"


def request_to_json(request: GenerationRequest | TrainingRequest) -> str:
    values = {item.name: getattr(request, item.name) for item in fields(request)}
    return json.dumps(values, default=_encode)


def request_from_json(kind: str, text: str) -> GenerationRequest | TrainingRequest:
    """The request of a job of `kind` ("train", or txt2img/img2img) from `request_to_json`."""
    cls: type[GenerationRequest] | type[TrainingRequest] = (
        TrainingRequest if kind == "train" else GenerationRequest
    )
    values = json.loads(text, object_hook=_decode)
    defaults = cls()
    known = {item.name for item in fields(cls)}
    for name, value in list(values.items()):
        if name not in known:  # a field an older version had
            del values[name]
            continue
        default = getattr(defaults, name)
        if isinstance(default, enum.Enum) and value is not None:
            values[name] = type(default)(value)
    return cls(**values)


def _encode(value: object) -> Any:
    if isinstance(value, Image.Image):
        stream = io.BytesIO()
        value.save(stream, format="PNG")
        return {_IMAGE_KEY: base64.b64encode(stream.getvalue()).decode("ascii")}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot be kept in the job store")


def _decode(value: dict[str, Any]) -> Any:
    if set(value) == {_IMAGE_KEY}:
        image = Image.open(io.BytesIO(base64.b64decode(value[_IMAGE_KEY])))
        image.load()
        return image
    return value
