"""Saving grids where A1111 users look for them: `outputs/<mode>-grids/<YYYY-MM-DD>/<NNNNN>-<name>.png`.

ImageSaver always writes `<mode>-images` folders, so grids take its encoding (watermark,
infotext) and file name pattern but are written here.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime
from pathlib import Path

from PIL import Image

from webui.outputs.files import ImageSaver
from webui.outputs.infotext import parse_infotext
from webui.outputs.naming import expand_pattern

_LEADING_NUMBER = re.compile(r"^(\d+)")
_CLAIM_TRIES = 1000  # numbers to try when other writers keep taking the next one


def grid_folder(mode: str) -> str:
    """`txt2img` -> `txt2img-grids`."""
    if mode not in ("txt2img", "img2img"):
        raise ValueError(f"mode must be txt2img or img2img, got {mode!r}")
    return f"{mode}-grids"


def save_grid_file(
    saver: ImageSaver, grid: Image.Image, *, mode: str, infotext: str, now: datetime | None = None
) -> Path:
    """Write `grid` with `infotext` inside, numbered after the files already in its day folder."""
    now = now or datetime.now()
    folder = saver.root / grid_folder(mode) / now.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    seed = _seed_of(infotext)
    stem = expand_pattern(saver.pattern, seed, infotext, now)
    temp = folder / f".grid-{secrets.token_hex(6)}.tmp"
    with open(temp, "wb") as stream:
        stream.write(saver.encode_png(grid, infotext))
        stream.flush()
        os.fsync(stream.fileno())
    try:
        for _ in range(_CLAIM_TRIES):
            path = folder / f"{_next_number(folder):05d}-{stem}.png"
            try:
                os.link(temp, path)  # fails if the name was taken meanwhile, unlike a rename
            except FileExistsError:
                continue
            return path
        raise OSError(f"could not claim a file number in {folder}")
    finally:
        temp.unlink(missing_ok=True)


def _seed_of(infotext: str) -> int:
    try:
        return int(parse_infotext(infotext).params.get("Seed", "0"))
    except ValueError:
        return 0


def _next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := _LEADING_NUMBER.match(name))]
    return max(numbers, default=-1) + 1
