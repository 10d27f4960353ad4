"""The X/Y/Z plot's axis types and A1111's value syntax: `1-5`, `1-10 (+2)`, `1-10 [5]`, quoted lists."""

from __future__ import annotations

import csv
import io
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from webui.engine.request import GenerationError, GenerationRequest

MAX_AXIS_VALUES = 1000  # a typo such as "1-1000000" must not queue a million images

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_INT_STEP = re.compile(rf"^({_INT})\s*-\s*({_INT})(?:\s*\(\s*({_INT})\s*\))?$")
_INT_COUNT = re.compile(rf"^({_INT})\s*-\s*({_INT})\s*\[\s*(\d+)\s*\]$")
_FLOAT_STEP = re.compile(rf"^({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(\s*({_FLOAT})\s*\))?$")
_FLOAT_COUNT = re.compile(rf"^({_FLOAT})\s*-\s*({_FLOAT})\s*\[\s*(\d+)\s*\]$")


@dataclass(frozen=True)
class Cell:
    """One plot cell's job: a request and the checkpoint it runs on (None: the job's)."""

    request: GenerationRequest
    checkpoint: str | None = None


@dataclass(frozen=True)
class AxisType:
    name: str
    value_type: type  # int, float or str
    apply: Callable[[Cell, Any, Any], Cell]  # (cell, value, the axis's first value) -> cell
    labelled: bool = True  # "Steps: 10"; False shows the bare value (prompt S/R, checkpoint)
    seeds: bool = False  # -1 values become one random seed each, unless seeds are not fixed


def _field(name: str) -> Callable[[Cell, Any, Any], Cell]:
    return lambda cell, value, _first: replace(cell, request=replace(cell.request, **{name: value}))


def _search_replace(cell: Cell, value: str, first: str) -> Cell:
    request = cell.request
    return replace(
        cell,
        request=replace(
            request,
            prompt=request.prompt.replace(first, value),
            negative_prompt=request.negative_prompt.replace(first, value),
        ),
    )


# The documented axis list: a type is named (ignoring case) or given by its index here.
AXIS_TYPES: tuple[AxisType, ...] = (
    AxisType("Nothing", str, lambda cell, _value, _first: cell, labelled=False),
    AxisType("Seed", int, _field("seed"), seeds=True),
    AxisType("Var. seed", int, _field("subseed"), seeds=True),
    AxisType("Var. strength", float, _field("subseed_strength")),
    AxisType("Steps", int, _field("steps")),
    AxisType("Hires steps", int, _field("hr_second_pass_steps")),
    AxisType("CFG Scale", float, _field("cfg_scale")),
    AxisType("Prompt S/R", str, _search_replace, labelled=False),
    AxisType("Sampler", str, _field("sampler_name")),
    AxisType("Schedule type", str, _field("scheduler")),
    AxisType(
        "Checkpoint name", str, lambda cell, value, _first: replace(cell, checkpoint=value), labelled=False
    ),
    AxisType("Denoising", float, _field("denoising_strength")),
    AxisType("Clip skip", int, _field("clip_skip")),
)
AXIS_NAMES: tuple[str, ...] = tuple(axis.name for axis in AXIS_TYPES)


def axis_type(name: str) -> AxisType:
    for axis in AXIS_TYPES:
        if axis.name.lower() == name.strip().lower():
            return axis
    raise GenerationError(f"unknown X/Y/Z axis type {name!r}; one of: {', '.join(AXIS_NAMES)}", "script_args")


@dataclass(frozen=True)
class Axis:
    type: AxisType
    values: tuple[Any, ...]  # (None,) for "Nothing"

    @property
    def is_nothing(self) -> bool:
        return self.type.name == "Nothing"

    def label(self, value: Any) -> str:
        if self.is_nothing:
            return ""
        text = format_value(value)
        return f"{self.type.name}: {text}" if self.type.labelled else text

    def with_fixed_seeds(self) -> Axis:
        """A1111: a -1 on a seed axis is one random seed, the same in every cell of that column/row."""
        if not self.type.seeds:
            return self
        return replace(self, values=tuple(random.randrange(2**32) if v == -1 else v for v in self.values))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(round(value, 8))
    return str(value)


def parse_axis(letter: str, kind: AxisType, text: str) -> Axis:
    """Values for one axis; GenerationError (field script_args) names the axis and the bad value."""
    if kind.name == "Nothing":
        return Axis(kind, (None,))
    items = [item.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for item in row]
    items = [item for item in items if item]
    if not items:
        raise GenerationError(f"X/Y/Z plot: the {letter} axis ({kind.name}) has no values", "script_args")
    values: list[Any] = []
    for item in items:
        try:
            values += _expand(kind.value_type, item)
        except ValueError as error:
            raise GenerationError(
                f"X/Y/Z plot: {letter} axis ({kind.name}) value {item!r}: {error}", "script_args"
            ) from None
        if len(values) > MAX_AXIS_VALUES:
            raise GenerationError(
                f"X/Y/Z plot: the {letter} axis has more than {MAX_AXIS_VALUES} values", "script_args"
            )
    return Axis(kind, tuple(values))


def _expand(value_type: type, item: str) -> list[Any]:
    if value_type is int:
        return _expand_ints(item)
    if value_type is float:
        return _expand_floats(item)
    return [item]


def _number(text: str) -> str:
    return text.replace(" ", "")


def _expand_ints(item: str) -> list[int]:
    if match := _INT_COUNT.match(item):
        start, end, count = int(_number(match[1])), int(_number(match[2])), int(match[3])
        return [int(v) for v in _spaced(start, end, count)]
    if match := _INT_STEP.match(item):
        start, end = int(_number(match[1])), int(_number(match[2]))
        step = int(_number(match[3])) if match[3] else (1 if end >= start else -1)
        if step == 0:
            raise ValueError("the step must not be 0")
        values = list(range(start, end + (1 if step > 0 else -1), step))
        if not values:
            raise ValueError("the step goes away from the end, so the range is empty")
        _check_count(len(values))
        return values
    try:
        return [int(item)]
    except ValueError:
        raise ValueError("not a whole number or a range like 1-5, 1-10 (+2), 1-10 [5]") from None


def _expand_floats(item: str) -> list[float]:
    if match := _FLOAT_COUNT.match(item):
        start, end, count = float(_number(match[1])), float(_number(match[2])), int(match[3])
        return [round(v, 8) for v in _spaced(start, end, count)]
    if match := _FLOAT_STEP.match(item):
        start, end = float(_number(match[1])), float(_number(match[2]))
        step = float(_number(match[3])) if match[3] else (1.0 if end >= start else -1.0)
        if step == 0:
            raise ValueError("the step must not be 0")
        count = math.floor((end - start) / step + 1e-9) + 1  # the end counts when a step lands on it
        if count < 1:
            raise ValueError("the step goes away from the end, so the range is empty")
        _check_count(count)
        return [round(start + i * step, 8) for i in range(count)]
    try:
        value = float(item)
    except ValueError:
        raise ValueError("not a number or a range like 0.5-1 (+0.25), 1-2 [3]") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return [value]


def _spaced(start: float, end: float, count: int) -> list[float]:
    """`count` values evenly from start to end inclusive (numpy's linspace; ints truncate as A1111)."""
    if count < 1:
        raise ValueError("the count must be at least 1")
    _check_count(count)
    if count == 1:
        return [start]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def _check_count(count: int) -> None:
    if count > MAX_AXIS_VALUES:
        raise ValueError(f"more than {MAX_AXIS_VALUES} values")
