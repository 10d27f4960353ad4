"""A control's part in a generation request and in an infotext paste.

A tab keeps one list of `Field`s; the event inputs, the request and the paste targets are all
derived from it, so a new control is added in one place and cannot fall out of step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import gradio as gr


class Paste(Enum):
    KEEP = "keep"  # a paste whose infotext lacks the field leaves the control as it is


def same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Field:
    """One control: `name` is the GenerationRequest field it sets (or a switch's own name)."""

    name: str
    component: gr.components.Component
    to_request: Callable[[Any], Any] = same  # control value -> request value
    to_ui: Callable[[Any], Any] = same  # infotext value -> control value; None: it does not fit
    default: Any = Paste.KEEP  # what a paste without this field puts back
    pasted: bool = True  # False: a paste never touches it (batch settings, mask options)
    sent: bool = True  # False: a UI switch, not a request field
    gate: str = ""  # a switch's name: while the switch is off, the request gets `default`
    from_fields: Callable[[Mapping[str, object]], Any] | None = None  # a value from several fields

    def paste_value(self, found: Mapping[str, object]) -> Any:
        """The update for this control from an infotext's request fields."""
        if self.from_fields is not None:
            return self.from_fields(found)
        if self.name in found:
            value = self.to_ui(found[self.name])
            if value is not None:
                return value
        return gr.skip() if self.default is Paste.KEEP else self.default


def request_values(fields: Sequence[Field], values: Sequence[Any]) -> dict[str, Any]:
    """GenerationRequest keyword arguments from the controls' values, in `fields` order."""
    if len(fields) != len(values):
        raise ValueError(f"expected {len(fields)} control values, got {len(values)}")
    given = dict(zip((field.name for field in fields), values))
    out: dict[str, Any] = {}
    for field in fields:
        if not field.sent:
            continue
        value = given[field.name]
        # A hidden, switched-off group must not change the image behind the user's back.
        if field.gate and not given[field.gate] and field.default is not Paste.KEEP:
            value = field.default
        out[field.name] = field.to_request(value)
    return out


def paste_targets(fields: Sequence[Field]) -> list[gr.components.Component]:
    return [field.component for field in fields if field.pasted]


def paste_values(fields: Sequence[Field], found: Mapping[str, object]) -> list[Any]:
    """Updates for `paste_targets(fields)`, in the same order."""
    return [field.paste_value(found) for field in fields if field.pasted]


def one_of(choices: Callable[[], Sequence[str]]) -> Callable[[Any], str | None]:
    """`to_ui` for a dropdown: the value when it is a current choice, else None (not put in)."""
    return lambda value: value if value in choices() else None


def within(low: float, high: float) -> Callable[[Any], Any]:
    """`to_ui` for a slider: the value when it is in the slider's range."""
    return lambda value: value if isinstance(value, int | float) and low <= value <= high else None


def whole(value: Any) -> int:
    """A number box's value as a request int; an emptied box counts as 0."""
    return 0 if value is None else int(value)
