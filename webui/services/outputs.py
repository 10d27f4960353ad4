"""The output service: where finished images go, named and watermarked as the settings say."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from webui.outputs import ImageSaver
from webui.settings import Settings


class OutputService:
    def __init__(self, settings: Settings) -> None:
        self.saver = _saver(settings)
        self._settings = settings

    def apply_settings(self, new: Settings) -> None:
        """A new folder, watermark or file name pattern applies from the next image on."""
        old, self._settings = self._settings, new
        if (old.outputs_dir, old.watermark, old.filename_pattern) != (
            new.outputs_dir,
            new.watermark,
            new.filename_pattern,
        ):
            self.saver = _saver(new)

    def save(self, image: Image.Image, *, mode: str, seed: int, infotext: str, kind: str = "images") -> Path:
        """Write `image` as a PNG with its infotext into `<mode>-<kind>`; its path."""
        return self.saver.save(image, mode=mode, seed=seed, infotext=infotext, kind=kind)

    def encode_png(self, image: Image.Image, infotext: str) -> bytes:
        """The PNG file `save` would write (watermark, infotext), as bytes, without writing it."""
        return self.saver.encode_png(image, infotext)


def _saver(settings: Settings) -> ImageSaver:
    return ImageSaver(settings.outputs_dir, watermark=settings.watermark, pattern=settings.filename_pattern)
