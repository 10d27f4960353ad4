"""Images a worker on another machine saved there: saved again here, so the page and the file
routes find every job's files in this server's outputs folder."""

from __future__ import annotations

from webui.outputs import ImageSaver
from webui.results import StudioResult


def save_missing_here(result: StudioResult, saver: ImageSaver, mode: str) -> int:
    """Save each image whose file this machine does not have; its path becomes the new file's.
    Returns how many were saved. A script's result (grids among its files) is left as it is."""
    if len(result.paths) != len(result.images):
        return 0
    saved = 0
    for index, path in enumerate(result.paths):
        if not path.is_file():
            result.paths[index] = saver.save(
                result.images[index], mode=mode, seed=result.seeds[index], infotext=result.infotexts[index]
            )
            saved += 1
    return saved
