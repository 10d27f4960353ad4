"""X/Y/Z plot: one generation per combination of up to three axes of values, gathered in a labelled grid."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from webui.engine.request import GenerationError, GenerationRequest
from webui.outputs.grid import annotated_grid, stack_grids
from webui.results import StudioResult
from webui.scripts.args import ScriptArg, read_args
from webui.scripts.base import Planned, ResultParts, ScriptRun, fixed_seed
from webui.scripts.xyz_axes import AXIS_NAMES, Axis, Cell, axis_type, parse_axis

_LETTERS = ("X", "Y", "Z")
MAX_CELLS = 1000  # each axis may have 1000 values, but one job must not make a billion images
Position = tuple[int, int, int]  # (x index, y index, z index)


@dataclass(frozen=True)
class XyzArgs:
    x: Axis
    y: Axis
    z: Axis
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    margin_size: int = 0

    @property
    def axes(self) -> tuple[Axis, Axis, Axis]:
        return self.x, self.y, self.z


class XyzPlot:
    """A1111's "X/Y/Z plot".

    Positional script_args: x_type, x_values, y_type, y_values, z_type, z_values, draw_legend
    (true), include_lone_images (false), include_sub_grids (false), no_fixed_seeds (false),
    margin_size (0). Axis types by name (ignoring case) or index into `xyz_axes.AXIS_TYPES`:
    0 Nothing, 1 Seed, 2 Var. seed, 3 Var. strength, 4 Steps, 5 Hires steps, 6 CFG Scale,
    7 Prompt S/R, 8 Sampler, 9 Schedule type, 10 Checkpoint name, 11 Denoising, 12 Clip skip.
    Values are comma-separated (CSV quoting for values with commas; a list also works); numbers
    take ranges `1-5`, `1-10 (+2)` (step) and `1-10 [5]` (count). Prompt S/R replaces its first
    value, which must occur in the prompt or negative prompt, by each value in both.

    Every value is checked before any image is made. Each cell is one generation with the
    request's batch settings; the grid shows each cell's first image. Unless no_fixed_seeds, a
    seed of -1 becomes one random seed used by every cell. The result holds the grid, then the
    Z sub-grids (include_sub_grids, when Z has values), then each cell's first image
    (include_lone_images, off by default as in A1111); each entry carries its cell's infotext.
    Cells are saved like any generation (when the job saves); the grids go to `<mode>-grids`.
    An interrupt stops after the current cell; cells not run stay blank in the grid.
    """

    title = "X/Y/Z plot"
    modes = frozenset({"txt2img", "img2img"})
    args = (
        ScriptArg("x_type", "X type", "choice", "Nothing", AXIS_NAMES),
        ScriptArg("x_values", "X values", "text", ""),
        ScriptArg("y_type", "Y type", "choice", "Nothing", AXIS_NAMES),
        ScriptArg("y_values", "Y values", "text", ""),
        ScriptArg("z_type", "Z type", "choice", "Nothing", AXIS_NAMES),
        ScriptArg("z_values", "Z values", "text", ""),
        ScriptArg("draw_legend", "Draw legend", "bool", True),
        ScriptArg("include_lone_images", "Include Sub Images", "bool", False),
        ScriptArg("include_sub_grids", "Include Sub Grids", "bool", False),
        ScriptArg("no_fixed_seeds", "Keep -1 for seeds", "bool", False),
        ScriptArg("margin_size", "Grid margins (px)", "number", 0, minimum=0, maximum=500),
    )

    def parse_args(self, args: Sequence[Any]) -> XyzArgs:
        read = read_args(self.title, self.args, args)
        axes = [
            parse_axis(letter, axis_type(read[f"{key}_type"]), read[f"{key}_values"])
            for letter, key in zip(_LETTERS, ("x", "y", "z"))
        ]
        cells = len(axes[0].values) * len(axes[1].values) * len(axes[2].values)
        if cells > MAX_CELLS:
            raise GenerationError(
                f"X/Y/Z plot: {cells} combinations is more than the {MAX_CELLS} one plot may make",
                "script_args",
            )
        return XyzArgs(
            *axes,
            draw_legend=read["draw_legend"],
            include_lone_images=read["include_lone_images"],
            include_sub_grids=read["include_sub_grids"],
            no_fixed_seeds=read["no_fixed_seeds"],
            margin_size=read["margin_size"],
        )

    def planned(self, request: GenerationRequest, args: XyzArgs) -> list[Planned]:
        """One generation per cell, each with the request's batch settings."""
        return [
            Planned(f"X/Y/Z plot: cell {_where(args.axes, position)}", cell.request, cell.checkpoint)
            for position, cell in _cells(Cell(request), args.axes).items()
        ]

    def run(self, request: GenerationRequest, args: XyzArgs, run: ScriptRun) -> StudioResult:
        if not args.no_fixed_seeds:
            request = replace(request, seed=fixed_seed(request.seed), subseed=fixed_seed(request.subseed))
            args = replace(
                args, x=args.x.with_fixed_seeds(), y=args.y.with_fixed_seeds(), z=args.z.with_fixed_seeds()
            )
        cells = _cells(Cell(request), args.axes)
        _check(request, args.axes, cells, run)

        done: dict[Position, StudioResult] = {}
        interrupted = False
        for position in _run_order(args.axes):
            if run.control.interrupted:
                interrupted = True
                break
            cell = cells[position]
            result = run.generate(cell.request, cell.checkpoint)
            if result.images:
                done[position] = result
            if result.interrupted or run.control.interrupted:
                interrupted = True
                break
        return _assemble(args, done, run, interrupted)


def _cells(base: Cell, axes: tuple[Axis, Axis, Axis]) -> dict[Position, Cell]:
    """Each position's job: the X value applied first, then Y, then Z (as A1111)."""
    cells: dict[Position, Cell] = {}
    for ix, iy, iz in itertools.product(*(range(len(axis.values)) for axis in axes)):
        cell = base
        for axis, index in zip(axes, (ix, iy, iz)):
            cell = axis.type.apply(cell, axis.values[index], axis.values[0])
        cells[(ix, iy, iz)] = cell
    return cells


def _check(
    request: GenerationRequest, axes: tuple[Axis, Axis, Axis], cells: dict[Position, Cell], run: ScriptRun
) -> None:
    """Refuse a plot that would fail part-way, before its first image: each value, then each cell."""
    for letter, axis in zip(_LETTERS, axes):
        if axis.type.name == "Prompt S/R":
            first = axis.values[0]
            if first not in request.prompt and first not in request.negative_prompt:
                raise GenerationError(
                    f"X/Y/Z plot: Prompt S/R did not find {first!r} ({letter} axis) in the prompt "
                    "or negative prompt",
                    "script_args",
                )
    base = Cell(request)
    for letter, axis in zip(_LETTERS, axes):
        if axis.is_nothing:
            continue
        for value in axis.values:
            cell = axis.type.apply(base, value, axis.values[0])
            _preflight(run, cell, f"{letter} axis ({axis.type.name}) value {value!r}")
    for position, cell in cells.items():
        _preflight(run, cell, f"cell {_where(axes, position)}")


def _where(axes: tuple[Axis, Axis, Axis], position: Position) -> str:
    """A cell as its labels name it, e.g. "Steps: 12, CFG Scale: 5"."""
    return ", ".join(axis.label(axis.values[i]) for axis, i in zip(axes, position) if not axis.is_nothing)


def _preflight(run: ScriptRun, cell: Cell, where: str) -> None:
    try:
        run.preflight(cell.request, cell.checkpoint)
    except ValueError as error:  # GenerationError and CheckpointError
        raise GenerationError(f"X/Y/Z plot: {where}: {error}", "script_args") from None


def _run_order(axes: tuple[Axis, Axis, Axis]) -> list[Position]:
    """Z outermost, then Y, then X (as A1111) - but the checkpoint axis outermost, to switch least."""
    loops = [2, 1, 0]
    for dim in (0, 1):
        if axes[dim].type.name == "Checkpoint name":
            loops.remove(dim)
            loops.insert(0, dim)
    order: list[Position] = []
    for indices in itertools.product(*(range(len(axes[dim].values)) for dim in loops)):
        position = [0, 0, 0]
        for dim, index in zip(loops, indices):
            position[dim] = index
        order.append((position[0], position[1], position[2]))
    return order


def _assemble(
    args: XyzArgs, done: dict[Position, StudioResult], run: ScriptRun, interrupted: bool
) -> StudioResult:
    parts = ResultParts()
    if not done:
        return parts.result(interrupted)
    x, y, z = args.axes
    first_images = {position: result.images[0] for position, result in done.items()}
    size = next(iter(first_images.values())).size
    blank = Image.new("RGB", size, (255, 255, 255))
    legend = args.draw_legend
    sub_grids: list[Image.Image] = []
    for iz in range(len(z.values)):
        rows = [
            [first_images.get((ix, iy, iz), blank) for ix in range(len(x.values))]
            for iy in range(len(y.values))
        ]
        columns = [x.label(v) for v in x.values] if legend else []
        row_labels = [y.label(v) for v in y.values] if legend else []
        sub_grids.append(annotated_grid(rows, columns, row_labels, args.margin_size))
    positions = sorted(done, key=lambda p: (p[2], p[1], p[0]))  # grid order: x fastest, z slowest
    first = done[positions[0]]
    if len(z.values) > 1:
        titles = [z.label(v) for v in z.values] if legend else []
        grid = stack_grids(sub_grids, titles, args.margin_size)
        parts.add(grid, first.infotexts[0], first.seeds[0], _save_grid(run, grid, first))
        if args.include_sub_grids:
            for iz, sub_grid in enumerate(sub_grids):
                in_z = [p for p in positions if p[2] == iz]
                source = done[in_z[0]] if in_z else first
                parts.add(sub_grid, source.infotexts[0], source.seeds[0], _save_grid(run, sub_grid, source))
    else:
        grid = sub_grids[0]
        parts.add(grid, first.infotexts[0], first.seeds[0], _save_grid(run, grid, first))
    if args.include_lone_images:
        for position in positions:
            result = done[position]
            path = result.paths[0] if result.paths else None
            parts.add(result.images[0], result.infotexts[0], result.seeds[0], path)
    return parts.result(interrupted)


def _save_grid(run: ScriptRun, grid: Image.Image, source: StudioResult) -> Path | None:
    """Save a grid under the infotext and seed of the cell it is named after."""
    return run.save_grid(grid, source.infotexts[0], source.seeds[0])
