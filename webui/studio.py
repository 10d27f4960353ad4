"""The services the UI, the CLI and (later) the API share: models, generation, saving."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from PIL import Image

from webui import __version__
from webui.engine.devices import resolve_device, resolve_dtype
from webui.engine.extra_networks import RefusedNetworks
from webui.engine.generate import Engine, GenerationResult
from webui.engine.image_parameters import ModelFacts
from webui.engine.latent_upscale import LATENT_UPSCALE_MODES
from webui.engine.preview import PreviewRenderer, vae_decode, with_previews
from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.samplers import make_scheduler, resolve_sampler
from webui.engine.speed import use_compile_cache
from webui.engine.steps import JobControl, StepHook
from webui.engine.upscale import Upscalers
from webui.extensions.api import ImageDone, ImageSaved
from webui.extensions.hooks import JobHooks
from webui.extensions.registry import Extensions
from webui.model_manager.cache import MemoryBudgets, ModelCache, ModelEvent, Placement, Tier
from webui.model_manager.detect import Arch
from webui.model_manager.facts import FileFactsCache
from webui.model_manager.few_step import settings_warning
from webui.model_manager.folders import ModelLibrary
from webui.model_manager.load import LoadedModel, load_model
from webui.model_manager.merge import MergeRecipe, merge_checkpoints
from webui.model_manager.offload import MemoryMode
from webui.model_manager.placement import HOST
from webui.model_manager.registry import ModelFile, ModelFolders, ModelKind, ModelRegistry
from webui.model_manager.safety_checker import SafetyChecker, load_safety_checker
from webui.model_manager.state_dict import CheckpointError
from webui.model_manager.taesd import find_taesd, load_taesd, taesd_decode
from webui.model_manager.vae import AUTOMATIC, BUILT_IN, resolve_vae_file, swap_vae
from webui.outputs import ImageSaver, format_infotext
from webui.results import StudioResult
from webui.scripts.base import Script, ScriptRun, find_script, scripts_for
from webui.settings import Settings
from webui.styles import StyleBook, StyleError
from webui.training.progress import TrainingHooks
from webui.training.request import TrainingRequest
from webui.training.runner import TrainingResult
from webui.training.service import TrainingService

log = logging.getLogger(__name__)

DEMO_CHECKPOINT = "shapes-demo"
# Trained by `python -m webui.training.demo`; see its model card beside it.
DEMO_MODEL_FILE = Path(__file__).parent / "assets" / "shapes-demo.safetensors"
DEMO_SIZE = 128  # the demo's native image size
# Above this many pixels the VAE decodes in tiles, per memory mode (`--vae-tiling auto`).
_TILING_PIXELS = {
    MemoryMode.NORMAL: 2048 * 2048,
    MemoryMode.MEDVRAM: 1024 * 1024,
    MemoryMode.LOWVRAM: 512 * 512,
}
# Sees each generation a script's job makes, with where it comes from; may raise GenerationError.
ScriptGuard = Callable[[GenerationRequest, str], None]
# A1111 writes 12 hex digits of sha256 for LoRAs and embeddings ("Lora hashes", "TI hashes").
_NETWORK_HASH_LENGTH = 12


class Studio:
    """Owns the model registry and cache, the selected checkpoint and VAE, and the output folder.

    Generations run one at a time. A checkpoint switch asked for while one runs is loaded
    beside it (into RAM) and applies to the next job; the running job keeps its model.
    """

    def __init__(self, settings: Settings, extensions: Extensions | None = None) -> None:
        """`extensions` None loads those of `extensions-builtin/` and DATA_DIR/extensions."""
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(self.device, settings.precision)
        self.speed = settings.speed.resolve(self.device)  # an option this machine cannot do fails here
        if self.speed.compile_mode is not None:
            use_compile_cache(settings.data_dir / "cache" / "torch-compile")
        log.info("running on %s as %s; speed options: %s", self.device, self.dtype, self.speed)
        self.facts = FileFactsCache.in_data_dir(settings.data_dir)
        self.saver = self._saver(settings)
        # An A1111 or ComfyUI install under DATA_DIR, plus any --models-config folders.
        self.library = ModelLibrary.find(settings.data_dir, settings.models_config)
        self.registry = ModelRegistry(ModelFolders.of(self.library, [settings.ckpt_dir]), self.facts)
        self.cache = ModelCache(
            self._load_to_host,
            self.device,
            MemoryBudgets.for_machine(self.device, settings.vram_budget_gb, settings.ram_budget_gb),
            MemoryMode(settings.memory_mode),
        )
        self._generation = threading.Lock()
        self._taesd: dict[Path, AutoencoderTiny | None] = {}  # loaded on first use, per file
        self._taesd_missing: set[Arch] = set()
        self._vae_choice = settings.vae
        self.styles = StyleBook(settings.data_dir / "styles.csv")
        # Upscaler models run in float32: half precision has no CPU kernels for some of their layers.
        self.upscalers = Upscalers(self.library.upscalers, device=self.device)
        self.demo_mode = not self.checkpoints() and settings.ckpt is None
        if self.demo_mode:
            self._add_demo_checkpoint()
        self._selected = self._initial_checkpoint()
        self.training = TrainingService(
            self.registry, settings.data_dir / "training", self.device, lambda: self._selected
        )
        self._vae_file(self._selected)  # an unknown --vae is an error at start, not at the first job
        self.extensions = extensions if extensions is not None else Extensions.for_settings(settings)
        # Loaded at start so that a missing checker stops the start, not the first job.
        self.safety: SafetyChecker | None = (
            load_safety_checker(settings.data_dir / "models", self.device, self.dtype)
            if settings.safety_checker
            else None
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

    @staticmethod
    def _saver(settings: Settings) -> ImageSaver:
        return ImageSaver(
            settings.outputs_dir, watermark=settings.watermark, pattern=settings.filename_pattern
        )

    def apply_settings(self, new: Settings) -> None:
        """Take on changed editable settings (see LiveSettings): outputs, naming, previews, budgets.

        ValueError (before anything changes) for extension settings their extensions refuse."""
        extension_values = self.extensions.check_values(new.extension_settings)
        new = replace(new, extension_settings=extension_values)
        old, self.settings = self.settings, new
        self.extensions.set_values(extension_values)
        self.extensions.timeout_s = new.extension_timeout_s
        if (old.outputs_dir, old.watermark, old.filename_pattern) != (
            new.outputs_dir,
            new.watermark,
            new.filename_pattern,
        ):
            self.saver = self._saver(new)
        if old.ema_choices != new.ema_choices:
            for file in self.checkpoints():
                self._match_weights(file)  # a model in use now is matched before its next job
        if (old.vram_budget_gb, old.ram_budget_gb) != (new.vram_budget_gb, new.ram_budget_gb):
            self.cache.set_budgets(
                MemoryBudgets.for_machine(self.device, new.vram_budget_gb, new.ram_budget_gb)
            )

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
        model = load_model(path, HOST, self.dtype, use_ema=use_ema)
        model.name = known.name if known else model.name
        return model

    # -- EMA weights --------------------------------------------------------------------------
    def uses_ema(self, file: ModelFile) -> bool:
        """Whether `file` is (to be) loaded with its EMA weights: its own choice, else --no-ema's."""
        return file.has_ema and self.settings.ema_choices.get(file.name, self.settings.use_ema)

    def _match_weights(self, file: ModelFile) -> None:
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
        if self._generation.locked():
            self.cache.prefetch(file.path)
        else:
            self._activate(file)
        self._selected = file

    def model(self) -> LoadedModel:
        """The selected model, on the compute device (loading it if needed)."""
        return self._activate(self._selected)

    def unload_checkpoint(self, title: str | None = None) -> None:
        """Free GPU memory: models (or just `title`) go to RAM (or disk, past the RAM budget)."""
        self.cache.unload(self.find_checkpoint(title).path if title else None)

    def evict_checkpoint(self, title: str) -> None:
        """Drop `title` from memory altogether (unless a job is using it); the next use loads it."""
        self.cache.evict(self.find_checkpoint(title).path)

    def reload_checkpoint(self) -> LoadedModel:
        return self.model()

    def _activate(self, file: ModelFile) -> LoadedModel:
        self._match_weights(file)
        model = self.cache.activate(file.path)
        self._apply_vae(file, model)
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
            self._vae_file(self._selected)
            if not self._generation.locked() and self.cache.tier(self._selected.path) is not Tier.DISK:
                self._activate(self._selected)
        except CheckpointError:
            self._vae_choice = previous
            raise

    def check_vae(self, choice: str) -> None:
        """Raise CheckpointError if `choice` names no VAE (by name, file name, Automatic or None)."""
        self._vae_file(self._selected, choice)

    def _vae_file(self, checkpoint: ModelFile, choice: str | None = None) -> Path | None:
        named = {file.name: file.path for file in self.registry.files(ModelKind.VAE)}
        return resolve_vae_file(choice or self._vae_choice, checkpoint.path, named)

    def _apply_vae(self, checkpoint: ModelFile, model: LoadedModel, choice: str | None = None) -> None:
        vae_file = self._vae_file(checkpoint, choice)
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

    def upscale_image(
        self,
        image: Image.Image,
        upscaler: str,
        *,
        scale: float | None = None,
        size: tuple[int, int] | None = None,
        crop: bool = True,
        second: str = "None",
        second_visibility: float = 0.0,
    ) -> Image.Image:
        """Extras: resize by `scale` or to `size`, optionally blending a second upscaler's result."""
        return self.upscalers.blend(
            image, upscaler, second, second_visibility, scale=scale, size=size, crop=crop
        )

    def _hires_upscale(self, image: Image.Image, upscaler: str, size: tuple[int, int]) -> Image.Image:
        return self.upscalers.upscale(image, upscaler, size=size, crop=False, field="hr_upscaler")

    # -- training -----------------------------------------------------------------------------
    def training_preflight(self, request: TrainingRequest, admin: bool = True) -> str:
        return self.training.preflight(request, admin)

    def train(self, request: TrainingRequest, hooks: TrainingHooks, base: str) -> TrainingResult:
        """Run a training job (on the queue's worker, between generations)."""
        with self._generation:
            return self.training.run(request, hooks, base)

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

    # -- generation ---------------------------------------------------------------------------
    def preflight(
        self,
        request: GenerationRequest,
        checkpoint: str | None = None,
        vae: str | None = None,
        guard: ScriptGuard | None = None,
    ) -> ModelFile:
        """Everything about a job that can be refused before it waits in a queue; its checkpoint.

        `guard(request, where)` sees each generation a script's job plans to make (the admin's
        limits). Raises GenerationError (with the field at fault) or CheckpointError.
        """
        request.validate()
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        make_scheduler(sampler.name, schedule, {})
        self._with_styles(request)
        if request.enable_hr:
            self._check_hires(request)
        if request.script_name:
            script = self.find_script(request.script_name, request.mode)
            args = script.parse_args(request.script_args)
            planned = getattr(script, "planned", None)
            if guard is not None and planned is not None:
                for each in planned(replace(request, script_name="", script_args=[]), args):
                    guard(each.request, each.where)
        self.extensions.alwayson_args(request)
        try:
            file = self.find_checkpoint(checkpoint) if checkpoint else self._selected
        except CheckpointError as error:
            raise CheckpointError(str(error), "checkpoint") from error
        try:
            self._vae_file(file, vae)
        except CheckpointError as error:
            raise CheckpointError(str(error), "vae") from error
        return file

    def _with_styles(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its styles written into the prompts, as the infotext will show them."""
        if not request.styles:
            return request
        try:
            prompt, negative = self.styles.apply(request.styles, request.prompt, request.negative_prompt)
        except StyleError as error:
            raise GenerationError(str(error), "styles") from error
        return replace(request, prompt=prompt, negative_prompt=negative, styles=[])

    def _check_hires(self, request: GenerationRequest) -> None:
        if request.hr_upscaler not in self.hires_upscaler_names():
            raise GenerationError(
                f"unknown hires upscaler {request.hr_upscaler!r}; choose one of: "
                + ", ".join(self.hires_upscaler_names()),
                "hr_upscaler",
            )
        if request.hr_sampler_name or request.hr_scheduler:
            try:
                resolve_sampler(
                    request.hr_sampler_name or request.sampler_name, request.hr_scheduler or request.scheduler
                )
            except GenerationError as error:
                raise GenerationError(str(error), "hr_sampler_name") from error

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepHook | None = None,
        control: JobControl | None = None,
        checkpoint: str | None = None,
        vae: str | None = None,
        save: bool = True,
        hooks: JobHooks | None = None,
        guard: ScriptGuard | None = None,
        on_images: Callable[[StudioResult], None] | None = None,
    ) -> StudioResult:
        """Run one job. `checkpoint` and `vae` pick a model and VAE for this job only (A1111's
        override_settings); `save=False` keeps the images out of the outputs folder. `hooks` are
        the job's always-on scripts when a script's generation is part of a bigger job; `guard`
        may refuse each generation a script makes (see `preflight`). `on_images` gets each batch's
        images once they are saved (not a script's: it gets only the whole result)."""
        if hooks is None:
            hooks = self.job_hooks(request)
        if request.script_name:
            request = self._with_styles(request)
            self.preflight(request, checkpoint, vae)
            result = self._run_script(request, on_step, control, checkpoint, vae, save, hooks, guard)
            result.warnings = list(hooks.warnings)
            return result
        request = self._with_styles(hooks.before_job(request))  # preflight then finds no styles
        file = self.preflight(request, checkpoint, vae)
        done = StudioResult([], [], [], [])
        self._match_weights(file)  # jobs run one at a time: no other job holds this model now
        with self._generation, self.cache.use(file.path) as model:
            self._apply_vae(file, model, vae)
            self._configure_vae_tiling(file, model, request)
            engine = Engine(
                model,
                loras=self._paths(ModelKind.LORA),
                embeddings=self._paths(ModelKind.EMBEDDING),
                upscale_image=self._hires_upscale,
                speed=self.settings.speed,
                refused=RefusedNetworks(self._refused(ModelKind.LORA), self._refused(ModelKind.EMBEDDING)),
            )
            if on_step is not None:
                on_step = with_previews(
                    on_step, self._preview_period(), self._preview_renderer(model, file.arch)
                )
            result = engine.generate(
                request,
                on_step,
                control,
                on_denoise=hooks.on_denoise,
                on_batch=lambda batch: self._finish_batch(
                    batch, request, file, model, hooks, save, done, on_images
                ),
            )
        done.interrupted, done.warnings = result.interrupted, list(hooks.warnings)
        return done

    def _finish_batch(
        self,
        batch: GenerationResult,
        request: GenerationRequest,
        file: ModelFile,
        model: LoadedModel,
        hooks: JobHooks,
        save: bool,
        done: StudioResult,
        on_images: Callable[[StudioResult], None] | None,
    ) -> None:
        """A batch's images: the safety checker, infotexts, extensions' hooks, saving; appended to
        `done`, then shown to `on_images` (which may keep them safe from a crash before the next
        batch ends)."""
        first = len(done.images)
        if first == 0:
            hooks.warnings.extend(self._few_step_notes(file, request, batch))
        hooks.warnings.extend(self._screen(batch, first))
        facts = self._model_facts(file, model, batch)
        for offset, (image, made) in enumerate(zip(batch.images, batch.parameters)):
            parameters = replace(made, model=facts)
            seed = parameters.seed
            finished = ImageDone(image, first + offset, seed, request, parameters.infotext_pairs())
            hooks.after_image(finished)
            infotext = format_infotext(request.prompt, request.negative_prompt, finished.params)
            done.images.append(finished.image)
            done.infotexts.append(infotext)
            done.seeds.append(seed)
            done.parameters.append(parameters)
            if save:
                path = self.saver.save(finished.image, mode=request.mode, seed=seed, infotext=infotext)
                done.paths.append(path)
                hooks.after_save(ImageSaved(path, finished.image, infotext, seed, request))
        if on_images is not None:
            on_images(
                StudioResult(
                    done.images[first:],
                    done.paths[first:],
                    done.infotexts[first:],
                    done.seeds[first:],
                    batch.interrupted,
                    parameters=done.parameters[first:],
                )
            )

    def job_hooks(self, request: GenerationRequest) -> JobHooks:
        """The always-on scripts' hooks for one job, arguments read; GenerationError for bad ones."""
        return JobHooks(self.extensions.alwayson_args(request), self.extensions.timeout_s)

    def scripts(self, mode: str) -> list[Script]:
        """The Script menu of `mode`: the built-in scripts, then the extensions'."""
        return [*scripts_for(mode), *self.extensions.scripts(mode)]

    def find_script(self, name: str, mode: str) -> Script:
        stopped = self.extensions.stopped_script(name)
        if stopped is not None:
            raise GenerationError(
                f"script {name!r} belongs to extension {stopped.name}, which is off until the app "
                f"restarts: {stopped.error}",
                "script_name",
            )
        return find_script(name, mode, self.scripts(mode))

    def _run_script(
        self,
        request: GenerationRequest,
        on_step: StepHook | None,
        control: JobControl | None,
        checkpoint: str | None,
        vae: str | None,
        save: bool,
        hooks: JobHooks,
        guard: ScriptGuard | None = None,
    ) -> StudioResult:
        """A script's job: it makes its own generations (each one a plain request, through the
        always-on scripts' hooks) and any grid."""
        script = self.find_script(request.script_name, request.mode)
        args = script.parse_args(request.script_args)
        each = None if guard is None else (lambda generation: guard(generation, script.title))
        run = ScriptRun.for_studio(self, request.mode, control, on_step, save, checkpoint, vae, hooks, each)
        if not request.save_grid:
            run.save_grid = lambda *_grid_infotext_seed: None
        return script.run(replace(request, script_name="", script_args=[]), args, run)

    # -- live previews ------------------------------------------------------------------------
    def _preview_period(self) -> int:
        # With the safety checker on, nothing unscreened may show, previews included.
        if self.settings.preview_method == "none" or self.safety is not None:
            return 0
        return self.settings.preview_period

    def _preview_renderer(self, model: LoadedModel, arch: Arch | None) -> PreviewRenderer | None:
        """None for the linear preview (drawn lazily by whoever looks); else a decoder on this device."""
        method = self.settings.preview_method
        if method == "vae":
            return lambda latent: vae_decode(model, latent)
        if method == "taesd":
            decoder = self._taesd_decoder(arch or Arch.SD1)
            if decoder is not None:
                return lambda latent: taesd_decode(decoder, latent)
        return None

    def _taesd_decoder(self, arch: Arch) -> AutoencoderTiny | None:
        """The TAESD decoder for `arch` from models/VAE-approx, loaded once; None (linear previews,
        logged once) when there is none or it cannot be read."""
        path = next(filter(None, (find_taesd(folder, arch) for folder in self.library.vae_approx)), None)
        if path is None:
            if arch not in self._taesd_missing:
                self._taesd_missing.add(arch)
                log.warning("no TAESD decoder for %s in models/VAE-approx: using linear previews", arch.value)
            return None
        if path not in self._taesd:
            try:
                self._taesd[path] = load_taesd(path, self.device, self.dtype)
            except CheckpointError as error:
                log.warning("%s; using linear previews", error)
                self._taesd[path] = None
        return self._taesd[path]

    def _few_step_notes(
        self, file: ModelFile, request: GenerationRequest, batch: GenerationResult
    ) -> list[str]:
        """A note for each few-step checkpoint or LoRA of the job run far from its settings."""
        loras = {lora.name: lora for lora in self.registry.files(ModelKind.LORA)}
        used = [file, *(loras[name] for name, _ in batch.loras if name in loras)]
        notes = [
            settings_warning(each.few_step, each.name, request.steps, request.cfg_scale)
            for each in used
            if each.few_step is not None
        ]
        return [note for note in notes if note]

    def _screen(self, batch: GenerationResult, first: int) -> list[str]:
        """Blur, in place, the images the safety checker flags (before anything shows or saves
        them); a note for each. `first`: the job's number of the batch's first image."""
        if self.safety is None:
            return []
        batch.images, flagged = self.safety.screen(batch.images)
        return [
            f"image {first + index + 1} (seed {seed}) was flagged by the safety checker and blurred"
            for index, (seed, flag) in enumerate(zip(batch.seeds, flagged))
            if flag
        ]

    def _paths(self, kind: ModelKind) -> dict[str, Path]:
        return {file.name: file.path for file in self.registry.files(kind)}

    def _refused(self, kind: ModelKind) -> dict[str, str]:
        return {file.name: file.error or "" for file in self.registry.unusable() if file.kind is kind}

    def _configure_vae_tiling(self, file: ModelFile, model: LoadedModel, request: GenerationRequest) -> None:
        mode = self.cache.memory_mode_of(file.path)
        setting = self.settings.vae_tiling
        tile = setting == "on" or (
            setting == "auto" and request.width * request.height > _TILING_PIXELS[mode]
        )
        if tile:
            model.vae.enable_tiling()
        else:
            model.vae.disable_tiling()

    def _model_facts(self, file: ModelFile, model: LoadedModel, result: GenerationResult) -> ModelFacts:
        """The files behind a batch's images, for their infotext."""
        vae_hash = vae_name = None
        if model.vae_path is not None:
            digest = self.facts.sha256(model.vae_path)
            vae_hash, vae_name = (digest[:10] if digest else None), model.vae_path.name
        more: dict[str, object] = {}
        for key, kind, names in (
            ("Lora hashes", ModelKind.LORA, [name for name, _ in result.loras]),
            ("TI hashes", ModelKind.EMBEDDING, result.embeddings),
        ):
            if names:
                files = self._paths(kind)
                more[key] = ", ".join(
                    f"{name}: {(self.facts.sha256(files[name]) or '')[:_NETWORK_HASH_LENGTH]}"
                    for name in names
                )
        if model.weights_label is not None:
            more["Weights"] = model.weights_label
        return ModelFacts(
            name=Path(file.name).name,  # A1111: the file name, not its folder
            hash=self.registry.short_hash(file),
            vae=vae_name,
            vae_hash=vae_hash,
            more=more,
            version=f"webui {__version__}",
        )
