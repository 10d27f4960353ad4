"""The model service: which checkpoints, VAEs and upscalers exist, which one is selected, and
where each loaded model lives (disk, RAM, VRAM) within the memory budgets.

The page, the APIs, the CLI and the generation service all go through it; nothing else holds
the registry or the cache.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from webui.engine.latent_upscale import LATENT_UPSCALE_MODES
from webui.engine.upscale import Upscalers
from webui.model_manager.cache import MemoryBudgets, ModelCache, ModelEvent, Placement, Tier
from webui.model_manager.facts import FileFactsCache
from webui.model_manager.folders import ModelLibrary
from webui.model_manager.load import LoadedModel, load_model
from webui.model_manager.merge import MergeRecipe, merge_checkpoints
from webui.model_manager.offload import MemoryMode
from webui.model_manager.placement import HOST
from webui.model_manager.registry import ModelFile, ModelFolders, ModelKind, ModelRegistry
from webui.model_manager.sd3.encoder_files import encoder_folders
from webui.model_manager.state_dict import CheckpointError
from webui.model_manager.vae import AUTOMATIC, BUILT_IN, resolve_vae_file, swap_vae
from webui.settings import Settings

log = logging.getLogger(__name__)

DEMO_CHECKPOINT = "shapes-demo"
# Trained by `python -m webui.training.demo`; see its model card beside it.
DEMO_MODEL_FILE = Path(__file__).parents[1] / "assets" / "shapes-demo.safetensors"
DEMO_SIZE = 128  # the demo's native image size


class ModelService:
    """Owns the model registry and cache, the selected checkpoint and VAE.

    `busy` is held while a job uses a model: a checkpoint switch asked for meanwhile is loaded
    beside it (into RAM) and applies to the next job; the running job keeps its model.
    """

    def __init__(self, settings: Settings, device: torch.device, dtype: torch.dtype) -> None:
        self.settings = settings
        self.device, self.dtype = device, dtype
        self.busy = threading.Lock()
        self.facts = FileFactsCache.in_data_dir(settings.data_dir)
        # An A1111 or ComfyUI install under DATA_DIR, plus any --models-config folders.
        self.library = ModelLibrary.find(settings.data_dir, settings.models_config)
        self.registry = ModelRegistry(ModelFolders.of(self.library, [settings.ckpt_dir]), self.facts)
        self.cache = ModelCache(
            self._load_to_host,
            device,
            MemoryBudgets.for_machine(device, settings.vram_budget_gb, settings.ram_budget_gb),
            MemoryMode(settings.memory_mode),
        )
        self._vae_choice = settings.vae
        # Upscaler models run in float32: half precision has no CPU kernels for some of their layers.
        self.upscalers = Upscalers(self.library.upscalers, device=device)
        self.demo_mode = not self.checkpoints() and settings.ckpt is None
        if self.demo_mode:
            self._add_demo_checkpoint()
        self._selected = self._initial_checkpoint()
        self.vae_file(self._selected)  # an unknown --vae is an error at start, not at the first job

    def apply_settings(self, new: Settings) -> None:
        """Take on changed EMA choices and memory budgets."""
        old, self.settings = self.settings, new
        if old.ema_choices != new.ema_choices:
            for file in self.checkpoints():
                self.match_weights(file)  # a model in use now is matched before its next job
        if (old.vram_budget_gb, old.ram_budget_gb) != (new.vram_budget_gb, new.ram_budget_gb):
            self.cache.set_budgets(
                MemoryBudgets.for_machine(self.device, new.vram_budget_gb, new.ram_budget_gb)
            )

    @property
    def demo_message(self) -> str:
        return (
            f"No checkpoint was found in {self.settings.ckpt_dir}, so the small demo model "
            f"({DEMO_CHECKPOINT}) is loaded. It knows only its shapes vocabulary at {DEMO_SIZE}x{DEMO_SIZE}: "
            'try "a red circle at the top left on a blue background" (colours red, green, blue, yellow, '
            "orange, purple, white, black; circle, square, triangle; top left, top right, bottom left, "
            f"bottom right, center). Put a Stable Diffusion checkpoint (.safetensors) in "
            f"{self.settings.ckpt_dir} and press refresh to make real images."
        )

    @property
    def default_size(self) -> int:
        """The image side the page and the CLI start with: the demo's own size when it is in use."""
        return DEMO_SIZE if self.demo_mode else 512

    def _add_demo_checkpoint(self) -> None:
        """List the shipped demo model (read where it lies: nothing is copied or written)."""
        self.registry.require_usable(self.registry.add(DEMO_MODEL_FILE))
        log.warning(self.demo_message)

    def _initial_checkpoint(self) -> ModelFile:
        wanted = self.settings.ckpt
        if wanted:
            path = Path(wanted)
            if path.exists():
                return self.registry.require_usable(self.registry.add(path))
            return self.find_checkpoint(wanted)
        usable = self.checkpoints()
        if not usable:
            raise CheckpointError(f"no usable checkpoint in {self.settings.ckpt_dir}")
        return usable[0]

    def _load_to_host(self, path: Path) -> LoadedModel:
        # The registry's name ("xl/base") is what lists, events and the infotext show.
        known = next((f for f in self.checkpoints() if f.path == path), None)
        use_ema = self.uses_ema(known) if known else self.settings.use_ema
        model = load_model(path, HOST, self.dtype, use_ema=use_ema, encoder_folders=self._encoder_folders())
        model.name = known.name if known else model.name
        return model

    def _encoder_folders(self) -> tuple[Path, ...]:
        """Where text encoders a checkpoint lacks are looked for: each models folder's
        text_encoder (A1111), clip and text_encoders (ComfyUI)."""
        return tuple(encoder_folders(dict.fromkeys(folder.parent for folder in self.library.checkpoints)))

    # -- EMA weights --------------------------------------------------------------------------
    def uses_ema(self, file: ModelFile) -> bool:
        """Whether `file` is (to be) loaded with its EMA weights: its own choice, else --no-ema's."""
        return file.has_ema and self.settings.ema_choices.get(file.name, self.settings.use_ema)

    def match_weights(self, file: ModelFile) -> None:
        """Drop a cached copy of `file` built with the other weights than now chosen."""
        cached = self.cache.cached(file.path)
        if cached is not None and file.has_ema and cached.uses_ema != self.uses_ema(file):
            self.cache.evict(file.path)

    def start_background_hashing(self) -> threading.Thread:
        """Hash files not hashed yet, so titles and the API show hashes without a wait later."""
        thread = threading.Thread(target=self.registry.hash_all, name="model-hashing", daemon=True)
        thread.start()
        return thread

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoints(self) -> list[ModelFile]:
        return self.registry.files(ModelKind.CHECKPOINT)

    def checkpoint_titles(self) -> list[str]:
        names = [file.name for file in self.checkpoints()]
        if self._selected.name not in names:
            names.insert(0, self._selected.name)
        return names

    def current_checkpoint(self) -> str:
        return self._selected.name

    def current_checkpoint_file(self) -> ModelFile:
        return self._selected

    def refresh_checkpoints(self) -> list[str]:
        self.registry.refresh()
        self.upscalers.refresh()
        return self.checkpoint_titles()

    def find_checkpoint(self, title: str) -> ModelFile:
        """By name, by A1111 title ("name [hash]"), by file name or by hash."""
        return self.registry.find(ModelKind.CHECKPOINT, title)

    def select_checkpoint(self, title: str) -> None:
        """Switch checkpoints; if loading fails, the previous one stays selected and loaded.

        While a generation runs, the new model is loaded into RAM beside it and becomes the
        active one at the next job.
        """
        file = self.find_checkpoint(title)
        if self.busy.locked():
            self.cache.prefetch(file.path)
        else:
            self.activate(file)
        self._selected = file

    def model(self) -> LoadedModel:
        """The selected model, on the compute device (loading it if needed)."""
        return self.activate(self._selected)

    def unload_checkpoint(self, title: str | None = None) -> None:
        """Free GPU memory: models (or just `title`) go to RAM (or disk, past the RAM budget)."""
        self.cache.unload(self.find_checkpoint(title).path if title else None)

    def evict_checkpoint(self, title: str) -> None:
        """Drop `title` from memory altogether (unless a job is using it); the next use loads it."""
        self.cache.evict(self.find_checkpoint(title).path)

    def reload_checkpoint(self) -> LoadedModel:
        return self.model()

    def activate(self, file: ModelFile) -> LoadedModel:
        self.match_weights(file)
        model = self.cache.activate(file.path)
        self.apply_vae(file, model)
        return model

    # -- VAE ----------------------------------------------------------------------------------
    def vae_choices(self) -> list[str]:
        return [AUTOMATIC, BUILT_IN, *(file.name for file in self.registry.files(ModelKind.VAE))]

    @property
    def vae_choice(self) -> str:
        return self._vae_choice

    def select_vae(self, choice: str) -> None:
        """Use another VAE from the next job on (now, when no job runs); unknown names are refused."""
        previous, self._vae_choice = self._vae_choice, choice
        try:
            self.vae_file(self._selected)
            if not self.busy.locked() and self.cache.tier(self._selected.path) is not Tier.DISK:
                self.activate(self._selected)
        except CheckpointError:
            self._vae_choice = previous
            raise

    def check_vae(self, choice: str) -> None:
        """Raise CheckpointError if `choice` names no VAE (by name, file name, Automatic or None)."""
        self.vae_file(self._selected, choice)

    def vae_file(self, checkpoint: ModelFile, choice: str | None = None) -> Path | None:
        named = {file.name: file.path for file in self.registry.files(ModelKind.VAE)}
        return resolve_vae_file(choice or self._vae_choice, checkpoint.path, named)

    def apply_vae(self, checkpoint: ModelFile, model: LoadedModel, choice: str | None = None) -> None:
        vae_file = self.vae_file(checkpoint, choice)
        if model.vae_path != vae_file:
            self.cache.modify(checkpoint.path, lambda m: swap_vae(m, vae_file))

    # -- memory -------------------------------------------------------------------------------
    def placements(self) -> list[Placement]:
        return self.cache.placements()

    def model_events(self) -> list[ModelEvent]:
        return self.cache.events()

    def memory_report(self) -> dict[str, object]:
        """What the API's `memory` endpoint and the UI show: RAM, VRAM and where each model is."""
        import psutil

        system = psutil.virtual_memory()
        report: dict[str, object] = {
            "ram": {
                "total": system.total,
                "free": system.available,
                "used": system.total - system.available,
                "process": psutil.Process().memory_info().rss,
                "models": self.cache.used_bytes(Tier.RAM),
                "budget": self.cache.budgets.ram_bytes,
            },
            "models": [
                {
                    "name": p.name,
                    "tier": p.tier.value,
                    "size": p.size_bytes,
                    "memory_mode": p.memory_mode.value,
                    "in_use": p.in_use,
                    "last_event": p.last_event.describe() if p.last_event else None,
                }
                for p in self.placements()
            ],
        }
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            report["cuda"] = {
                "total": total,
                "free": free,
                "allocated": torch.cuda.memory_allocated(self.device),
                "reserved": torch.cuda.memory_reserved(self.device),
                "peak": torch.cuda.max_memory_allocated(self.device),
                "models": self.cache.used_bytes(Tier.VRAM),
                "budget": self.cache.budgets.vram_bytes,
            }
        return report

    # -- upscalers ----------------------------------------------------------------------------
    def upscaler_names(self) -> list[str]:
        """Pixel upscalers for Extras, hires fix and SD upscale: resamplers, then models/ESRGAN files."""
        return self.upscalers.names()

    def hires_upscaler_names(self) -> list[str]:
        """Hires fix upscalers: the latent modes first (A1111's order), then the pixel upscalers."""
        return [*LATENT_UPSCALE_MODES, *(name for name in self.upscaler_names() if name != "None")]

    # -- merging ------------------------------------------------------------------------------
    def merge_checkpoints(self, recipe: MergeRecipe) -> ModelFile:
        """Write the merge into the checkpoint folder; it is listed (and selectable) at once."""
        path = merge_checkpoints(recipe, self.settings.ckpt_dir, hashes=self.facts.sha256)
        self.registry.refresh([ModelKind.CHECKPOINT])
        file = self.registry.add(path)
        # Hashed now, while the file is in the page cache: background hashing runs only at start,
        # and PNG Info and the API find a model by its hash.
        self.facts.sha256(path)
        return file

    def paths(self, kind: ModelKind) -> dict[str, Path]:
        return {file.name: file.path for file in self.registry.files(kind)}

    def refused(self, kind: ModelKind) -> dict[str, str]:
        return {file.name: file.error or "" for file in self.registry.unusable() if file.kind is kind}
