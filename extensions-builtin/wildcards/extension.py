"""Wildcards: `__color__` in a prompt becomes one line of `wildcards/color.txt`.

Files are looked up in the folder the "Wildcards folder" setting names (DATA_DIR/wildcards by
default), then in this extension's own `wildcards/`. `__animals/cats__` reads
`animals/cats.txt`. A picked line may hold wildcards of its own. The pick follows the job's
seed, so the same seed gives the same prompt, and the infotext shows the prompt as picked.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from webui.extensions.api import AlwaysOnScript, ExtensionSetup, GenerationError, JobStart, ScriptArg

PATTERN = re.compile(r"__([\w\-]+(?:/[\w\-]+)*)__")
MAX_DEPTH = 10  # wildcards inside picked lines, at most this deep (a file naming itself ends here)
SEED_LIMIT = 2**32


class WildcardFiles:
    """Wildcard names -> their lines, from the folders `folders()` names now, in that order."""

    def __init__(self, folders: Callable[[], list[Path]]) -> None:
        self._folders = folders

    @property
    def folders(self) -> list[Path]:
        return self._folders()

    def names(self) -> dict[str, int]:
        """Every wildcard name with its number of lines (the first folder wins a name)."""
        found: dict[str, int] = {}
        for folder in self.folders:
            for path in sorted(folder.rglob("*.txt")) if folder.is_dir() else []:
                name = path.relative_to(folder).with_suffix("").as_posix()
                found.setdefault(name, len(_lines(path)))
        return found

    def lines(self, name: str) -> list[str]:
        for folder in self.folders:
            path = folder / f"{name}.txt"
            if path.is_file() and path.resolve().is_relative_to(folder.resolve()):
                lines = _lines(path)
                if lines:
                    return lines
                raise GenerationError(f"wildcard file {path.name} for __{name}__ has no lines", "prompt")
        known = ", ".join(f"__{known}__" for known in self.names()) or "none"
        raise GenerationError(
            f"no wildcard file {name}.txt for __{name}__ (in {', '.join(str(f) for f in self.folders)}); "
            f"known: {known}",
            "prompt",
        )

    def expand(self, text: str, rng: random.Random) -> str:
        for _ in range(MAX_DEPTH):
            expanded = PATTERN.sub(lambda match: rng.choice(self.lines(match.group(1))), text)
            if expanded == text:
                break
            text = expanded
        return text


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class Wildcards(AlwaysOnScript):
    title = "Wildcards"
    args = (ScriptArg("enabled", "Replace __name__ with a line of wildcards/name.txt", "bool", True),)

    def __init__(self, files: WildcardFiles) -> None:
        self.files = files

    def before_job(self, job: JobStart, args: Any) -> None:
        request = job.request
        texts = (request.prompt, request.negative_prompt)
        if not args["enabled"] or not any(PATTERN.search(text) for text in texts):
            return
        # A fixed seed now, so the picks and the image both follow the seed the infotext shows.
        seed = request.seed if request.seed != -1 else random.randrange(SEED_LIMIT)
        rng = random.Random(seed)
        job.request = replace(
            request,
            seed=seed,
            prompt=self.files.expand(request.prompt, rng),
            negative_prompt=self.files.expand(request.negative_prompt, rng),
        )


def setup(ext: ExtensionSetup) -> None:
    ext.add_settings(
        ScriptArg("folder", "Wildcards folder (relative to the data folder)", "text", "wildcards")
    )

    def folders() -> list[Path]:
        chosen = Path(ext.setting("folder") or "wildcards")
        return [chosen if chosen.is_absolute() else ext.data_dir / chosen, ext.folder / "wildcards"]

    files = WildcardFiles(folders)  # read at each use: a changed setting applies at once
    ext.add_alwayson(Wildcards(files))
    ext.add_tab("Wildcards", lambda: _build_tab(files))
    ext.add_router(_router(files))


def _build_tab(files: WildcardFiles) -> None:
    import gradio as gr

    def table() -> str:
        names = files.names()
        if not names:
            return "No wildcard files yet: put one `name.txt` per wildcard in " + str(files.folders[0])
        rows = "\n".join(f"| `__{name}__` | {count} |" for name, count in names.items())
        return f"| wildcard | lines |\n|---|---|\n{rows}"

    gr.Markdown("Write `__name__` in a prompt to pick a line of `name.txt`, following the seed.")
    listing = gr.Markdown(table(), elem_id="wildcards-list")
    with gr.Row():
        name = gr.Textbox(label="Wildcard", placeholder="color", elem_id="wildcards-name", scale=3)
        show = gr.Button("Show lines", elem_id="wildcards-show", scale=1)
        refresh = gr.Button("Refresh list", elem_id="wildcards-refresh", scale=1)
    lines = gr.Textbox(label="Lines", lines=8, interactive=False, elem_id="wildcards-lines")

    def read(wanted: str) -> str:
        try:
            return "\n".join(files.lines(wanted.strip().strip("_")))
        except GenerationError as error:
            return str(error)

    show.click(read, inputs=name, outputs=lines, queue=False)
    refresh.click(table, outputs=listing, queue=False)


def _router(files: WildcardFiles) -> Any:
    from fastapi import APIRouter, HTTPException

    router = APIRouter()

    @router.get("/wildcards", summary="Wildcard names and their number of lines")
    def wildcards() -> dict[str, int]:
        return files.names()

    @router.get("/wildcards/{name:path}", summary="The lines of one wildcard")
    def wildcard(name: str) -> list[str]:
        try:
            return files.lines(name)
        except GenerationError as error:
            raise HTTPException(404, str(error)) from error

    return router
