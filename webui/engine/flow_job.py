"""A generation request on an SD 3 model: the flow family's passes per seed (engine/families/flow.py),
with inpainting's masks and compositing and hires fix's second pass, as the UNet path does them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from PIL import Image

from webui.engine import images as pix
from webui.engine.families import flow
from webui.engine.families.flow_weights import encode_weighted
from webui.engine.latent_upscale import is_latent_mode, upscale_latent
from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.steps import JobControl, StepHook, StepInfo
from webui.model_manager.sd3.build import SD3Components

# (image, upscaler name, (width, height)) -> the image at exactly that size
PixelUpscale = Callable[[Image.Image, str, tuple[int, int]], Image.Image]


@dataclass(frozen=True)
class _Plan:
    """What every seed of the job runs: the first pass's inputs and, with hires fix, the second's size."""

    init: Image.Image | None
    inpaint: pix.InpaintInputs | None
    hires_size: tuple[int, int] | None
    total_steps: int  # both passes' steps, for the progress count
    skip_layers: flow.SkipLayerGuidance | None  # both passes use it


class FlowJob:
    """Runs one request on SD 3's components, one image per seed (each seed repeats alone)."""

    def __init__(self, parts: SD3Components, request: GenerationRequest, upscale_image: PixelUpscale) -> None:
        self.parts, self.request, self.upscale_image = parts, request, upscale_image
        self.plan = self._check()
        self.prompts = self.hires_prompts = (request.prompt, request.negative_prompt)

    def use_prompts(self, prompts: tuple[str, str], hires_prompts: tuple[str, str]) -> None:
        """The texts to encode (LoRA tags taken out, embeddings applied) for each pass."""
        self.prompts, self.hires_prompts = prompts, hires_prompts

    def _check(self) -> _Plan:
        """GenerationError naming the field, before any work, for what the flow cannot run."""
        request, config = self.request, self.parts.spec.scheduler_config
        strength = request.denoising_strength if request.init_image is not None else 1.0
        try:
            flow.check_size(self.parts, request.width, request.height)
            total = flow.pass_length(config, request.sampler_name, request.steps, strength)
        except ValueError as error:
            raise GenerationError(str(error), _field(error, "sampler_name")) from error
        hires_size = None
        # A strength that leaves no hires step keeps the first pass, as the UNet path does.
        if request.enable_hr and int(self._hires_steps() * request.denoising_strength) > 0:
            hires_size = request.hr_size
            try:
                flow.check_size(self.parts, *hires_size)
                total += flow.pass_length(
                    config, self._hires_sampler(), self._hires_steps(), request.denoising_strength
                )
            except ValueError as error:
                raise GenerationError(str(error), _field(error, "hr_sampler_name", "hr_resize_x")) from error
        inpaint = pix.prepare_inpaint(request) if request.is_inpaint else None
        init = inpaint.image if inpaint else pix.prepare_init_image(request) if request.init_image else None
        return _Plan(init, inpaint, hires_size, total, self._skip_layers())

    def _skip_layers(self) -> flow.SkipLayerGuidance | None:
        request = self.request
        if request.slg_scale <= 0:
            return None
        guidance = flow.SkipLayerGuidance(
            request.slg_layer_numbers, request.slg_scale, request.slg_start, request.slg_stop
        )
        try:
            flow.check_skip_layers(self.parts, guidance)
        except ValueError as error:
            raise GenerationError(str(error), "slg_layers") from error
        return guidance

    def _hires_sampler(self) -> str:
        return self.request.hr_sampler_name or self.request.sampler_name

    def _hires_steps(self) -> int:
        return self.request.hr_second_pass_steps or self.request.steps

    @torch.inference_mode()
    def image(
        self, seed: int, batch_index: int, on_step: StepHook | None, control: JobControl
    ) -> Image.Image:
        """The picture for one seed: first pass, hires fix's pass when asked, decoded and composited."""
        request, parts, plan = self.request, self.parts, self.plan
        generator = torch.Generator("cpu").manual_seed(seed)
        skipped = False

        def should_stop() -> bool:
            nonlocal skipped
            skipped = skipped or control.take_skip()
            return control.interrupted or skipped

        done = 0

        def report(info: StepInfo) -> None:
            if on_step is not None:
                on_step(replace(info, step=done + info.step, total=plan.total_steps, batch_index=batch_index))

        loop = {
            "guidance_scale": request.cfg_scale,
            "skip_layers": plan.skip_layers,
            "step_hook": report,
            "should_stop": should_stop,
        }
        positive, negative = self._encode(*self.prompts)
        first = {"width": request.width, "height": request.height, "steps": request.steps}
        if plan.init is None:
            latents = flow.sample(
                parts, positive, negative, **first, generator=generator, sampler=request.sampler_name, **loop
            )
        else:
            clean = flow.image_to_latents(parts.vae, [plan.init], generator, parts.device)
            clean = clean.to(parts.transformer.dtype)
            mask = None if plan.inpaint is None else flow.latent_mask(plan.inpaint.mask, clean)
            latents = flow.sample(
                parts,
                positive,
                negative,
                **first,
                generator=generator,
                sampler=request.sampler_name,
                strength=request.denoising_strength,
                init_latents=clean,
                mask=mask,
                masked_content=request.inpainting_fill,
                **loop,
            )
        if plan.hires_size is not None and not (skipped or control.interrupted):
            done = flow.pass_length(
                parts.spec.scheduler_config,
                request.sampler_name,
                request.steps,
                request.denoising_strength if plan.init is not None else 1.0,
            )
            latents = self._hires(latents, generator, plan.hires_size, (positive, negative), loop)
        picture = flow.decode(parts.vae, latents)[0]
        return pix.composite(picture, plan.inpaint) if plan.inpaint is not None else picture

    def _encode(
        self, prompt: str, negative_prompt: str
    ) -> tuple[flow.FlowConditioning, flow.FlowConditioning | None]:
        positive = encode_weighted(self.parts, prompt)
        negative = encode_weighted(self.parts, negative_prompt) if self.request.cfg_scale > 1 else None
        return positive, negative

    def _hires(
        self,
        latents: torch.Tensor,
        generator: torch.Generator,
        size: tuple[int, int],
        first_prompts: tuple[flow.FlowConditioning, flow.FlowConditioning | None],
        loop: dict,
    ) -> torch.Tensor:
        """Hires fix's second pass: the first pass's latents upscaled (latent modes) or its picture
        upscaled and encoded again, then the flow entered at the denoising strength."""
        request, parts = self.request, self.parts
        width, height = size
        scale = flow.check_size(parts, width, height)
        if is_latent_mode(request.hr_upscaler):
            upscaled = upscale_latent(latents, request.hr_upscaler, (height // scale, width // scale))
        else:
            picture = flow.decode(parts.vae, latents)[0]
            bigger = self.upscale_image(picture, request.hr_upscaler, (width, height))
            upscaled = flow.image_to_latents(parts.vae, [bigger], generator, parts.device)
            upscaled = upscaled.to(parts.transformer.dtype)
        if self.hires_prompts != self.prompts:
            positive, negative = self._encode(*self.hires_prompts)
        else:
            positive, negative = first_prompts
        return flow.sample(
            parts,
            positive,
            negative,
            width=width,
            height=height,
            steps=self._hires_steps(),
            generator=generator,
            sampler=self._hires_sampler(),
            strength=request.denoising_strength,
            init_latents=upscaled,
            **loop,
        )


def _field(error: ValueError, sampler_field: str, size_field: str = "width") -> str:
    text = str(error)
    if "strength" in text:
        return "denoising_strength"
    return sampler_field if "sampler" in text else size_field
