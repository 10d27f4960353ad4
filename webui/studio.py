"""The services the UI, the CLI and (later) the API share: models, generation, saving."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from webui import __version__
from webui.engine.devices import resolve_device, resolve_dtype
from webui.engine.generate import Engine
from webui.engine.request import GenerationRequest
from webui.engine.steps import JobControl, StepHook
from webui.model_manager.load import LoadedModel, load_model
from webui.model_manager.registry import CheckpointInfo, HashCache, scan_checkpoints
from webui.model_manager.state_dict import CheckpointError
from webui.outputs import ImageSaver, format_infotext
from webui.settings import Settings

log = logging.getLogger(__name__)

DEMO_CHECKPOINT = "tiny-demo-sd15"


@dataclass
class StudioResult:
    images: list[Image.Image]
    paths: list[Path]
    infotexts: list[str]
    seeds: list[int]
    interrupted: bool = False


class Studio:
    """Owns the checkpoint list, the loaded model and the output folder. One generation at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(self.device, settings.precision)
        self.hashes = HashCache(settings.data_dir / "cache.json")
        self.saver = ImageSaver(settings.outputs_dir, watermark=settings.watermark)
        self._lock = threading.RLock()
        self._engine: Engine | None = None
        self._checkpoints = scan_checkpoints(settings.ckpt_dir)
        self.demo_mode = not self._checkpoints and settings.ckpt is None
        if self.demo_mode:
            self._write_demo_checkpoint()
        self._selected = self._initial_checkpoint()

    @property
    def demo_message(self) -> str:
        return (
            f"No checkpoint was found in {self.settings.ckpt_dir}, so a tiny random-weight demo model "
            f"({DEMO_CHECKPOINT}) is loaded: its images are noise. Put a Stable Diffusion checkpoint "
            f"(.safetensors) in {self.settings.ckpt_dir} and restart to make real images."
        )

    def _write_demo_checkpoint(self) -> None:
        from webui.tools.tiny_checkpoint import write_tiny_checkpoint

        write_tiny_checkpoint("sd15", self.settings.ckpt_dir / f"{DEMO_CHECKPOINT}.safetensors")
        log.warning(self.demo_message)
        self._checkpoints = scan_checkpoints(self.settings.ckpt_dir)

    def _initial_checkpoint(self) -> CheckpointInfo:
        wanted = self.settings.ckpt
        if wanted:
            path = Path(wanted)
            if path.exists():
                return CheckpointInfo(path.stem if path.is_file() else path.name, path)
            return self.find_checkpoint(wanted)
        if not self._checkpoints:
            raise CheckpointError(f"no checkpoint in {self.settings.ckpt_dir}")
        return self._checkpoints[0]

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoints(self) -> list[CheckpointInfo]:
        return list(self._checkpoints)

    def checkpoint_titles(self) -> list[str]:
        titles = [info.name for info in self._checkpoints]
        if self._selected.name not in titles:
            titles.insert(0, self._selected.name)
        return titles

    def current_checkpoint(self) -> str:
        return self._selected.name

    def refresh_checkpoints(self) -> list[str]:
        self._checkpoints = scan_checkpoints(self.settings.ckpt_dir)
        return self.checkpoint_titles()

    def find_checkpoint(self, title: str) -> CheckpointInfo:
        """By name, by A1111 title ("name [hash]") or by file name."""
        name = title.split(" [")[0].strip()
        for info in self._checkpoints:
            if name in (info.name, info.path.name, info.path.stem):
                return info
        known = ", ".join(info.name for info in self._checkpoints) or "none"
        raise CheckpointError(f"unknown checkpoint {title!r}; known: {known}")

    def select_checkpoint(self, title: str) -> None:
        """Load a checkpoint now; the previous one stays loaded if this one fails."""
        info = self.find_checkpoint(title)
        with self._lock:
            if self._engine is not None and self._selected == info:
                return
            model = load_model(info.path, self.device, self.dtype)
            self._selected, self._engine = info, Engine(model)

    def model(self) -> LoadedModel:
        return self._ensure_engine().model

    def _ensure_engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = Engine(load_model(self._selected.path, self.device, self.dtype))
            return self._engine

    # -- generation ---------------------------------------------------------------------------
    def generate(
        self, request: GenerationRequest, on_step: StepHook | None = None, control: JobControl | None = None
    ) -> StudioResult:
        request.validate()
        with self._lock:
            engine = self._ensure_engine()
            result = engine.generate(request, on_step=on_step, control=control)
            model_hash = self.hashes.short_hash(self._selected.path)
        infotexts, paths = [], []
        for image, seed in zip(result.images, result.seeds):
            infotext = format_infotext(
                request.prompt,
                request.negative_prompt,
                self._infotext_params(result.params, seed, model_hash),
            )
            infotexts.append(infotext)
            paths.append(self.saver.save(image, mode=request.mode, seed=seed, infotext=infotext))
        return StudioResult(result.images, paths, infotexts, result.seeds, result.interrupted)

    def _infotext_params(
        self, params: dict[str, object], seed: int, model_hash: str | None
    ) -> dict[str, object]:
        ordered: dict[str, object] = {}
        for key, value in params.items():
            ordered[key] = value
            if key == "CFG scale":
                ordered["Seed"] = seed
            if key == "Size":
                ordered["Model hash"] = model_hash
                ordered["Model"] = self._selected.name
        ordered["Version"] = f"webui {__version__}"
        return ordered
