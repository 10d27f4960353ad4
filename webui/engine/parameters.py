"""How a generation parameter is declared, once, and what is read from that declaration.

A request field is declared as `Annotated[type, Field(ge=..., le=..., multiple_of=...), Param(...)]`:
pydantic's `Field` holds its bounds, `Param` its names everywhere else (the page's label and slider,
the command line's flag, A1111's body field, the infotext key and how its value is written and
read). Validation, infotext writing and reading, the A1111 field names, the CLI flags and the
page's slider ends are all derived from it, so a parameter cannot mean two things in two places.

No torch here: the page and the command line import it.
"""

from __future__ import annotations

import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class Slider:
    """The page's slider for a parameter: its ends and step (the ends may be inside the bounds)."""

    minimum: float
    maximum: float
    step: float


@dataclass(frozen=True)
class Param:
    """Where one request field shows up besides the engine (see the module's docstring).

    `write` gets the image's parameters (`ImageParameters`) and gives the infotext value, None for
    "not written"; without it the request's value is written unless it is None. `read` turns the
    infotext text back into the field's value (None: it does not convert); without it the field's
    type decides. `read_pairs` instead reads the value from all of an infotext's pairs, for a field
    whose presence is told by other keys. `checked` limits the bounds to the requests it holds for
    (a hires value is not checked when hires fix is off), as the engine only uses it then.
    """

    label: str = ""
    help: str = ""
    cli: tuple[str, ...] = ()  # the command line's flags; empty: no flag
    api: str | None = None  # A1111's body field, when it is not the field's own name
    infotext: str | None = None  # the key in the infotext's `Key: value` line
    aliases: tuple[str, ...] = ()  # other keys read for it; `infotext` wins when both appear
    size_axis: int | None = None  # 0 or 1: this field is that half of a `WxH` value
    write: Callable[[Any], object] | None = None
    read: Callable[[str], object] | None = None
    read_pairs: Callable[[Mapping[str, str]], object] | None = None
    checked: Callable[[Any], bool] | None = None
    slider: Slider | None = None


@dataclass(frozen=True)
class Declared:
    """One declared field of a request class: its name, bare type, default, bounds and `Param`."""

    name: str
    type: Any
    default: Any
    bounds: FieldInfo | None
    param: Param

    def bound(self, kind: str) -> float | None:
        """A bound by pydantic's name for it: "ge", "le", "gt", "lt" or "multiple_of"."""
        if self.bounds is None:
            return None
        for item in self.bounds.metadata:
            value = getattr(item, kind, None)
            if value is not None:
                return value
        return None

    @property
    def minimum(self) -> float | None:
        return self.bound("ge")

    @property
    def maximum(self) -> float | None:
        return self.bound("le")

    @property
    def multiple_of(self) -> float | None:
        return self.bound("multiple_of")

    @property
    def api_name(self) -> str:
        """The A1111 body field that carries this one."""
        return self.param.api or self.name

    @property
    def flag_dest(self) -> str:
        """The argparse attribute of its command-line flag ("--n-iter": "n_iter")."""
        long = next(flag for flag in self.param.cli if flag.startswith("--"))
        return long.removeprefix("--").replace("-", "_")

    def range_text(self) -> str:
        """The range in words, e.g. "between 64 and 4096"; "" when there is none."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"between {number_text(low)} and {number_text(high)}"
        if low is not None:
            return f"at least {number_text(low)}"
        if high is not None:
            return f"at most {number_text(high)}"
        return ""

    def bounds_text(self) -> str:
        """All bounds in words, e.g. "between 64 and 4096, a multiple of 8"; "" when there are none."""
        step = self.multiple_of
        parts = [self.range_text(), f"a multiple of {number_text(step)}" if step is not None else ""]
        return ", ".join(part for part in parts if part)


def number_text(value: float) -> str:
    """2.0 as "2", 0.5 as "0.5": bounds read as people write them."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


@cache
def declared_parameters(cls: type) -> tuple[Declared, ...]:
    """The fields of dataclass `cls` that carry a `Param`, in declaration order."""
    hints = _hints(cls)
    found = []
    for item in fields(cls):
        hint = hints[item.name]
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        bare, *metadata = typing.get_args(hint)
        params = [meta for meta in metadata if isinstance(meta, Param)]
        if not params:
            continue
        bounds = next((meta for meta in metadata if isinstance(meta, FieldInfo)), None)
        default = item.default if item.default is not MISSING else None
        found.append(Declared(item.name, _without_none(bare), default, bounds, params[0]))
    return tuple(found)


def declared(cls: type, name: str) -> Declared:
    """One declared field of `cls` by name; KeyError when it has no `Param`."""
    for item in declared_parameters(cls):
        if item.name == name:
            return item
    raise KeyError(name)


@cache
def _bounds_model(cls: type) -> type[BaseModel]:
    """A pydantic model of `cls`'s bounded fields, strict so that 20.0 or True is no step count."""
    model_fields: dict[str, Any] = {
        item.name: (_hints(cls)[item.name], item.default)
        for item in declared_parameters(cls)
        if item.bounds is not None
    }
    config = ConfigDict(strict=True, arbitrary_types_allowed=True, allow_inf_nan=False)
    return create_model(f"{cls.__name__}Bounds", __config__=config, **model_fields)


def _hints(cls: type) -> dict[str, Any]:
    """`cls`'s annotations, `Annotated` kept. The module is given as the globals: without it
    Python 3.11 evaluates string annotations with the class as globals, and a `Param`'s lambda
    would not see the module's helpers."""
    return typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]), include_extras=True)


def bounds_problem(instance: object) -> tuple[str, str] | None:
    """(field, message) for the first declared field of `instance` outside its bounds, else None.

    One pydantic validation covers every bounded field whose `checked` holds for `instance`.
    """
    cls = type(instance)
    values = {
        item.name: getattr(instance, item.name)
        for item in declared_parameters(cls)
        if item.bounds is not None and (item.param.checked is None or item.param.checked(instance))
    }
    try:
        _bounds_model(cls).model_validate(values)
    except ValidationError as error:
        order = [item.name for item in declared_parameters(cls)]
        first = min(error.errors(), key=lambda problem: order.index(str(problem["loc"][0])))
        name = str(first["loc"][0])
        return name, _message(declared(cls, name), values[name], first["type"])
    return None


def _message(item: Declared, value: object, kind: str) -> str:
    """The field, what it must be and what it got, e.g. "steps must be between 1 and 500, got 0"."""
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"{item.name} must be a whole number, got {value!r}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"{item.name} must be a finite number, got {value!r}"
    if kind == "multiple_of":
        return f"{item.name} must be a multiple of {number_text(item.multiple_of or 1)}, got {value!r}"
    return f"{item.name} must be {item.range_text()}, got {value!r}"


def _without_none(hint: Any) -> Any:
    """`float | None` -> float: the type a value has when it is given."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return args[0] if len(args) == 1 else hint
    return hint


# -- infotext values back into field values; each gives None for text that does not convert ------


def read_text(value: str) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def read_float(value: str) -> float | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def read_int(value: str) -> int | None:
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    number = read_float(text)  # "20.0" from hand-edited or foreign infotexts
    return int(number) if number is not None and number.is_integer() else None


def read_bool(value: str) -> bool | None:
    return {"true": True, "false": False}.get(str(value).strip().lower())


def read_size(value: str) -> tuple[int, int] | None:
    """`WxH` (any case of the x) as two whole numbers."""
    if not isinstance(value, str):
        return None
    width, sep, height = value.strip().lower().partition("x")
    if not sep:
        return None
    parsed = read_int(width), read_int(height)
    if parsed[0] is None or parsed[1] is None:
        return None
    return parsed[0], parsed[1]


_READERS: dict[Any, Callable[[str], object]] = {
    str: read_text,
    int: read_int,
    float: read_float,
    bool: read_bool,
}


def reader_of(item: Declared) -> Callable[[str], object] | None:
    """How `item`'s infotext value is read: its own `read`, else by its type (None: not readable)."""
    return item.param.read or _READERS.get(item.type)


def fields_from_pairs(cls: type, pairs: Mapping[str, str]) -> dict[str, object]:
    """Field names and values of `cls` that an infotext's pairs give; values that do not convert
    are left out."""
    found: dict[str, object] = {}
    for item in declared_parameters(cls):
        param = item.param
        if param.read_pairs is not None:
            value = param.read_pairs(pairs)
        elif param.infotext is None:
            continue
        elif param.size_axis is not None:
            size = read_size(pairs.get(param.infotext, ""))
            value = None if size is None else size[param.size_axis]
        else:
            read = reader_of(item)
            value = None
            for key in (*param.aliases, param.infotext):  # the main key, read last, wins
                converted = read(pairs[key]) if read is not None and key in pairs else None
                value = value if converted is None else converted
        if value is not None:
            found[item.name] = value
    return found
