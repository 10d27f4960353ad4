"""Prompt matrix: `a | b | c` makes an image for every combination of the optional parts b and c."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from webui.engine.request import GenerationError, GenerationRequest
from webui.outputs.grid import GridLabel, annotated_grid
from webui.results import StudioResult
from webui.scripts.args import ScriptArg, read_args
from webui.scripts.base import Planned, ResultParts, ScriptRun, fixed_seed

MAX_OPTIONAL_PARTS = 10  # 1024 images


@dataclass(frozen=True)
class MatrixArgs:
    put_at_start: bool = False
    different_seeds: bool = False
    prompt_type: str = "positive"
    variations_delimiter: str = "comma"
    margin_size: int = 0


def matrix_prompts(prompt: str, put_at_start: bool = False, delimiter: str = ", ") -> list[str]:
    """2^(n-1) prompts for n `|`-separated parts; bit k of the index includes optional part k.

    The first part is in every prompt (at the end when `put_at_start` puts the others first).
    """
    parts = [part.strip().strip(",").strip() for part in prompt.split("|")]
    base, optional = parts[0], parts[1:]
    prompts = []
    for index in range(1 << len(optional)):
        chosen = [part for bit, part in enumerate(optional) if index & (1 << bit)]
        ordered = [*chosen, base] if put_at_start else [base, *chosen]
        prompts.append(delimiter.join(part for part in ordered if part))
    return prompts


class PromptMatrix:
    """A1111's "Prompt matrix".

    Positional script_args: put_at_start (false), different_seeds (false), prompt_type
    ("positive" or "negative": which prompt holds the `|` parts), variations_delimiter
    ("comma" or "space"), margin_size (0). Each combination is one generation of one image
    (batch size and count are not used); all share the request's seed (-1: one random seed)
    unless different_seeds gives combination i the seed + i. Columns switch the first half of
    the optional parts and rows the rest (as A1111); labels show each part, greyed and struck
    through where left out. The result holds the grid, then every image.
    """

    title = "Prompt matrix"
    modes = frozenset({"txt2img", "img2img"})
    args = (
        ScriptArg("put_at_start", "Put variable parts at start of prompt", "bool", False),
        ScriptArg("different_seeds", "Use different seed for each picture", "bool", False),
        ScriptArg("prompt_type", "Select prompt", "choice", "positive", ("positive", "negative")),
        ScriptArg("variations_delimiter", "Select joining char", "choice", "comma", ("comma", "space")),
        ScriptArg("margin_size", "Grid margins (px)", "number", 0, minimum=0, maximum=500),
    )

    def parse_args(self, args: Sequence[Any]) -> MatrixArgs:
        return MatrixArgs(**read_args(self.title, self.args, args))

    def planned(self, request: GenerationRequest, args: MatrixArgs) -> list[Planned]:
        """One single image per combination (more parts than allowed are refused when it runs)."""
        source = request.negative_prompt if args.prompt_type == "negative" else request.prompt
        combinations = 1 << min(source.count("|"), MAX_OPTIONAL_PARTS)
        one = replace(request, batch_size=1, n_iter=1)
        return [Planned(f"Prompt matrix: combination {n + 1}", one) for n in range(combinations)]

    def run(self, request: GenerationRequest, args: MatrixArgs, run: ScriptRun) -> StudioResult:
        negative = args.prompt_type == "negative"
        source = request.negative_prompt if negative else request.prompt
        parts = [part.strip().strip(",").strip() for part in source.split("|")]
        optional = parts[1:]
        if len(optional) > MAX_OPTIONAL_PARTS:
            raise GenerationError(
                f"Prompt matrix: at most {MAX_OPTIONAL_PARTS} optional parts, got {len(optional)}",
                "script_args",
            )
        delimiter = ", " if args.variations_delimiter == "comma" else " "
        prompts = matrix_prompts(source, args.put_at_start, delimiter)
        seed = fixed_seed(request.seed)
        requests = [
            replace(
                request,
                **{"negative_prompt" if negative else "prompt": prompt},
                seed=(seed + (index if args.different_seeds else 0)) % 2**32,
                batch_size=1,
                n_iter=1,
            )
            for index, prompt in enumerate(prompts)
        ]
        for each in requests:
            run.preflight(each, None)

        cells = ResultParts()
        interrupted = False
        for each in requests:
            result = run.generate(each, None)
            cells.extend(result)
            if result.interrupted or run.control.interrupted:
                interrupted = True
                break
        if not cells.images:
            return cells.result(interrupted)

        columns_parts = optional[: (len(optional) + 1) // 2]  # A1111: the first half across
        rows_parts = optional[len(columns_parts) :]
        columns, rows = 1 << len(columns_parts), 1 << len(rows_parts)
        images = cells.images + [None] * (columns * rows - len(cells.images))
        grid = annotated_grid(
            [images[r * columns : (r + 1) * columns] for r in range(rows)],
            [_label(columns_parts, c) for c in range(columns)] if columns_parts else [],
            [_label(rows_parts, r) for r in range(rows)] if rows_parts else [],
            args.margin_size,
        )
        parts = ResultParts()
        parts.add(
            grid, cells.infotexts[0], cells.seeds[0], run.save_grid(grid, cells.infotexts[0], cells.seeds[0])
        )
        for index, image in enumerate(cells.images):
            path = cells.paths[index] if len(cells.paths) == len(cells.images) else None
            parts.add(image, cells.infotexts[index], cells.seeds[index], path)
        return parts.result(interrupted)


def _label(parts: list[str], bits: int) -> list[GridLabel]:
    return [GridLabel(part, active=bool(bits & (1 << k))) for k, part in enumerate(parts)]
