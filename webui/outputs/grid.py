"""Image grids: plain ones, ones labelled above the columns and left of the rows, and titled rows of grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
INACTIVE_COLOUR = (153, 153, 153)
MIN_FONT = 12
MAX_FONT = 64
SMALLEST_FONT = 8  # labels that do not fit shrink down to this before being cut short
MIN_ROW_BAND = 128  # small cells still get a row label band wide enough for a few words
_ELLIPSIS = "…"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class GridLabel:
    """One line of a label; inactive ones (a prompt matrix's left-out parts) are grey and struck through."""

    text: str
    active: bool = True


Label = str | Sequence[GridLabel]


@dataclass(frozen=True)
class _Line:
    text: str
    active: bool


def auto_rows(count: int) -> int:
    """A1111's automatic row count: about square (the rounded square root), never more than `count`."""
    return max(1, min(count, round(math.sqrt(count))))


def image_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """Images left to right, top to bottom, on black (as A1111); cells are the largest image's size."""
    if not images:
        raise ValueError("a grid needs at least one image")
    rows = auto_rows(len(images)) if rows is None else rows
    if rows < 1:
        raise ValueError(f"a grid needs at least one row, got {rows}")
    rows = min(rows, len(images))
    cols = math.ceil(len(images) / rows)
    width, height = _cell_size(images)
    grid = Image.new("RGB", (cols * width, rows * height), (0, 0, 0))
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), (index % cols * width, index // cols * height))
    return grid


def font_size_for(cell_width: int, cell_height: int) -> int:
    """A1111 sizes label text from the cell size; clamped so tiny and huge cells stay readable."""
    return min(MAX_FONT, max(MIN_FONT, (cell_width + cell_height) // 25))


def row_band_width(cell_width: int) -> int:
    """Width of the band left of the rows that holds their labels (A1111: three quarters of a cell)."""
    return max(cell_width * 3 // 4, MIN_ROW_BAND)


def annotated_grid(
    cells: Sequence[Sequence[Image.Image | None]],
    column_labels: Sequence[Label],
    row_labels: Sequence[Label],
    margin: int = 0,
) -> Image.Image:
    """A grid of `cells` (rows of images; None leaves a blank cell) with labels above and left.

    Empty label lists (or labels that are all empty) leave out their band. Labels wrap to the
    cell width, shrink when they still do not fit in a cell's height, and are cut short last.
    """
    present = [image for row in cells for image in row if image is not None]
    if not present:
        raise ValueError("a grid needs at least one image")
    rows, cols = len(cells), max(len(row) for row in cells)
    if margin < 0:
        raise ValueError(f"margin must not be negative, got {margin}")
    for name, labels, count in (("column", column_labels, cols), ("row", row_labels, rows)):
        if labels and len(labels) != count:
            raise ValueError(f"{len(labels)} {name} labels for {count} {name}s")
    cell_w, cell_h = _cell_size(present)
    size = font_size_for(cell_w, cell_h)
    pad = max(2, size // 4)
    column_text = [_lines(label) for label in column_labels] if _has_text(column_labels) else []
    row_text = [_lines(label) for label in row_labels] if _has_text(row_labels) else []
    column_blocks = [_fit(lines, cell_w - 2 * pad, cell_h, size) for lines in column_text]
    left = row_band_width(cell_w) if row_text else 0
    row_blocks = [_fit(lines, left - 2 * pad, cell_h, size) for lines in row_text]
    top = max((_block_height(block) for block in column_blocks), default=0)
    top = top + size if column_blocks else 0  # half a line of air above and below the text

    grid = Image.new(
        "RGB",
        (left + cols * cell_w + (cols - 1) * margin, top + rows * cell_h + (rows - 1) * margin),
        BACKGROUND,
    )
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            if image is not None:
                x = left + c * (cell_w + margin) + (cell_w - image.width) // 2
                y = top + r * (cell_h + margin) + (cell_h - image.height) // 2
                grid.paste(image.convert("RGB"), (x, y))
    draw = ImageDraw.Draw(grid)
    for c, block in enumerate(column_blocks):
        _draw_block(draw, block, (left + c * (cell_w + margin), 0, cell_w, top))
    for r, block in enumerate(row_blocks):
        _draw_block(draw, block, (0, top + r * (cell_h + margin), left, cell_h))
    return grid


def stack_grids(grids: Sequence[Image.Image], titles: Sequence[str], margin: int = 0) -> Image.Image:
    """Several grids side by side, each under its title (A1111's layout for an X/Y/Z plot's Z axis)."""
    if not grids:
        raise ValueError("stacking needs at least one grid")
    return annotated_grid([list(grids)], titles, [], margin)


def _cell_size(images: Sequence[Image.Image]) -> tuple[int, int]:
    return max(image.width for image in images), max(image.height for image in images)


def _has_text(labels: Sequence[Label]) -> bool:
    return any(line.text.strip() for label in labels for line in _lines(label))


def _lines(label: Label) -> list[_Line]:
    if isinstance(label, str):
        return [_Line(label, True)]
    return [_Line(part.text, part.active) for part in label]


@dataclass(frozen=True)
class _Block:
    font: Font
    lines: tuple[_Line, ...]
    line_height: int


def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _line_height(font: Font) -> int:
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return ascent + descent
    _left, top, _right, bottom = font.getbbox("Ag")
    return bottom - top


def _fit(lines: list[_Line], width: int, max_height: int, size: int) -> _Block:
    """Wrap `lines` to `width`; shrink the font until the block fits `max_height`, then cut it short."""
    width = max(width, 1)
    for candidate in range(size, SMALLEST_FONT - 1, -2):
        font = _font(candidate)
        wrapped = [piece for line in lines for piece in _wrap(line, font, width)]
        line_height = _line_height(font)
        if len(wrapped) * line_height <= max_height:
            break
    fitting = max(1, max_height // line_height)
    if len(wrapped) > fitting:
        last = wrapped[fitting - 1]
        wrapped = [*wrapped[: fitting - 1], _Line(_shorten(last.text + _ELLIPSIS, font, width), last.active)]
    return _Block(font, tuple(wrapped), line_height)


def _wrap(line: _Line, font: Font, width: int) -> list[_Line]:
    """Greedy word wrap; a word wider than `width` is broken between characters."""
    words = line.text.split()
    if not words:
        return [_Line("", line.active)]
    out: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            out.append(current)
        while font.getlength(word) > width and len(word) > 1:
            cut = _longest_prefix(word, font, width)
            out.append(word[:cut])
            word = word[cut:]
        current = word
    out.append(current)
    return [_Line(text, line.active) for text in out]


def _longest_prefix(word: str, font: Font, width: int) -> int:
    cut = 1
    while cut < len(word) and font.getlength(word[: cut + 1]) <= width:
        cut += 1
    return cut


def _shorten(text: str, font: Font, width: int) -> str:
    """`text` ending in an ellipsis, cut until it fits `width` (at least the ellipsis remains)."""
    while font.getlength(text) > width and len(text) > 1:
        text = text[:-2] + _ELLIPSIS
    return text


def _block_height(block: _Block) -> int:
    return len(block.lines) * block.line_height


def _draw_block(draw: ImageDraw.ImageDraw, block: _Block, box: tuple[int, int, int, int]) -> None:
    """Draw the lines centred in `box` (x, y, width, height)."""
    x0, y0, box_w, box_h = box
    y = y0 + (box_h - _block_height(block)) // 2
    for line in block.lines:
        text_w = block.font.getlength(line.text)
        x = x0 + (box_w - text_w) / 2
        colour = TEXT_COLOUR if line.active else INACTIVE_COLOUR
        draw.text((x, y), line.text, fill=colour, font=block.font)
        if not line.active and line.text:
            middle = y + block.line_height // 2
            draw.line((x, middle, x + text_w, middle), fill=colour, width=max(1, block.line_height // 12))
        y += block.line_height
