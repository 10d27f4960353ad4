"""The services the UI, the CLI and (later) the API share: models, generation, saving."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from diffusers import AutoencoderTiny
from PIL import Image

from webui import __version__
from webui.engine.devices import resolve_device, resolve_dtype
from webui.engine.extra_networks import RefusedNetworks
from webui.engine.generate import Engine, GenerationResult
from webui.engine.image_parameters import ModelFacts
from webui.engine.preview import PreviewRenderer, vae_decode, with_previews
from webui.engine.preview_fit import LinearPreview, fit_linear_preview
from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.samplers import make_scheduler, resolve_sampler
from webui.engine.speed import use_compile_cache
from webui.engine.steps import JobControl, StepHook
from webui.extensions.api import ImageDone, ImageSaved
from webui.extensions.hooks import JobHooks
from webui.extensions.registry import Extensions
from webui.model_manager.archs import architecture
from webui.model_manager.detect import Arch
from webui.model_manager.few_step import settings_warning
from webui.model_manager.load import LoadedModel
from webui.model_manager.offload import MemoryMode
from webui.model_manager.registry import ModelFile, ModelKind
from webui.model_manager.safety_checker import SafetyChecker, load_safety_checker
from webui.model_manager.state_dict import CheckpointError
from webui.model_manager.taesd import find_taesd, load_taesd, taesd_decode
from webui.outputs import format_infotext
from webui.results import StudioResult
from webui.scripts.base import Script, ScriptRun, grid_seed
from webui.scripts.catalog import find_script, scripts_for
from webui.services.models import ModelService
from webui.services.outputs import OutputService
from webui.settings import Settings
from webui.styles import StyleBook, StyleError
from webui.training.progress import TrainingHooks
from webui.training.request import TrainingRequest
from webui.training.runner import TrainingResult
from webui.training.service import TrainingService

log = logging.getLogger(__name__)

# Above this many pixels the VAE decodes in tiles, per memory mode (`--vae-tiling auto`).
_TILING_PIXELS = {
    MemoryMode.NORMAL: 2048 * 2048,
    MemoryMode.TEXT_OFFLOAD: 2048 * 2048,
    MemoryMode.MEDVRAM: 1024 * 1024,
    MemoryMode.LOWVRAM: 512 * 512,
}
# Sees each generation a script's job makes, with where it comes from; may raise GenerationError.
ScriptGuard = Callable[[GenerationRequest, str], None]
# A1111 writes 12 hex digits of sha256 for LoRAs and embeddings ("Lora hashes", "TI hashes").
_NETWORK_HASH_LENGTH = 12


class Studio:
    """The generation service: runs jobs on the model service's models and hands the images to
    the output service. Also the one object the page, the APIs and the CLI are given: its
    `models` and `outputs` are the other two services.

    Generations run one at a time (`models.busy` is held while one does).
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
        self.models = ModelService(settings, self.device, self.dtype)
        self.outputs = OutputService(settings)
        self._taesd: dict[Path, AutoencoderTiny | None] = {}  # loaded on first use, per file
        self._taesd_missing: set[Arch] = set()
        # Linear preview maps fitted to VAEs whose latents have no fixed table, per (checkpoint, VAE file).
        self._fitted_previews: dict[tuple[Path, Path | None], LinearPreview] = {}
        self.styles = StyleBook(settings.data_dir / "styles.csv")
        self.training = TrainingService(
            self.models.registry,
            settings.data_dir / "training",
            self.device,
            self.models.current_checkpoint_file,
        )
        self.extensions = extensions if extensions is not None else Extensions.for_settings(settings)
        # Loaded at start so that a missing checker stops the start, not the first job.
        self.safety: SafetyChecker | None = (
            load_safety_checker(settings.data_dir / "models", self.device, self.dtype)
            if settings.safety_checker
            else None
        )

    def apply_settings(self, new: Settings) -> None:
        """Take on changed editable settings (see LiveSettings): outputs, naming, previews, budgets.

        ValueError (before anything changes) for extension settings their extensions refuse."""
        extension_values = self.extensions.check_values(new.extension_settings)
        new = replace(new, extension_settings=extension_values)
        self.settings = new
        self.extensions.set_values(extension_values)
        self.extensions.timeout_s = new.extension_timeout_s
        self.outputs.apply_settings(new)
        self.models.apply_settings(new)

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
        return self.models.upscalers.blend(
            image, upscaler, second, second_visibility, scale=scale, size=size, crop=crop
        )

    def _hires_upscale(self, image: Image.Image, upscaler: str, size: tuple[int, int]) -> Image.Image:
        return self.models.upscalers.upscale(image, upscaler, size=size, crop=False, field="hr_upscaler")

    # -- training -----------------------------------------------------------------------------
    def training_preflight(self, request: TrainingRequest, admin: bool = True) -> str:
        return self.training.preflight(request, admin)

    def train(self, request: TrainingRequest, hooks: TrainingHooks, base: str) -> TrainingResult:
        """Run a training job (on the queue's worker, between generations)."""
        with self.models.busy:
            return self.training.run(request, hooks, base)

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
            file = (
                self.models.find_checkpoint(checkpoint)
                if checkpoint
                else self.models.current_checkpoint_file()
            )
        except CheckpointError as error:
            raise CheckpointError(str(error), "checkpoint") from error
        try:
            self.models.vae_file(file, vae)
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
        if request.hr_upscaler not in self.models.hires_upscaler_names():
            raise GenerationError(
                f"unknown hires upscaler {request.hr_upscaler!r}; choose one of: "
                + ", ".join(self.models.hires_upscaler_names()),
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
        self.models.match_weights(file)  # jobs run one at a time: no other job holds this model now
        with self.models.busy, self.models.cache.use(file.path) as model:
            self.models.apply_vae(file, model, vae)
            self._configure_vae_tiling(file, model, request)
            engine = Engine(
                model,
                loras=self.models.paths(ModelKind.LORA),
                embeddings=self.models.paths(ModelKind.EMBEDDING),
                upscale_image=self._hires_upscale,
                speed=self.settings.speed,
                refused=RefusedNetworks(
                    self.models.refused(ModelKind.LORA), self.models.refused(ModelKind.EMBEDDING)
                ),
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
                checked=True,  # by the preflight above, on the request as hooks and styles left it
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
                path = self.outputs.save(finished.image, mode=request.mode, seed=seed, infotext=infotext)
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

    def script_run(
        self,
        mode: str,
        control: JobControl | None = None,
        on_step: StepHook | None = None,
        save: bool = True,
        checkpoint: str | None = None,
        vae: str | None = None,
        hooks: JobHooks | None = None,
        guard: Callable[[GenerationRequest], None] | None = None,
    ) -> ScriptRun:
        """A script's way to generate: with the job's checkpoint/VAE overrides and always-on
        scripts' hooks; grids go to `<mode>-grids`. `guard` sees each request before it runs and may refuse
        it (the admin's limits, for scripts that cannot say beforehand what they will make)."""
        if mode not in ("txt2img", "img2img"):  # refused now rather than at the first grid
            raise ValueError(f"mode must be txt2img or img2img, got {mode!r}")
        job_control = control or JobControl()
        job_checkpoint, save_all = checkpoint, save

        def generate(
            request: GenerationRequest, checkpoint: str | None = None, *, save: bool = True
        ) -> StudioResult:
            if guard is not None:
                guard(request)
            return self.generate(
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
            seed = grid_seed(infotext) if seed is None else seed
            return self.outputs.save(grid, mode=mode, seed=seed, infotext=infotext, kind="grids")

        def save_image(image: Image.Image, infotext: str, seed: int) -> Path | None:
            return self.outputs.save(image, mode=mode, seed=seed, infotext=infotext) if save_all else None

        return ScriptRun(
            generate=generate,
            preflight=lambda request, name: self.preflight(request, name or job_checkpoint, vae),
            upscale=lambda image, name, scale: self.models.upscalers.upscale(image, name, scale=scale),
            checkpoint_names=self.models.checkpoint_titles,
            save_grid=save_grid,
            save_image=save_image,
            control=job_control,
        )

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
        run = self.script_run(request.mode, control, on_step, save, checkpoint, vae, hooks, each)
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
        if method == "linear" and arch is not None and not architecture(arch).latent.preview_factors:
            # No fixed table for these latents: a map fitted to this model's VAE, once.
            fitted = self._fitted_preview(model)
            return fitted.render
        if method == "vae":
            return lambda latent: vae_decode(model, latent)
        if method == "taesd":
            decoder = self._taesd_decoder(arch or Arch.SD1)
            if decoder is not None:
                return lambda latent: taesd_decode(decoder, latent)
        return None

    def _fitted_preview(self, model: LoadedModel) -> LinearPreview:
        key = (model.path, model.vae_path)
        if key not in self._fitted_previews:
            started = time.perf_counter()
            self._fitted_previews[key] = fit_linear_preview(model.vae, model.device)
            log.info(
                "fitted linear previews to %s's VAE in %.2f s", model.name, time.perf_counter() - started
            )
        return self._fitted_previews[key]

    def _taesd_decoder(self, arch: Arch) -> AutoencoderTiny | None:
        """The TAESD decoder for `arch` from models/VAE-approx, loaded once; None (linear previews,
        logged once) when there is none or it cannot be read."""
        path = next(
            filter(None, (find_taesd(folder, arch) for folder in self.models.library.vae_approx)), None
        )
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
        loras = {lora.name: lora for lora in self.models.registry.files(ModelKind.LORA)}
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

    def _configure_vae_tiling(self, file: ModelFile, model: LoadedModel, request: GenerationRequest) -> None:
        mode = self.models.cache.memory_mode_of(file.path)
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
            digest = self.models.facts.sha256(model.vae_path)
            vae_hash, vae_name = (digest[:10] if digest else None), model.vae_path.name
        more: dict[str, object] = {}
        for key, kind, names in (
            ("Lora hashes", ModelKind.LORA, [name for name, _ in result.loras]),
            ("TI hashes", ModelKind.EMBEDDING, result.embeddings),
        ):
            if names:
                files = self.models.paths(kind)
                more[key] = ", ".join(
                    f"{name}: {(self.models.facts.sha256(files[name]) or '')[:_NETWORK_HASH_LENGTH]}"
                    for name in names
                )
        if model.weights_label is not None:
            more["Weights"] = model.weights_label
        return ModelFacts(
            name=Path(file.name).name,  # A1111: the file name, not its folder
            hash=self.models.registry.short_hash(file),
            vae=vae_name,
            vae_hash=vae_hash,
            more=more,
            version=f"webui {__version__}",
        )
