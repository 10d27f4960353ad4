"""The script contract (A1111's "Script" dropdown: X/Y/Z plot, prompt matrix, ...).

Scripts are torch-free: everything that needs a model goes through `ScriptRun`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from webui.engine.request import GenerationRequest
from webui.outputs.infotext import parse_infotext
from webui.results import StudioResult
from webui.scripts.args import ScriptArg

if TYPE_CHECKING:
    from webui.engine.steps import JobControl

SEED_LIMIT = 2**32


def fixed_seed(seed: int) -> int:
    """The seed itself, or for -1 one random seed that a script then uses for all its images."""
    return random.randrange(SEED_LIMIT) if seed == -1 else seed


@dataclass
class ResultParts:
    """A script's result built piece by piece; `paths` holds only images that were saved."""

    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def add(self, image: Image.Image, infotext: str, seed: int, path: Path | None = None) -> None:
        self.images.append(image)
        self.infotexts.append(infotext)
        self.seeds.append(seed)
        if path is not None:
            self.paths.append(path)

    def extend(self, result: StudioResult) -> None:
        saved = len(result.paths) == len(result.images)
        for index, image in enumerate(result.images):
            path = result.paths[index] if saved else None
            self.add(image, result.infotexts[index], result.seeds[index], path)

    def result(self, interrupted: bool = False) -> StudioResult:
        return StudioResult(self.images, self.paths, self.infotexts, self.seeds, interrupted)


@dataclass(frozen=True)
class Planned:
    """One generation a script's job will make, known before it runs (for the admin's limits)."""

    where: str  # names it for an error message, e.g. "X/Y/Z plot: cell Steps: 12"
    request: GenerationRequest
    checkpoint: str | None = None


class GenerateFn(Protocol):
    def __call__(
        self, request: GenerationRequest, checkpoint: str | None = None, *, save: bool = True
    ) -> StudioResult:
        """Run one generation; `checkpoint` None is the job's. Raises GenerationError / CheckpointError."""
        ...


@dataclass
class ScriptRun:
    """What a script may use while it runs inside one job."""

    generate: GenerateFn  # saves its images unless save=False (or the job does not save)
    # Refuses a request as `generate` would (GenerationError / CheckpointError), without running it.
    preflight: Callable[[GenerationRequest, str | None], object]
    upscale: Callable[[Image.Image, str, float], Image.Image]  # (image, upscaler name, scale factor)
    checkpoint_names: Callable[[], list[str]]  # for scripts and UIs that offer the checkpoint list
    # (grid, infotext, seed of its first cell; None: read from the infotext) -> path; None when not saving
    save_grid: Callable[..., Path | None]
    save_image: Callable[[Image.Image, str, int], Path | None]  # (image, infotext, seed), the mode's images
    control: JobControl


def grid_seed(infotext: str) -> int:
    """The seed a grid's file name pattern shows, its first cell's, for a script that gave none."""
    try:
        return int(parse_infotext(infotext).params.get("Seed", "0"))
    except ValueError:
        return 0


class Script(Protocol):
    title: str  # A1111's title, what `script_name` names in the API (matched ignoring case)
    modes: frozenset[str]  # of "txt2img", "img2img"
    args: tuple[ScriptArg, ...]  # the positional order `parse_args` reads

    def parse_args(self, args: Sequence[Any]) -> Any:
        """A1111-style positional `script_args` -> typed args; GenerationError(field="script_args")."""
        ...

    def run(self, request: GenerationRequest, args: Any, run: ScriptRun) -> StudioResult:
        """Run the whole job: the grid first (when there is one), then the single images."""
        ...

    # A script may also have `planned(request, args) -> list[Planned]`: every generation its job
    # will make, so a server checks them against its limits before queueing the job. Without it,
    # each generation is checked as it comes, and an over-limit one fails the job.
