"""Image captions for A1111's `/sdapi/v1/interrogate`: a BLIP model the user put in models/BLIP.

Only a transformers folder (config.json, weights, processor and tokenizer files, as
`save_pretrained` writes them) is read, offline; nothing is fetched. A1111's own
`model_base_caption_capfilt_large.pth` is a different layout and is not read.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

CAPTION_FOLDER = "BLIP"
_MAX_TOKENS = 40


class CaptionerMissing(LookupError):
    """No captioning model is installed; the message names the folder to put one in."""


@dataclass
class _Loaded:
    path: Path
    model: Any
    processor: Any


class Captioner:
    """Finds and loads the first BLIP folder under `models_dir/BLIP` once; captions one image at a time."""

    def __init__(self, models_dir: Path, device: torch.device | None = None) -> None:
        self.folder = Path(models_dir) / CAPTION_FOLDER
        self.device = device or torch.device("cpu")
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()

    def find(self) -> Path:
        candidates = (
            sorted(p for p in self.folder.iterdir() if (p / "config.json").is_file())
            if self.folder.is_dir()
            else []
        )
        if (self.folder / "config.json").is_file():
            candidates.insert(0, self.folder)
        if not candidates:
            raise CaptionerMissing(
                f"no captioning model: put a BLIP captioning model (a transformers folder with "
                f"config.json, e.g. Salesforce/blip-image-captioning-base) in models/{CAPTION_FOLDER}/"
            )
        return candidates[0]

    def caption(self, image: Image.Image) -> str:
        with self._lock:
            loaded = self._load(self.find())
            inputs = loaded.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
            with torch.inference_mode():
                ids = loaded.model.generate(
                    **inputs, max_new_tokens=_MAX_TOKENS, num_beams=1, do_sample=False
                )
            return str(loaded.processor.decode(ids[0], skip_special_tokens=True)).strip()

    def _load(self, path: Path) -> _Loaded:
        if self._loaded is None or self._loaded.path != path:
            # Imported here: transformers' BLIP classes are only needed by servers that caption.
            from transformers import BlipForConditionalGeneration, BlipProcessor

            model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True)
            processor = BlipProcessor.from_pretrained(path, local_files_only=True)
            self._loaded = _Loaded(path, model.to(self.device).eval(), processor)
        return self._loaded
