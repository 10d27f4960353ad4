"""txt2img, img2img and inpainting on one model: our own short loop over diffusers components."""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from webui.engine import images as pix
from webui.engine.conditioning import Conditioning, PromptSchedule
from webui.engine.extra_networks import (
    LoraTag,
    RefusedNetworks,
    lora_list_name,
    parse_lora_tags,
    refused_network,
)
from webui.engine.latent_upscale import is_latent_mode, upscale_latent
from webui.engine.noise import image_noise, sampler_generator
from webui.engine.preview import tensor_to_images, vae_decode
from webui.engine.request import GenerationError, GenerationRequest, MaskedContent
from webui.engine.samplers import make_scheduler, resolve_sampler
from webui.engine.speed import UNetCall, decoding, prepare_unet, resolve_for
from webui.engine.speed_options import ResolvedSpeed, SpeedOptions
from webui.engine.steps import DenoiseHook, DenoiseStep, Interrupted, JobControl, StepHook, StepInfo
from webui.engine.tiling import circular_padding
from webui.engine.upscale import upscale
from webui.model_manager.detect import Arch
from webui.model_manager.embeddings import apply_embeddings, embedding_names_in
from webui.model_manager.load import LoadedModel
from webui.model_manager.lora import activate_loras
from webui.model_manager.state_dict import CheckpointError

log = logging.getLogger(__name__)

LATENT_SCALE = 8
LATENT_CHANNELS = 4


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    params: dict[str, object]  # A1111 infotext keys shared by every image (seed is per image)
    interrupted: bool = False
    loras: list[tuple[str, float]] = field(default_factory=list)  # (name, weight) applied from prompt tags
    embeddings: list[str] = field(default_factory=list)  # names of the embeddings the prompts used
    subseeds: list[int] = field(default_factory=list)  # per image, when variation seeds were used


@dataclass
class _Prompts:
    """The texts to encode once LoRA tags are out and embedding names are tokens."""

    positive: str
    negative: str
    loras: list[tuple[str, float]]
    embeddings: list[str]


@dataclass
class _BatchInputs:
    """Per-batch tensors for img2img/inpainting; None fields mean plain txt2img."""

    init_latents: torch.Tensor | None = None
    latent_mask: torch.Tensor | None = None  # 1 = repaint, at latent size
    inpaint_cond: torch.Tensor | None = None  # mask + masked-image latents for 9-channel UNets
    inpaint: pix.InpaintInputs | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# (image, upscaler name, (width, height)) -> the image at exactly that size
PixelUpscale = Callable[[Image.Image, str, tuple[int, int]], Image.Image]


class ConditioningSchedule(Protocol):
    def at(self, step: int) -> tuple[Conditioning, list[tuple[Conditioning, float]]]: ...


@dataclass(frozen=True)
class _UNetCall:
    """One UNet call of a guided step: which conditionings it predicts, stacked along the batch."""

    positions: list[int]  # indices into [negative (with CFG), AND-part 1, AND-part 2, ...]
    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None  # SDXL's pooled text and size conditioning


@dataclass(frozen=True)
class _Pass:
    """What one sampling pass of a batch runs at: the first pass, or hires fix's second."""

    width: int
    height: int
    steps: int
    sampler: str
    scheduler: str
    hires: bool = False


class _Progress:
    """Numbers steps across a batch's passes, so hires fix's steps continue the first pass's count."""

    def __init__(self, on_step: StepHook | None, batch_index: int, total: int) -> None:
        self.on_step, self.batch_index, self.total, self.done = on_step, batch_index, total, 0

    def report(self, latents: torch.Tensor, denoised: torch.Tensor | None) -> None:
        self.done += 1
        if self.on_step is not None:
            self.on_step(StepInfo(self.done, max(self.total, self.done), latents, denoised, self.batch_index))


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
        self._unet: UNetCall = model.unet
        self._speed: ResolvedSpeed | None = None  # this job's, for its VAE decodes
        self._batch_cond_uncond = True
        self._on_denoise: DenoiseHook | None = None  # this job's hook before each UNet step
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
    ) -> GenerationResult:
        """`on_step` observes each finished step; `on_denoise` may change each step before it runs;
        `on_batch` gets each batch's images as soon as they are decoded (so a caller can save them
        before the next batch, which a crash might not let finish)."""
        request.validate()
        try:
            speed = resolve_for(self.model, self.speed)
        except ValueError as error:
            raise GenerationError(str(error)) from error
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        self._scheduler(sampler.name, schedule)  # fail before any work
        if request.enable_hr:
            hires = _hires_pass(request)
            self._scheduler(hires.sampler, hires.scheduler)
        base_seed = request.seed if request.seed != -1 else random.randrange(2**32)
        total = request.batch_size * request.n_iter
        seeds = [(base_seed + i) % 2**32 for i in range(total)]
        base_subseed = request.subseed if request.subseed != -1 else random.randrange(2**32)
        subseeds = [(base_subseed + i) % 2**32 for i in range(total)]
        control = control or JobControl()
        inpaint = pix.prepare_inpaint(request) if request.is_inpaint else None
        init_image = (
            inpaint.image if inpaint else pix.prepare_init_image(request) if request.init_image else None
        )
        prompts = self._prepare_networks(request)
        self._unet = prepare_unet(self.model, speed, loras_active=bool(prompts.loras))
        self._speed = speed
        self._batch_cond_uncond = speed.batch_cond_uncond
        self._on_denoise = on_denoise

        images: list[Image.Image] = []
        interrupted = False
        params = self._params(request, sampler.name, schedule)
        for batch_index in range(request.n_iter):
            batch = slice(batch_index * request.batch_size, (batch_index + 1) * request.batch_size)
            try:
                with circular_padding(self.model.unet, self.model.vae, enabled=request.tiling):
                    latents = self._run_batch(
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
                        params,
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
            params,
            interrupted,
            prompts.loras,
            prompts.embeddings,
            subseeds[: len(images)] if request.subseed_strength > 0 else [],
        )

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        with decoding(cpu_bf16=self._speed is not None and self._speed.cpu_bf16):
            return tensor_to_images(vae_decode(self.model, latents))

    def _scheduler(self, sampler: str, schedule: str, seed: int | None = None) -> SchedulerMixin:
        config = self.model.spec.scheduler_config
        return make_scheduler(sampler, schedule, config, seed=seed, sdxl=self.model.arch is Arch.SDXL)

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
        first = _Pass(request.width, request.height, request.steps, request.sampler_name, request.scheduler)
        first_scheduler = self._scheduler(first.sampler, first.scheduler, seeds[0])
        noise, generators = self._noise(request, seeds, subseeds, first)
        batch = self._batch_inputs(request, init_image, inpaint, count, noise)
        strength = None if batch.init_latents is None else request.denoising_strength
        first_timesteps = _pass_timesteps(first_scheduler, first.steps, strength, self.model.device)
        hires = _hires_pass(request) if request.enable_hr else None
        hires_scheduler = hires_timesteps = None
        if hires is not None:
            hires_scheduler = self._scheduler(hires.sampler, hires.scheduler, seeds[0])
            hires_timesteps = _pass_timesteps(
                hires_scheduler, hires.steps, request.denoising_strength, self.model.device
            )
        progress = _Progress(
            on_step,
            batch_index,
            len(first_timesteps) + (len(hires_timesteps) if hires_timesteps is not None else 0),
        )
        conditioning = self._conditioning(prompts.positive, prompts.negative, first.steps, request.clip_skip)
        latents, finished = self._denoise(
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
        hires_batch = _BatchInputs(init_latents=upscaled)
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
        latents, _ = self._denoise(
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

    def _denoise(
        self,
        request: GenerationRequest,
        spec: _Pass,
        scheduler: SchedulerMixin,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        generators: list[torch.Generator],
        batch: _BatchInputs,
        conditioning: ConditioningSchedule,
        progress: _Progress,
        control: JobControl,
        strength: float | None,
    ) -> tuple[torch.Tensor, bool]:
        """One sampling pass, from noise (`strength` None) or from `batch.init_latents`; returns the
        latents and False when a skip cut it short."""
        count = len(noise)
        if strength is None or batch.init_latents is None:
            latents = noise * scheduler.init_noise_sigma
        elif len(timesteps) == 0:
            return batch.init_latents, True
        elif strength >= 1.0:
            latents = noise * scheduler.init_noise_sigma
        else:
            # A1111's "Noise multiplier" scales img2img's added noise (not hires fix's).
            scale = request.initial_noise_multiplier if request.init_image is not None else 1.0
            latents = scheduler.add_noise(batch.init_latents, noise * scale, timesteps[:1].repeat(count))
        step_kwargs = _step_kwargs(scheduler, generators, request.eta)
        plan = _CallPlan(
            lambda group: self._added_conditioning(group, spec),
            count,
            use_cfg=request.cfg_scale > 1.0,
            batched=self._batch_cond_uncond,
        )
        for index, timestep in enumerate(timesteps):
            if control.interrupted:
                raise Interrupted(latents)
            if control.take_skip():
                return latents, False
            negative, parts = conditioning.at(min(index, spec.steps - 1))
            if self._on_denoise is not None:
                latents, negative, parts = self._edit_step(progress, spec, timestep, latents, negative, parts)
            prediction = self._predict(
                scheduler.scale_model_input(latents, timestep),
                timestep,
                plan.calls(negative, parts),
                [weight for _, weight in parts],
                request.cfg_scale,
                batch,
            )
            output = scheduler.step(prediction, timestep, latents, **step_kwargs, return_dict=True)
            latents = output.prev_sample
            if batch.latent_mask is not None and batch.inpaint_cond is None:
                latents = _keep_unmasked(scheduler, batch, noise, latents, timesteps, index)
            progress.report(latents, getattr(output, "pred_original_sample", None))
        return latents, True

    def _edit_step(
        self,
        progress: _Progress,
        spec: _Pass,
        timestep: torch.Tensor,
        latents: torch.Tensor,
        negative: Conditioning,
        parts: list[tuple[Conditioning, float]],
    ) -> tuple[torch.Tensor, Conditioning, list[tuple[Conditioning, float]]]:
        assert self._on_denoise is not None
        step = DenoiseStep(
            progress.done + 1,
            max(progress.total, progress.done + 1),
            progress.batch_index,
            spec.hires,
            timestep,
            latents,
            negative,
            list(parts),
        )
        self._on_denoise(step)
        return step.latents, step.negative, step.parts

    def _predict(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        calls: list[_UNetCall],
        weights: list[float],
        cfg_scale: float,
        batch: _BatchInputs,
    ) -> torch.Tensor:
        """The guided noise prediction: classifier-free guidance over the prompt's AND-parts."""
        use_cfg = cfg_scale > 1.0
        if batch.inpaint_cond is not None:
            model_input = torch.cat([model_input, batch.inpaint_cond], dim=1)
        predictions: list[torch.Tensor | None] = [None] * (len(weights) + use_cfg)
        for call in calls:
            stacked = len(call.positions)
            output = self._unet(
                torch.cat([model_input] * stacked) if stacked > 1 else model_input,
                timestep,
                encoder_hidden_states=call.embeds,
                added_cond_kwargs=call.added,
                return_dict=False,
            )[0]
            for position, chunk in zip(call.positions, output.chunk(stacked)):
                predictions[position] = chunk
        if not use_cfg:
            conditional = predictions
            if len(conditional) == 1 and weights[0] == 1.0:
                return conditional[0]  # type: ignore[return-value]
            total = sum(weights) or 1.0
            return sum(w * p for w, p in zip(weights, conditional)) / total  # type: ignore[operator,return-value]
        uncond, guided = predictions[0], predictions[0]
        for weight, prediction in zip(weights, predictions[1:]):
            guided = guided + (weight * cfg_scale) * (prediction - uncond)  # type: ignore[operator]
        return guided  # type: ignore[return-value]

    def _noise(
        self, request: GenerationRequest, seeds: list[int], subseeds: list[int], spec: _Pass
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

    def _upscale_for_hires(self, latents: torch.Tensor, upscaler: str, spec: _Pass) -> torch.Tensor:
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
    ) -> _BatchInputs:
        model = self.model
        is_inpainting_unet = model.spec.is_inpainting
        if init_image is None:
            if not is_inpainting_unet:
                return _BatchInputs()
            # txt2img on an inpainting UNet: "repaint everything" over a neutral grey image.
            ones = torch.ones((count, 1, *noise.shape[2:]), device=model.device, dtype=model.dtype)
            grey = self._encode(torch.zeros((1, 3, request.height, request.width))).expand(count, -1, -1, -1)
            return _BatchInputs(inpaint_cond=torch.cat([ones, grey], dim=1))
        pixels = pix.image_to_tensor(init_image)
        latents = self._init_latents(pixels, noise).expand(count, -1, -1, -1).clone()
        if inpaint is None:
            if request.more_init_images:  # one image per batch item (A1111's several init_images)
                more = [pix.prepare_init_image(request, image) for image in request.more_init_images]
                latents = torch.cat(
                    [latents[:1]] + [self._init_latents(pix.image_to_tensor(image), noise) for image in more]
                )
            return _BatchInputs(init_latents=latents)
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
        return _BatchInputs(latents, latent_mask, inpaint_cond, inpaint)

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

    def _added_conditioning(self, cond: Conditioning, spec: _Pass) -> dict[str, torch.Tensor] | None:
        if self.model.arch is not Arch.SDXL:
            return None
        # SDXL micro-conditioning: original size, crop top-left, target size.
        time_ids = torch.tensor(
            [[spec.height, spec.width, 0, 0, spec.height, spec.width]],
            device=self.model.device,
            dtype=self.model.dtype,
        ).repeat(cond.embeds.shape[0], 1)
        return {"text_embeds": cond.pooled, "time_ids": time_ids}

    def _params(self, request: GenerationRequest, sampler: str, schedule: str) -> dict[str, object]:
        params: dict[str, object] = {
            "Steps": request.steps,
            "Sampler": sampler,
            "Schedule type": schedule,
            "CFG scale": request.cfg_scale,
            "Size": f"{request.width}x{request.height}",
        }
        if request.clip_skip > 1:
            params["Clip skip"] = request.clip_skip
        if request.eta is not None:
            params["Eta"] = request.eta
        if request.init_image is not None:
            params["Denoising strength"] = request.denoising_strength
            if request.initial_noise_multiplier != 1.0:
                params["Noise multiplier"] = request.initial_noise_multiplier
        if request.is_inpaint:
            if request.mask_blur_y is None or request.mask_blur_y == request.mask_blur:
                params["Mask blur"] = request.mask_blur  # A1111 writes it only when both axes agree
            if request.inpaint_full_res:
                params["Inpaint area"] = "Only masked"
                params["Masked area padding"] = request.inpaint_full_res_padding
        if request.subseed_strength > 0:
            params["Variation seed"] = None  # per image, filled in by the caller with the image's subseed
            params["Variation seed strength"] = request.subseed_strength
        if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
            params["Seed resize from"] = f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
        if request.tiling:
            params["Tiling"] = True
        if request.rng != "GPU":
            params["RNG"] = request.rng  # A1111 writes the source unless it is its default, GPU
        if request.enable_hr:
            params.update(_hires_params(request, sampler, schedule))
        return params


class _CallPlan:
    """The UNet calls of a pass's steps, built again only when prompt editing changes the conditioning.

    Conditionings of equal token length share one call (cond and uncond batched, unless the
    speed options say otherwise); a long prompt beside a short negative one gets its own call
    rather than padding that would change the result. Building the stacked embeddings and
    SDXL's size tensor once per segment keeps the loop free of per-step tensor creation.
    """

    def __init__(
        self,
        added_conditioning: Callable[[Conditioning], dict[str, torch.Tensor] | None],
        count: int,
        *,
        use_cfg: bool,
        batched: bool,
    ) -> None:
        self._added, self._count, self._use_cfg, self._batched = added_conditioning, count, use_cfg, batched
        self._conds: list[Conditioning] = []
        self._calls: list[_UNetCall] = []

    def calls(self, negative: Conditioning, parts: list[tuple[Conditioning, float]]) -> list[_UNetCall]:
        conds = ([negative] if self._use_cfg else []) + [cond for cond, _ in parts]
        if len(conds) != len(self._conds) or any(a is not b for a, b in zip(conds, self._conds)):
            self._conds = conds
            groups = _groups_by_length(conds) if self._batched else [[i] for i in range(len(conds))]
            self._calls = [self._call(indices) for indices in groups]
        return self._calls

    def _call(self, indices: list[int]) -> _UNetCall:
        group = Conditioning.concat([_repeat(self._conds[i], self._count) for i in indices])
        return _UNetCall(indices, group.embeds, self._added(group))


def _img2img_timesteps(scheduler: SchedulerMixin, steps: int, strength: float) -> torch.Tensor:
    """The last `steps * strength` timesteps, as diffusers' img2img pipelines take them."""
    start = steps - min(int(steps * strength), steps)
    order = getattr(scheduler, "order", 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * order)
    return scheduler.timesteps[start * order :]


def _keep_unmasked(
    scheduler: SchedulerMixin,
    batch: _BatchInputs,
    noise: torch.Tensor,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    index: int,
) -> torch.Tensor:
    """Normal UNets inpaint by resetting the unmasked area to the init image at the next noise level."""
    assert batch.init_latents is not None and batch.latent_mask is not None
    if index + 1 < len(timesteps):
        known = scheduler.add_noise(
            batch.init_latents, noise, timesteps[index + 1 : index + 2].repeat(len(noise))
        )
    else:
        known = batch.init_latents
    return known * (1 - batch.latent_mask) + latents * batch.latent_mask


def _step_kwargs(
    scheduler: SchedulerMixin, generators: list[torch.Generator], eta: float | None
) -> dict[str, Any]:
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in accepted:
        kwargs["generator"] = generators
    if "eta" in accepted:
        kwargs["eta"] = 0.0 if eta is None else eta
    return kwargs


def _hires_pass(request: GenerationRequest) -> _Pass:
    width, height = request.hr_size
    return _Pass(
        width,
        height,
        request.hr_second_pass_steps or request.steps,
        request.hr_sampler_name or request.sampler_name,
        request.hr_scheduler or request.scheduler,
        hires=True,
    )


def _hires_params(request: GenerationRequest, sampler: str, schedule: str) -> dict[str, object]:
    """A1111's hires fix keys; a size given explicitly is written instead of the scale."""
    params: dict[str, object] = {"Denoising strength": request.denoising_strength}
    if request.hr_resize_x > 0 or request.hr_resize_y > 0:
        width, height = request.hr_size
        params["Hires resize"] = f"{width}x{height}"
    else:
        params["Hires upscale"] = request.hr_scale
    if request.hr_second_pass_steps:
        params["Hires steps"] = request.hr_second_pass_steps
    params["Hires upscaler"] = request.hr_upscaler
    if request.hr_sampler_name:
        hires_sampler, hires_schedule = resolve_sampler(
            request.hr_sampler_name, request.hr_scheduler or schedule
        )
        if hires_sampler.name != sampler:
            params["Hires sampler"] = hires_sampler.name
        if hires_schedule != schedule:
            params["Hires schedule type"] = hires_schedule
    elif request.hr_scheduler and request.hr_scheduler != schedule:
        params["Hires schedule type"] = request.hr_scheduler
    if request.hr_prompt and request.hr_prompt != request.prompt:
        params["Hires prompt"] = request.hr_prompt
    if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
        params["Hires negative prompt"] = request.hr_negative_prompt
    return params


def _pass_timesteps(
    scheduler: SchedulerMixin, steps: int, strength: float | None, device: torch.device
) -> torch.Tensor:
    """Set the scheduler up for `steps`; from noise (strength None) all timesteps, else img2img's tail."""
    scheduler.set_timesteps(steps, device=device)
    if strength is None:
        return scheduler.timesteps
    return _img2img_timesteps(scheduler, steps, strength)


def _groups_by_length(conds: list[Conditioning]) -> list[list[int]]:
    """Indices of `conds` grouped by token length, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for index, cond in enumerate(conds):
        groups.setdefault(cond.embeds.shape[1], []).append(index)
    return list(groups.values())


def _resample(image: Image.Image, upscaler: str, size: tuple[int, int]) -> Image.Image:
    return upscale(image, upscaler, size=size, crop=False)


def _repeat(cond: Conditioning, count: int) -> Conditioning:
    """A batch-1 conditioning for `count` images."""
    pooled = None if cond.pooled is None else cond.pooled.expand(count, -1)
    return Conditioning(cond.embeds.expand(count, -1, -1), pooled)
