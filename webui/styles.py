"""Prompt styles kept in A1111's `styles.csv`: named prompt/negative snippets applied to a request."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER = "{prompt}"
_HEADER = ("name", "prompt", "negative_prompt")


class StyleError(ValueError):
    """A style that cannot be used or saved; the message is for the user."""


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def apply_style_text(style_text: str, text: str) -> str:
    """A1111's rule: the style wraps the text at `{prompt}`, else it is appended after a comma."""
    if not style_text:
        return text
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, text)
    if not text:
        return style_text
    return f"{text}, {style_text}"


class StyleBook:
    """The styles in one CSV file, read afresh on each use so a hand edit shows without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def styles(self) -> list[Style]:
        if not self.path.exists():
            return []
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise StyleError(f"cannot read styles from {self.path}: {error}") from error
        rows = csv.DictReader(io.StringIO(text))
        styles = []
        for row in rows:
            name = (row.get("name") or "").strip()
            if name:
                styles.append(Style(name, row.get("prompt") or "", row.get("negative_prompt") or ""))
        return styles

    def names(self) -> list[str]:
        return [style.name for style in self.styles()]

    def find(self, name: str) -> Style:
        for style in self.styles():
            if style.name == name:
                return style
        known = ", ".join(self.names()) or "none yet"
        raise StyleError(f"unknown style {name!r}; styles in {self.path.name}: {known}")

    def apply(self, names: list[str], prompt: str, negative_prompt: str) -> tuple[str, str]:
        """The prompts with each named style applied in order; unknown names raise StyleError."""
        for name in names:
            style = self.find(name)
            prompt = apply_style_text(style.prompt, prompt)
            negative_prompt = apply_style_text(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def save(self, style: Style) -> None:
        """Add `style`, or replace the one with its name; written atomically, other rows kept."""
        if not style.name.strip():
            raise StyleError("a style needs a name")
        styles = [s for s in self.styles() if s.name != style.name]
        styles.append(Style(style.name.strip(), style.prompt, style.negative_prompt))
        self._write(styles)

    def delete(self, name: str) -> None:
        self.find(name)
        self._write([s for s in self.styles() if s.name != name])

    def _write(self, styles: list[Style]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_HEADER)
        writer.writerows((s.name, s.prompt, s.negative_prompt) for s in styles)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".styles-", suffix=".csv")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(buffer.getvalue())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
