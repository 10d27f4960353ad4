"""txt2img, img2img and inpainting on one model: our own short loop over diffusers components."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from webui.engine import images as pix
from webui.engine.conditioning import PromptSchedule
from webui.engine.extra_networks import (
    LoraTag,
    RefusedNetworks,
    lora_list_name,
    parse_lora_tags,
    refused_network,
)
from webui.engine.families import SamplingLoop, sampling_loop
from webui.engine.flow_job import FlowJob, PixelUpscale
from webui.engine.image_parameters import ImageParameters
from webui.engine.latent_upscale import is_latent_mode, upscale_latent
from webui.engine.noise import image_noise, sampler_generator
from webui.engine.passes import BatchInputs, ConditioningSchedule, Pass, Progress, pass_timesteps
from webui.engine.preview import tensor_to_images, vae_decode
from webui.engine.request import GenerationError, GenerationRequest, MaskedContent
from webui.engine.samplers import make_scheduler, resolve_sampler
from webui.engine.speed import decoding, prepare_unet, resolve_for
from webui.engine.speed_options import ResolvedSpeed, SpeedOptions
from webui.engine.steps import DenoiseHook, Interrupted, JobControl, StepHook
from webui.engine.tiling import circular_padding
from webui.engine.upscale import upscale
from webui.model_manager.archs import DenoisingFamily
from webui.model_manager.embeddings import apply_embeddings, embedding_names_in
from webui.model_manager.load import LoadedModel
from webui.model_manager.lora import activate_loras
from webui.model_manager.state_dict import CheckpointError

log = logging.getLogger(__name__)

LATENT_SCALE = 8


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    parameters: list[ImageParameters]  # per image, typed; the infotext is written from them
    interrupted: bool = False
    loras: list[tuple[str, float]] = field(default_factory=list)  # (name, weight) applied from prompt tags
    embeddings: list[str] = field(default_factory=list)  # names of the embeddings the prompts used
    subseeds: list[int] = field(default_factory=list)  # per image, when variation seeds were used

    @property
    def params(self) -> dict[str, object]:
        """The first image's A1111 infotext pairs (the others differ only in their seeds)."""
        return self.parameters[0].infotext_pairs() if self.parameters else {}


@dataclass
class _Prompts:
    """The texts to encode once LoRA tags are out and embedding names are tokens."""

    positive: str
    negative: str
    loras: list[tuple[str, float]]
    embeddings: list[str]


class Engine:
    """Runs generation requests on one loaded model. Not thread-safe: one job at a time.

    `loras` and `embeddings` map the names prompts use to files; they are read at each job,
    so a mapping the caller refreshes in place is seen at once. `refused` maps the names of
    LoRA and embedding files the caller cannot use to the reason, which a prompt naming one gets.
    """

    def __init__(
        self,
        model: LoadedModel,
        loras: Mapping[str, Path] | None = None,
        embeddings: Mapping[str, Path] | None = None,
        upscale_image: PixelUpscale | None = None,
        speed: SpeedOptions | None = None,
        refused: RefusedNetworks | None = None,
    ) -> None:
        self.model = model
        self.refused = refused or RefusedNetworks()
        self.speed = speed or SpeedOptions()
        self._speed: ResolvedSpeed | None = None  # this job's, for its VAE decodes
        # Hires fix's pixel upscalers (ESRGAN models live with the caller); resamplers by default.
        self.upscale_image: PixelUpscale = upscale_image or _resample
        self.loras: Mapping[str, Path] = loras if loras is not None else {}
        self.embeddings: Mapping[str, Path] = embeddings if embeddings is not None else {}

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepHook | None = None,
        control: JobControl | None = None,
        on_denoise: DenoiseHook | None = None,
        on_batch: Callable[[GenerationResult], None] | None = None,
        *,
        checked: bool = False,
    ) -> GenerationResult:
        """`on_step` observes each finished step; `on_denoise` may change each step before it runs;
        `on_batch` gets each batch's images as soon as they are decoded (so a caller can save them
        before the next batch, which a crash might not let finish). `checked`: the caller has just
        validated this very request (the studio's preflight), so it is not checked again."""
        if not checked:
            request.validate()
        if self.model.architecture.family is DenoisingFamily.FLOW:
            return self._generate_flow(request, on_step, control or JobControl(), on_batch)
        if request.slg_scale > 0:
            raise GenerationError("skip-layer guidance is for SD 3.5 models; set its scale to 0", "slg_scale")
        try:
            speed = resolve_for(self.model, self.speed)
        except ValueError as error:
            raise GenerationError(str(error)) from error
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        self._scheduler(sampler.name, schedule)  # fail before any work
        if request.enable_hr:
            hires = _hires_pass(request)
            self._scheduler(hires.sampler, hires.scheduler)
        total = request.batch_size * request.n_iter
        seeds, subseeds = _seeds(request.seed, total), _seeds(request.subseed, total)
        control = control or JobControl()
        inpaint = pix.prepare_inpaint(request) if request.is_inpaint else None
        init_image = (
            inpaint.image if inpaint else pix.prepare_init_image(request) if request.init_image else None
        )
        prompts = self._prepare_networks(request)
        loop = sampling_loop(
            self.model,
            prepare_unet(self.model, speed, loras_active=bool(prompts.loras)),
            batched=speed.batch_cond_uncond,
            on_denoise=on_denoise,
        )
        self._speed = speed

        images: list[Image.Image] = []
        interrupted = False
        made = _image_parameters(request, sampler.name, schedule)
        parameters = [
            replace(made, seed=seed, subseed=subseed if request.subseed_strength > 0 else None)
            for seed, subseed in zip(seeds, subseeds)
        ]
        for batch_index in range(request.n_iter):
            batch = slice(batch_index * request.batch_size, (batch_index + 1) * request.batch_size)
            try:
                with circular_padding(self.model.unet, self.model.vae, enabled=request.tiling):
                    latents = self._run_batch(
                        loop,
                        request,
                        prompts,
                        seeds[batch],
                        subseeds[batch],
                        batch_index,
                        init_image,
                        inpaint,
                        on_step,
                        control,
                    )
            except Interrupted as stop:
                latents, interrupted = stop.args[0], True
            with circular_padding(self.model.vae, enabled=request.tiling):
                decoded = self._decode(latents)
            batch_images = [pix.composite(image, inpaint) for image in decoded] if inpaint else decoded
            if on_batch is not None:
                done = slice(len(images), len(images) + len(batch_images))
                on_batch(
                    GenerationResult(
                        batch_images,
                        seeds[done],
                        parameters[done],
                        interrupted,
                        prompts.loras,
                        prompts.embeddings,
                        subseeds[done] if request.subseed_strength > 0 else [],
                    )
                )
            images += batch_images
            if interrupted:
                break
        return GenerationResult(
            images,
            seeds[: len(images)],
            parameters[: len(images)],
            interrupted,
            prompts.loras,
            prompts.embeddings,
            subseeds[: len(images)] if request.subseed_strength > 0 else [],
        )

    def _generate_flow(
        self,
        request: GenerationRequest,
        on_step: StepHook | None,
        control: JobControl,
        on_batch: Callable[[GenerationResult], None] | None,
    ) -> GenerationResult:
        """SD 3's flow-matching passes (engine/flow_job.py), one image per seed so that each seed
        repeats alone; what they cannot do yet is refused by name before any work."""
        parts = self.model.parts
        assert parts is not None, "flow models carry their parts"
        _refuse_for_flow(request)
        parts = replace(parts, device=self.model.device, dtype=self.model.dtype)
        job = FlowJob(parts, request, self.upscale_image)  # checks before the LoRAs are switched
        prompts = self._prepare_networks(request)
        job.use_prompts((prompts.positive, prompts.negative), self._hires_prompts(request, prompts))
        seeds = _seeds(request.seed, request.batch_size * request.n_iter)
        made = _image_parameters(request, request.sampler_name, request.scheduler)
        result = GenerationResult([], [], [], loras=prompts.loras, embeddings=prompts.embeddings)
        for index, seed in enumerate(seeds):
            image = job.image(seed, index // request.batch_size, on_step, control)
            one = GenerationResult(
                [image],
                [seed],
                [replace(made, seed=seed)],
                control.interrupted,
                prompts.loras,
                prompts.embeddings,
            )
            if on_batch is not None:
                on_batch(one)
            result.images += one.images
            result.seeds += one.seeds
            result.parameters += one.parameters
            if control.interrupted:
                result.interrupted = True
                break
        return result

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        with decoding(cpu_bf16=self._speed is not None and self._speed.cpu_bf16):
            return tensor_to_images(vae_decode(self.model, latents))

    def _scheduler(self, sampler: str, schedule: str, seed: int | None = None) -> SchedulerMixin:
        config = self.model.spec.scheduler_config
        ays_table = self.model.architecture.ays_table
        return make_scheduler(sampler, schedule, config, seed=seed, ays_table=ays_table)

    def _prepare_networks(self, request: GenerationRequest) -> _Prompts:
        """Switch the model's LoRAs to this job's tags and turn embedding names into tokens."""
        positive, tags = parse_lora_tags(request.prompt)
        negative, negative_tags = parse_lora_tags(request.negative_prompt)
        if request.disable_extra_networks:
            tags, negative_tags = [], []  # A1111: the tags still leave the prompt, unapplied
        chosen: dict[str, LoraTag] = {}
        try:
            for tag in tags + negative_tags:
                # A name tagged twice: the last tag wins.
                chosen[lora_list_name(tag.name, self.loras, self.refused.loras)] = tag
            self._refuse_unusable_embeddings([positive, negative])
        except GenerationError:
            activate_loras(self.model, [])  # the job fails: leave the model with its plain weights
            raise
        try:
            # Always called, also without tags: it switches off the previous job's LoRAs.
            activate_loras(
                self.model,
                [
                    (name, self.loras[name], (tag.text_encoder_weight, tag.unet_weight))
                    for name, tag in chosen.items()
                ],
            )
            (positive, negative), used = apply_embeddings(self.model, [positive, negative], self.embeddings)
        except CheckpointError as error:
            raise GenerationError(str(error), "prompt") from error
        return _Prompts(positive, negative, [(name, tag.weight) for name, tag in chosen.items()], used)

    def _refuse_unusable_embeddings(self, prompts: list[str]) -> None:
        """GenerationError with the reason for the first refused embedding the prompts name."""
        refused = {k: v for k, v in self.refused.embeddings.items() if k not in self.embeddings}
        # Usable names take part in the match, so "style-x" is not read as a refused "style".
        for name in embedding_names_in(prompts, [*self.embeddings, *refused]):
            if name in refused:
                raise refused_network("embedding", name, refused[name])

    @torch.inference_mode()
    def _run_batch(
        self,
        loop: SamplingLoop,
        request: GenerationRequest,
        prompts: _Prompts,
        seeds: list[int],
        subseeds: list[int],
        batch_index: int,
        init_image: Image.Image | None,
        inpaint: pix.InpaintInputs | None,
        on_step: StepHook | None,
        control: JobControl,
    ) -> torch.Tensor:
        """The batch's latents after the first pass and, when asked, hires fix's second pass."""
        count = len(seeds)
        first = Pass(request.width, request.height, request.steps, request.sampler_name, request.scheduler)
        first_scheduler = self._scheduler(first.sampler, first.scheduler, seeds[0])
        noise, generators = self._noise(request, seeds, subseeds, first)
        batch = self._batch_inputs(request, init_image, inpaint, count, noise)
        strength = None if batch.init_latents is None else request.denoising_strength
        first_timesteps = pass_timesteps(first_scheduler, first.steps, strength, self.model.device)
        hires = _hires_pass(request) if request.enable_hr else None
        hires_scheduler = hires_timesteps = None
        if hires is not None:
            hires_scheduler = self._scheduler(hires.sampler, hires.scheduler, seeds[0])
            hires_timesteps = pass_timesteps(
                hires_scheduler, hires.steps, request.denoising_strength, self.model.device
            )
        progress = Progress(
            on_step,
            batch_index,
            len(first_timesteps) + (len(hires_timesteps) if hires_timesteps is not None else 0),
        )
        conditioning = self._conditioning(prompts.positive, prompts.negative, first.steps, request.clip_skip)
        latents, finished = loop.run(
            request,
            first,
            first_scheduler,
            first_timesteps,
            noise,
            generators,
            batch,
            conditioning,
            progress,
            control,
            strength,
        )
        if hires is None or not finished:
            return latents
        assert hires_scheduler is not None and hires_timesteps is not None
        if len(hires_timesteps) == 0:
            return latents  # a strength of 0 keeps the first pass; upscaling alone is Extras' job
        hires_noise, hires_generators = self._noise(request, seeds, subseeds, hires)
        upscaled = self._upscale_for_hires(latents, request.hr_upscaler, hires)
        hires_batch = BatchInputs(init_latents=upscaled)
        if self.model.spec.is_inpainting:
            ones = torch.ones(
                (count, 1, *hires_noise.shape[2:]), device=upscaled.device, dtype=upscaled.dtype
            )
            hires_batch.inpaint_cond = torch.cat([ones, torch.zeros_like(upscaled)], dim=1)
        positive, negative = self._hires_prompts(request, prompts)
        hires_conditioning = (
            conditioning
            if (positive, negative) == (prompts.positive, prompts.negative) and hires.steps == first.steps
            else self._conditioning(positive, negative, hires.steps, request.clip_skip)
        )
        latents, _ = loop.run(
            request,
            hires,
            hires_scheduler,
            hires_timesteps,
            hires_noise,
            hires_generators,
            hires_batch,
            hires_conditioning,
            progress,
            control,
            request.denoising_strength,
        )
        return latents

    def _noise(
        self, request: GenerationRequest, seeds: list[int], subseeds: list[int], spec: Pass
    ) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Each image's starting noise, and its seed's generator for the sampler to continue."""
        height, width = spec.height // LATENT_SCALE, spec.width // LATENT_SCALE
        resize_from = None
        if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
            resize_from = (
                max(request.seed_resize_from_h // LATENT_SCALE, 1),
                max(request.seed_resize_from_w // LATENT_SCALE, 1),
            )
        device = self.model.device
        generators = [sampler_generator(seed, request.rng, device) for seed in seeds]
        noise = [
            image_noise(
                seed,
                height,
                width,
                subseed=subseed,
                subseed_strength=request.subseed_strength,
                resize_from=resize_from,
                generator=generator,
                source=request.rng,
                device=device,
                channels=self.model.architecture.latent.channels,
            )
            for seed, subseed, generator in zip(seeds, subseeds, generators)
        ]
        return torch.cat(noise).to(self.model.device, self.model.dtype), generators

    def _conditioning(self, positive: str, negative: str, steps: int, clip_skip: int) -> ConditioningSchedule:
        return PromptSchedule.build(self.model, positive, negative, steps, clip_skip)

    def _hires_prompts(self, request: GenerationRequest, prompts: _Prompts) -> tuple[str, str]:
        """Hires fix's own prompts (LoRA tags dropped: the first pass's LoRAs stay active)."""
        positive = parse_lora_tags(request.hr_prompt)[0] if request.hr_prompt else prompts.positive
        negative = (
            parse_lora_tags(request.hr_negative_prompt)[0] if request.hr_negative_prompt else prompts.negative
        )
        if request.hr_prompt or request.hr_negative_prompt:
            (positive, negative), _ = apply_embeddings(self.model, [positive, negative], self.embeddings)
        return positive, negative

    def _upscale_for_hires(self, latents: torch.Tensor, upscaler: str, spec: Pass) -> torch.Tensor:
        size = (spec.height // LATENT_SCALE, spec.width // LATENT_SCALE)
        if is_latent_mode(upscaler):
            return upscale_latent(latents, upscaler, size)
        images = self._decode(latents)
        resized = [self.upscale_image(image, upscaler, (spec.width, spec.height)) for image in images]
        return torch.cat([self._encode(pix.image_to_tensor(image)) for image in resized])

    def _batch_inputs(
        self,
        request: GenerationRequest,
        init_image: Image.Image | None,
        inpaint: pix.InpaintInputs | None,
        count: int,
        noise: torch.Tensor,
    ) -> BatchInputs:
        model = self.model
        is_inpainting_unet = model.spec.is_inpainting
        if init_image is None:
            if not is_inpainting_unet:
                return BatchInputs()
            # txt2img on an inpainting UNet: "repaint everything" over a neutral grey image.
            ones = torch.ones((count, 1, *noise.shape[2:]), device=model.device, dtype=model.dtype)
            grey = self._encode(torch.zeros((1, 3, request.height, request.width))).expand(count, -1, -1, -1)
            return BatchInputs(inpaint_cond=torch.cat([ones, grey], dim=1))
        pixels = pix.image_to_tensor(init_image)
        latents = self._init_latents(pixels, noise).expand(count, -1, -1, -1).clone()
        if inpaint is None:
            if request.more_init_images:  # one image per batch item (A1111's several init_images)
                more = [pix.prepare_init_image(request, image) for image in request.more_init_images]
                latents = torch.cat(
                    [latents[:1]] + [self._init_latents(pix.image_to_tensor(image), noise) for image in more]
                )
            return BatchInputs(init_latents=latents)
        mask = pix.mask_to_tensor(inpaint.mask)
        latent_mask = torch.nn.functional.interpolate(mask, size=latents.shape[2:], mode="bilinear").round()
        latent_mask = latent_mask.to(model.device, model.dtype)
        if request.inpainting_fill is MaskedContent.LATENT_NOISE:
            latents = latents * (1 - latent_mask) + noise * latent_mask
        elif request.inpainting_fill is MaskedContent.LATENT_NOTHING:
            latents = latents * (1 - latent_mask)
        inpaint_cond = None
        if is_inpainting_unet:
            masked_image = self._encode(pixels * (mask < 0.5)).expand(count, -1, -1, -1)
            inpaint_cond = torch.cat([latent_mask.expand(count, -1, -1, -1), masked_image], dim=1)
        return BatchInputs(latents, latent_mask, inpaint_cond, inpaint)

    def _init_latents(self, pixels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """An init image's latents at the noise's size; resize mode 3 encodes at the image's own
        size and resizes the latents (bilinear, as A1111's default latent upscaler)."""
        latents = self._encode(pixels)
        if latents.shape[2:] != noise.shape[2:]:
            latents = torch.nn.functional.interpolate(latents, size=noise.shape[2:], mode="bilinear")
        return latents

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        posterior = vae.encode(pixels.to(self.model.device, vae.dtype)).latent_dist
        return (posterior.mode() * vae.config.scaling_factor).to(self.model.dtype)


def _hires_pass(request: GenerationRequest) -> Pass:
    width, height = request.hr_size
    return Pass(
        width,
        height,
        request.hr_second_pass_steps or request.steps,
        request.hr_sampler_name or request.sampler_name,
        request.hr_scheduler or request.scheduler,
        hires=True,
    )


def _image_parameters(request: GenerationRequest, sampler: str, schedule: str) -> ImageParameters:
    """What every image of the job shares; the caller adds each one's seeds. Hires fix's sampler
    and schedule are resolved here, where the sampler table is, so the infotext names them as run."""
    hr_sampler, hr_schedule = "", ""
    if request.enable_hr and request.hr_sampler_name:
        resolved, hr_schedule = resolve_sampler(request.hr_sampler_name, request.hr_scheduler or schedule)
        hr_sampler = resolved.name
    elif request.enable_hr:
        hr_schedule = request.hr_scheduler
    return ImageParameters(request, -1, sampler, schedule, hr_sampler=hr_sampler, hr_schedule=hr_schedule)


def _seeds(first: int, count: int) -> list[int]:
    """A job's consecutive seeds from its first (-1: a random one), wrapping at 2**32."""
    base = first if first != -1 else random.randrange(2**32)
    return [(base + i) % 2**32 for i in range(count)]


def _refuse_for_flow(request: GenerationRequest) -> None:
    """What SD 3's loop does not do yet, named, rather than silently ignored."""
    unsupported = {
        "tiling": (request.tiling, "tiling"),
        "subseed_strength": (request.subseed_strength > 0, "variation seeds"),
        "seed_resize_from_w": (request.seed_resize_from_w > 0, "resize seed from"),
    }
    for field_name, (asked, what) in unsupported.items():
        if asked:
            raise GenerationError(f"{what} is not available for SD 3.5 models yet", field_name)


def _resample(image: Image.Image, upscaler: str, size: tuple[int, int]) -> Image.Image:
    return upscale(image, upscaler, size=size, crop=False)
