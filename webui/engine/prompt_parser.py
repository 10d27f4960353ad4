"""AUTOMATIC1111's prompt syntax, as pure text functions (the encoder lives in conditioning.py).

Three layers, applied in this order:
- `split_and`: composable diffusion, `a cat AND a dog :0.5`.
- `schedule_prompt`: prompt editing `[from:to:when]` and alternation `[a|b]`, resolved per step into
  plain texts that still carry attention syntax.
- `parse_weighted`: attention `(word)`, `[word]`, `(word:1.3)` and `BREAK`, into weighted pieces.

Nothing here raises on odd input: what cannot be read as syntax is used as literal text, and
`prompt_warnings` says why.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

BREAK = "BREAK"
BREAK_WEIGHT = -1.0  # the weight of the BREAK marker piece; never a real weight
ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_EXPLICIT_WEIGHT = re.compile(rf":\s*({_NUMBER})\s*\)")
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
_ESCAPABLE = "()[]\\"
_WEIGHT_SPECIALS = frozenset("\\()[]:")
_WHEN = re.compile(rf"\s*({_NUMBER}(?:[eE][+-]?\d+)?)\s*")
_AND = re.compile(r"(?<!\S)AND(?!\S)")
_TRAILING_WEIGHT = re.compile(rf"(.*?)\s*:\s*({_NUMBER})\s*", re.DOTALL)


# --- attention ---------------------------------------------------------------------------------


@dataclass
class _Piece:
    text: str
    weight: float = 1.0
    is_break: bool = False


def parse_weighted(text: str) -> list[tuple[str, float]]:
    """`text` as (piece, weight) pairs; `("BREAK", -1.0)` marks a forced chunk break.

    Brackets left open at the end apply to the rest of the text, as in A1111; closing brackets
    with nothing open are literal. Adjacent pieces of equal weight are merged.
    """
    pieces: list[_Piece] = []  # weights grow as the brackets around them close
    round_opens: list[int] = []
    square_opens: list[int] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            escaped = text[position + 1 : position + 2]
            literal = escaped if escaped and escaped in _ESCAPABLE else char
            pieces.append(_Piece(literal))
            position += 1 + (literal == escaped)
        elif char == "(":
            round_opens.append(len(pieces))
            position += 1
        elif char == "[":
            square_opens.append(len(pieces))
            position += 1
        elif char == ":" and round_opens and (match := _EXPLICIT_WEIGHT.match(text, position)):
            _scale(pieces, round_opens.pop(), float(match[1]))
            position = match.end()
        elif char == ")" and round_opens:
            _scale(pieces, round_opens.pop(), ROUND_FACTOR)
            position += 1
        elif char == "]" and square_opens:
            _scale(pieces, square_opens.pop(), SQUARE_FACTOR)
            position += 1
        elif char in _WEIGHT_SPECIALS:
            pieces.append(_Piece(char))
            position += 1
        else:
            end = _plain_end(text, position)
            pieces.extend(_split_breaks(text[position:end]))
            position = end
    for start in round_opens:
        _scale(pieces, start, ROUND_FACTOR)
    for start in square_opens:
        _scale(pieces, start, SQUARE_FACTOR)
    return _merge(pieces)


def _plain_end(text: str, start: int) -> int:
    end = start
    while end < len(text) and text[end] not in _WEIGHT_SPECIALS:
        end += 1
    return end


def _split_breaks(plain: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    for index, part in enumerate(_BREAK_WORD.split(plain)):
        if index:
            pieces.append(_Piece(BREAK, BREAK_WEIGHT, is_break=True))
        pieces.append(_Piece(part))
    return pieces


def _scale(pieces: list[_Piece], start: int, factor: float) -> None:
    for piece in pieces[start:]:
        # A1111 scales the marker too, which turns a bracketed BREAK into the literal word.
        if not piece.is_break:
            piece.weight *= factor


def _merge(pieces: list[_Piece]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for piece in pieces:
        text, weight = piece.text, piece.weight
        if not text:
            continue
        mergeable = merged and not piece.is_break and merged[-1] != (BREAK, BREAK_WEIGHT)
        if mergeable and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]


# --- composable diffusion ----------------------------------------------------------------------


def split_and(text: str) -> list[tuple[str, float]]:
    """Sub-prompts separated by the word AND, each with its weight (a trailing `:number`, else 1)."""
    parts: list[tuple[str, float]] = []
    for part in _AND.split(text):
        match = _TRAILING_WEIGHT.fullmatch(part)
        if match:
            parts.append((match[1].strip(), float(match[2])))
        else:
            parts.append((part.strip(), 1.0))
    return parts


# --- prompt editing and alternation ------------------------------------------------------------


@dataclass(frozen=True)
class _Scheduled:
    before: tuple[_Node, ...]
    after: tuple[_Node, ...]
    when: float  # as written: < 1 a fraction of the steps, else a step number
    source: str  # the bracket as written, for warnings

    def end_step(self, steps: int) -> int:
        """The last 1-based step that still uses `before` (0: never)."""
        return min(steps, _raw_end_step(self.when, steps))


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Scheduled | _Alternate


def _raw_end_step(when: float, steps: int) -> int:
    # A1111's (pre-1.8, "old") rule, truncating as it does so schedules reproduce its images.
    return int(when * steps if when < 1 else when)


def schedule_prompt(text: str, steps: int) -> list[tuple[int, str]]:
    """(last 1-based step, plain text) pairs covering steps 1..`steps`, in order."""
    steps = max(1, steps)
    nodes, warnings = _parse_schedule(text)
    for warning in warnings + _step_warnings(nodes, steps):
        log.warning("prompt: %s", warning)
    schedule: list[tuple[int, str]] = []
    for step in sorted(_switch_steps(nodes, steps) | {steps}):
        resolved = _render(nodes, step, steps)
        if schedule and schedule[-1][1] == resolved:
            schedule.pop()  # the earlier entry runs on into this one
        schedule.append((step, resolved))
    return schedule


def prompt_warnings(text: str, steps: int) -> list[str]:
    """Why parts of `text` are read literally or have no effect at `steps` steps; empty when fine."""
    nodes, warnings = _parse_schedule(text)
    return warnings + _step_warnings(nodes, max(1, steps))


def _parse_schedule(text: str) -> tuple[tuple[_Node, ...], list[str]]:
    parser = _ScheduleParser(text)
    try:
        nodes, _ = parser.sequence(0, "")
    except RecursionError:
        return (text,), ["brackets nested too deeply to read; the prompt is used as written"]
    return tuple(nodes), parser.warnings


class _ScheduleParser:
    """Recursive descent over `[...]` and `(...)`; a bracket that does not parse is literal text.

    Parens only matter so that a `:` or `|` inside them is not taken as a separator of an
    enclosing `[...]`; the weight syntax itself is left for parse_weighted.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.warnings: list[str] = []
        # A failed bracket is re-read as text by its caller; caching by position keeps
        # runs of unclosed brackets from costing exponential time.
        self._parsed: dict[int, tuple[list[_Node], int] | None] = {}

    def sequence(self, position: int, stops: str) -> tuple[list[_Node], int]:
        """Nodes from `position` up to (not including) a character in `stops` or the end."""
        text, nodes, plain = self.text, [], []
        while position < len(text) and text[position] not in stops:
            char = text[position]
            if char == "\\":
                plain.append(text[position : position + 2])  # kept escaped for parse_weighted
                position += 2
                continue
            group = self._group(position) if char in "[(" else None
            if group is None:
                plain.append(char)
                position += 1
                continue
            if plain:
                nodes.append("".join(plain))
                plain = []
            nodes.extend(group[0])
            position = group[1]
        if plain:
            nodes.append("".join(plain))
        return nodes, position

    def _group(self, position: int) -> tuple[list[_Node], int] | None:
        if position not in self._parsed:
            read = self._bracket if self.text[position] == "[" else self._paren
            self._parsed[position] = read(position)
        return self._parsed[position]

    def _paren(self, position: int) -> tuple[list[_Node], int] | None:
        inner, end = self.sequence(position + 1, ")")
        if end >= len(self.text):
            return None  # unclosed: parse_weighted closes it at the end, as A1111 does
        return ["(", *inner, ")"], end + 1

    def _bracket(self, position: int) -> tuple[list[_Node], int] | None:
        segments: list[list[_Node]] = []
        separators: list[str] = []
        cursor = position + 1
        while True:
            nodes, cursor = self.sequence(cursor, "]:|")
            segments.append(nodes)
            if cursor >= len(self.text):
                if separators:
                    self._warn(position, cursor, "is never closed with ']'")
                return None
            if self.text[cursor] == "]":
                break
            separators.append(self.text[cursor])
            cursor += 1
        end = cursor + 1
        if not separators:
            return ["[", *segments[0], "]"], end
        node = self._special(segments, separators, position, end)
        return None if node is None else ([node], end)

    def _special(
        self, segments: list[list[_Node]], separators: list[str], start: int, end: int
    ) -> _Node | None:
        kinds = set(separators)
        if kinds == {"|"}:
            return _Alternate(tuple(tuple(option) for option in segments))
        if kinds != {":"}:
            self._warn(start, end, "mixes ':' and '|'")
            return None
        if len(separators) > 2:
            self._warn(start, end, "has more than two ':' (expected [from:to:when])")
            return None
        when = _read_when(segments[-1])
        if when is None:
            written = "".join(part for part in segments[-1] if isinstance(part, str)).strip()
            self._warn(start, end, f"ends in '{written}', which is not a step number or fraction")
            return None
        before = tuple(segments[0]) if len(separators) == 2 else ()
        return _Scheduled(before, tuple(segments[-2]), when, self.text[start:end])

    def _warn(self, start: int, end: int, problem: str) -> None:
        self.warnings.append(f"'{self.text[start:end]}' {problem}; it is used as written")


def _read_when(segment: list[_Node]) -> float | None:
    if len(segment) != 1 or not isinstance(segment[0], str):
        return None
    match = _WHEN.fullmatch(segment[0])
    return float(match[1]) if match else None


def _walk(nodes: tuple[_Node, ...]) -> Iterator[_Node]:
    for node in nodes:
        yield node
        if isinstance(node, _Scheduled):
            yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            for option in node.options:
                yield from _walk(option)


def _switch_steps(nodes: tuple[_Node, ...], steps: int) -> set[int]:
    """Steps after which some part of the prompt changes."""
    found: set[int] = set()
    for node in _walk(nodes):
        if isinstance(node, _Scheduled) and node.end_step(steps) >= 1:
            found.add(node.end_step(steps))
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
    return found


def _render(nodes: tuple[_Node, ...], step: int, steps: int) -> str:
    """The text at 1-based `step` of `steps`."""
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Scheduled):
            # A1111 switches once the step is past the end step, hence `<=`.
            branch = node.before if step <= node.end_step(steps) else node.after
            parts.append(_render(branch, step, steps))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(parts)


def _step_warnings(nodes: tuple[_Node, ...], steps: int) -> list[str]:
    warnings: list[str] = []
    for node in _walk(nodes):
        if not isinstance(node, _Scheduled):
            continue
        end = _raw_end_step(node.when, steps)
        if end < 1 or end >= steps:
            unused = _render(node.before if end < 1 else node.after, 1, steps)
            warnings.append(
                f"'{node.source}' switches after step {end} of {steps}, so '{unused}' is never used"
                if unused
                else f"'{node.source}' never switches"
            )
    return warnings
