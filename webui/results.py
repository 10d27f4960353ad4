"""What a finished job hands back to the UI, the API and the CLI: images, files and infotexts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from webui.engine.image_parameters import ImageParameters


@dataclass
class StudioResult:
    images: list[Image.Image]
    paths: list[Path]  # empty when the job was not saved
    infotexts: list[str]
    seeds: list[int]
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)  # extensions' failures during the job
    # Each image's typed parameters, beside `infotexts` (a script's grids and cells have none).
    parameters: list[ImageParameters] = field(default_factory=list)
