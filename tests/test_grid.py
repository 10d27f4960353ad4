"""Grids: automatic rows, label bands, wrapping of long labels, titled rows of grids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.outputs.grid import (
    BACKGROUND,
    GridLabel,
    annotated_grid,
    auto_rows,
    image_grid,
    row_band_width,
    stack_grids,
)

CELL = 64


def _solid(value: int, size: tuple[int, int] = (CELL, CELL)) -> Image.Image:
    return Image.new("RGB", size, (value, value // 2, 255 - value))


def _ink(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """How many pixels in `box` differ from the background."""
    region = np.asarray(image.crop(box))
    return int((region != np.array(BACKGROUND)).any(axis=2).sum())


def test_auto_rows_is_about_square() -> None:
    assert [auto_rows(n) for n in (1, 2, 3, 4, 5, 6, 9, 10, 16)] == [1, 1, 2, 2, 2, 2, 3, 3, 4]


def test_image_grid_places_images_row_by_row() -> None:
    images = [_solid(40 * i) for i in range(5)]
    grid = image_grid(images)
    assert grid.size == (3 * CELL, 2 * CELL)  # 2 rows, 3 columns
    assert grid.getpixel((CELL + 5, CELL + 5)) == images[4].getpixel((0, 0))
    assert grid.getpixel((2 * CELL + 5, CELL + 5)) == (0, 0, 0)  # the empty spot stays black
    assert image_grid(images, rows=1).size == (5 * CELL, CELL)
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([])
    with pytest.raises(ValueError, match="row"):
        image_grid(images, rows=0)


def test_annotated_grid_adds_label_bands_with_text() -> None:
    cells = [[_solid(10), _solid(90)], [_solid(170), _solid(250)]]
    grid = annotated_grid(cells, ["Steps: 10", "Steps: 20"], ["CFG Scale: 3", "CFG Scale: 7"])
    left = row_band_width(CELL)
    top = grid.height - 2 * CELL
    assert grid.width == left + 2 * CELL and top > 0
    for r in range(2):
        for c in range(2):
            cell = grid.crop((left + c * CELL, top + r * CELL, left + (c + 1) * CELL, top + (r + 1) * CELL))
            assert cell.tobytes() == cells[r][c].tobytes()
    for c in range(2):
        assert _ink(grid, (left + c * CELL, 0, left + (c + 1) * CELL, top)) > 20
    for r in range(2):
        assert _ink(grid, (0, top + r * CELL, left, top + (r + 1) * CELL)) > 20
    assert _ink(grid, (0, 0, left, top)) == 0  # the corner stays empty


def test_no_labels_no_bands_and_margins_between_cells() -> None:
    cells = [[_solid(10), _solid(90)], [_solid(170), None]]
    grid = annotated_grid(cells, [], [], margin=6)
    assert grid.size == (2 * CELL + 6, 2 * CELL + 6)
    assert grid.getpixel((CELL + 3, 5)) == BACKGROUND  # the margin
    assert grid.getpixel((CELL + 6 + 5, CELL + 6 + 5)) == BACKGROUND  # the blank cell
    assert annotated_grid(cells, ["", ""], ["", ""]).size == (2 * CELL, 2 * CELL)


def test_long_labels_wrap_shrink_and_never_grow_past_a_cell() -> None:
    words = " ".join(["word"] * 200)
    unbroken = "x" * 500
    grid = annotated_grid([[_solid(10), _solid(90)]], [words, unbroken], [words])
    top = grid.height - CELL
    assert 0 < top <= CELL + 64  # at most a cell's height of text plus air
    assert _ink(grid, (row_band_width(CELL), 0, grid.width, top)) > 50


def test_inactive_labels_are_grey() -> None:
    cells = [[_solid(10), _solid(90)]]
    grid = annotated_grid(cells, [[GridLabel("hat", active=False)], [GridLabel("hat")]], [])
    top = grid.height - CELL
    struck = np.asarray(grid.crop((0, 0, CELL, top))).min()
    active = np.asarray(grid.crop((CELL, 0, 2 * CELL, top))).min()
    assert active < 60 < struck < 255


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        annotated_grid([[None]], [], [])
    with pytest.raises(ValueError, match="at least one image"):
        annotated_grid([], [], [])
    with pytest.raises(ValueError, match="3 column labels for 2 columns"):
        annotated_grid([[_solid(1), _solid(2)]], ["a", "b", "c"], [])
    with pytest.raises(ValueError, match="at least one grid"):
        stack_grids([], [])


def test_stack_grids_puts_titled_grids_side_by_side() -> None:
    first, second = image_grid([_solid(10)] * 4), image_grid([_solid(200)] * 4)
    stacked = stack_grids([first, second], ["Seed: 1", "Seed: 2"], margin=4)
    top = stacked.height - first.height
    assert stacked.width == 2 * first.width + 4 and top > 0
    assert stacked.crop((first.width + 4, top, stacked.width, stacked.height)).tobytes() == second.tobytes()
    assert _ink(stacked, (0, 0, first.width, top)) > 20
    assert stack_grids([first, second], ["", ""]).size == (2 * first.width, first.height)
