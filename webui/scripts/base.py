"""The script contract (A1111's "Script" dropdown: X/Y/Z plot, prompt matrix, ...) and its Studio adapter.

Scripts are torch-free: everything that needs a model goes through `ScriptRun`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from webui.engine.request import GenerationError, GenerationRequest
from webui.outputs.infotext import parse_infotext
from webui.results import StudioResult
from webui.scripts.args import ScriptArg

if TYPE_CHECKING:
    from webui.engine.steps import JobControl, StepHook
    from webui.extensions.hooks import JobHooks
    from webui.studio import Studio

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

    @classmethod
    def for_studio(
        cls,
        studio: Studio,
        mode: str,
        control: JobControl | None = None,
        on_step: StepHook | None = None,
        save: bool = True,
        checkpoint: str | None = None,
        vae: str | None = None,
        hooks: JobHooks | None = None,
        guard: Callable[[GenerationRequest], None] | None = None,
    ) -> ScriptRun:
        """Generations on `studio` with the job's checkpoint/VAE overrides and always-on scripts'
        hooks; grids go to `<mode>-grids`. `guard` sees each request before it runs and may refuse
        it (the admin's limits, for scripts that cannot say beforehand what they will make)."""
        # Imported here: Studio users already have torch loaded, script modules must not need it.
        from webui.engine.steps import JobControl

        if mode not in ("txt2img", "img2img"):  # refused now rather than at the first grid
            raise ValueError(f"mode must be txt2img or img2img, got {mode!r}")
        job_control = control or JobControl()
        job_checkpoint, save_all = checkpoint, save

        def generate(
            request: GenerationRequest, checkpoint: str | None = None, *, save: bool = True
        ) -> StudioResult:
            if guard is not None:
                guard(request)
            return studio.generate(
                request,
                on_step,
                job_control,
                checkpoint or job_checkpoint,
                vae,
                save=save_all and save,
                hooks=hooks,
            )

        def save_grid(grid: Image.Image, infotext: str, seed: int | None = None) -> Path | None:
            if not save_all:
                return None
            seed = _seed_of(infotext) if seed is None else seed
            return studio.saver.save(grid, mode=mode, seed=seed, infotext=infotext, kind="grids")

        def save_image(image: Image.Image, infotext: str, seed: int) -> Path | None:
            return studio.saver.save(image, mode=mode, seed=seed, infotext=infotext) if save_all else None

        return cls(
            generate=generate,
            preflight=lambda request, name: studio.preflight(request, name or job_checkpoint, vae),
            upscale=lambda image, name, scale: studio.upscalers.upscale(image, name, scale=scale),
            checkpoint_names=studio.checkpoint_titles,
            save_grid=save_grid,
            save_image=save_image,
            control=job_control,
        )


def _seed_of(infotext: str) -> int:
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


def builtin_scripts() -> dict[str, Script]:
    """The scripts that ship with the app, keyed by lower-case title."""
    from webui.scripts.outpainting import Outpainting
    from webui.scripts.prompt_matrix import PromptMatrix
    from webui.scripts.prompts_from_file import PromptsFromFile
    from webui.scripts.sd_upscale import SdUpscale
    from webui.scripts.xyz_plot import XyzPlot

    scripts: list[Script] = [XyzPlot(), PromptMatrix(), PromptsFromFile(), Outpainting(), SdUpscale()]
    return {script.title.lower(): script for script in scripts}


def scripts_for(mode: str) -> list[Script]:
    return [script for script in builtin_scripts().values() if mode in script.modes]


def find_script(name: str, mode: str, available: Sequence[Script] | None = None) -> Script:
    """The script titled `name` (ignoring case) of `available` (default: the built-in scripts of
    `mode`); GenerationError lists the others."""
    if available is None:
        available = scripts_for(mode)
    wanted = (name or "").strip().lower()
    for script in available:
        if script.title.lower() == wanted:
            return script
    titles = ", ".join(repr(script.title) for script in available)
    raise GenerationError(f"no script {name!r} for {mode}; available: {titles}", "script_name")
