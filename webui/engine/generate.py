"""txt2img, img2img and inpainting on one model: our own short loop over diffusers components."""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from webui.engine import images as pix
from webui.engine.conditioning import Conditioning, encode_prompts
from webui.engine.extra_networks import LoraTag, parse_lora_tags
from webui.engine.preview import tensor_to_images, vae_decode
from webui.engine.request import GenerationError, GenerationRequest, MaskedContent
from webui.engine.samplers import make_scheduler, resolve_sampler
from webui.engine.steps import Interrupted, JobControl, StepHook, StepInfo
from webui.model_manager.detect import Arch
from webui.model_manager.embeddings import apply_embeddings
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


class Engine:
    """Runs generation requests on one loaded model. Not thread-safe: one job at a time.

    `loras` and `embeddings` map the names prompts use to files; they are read at each job,
    so a mapping the caller refreshes in place is seen at once.
    """

    def __init__(
        self,
        model: LoadedModel,
        loras: Mapping[str, Path] | None = None,
        embeddings: Mapping[str, Path] | None = None,
    ) -> None:
        self.model = model
        self.loras: Mapping[str, Path] = loras if loras is not None else {}
        self.embeddings: Mapping[str, Path] = embeddings if embeddings is not None else {}

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepHook | None = None,
        control: JobControl | None = None,
    ) -> GenerationResult:
        request.validate()
        sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        make_scheduler(sampler.name, schedule, self.model.spec.scheduler_config)  # fail before any work
        base_seed = request.seed if request.seed != -1 else random.randrange(2**32)
        seeds = [(base_seed + i) % 2**32 for i in range(request.batch_size * request.n_iter)]
        control = control or JobControl()
        inpaint = pix.prepare_inpaint(request) if request.is_inpaint else None
        init_image = (
            inpaint.image if inpaint else pix.prepare_init_image(request) if request.init_image else None
        )
        prompts = self._prepare_networks(request)

        images: list[Image.Image] = []
        interrupted = False
        for batch_index in range(request.n_iter):
            batch_seeds = seeds[batch_index * request.batch_size : (batch_index + 1) * request.batch_size]
            try:
                latents = self._run_batch(
                    request, prompts, batch_seeds, batch_index, init_image, inpaint, on_step, control
                )
            except Interrupted as stop:
                latents, interrupted = stop.args[0], True
            decoded = tensor_to_images(vae_decode(self.model, latents))
            images += [pix.composite(image, inpaint) for image in decoded] if inpaint else decoded
            if interrupted:
                break
        return GenerationResult(
            images,
            seeds[: len(images)],
            self._params(request, sampler.name, schedule),
            interrupted,
            prompts.loras,
            prompts.embeddings,
        )

    def _prepare_networks(self, request: GenerationRequest) -> _Prompts:
        """Switch the model's LoRAs to this job's tags and turn embedding names into tokens."""
        positive, tags = parse_lora_tags(request.prompt)
        negative, negative_tags = parse_lora_tags(request.negative_prompt)
        chosen: dict[str, LoraTag] = {}
        for tag in tags + negative_tags:
            chosen[self._lora_name(tag.name)] = tag  # a name tagged twice: the last tag wins
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

    def _lora_name(self, written: str) -> str:
        """The LoRA list's name for a tag's name: exact, else the one match ignoring case."""
        if written in self.loras:
            return written
        folded = [name for name in self.loras if name.lower() == written.lower()]
        if len(folded) == 1:
            return folded[0]
        activate_loras(self.model, [])  # the job fails: leave the model with its plain weights
        raise GenerationError(
            f"unknown LoRA '{written}' in the prompt; check its name in the LoRA list "
            "(refresh the list after adding files)",
            "prompt",
        )

    @torch.inference_mode()
    def _run_batch(
        self,
        request: GenerationRequest,
        prompts: _Prompts,
        seeds: list[int],
        batch_index: int,
        init_image: Image.Image | None,
        inpaint: pix.InpaintInputs | None,
        on_step: StepHook | None,
        control: JobControl,
    ) -> torch.Tensor:
        model, count = self.model, len(seeds)
        scheduler = make_scheduler(
            request.sampler_name, request.scheduler, model.spec.scheduler_config, seed=seeds[0]
        )
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        use_cfg = request.cfg_scale > 1.0
        cond = encode_prompts(model, [prompts.positive] * count, request.clip_skip)
        if use_cfg:
            uncond = encode_prompts(model, [prompts.negative] * count, request.clip_skip)
            cond = Conditioning.concat([uncond, cond])
        height, width = request.height // LATENT_SCALE, request.width // LATENT_SCALE
        noise = torch.cat(
            [
                torch.randn((1, LATENT_CHANNELS, height, width), generator=g, dtype=torch.float32)
                for g in generators
            ]
        ).to(model.device, model.dtype)

        scheduler.set_timesteps(request.steps, device=model.device)
        timesteps = scheduler.timesteps
        batch = self._batch_inputs(request, init_image, inpaint, count, noise)
        if batch.init_latents is None:
            latents = noise * scheduler.init_noise_sigma
        else:
            timesteps = _img2img_timesteps(scheduler, request.steps, request.denoising_strength)
            if len(timesteps) == 0:
                return batch.init_latents
            if request.denoising_strength >= 1.0:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(batch.init_latents, noise, timesteps[:1].repeat(count))

        step_kwargs = _step_kwargs(scheduler, generators, request.eta)
        added = self._added_conditioning(cond, request, use_cfg)
        for index, timestep in enumerate(timesteps):
            if control.interrupted:
                raise Interrupted(latents)
            if control.take_skip():
                break
            model_input = torch.cat([latents] * 2) if use_cfg else latents
            model_input = scheduler.scale_model_input(model_input, timestep)
            if batch.inpaint_cond is not None:
                extra = torch.cat([batch.inpaint_cond] * 2) if use_cfg else batch.inpaint_cond
                model_input = torch.cat([model_input, extra], dim=1)
            prediction = model.unet(
                model_input,
                timestep,
                encoder_hidden_states=cond.embeds,
                added_cond_kwargs=added,
                return_dict=False,
            )[0]
            if use_cfg:
                negative, positive = prediction.chunk(2)
                prediction = negative + request.cfg_scale * (positive - negative)
            output = scheduler.step(prediction, timestep, latents, **step_kwargs, return_dict=True)
            latents = output.prev_sample
            if batch.latent_mask is not None and batch.inpaint_cond is None:
                latents = _keep_unmasked(scheduler, batch, noise, latents, timesteps, index)
            if on_step is not None:
                denoised = getattr(output, "pred_original_sample", None)
                on_step(StepInfo(index + 1, len(timesteps), latents, denoised, batch_index))
        return latents

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
        latents = self._encode(pixels).expand(count, -1, -1, -1).clone()
        if inpaint is None:
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

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        posterior = vae.encode(pixels.to(self.model.device, vae.dtype)).latent_dist
        return (posterior.mode() * vae.config.scaling_factor).to(self.model.dtype)

    def _added_conditioning(
        self, cond: Conditioning, request: GenerationRequest, use_cfg: bool
    ) -> dict[str, torch.Tensor] | None:
        if self.model.arch is not Arch.SDXL:
            return None
        # SDXL micro-conditioning: original size, crop top-left, target size.
        time_ids = torch.tensor(
            [[request.height, request.width, 0, 0, request.height, request.width]],
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
        if request.is_inpaint:
            params["Mask blur"] = request.mask_blur
        return params


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
