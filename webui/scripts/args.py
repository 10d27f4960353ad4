"""Script arguments: UI-neutral declarations, and reading A1111-style positional `script_args` by them."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from webui.engine.request import GenerationError

KINDS = ("text", "multiline", "number", "bool", "choice", "multichoice")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "")


@dataclass(frozen=True)
class ScriptArg:
    """One control a UI draws for a script, in the script's positional order.

    A "number" is whole when its default is an int. "choice" and "multichoice" take `choices`
    (by text, ignoring case, or by index as A1111's index radios send). `source` names a list
    the UI knows at run time ("upscalers", "checkpoints") to offer instead of free text.
    """

    name: str
    label: str
    kind: str
    default: Any
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown argument kind {self.kind!r}; one of {KINDS}")


def read_args(title: str, spec: Sequence[ScriptArg], values: Sequence[Any] | None) -> dict[str, Any]:
    """Positional values (missing or None ones take defaults) -> {name: typed value}.

    Raises GenerationError(field="script_args") naming the script, the argument and the value.
    """
    if values is None:
        values = []
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise GenerationError(f"{title}: script_args must be a list, got {values!r}", "script_args")
    if len(values) > len(spec):
        names = ", ".join(arg.name for arg in spec)
        raise GenerationError(
            f"{title}: takes at most {len(spec)} script_args ({names}), got {len(values)}", "script_args"
        )
    read: dict[str, Any] = {}
    for index, arg in enumerate(spec):
        value = values[index] if index < len(values) else None
        read[arg.name] = arg.default if value is None else _convert(title, arg, value)
    return read


def _convert(title: str, arg: ScriptArg, value: Any) -> Any:
    def fail(why: str) -> GenerationError:
        return GenerationError(f"{title}: {arg.name} {why}, got {value!r}", "script_args")

    if arg.kind == "bool":
        return _to_bool(value, fail)
    if arg.kind == "number":
        return _to_number(arg, value, fail)
    if arg.kind == "choice":
        return _to_choice(arg, value, fail)
    if arg.kind == "multichoice":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, Sequence):
            raise fail("must be a list of choices")
        return tuple(_to_choice(arg, item.strip() if isinstance(item, str) else item, fail) for item in items)
    return _to_text(value, fail)


def _to_bool(value: Any, fail: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise fail("must be true or false")


def _to_number(arg: ScriptArg, value: Any, fail: Any) -> int | float:
    whole = isinstance(arg.default, int) and not isinstance(arg.default, bool)
    if isinstance(value, bool):
        raise fail("must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise fail("must be a number") from None
    if whole and not number.is_integer():
        raise fail("must be a whole number")
    if arg.minimum is not None and number < arg.minimum:
        raise fail(f"must be at least {arg.minimum:g}")
    if arg.maximum is not None and number > arg.maximum:
        raise fail(f"must be at most {arg.maximum:g}")
    return int(number) if whole else number


def _to_choice(arg: ScriptArg, value: Any, fail: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(arg.choices):
            return arg.choices[value]
    elif isinstance(value, str):
        for choice in arg.choices:
            if value.strip().lower() == choice.lower():
                return choice
    raise fail(f"must be one of {', '.join(arg.choices)} (or its index)")


def _to_text(value: Any, fail: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list | tuple) and all(isinstance(item, str | int | float) for item in value):
        # A list (A1111's value dropdowns) becomes one comma-separated line, quoted where needed.
        line = io.StringIO()
        csv.writer(line, lineterminator="").writerow(value)
        return line.getvalue()
    raise fail("must be text")
