"""The flow-matching denoising loop of SD 3 / 3.5, in small functions over the components.

SD 3's transformer predicts a velocity; FlowMatchEulerDiscreteScheduler (timesteps shifted by
3, as SD 3 was trained) integrates it from noise at sigma 1 to the image at sigma 0. Its text
conditioning: CLIP-L's and CLIP-G's penultimate hidden states side by side, zero-padded to T5's
width, then T5's sequence after them (77 + 256 tokens); the pooled vector is CLIP-L's pooled
output then CLIP-G's projected one. Without T5, zeros stand in for T5's part, as in diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    SD3Transformer2DModel,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerBase, T5EncoderModel

from webui.engine.request import MaskedContent
from webui.engine.steps import StepHook, StepInfo
from webui.model_manager.sd3.build import SD3Components
from webui.model_manager.t5_tokenizer import T5_MAX_LENGTH

CLIP_LENGTH = 77
FLOW_SAMPLERS = ("Euler", "Heun", "DPM++ 2M", "UniPC")
# The CLIP hidden state SD 3 conditions on: the penultimate layer's.
CLIP_HIDDEN_LAYER = -2


@dataclass(frozen=True)
class SkipLayerGuidance:
    """Skip-layer guidance (SD 3.5 Medium's recommended extra): during the `start`..`stop` part of
    the steps, a pass of the positive prompt without the transformer blocks `layers` pushes the
    guided velocity away from it by `scale`. Stability suggests layers 7, 8, 9 for Medium."""

    layers: tuple[int, ...] = (7, 8, 9)
    scale: float = 2.8
    start: float = 0.01
    stop: float = 0.2

    def applies(self, index: int, steps: int) -> bool:
        return steps * self.start < index < steps * self.stop


@dataclass(frozen=True)
class FlowConditioning:
    """One batch of prompts as SD 3's transformer takes them."""

    embeds: torch.Tensor  # (batch, 77 + T5 tokens, T5 width)
    pooled: torch.Tensor  # (batch, CLIP-L width + CLIP-G width)


def encode_clip(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    encoder: CLIPTextModelWithProjection,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden states, projected pooled output) of one CLIP for `texts`. `device`:
    where the encoder runs (an offloaded one's weights wait on the host until its hook runs)."""
    ids = tokenizer(
        list(texts), padding="max_length", max_length=CLIP_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    output = encoder(ids.to(device or encoder.device), output_hidden_states=True)
    return output.hidden_states[CLIP_HIDDEN_LAYER], output.text_embeds


def encode_t5(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    encoder: T5EncoderModel,
    length: int = T5_MAX_LENGTH,
    device: torch.device | None = None,
) -> torch.Tensor:
    """T5's last hidden states for `texts`, padded or cut to `length` tokens (`</s>` included)."""
    ids = tokenizer(
        list(texts),
        padding="max_length",
        max_length=length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    return encoder(ids.to(device or encoder.device))[0]


def encode_prompts(
    components: SD3Components, texts: Sequence[str], t5_length: int = T5_MAX_LENGTH
) -> FlowConditioning:
    """SD 3's conditioning for `texts` from CLIP-L, CLIP-G and (when loaded) T5."""
    device = components.device
    clip_l = encode_clip(texts, components.tokenizer_l, components.clip_l, device)
    clip_g = encode_clip(texts, components.tokenizer_g, components.clip_g, device)
    t5 = None
    if components.t5 is not None and components.tokenizer_t5 is not None:
        t5 = encode_t5(texts, components.tokenizer_t5, components.t5, t5_length, device)
    return join_conditioning(components, clip_l, clip_g, t5, t5_length)


def join_conditioning(
    components: SD3Components,
    clip_l: tuple[torch.Tensor, torch.Tensor],
    clip_g: tuple[torch.Tensor, torch.Tensor],
    t5: torch.Tensor | None,
    t5_length: int = T5_MAX_LENGTH,
) -> FlowConditioning:
    """The transformer's context from each CLIP's (hidden states, pooled) and T5's hidden states
    (None without T5: zeros in its place): both CLIPs side by side, padded to T5's width, then
    T5's sequence; pooled: both CLIPs'."""
    (hidden_l, pooled_l), (hidden_g, pooled_g) = clip_l, clip_g
    dtype = components.clip_l.dtype
    clip = torch.cat([hidden_l, hidden_g], dim=-1).to(dtype)
    width = components.spec.joint_width
    if t5 is None:
        t5 = torch.zeros((clip.shape[0], t5_length, width), device=clip.device, dtype=dtype)
    else:
        assert components.t5 is not None
        t5 = t5.to(components.t5.dtype)
    clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
    embeds = torch.cat([clip, t5.to(clip.dtype)], dim=-2)
    return FlowConditioning(embeds, torch.cat([pooled_l, pooled_g], dim=-1))


def make_flow_scheduler(scheduler_config: Mapping[str, Any], sampler: str = "Euler") -> SchedulerMixin:
    """A flow-matching sampler by its A1111 name, with the model's shift (3 for SD 3.x).

    diffusers' flow samplers: its flow-matching Euler and Heun, and DPM++ 2M and UniPC on flow
    sigmas. The others (ancestral, SDE, LMS, DDIM, PLMS...) assume a noise-predicting model on a
    variance-preserving schedule, so they are refused by name."""
    steps, shift = int(scheduler_config["num_train_timesteps"]), float(scheduler_config["shift"])
    if sampler == "Euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=steps, shift=shift)
    if sampler == "Heun":
        return FlowMatchHeunDiscreteScheduler(num_train_timesteps=steps, shift=shift)
    solvers = {"DPM++ 2M": DPMSolverMultistepScheduler, "UniPC": UniPCMultistepScheduler}
    if sampler in solvers:
        return solvers[sampler](
            num_train_timesteps=steps,
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            flow_shift=shift,
        )
    raise ValueError(
        f"sampler {sampler!r} does not fit flow matching (SD 3 models); "
        f"choose one of {', '.join(FLOW_SAMPLERS)}"
    )


def initial_noise(
    components: SD3Components, batch: int, width: int, height: int, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian latents drawn on the generator's device (a CPU generator gives the same noise on
    any accelerator), in the transformer's dtype, then moved to the model's device."""
    scale = check_size(components, width, height)
    shape = (batch, components.transformer.config.in_channels, height // scale, width // scale)
    noise = torch.randn(
        shape, generator=generator, device=generator.device, dtype=components.transformer.dtype
    )
    return noise.to(components.device)


def check_size(components: SD3Components, width: int, height: int) -> int:
    """The VAE's scale; ValueError for a size the transformer's patch grid or position table cannot take."""
    scale = 2 ** (len(components.vae.config.block_out_channels) - 1)
    config = components.transformer.config
    step = scale * config.patch_size
    largest = step * config.pos_embed_max_size
    if width % step or height % step:
        raise ValueError(f"width and height must be multiples of {step} for SD 3 (got {width}x{height})")
    if max(width, height) > largest:
        raise ValueError(f"SD 3 models of this kind draw at most {largest} px a side (got {width}x{height})")
    return scale


def flow_timesteps(
    scheduler: SchedulerMixin, steps: int, device: torch.device, strength: float = 1.0
) -> torch.Tensor:
    """The timesteps to run: all `steps` of them, or for img2img the last `strength` part
    (diffusers' rule: `int(steps - steps * strength)` steps are skipped)."""
    scheduler.set_timesteps(steps, device=device)
    skipped = int(max(steps - min(steps * strength, steps), 0))
    if skipped >= steps:
        raise ValueError(f"denoising strength {strength} leaves no step of {steps} to run")
    start = skipped * scheduler.order
    scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def check_skip_layers(components: SD3Components, skip_layers: SkipLayerGuidance | None) -> None:
    """ValueError naming block numbers the transformer does not have."""
    if skip_layers is None:
        return
    depth = components.transformer.config.num_layers
    wrong = [layer for layer in skip_layers.layers if not 0 <= layer < depth]
    if wrong or not skip_layers.layers:
        raise ValueError(
            f"skip-layer guidance layers must be among 0..{depth - 1} of this model (got {wrong or 'none'})"
        )


def denoise(
    transformer: SD3Transformer2DModel,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    positive: FlowConditioning,
    negative: FlowConditioning | None,
    *,
    guidance_scale: float,
    skip_layers: SkipLayerGuidance | None = None,
    known: KnownArea | None = None,
    step_hook: StepHook | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Integrate `latents` along the flow over `timesteps` (from `flow_timesteps`).

    Classifier-free guidance when `negative` is given and `guidance_scale` > 1: one batched pass
    of (negative, positive), plus skip-layer guidance's pass when asked. `step_hook` sees each
    step's latents and the clean-latent estimate (latents - sigma * velocity); `should_stop`
    returning True ends the loop early."""
    guided = negative is not None and guidance_scale > 1
    if guided:
        embeds = torch.cat([negative.embeds, positive.embeds])
        pooled = torch.cat([negative.pooled, positive.pooled])
    else:
        embeds, pooled = positive.embeds, positive.pooled
    planned = -(-len(timesteps) // scheduler.order)  # Heun's timesteps count each step twice
    for index, timestep in enumerate(timesteps):
        if should_stop is not None and should_stop():
            break
        model_input = torch.cat([latents] * 2) if guided else latents
        velocity = transformer(
            hidden_states=model_input,
            timestep=timestep.expand(model_input.shape[0]),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if guided:
            uncond, cond = velocity.chunk(2)
            velocity = uncond + guidance_scale * (cond - uncond)
            if skip_layers is not None and skip_layers.applies(index, planned):
                skipped = transformer(
                    hidden_states=latents,
                    timestep=timestep.expand(latents.shape[0]),
                    encoder_hidden_states=positive.embeds,
                    pooled_projections=positive.pooled,
                    return_dict=False,
                    skip_layers=list(skip_layers.layers),
                )[0]
                velocity = velocity + (cond - skipped) * skip_layers.scale
        position = scheduler.step_index if scheduler.step_index is not None else scheduler.begin_index
        denoised = latents - scheduler.sigmas[position].to(latents.device) * velocity
        latents = scheduler.step(velocity, timestep, latents, return_dict=False)[0]
        if known is not None:
            latents = _keep_known(scheduler, known, latents, timesteps, index)
        if step_hook is not None:
            step_hook(StepInfo(index + 1, len(timesteps), latents, denoised, batch_index=0))
    return latents


def image_to_latents(
    vae: AutoencoderKL,
    images: Sequence[Image.Image],
    generator: torch.Generator,
    device: torch.device | None = None,
) -> torch.Tensor:
    """RGB pictures (already at the generation size) to SD 3's shifted and scaled latents,
    sampled from the VAE's posterior with `generator` (as diffusers' img2img does).

    `device`: where the VAE runs; under an offload mode its weights may still be on the host
    until its hooks bring them, so its own `device` would be the wrong place for the input."""
    pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2) * 2.0 - 1.0
    posterior = vae.encode(batch.to(device=device or vae.device, dtype=vae.dtype)).latent_dist
    return (posterior.sample(generator) - vae.config.shift_factor) * vae.config.scaling_factor


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> list[Image.Image]:
    """SD 3's latents (scaled and shifted) to RGB pictures."""
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    pixels = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    return [Image.fromarray(picture) for picture in (pixels * 255).round().astype("uint8")]


@dataclass(frozen=True)
class KnownArea:
    """Inpainting on a 16-channel transformer: outside `mask` (1 = repaint, at latent size) the
    latents are reset after each step to the init image's latents noised to the next step's
    level, and to the init latents themselves after the last (as diffusers' SD 3 inpainting)."""

    clean: torch.Tensor
    noise: torch.Tensor
    mask: torch.Tensor


def latent_mask(mask: Image.Image, latents: torch.Tensor) -> torch.Tensor:
    """An L mask (255 = repaint) at the picture's size to 0/1 at the latents' size, as the UNet
    path does (bilinear, then rounded)."""
    pixels = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
    small = torch.nn.functional.interpolate(pixels, size=latents.shape[2:], mode="bilinear").round()
    return small.to(latents.device, latents.dtype)


def sample(
    components: SD3Components,
    positive: FlowConditioning,
    negative: FlowConditioning | None,
    *,
    width: int,
    height: int,
    steps: int,
    guidance_scale: float,
    generator: torch.Generator,
    sampler: str = "Euler",
    strength: float = 1.0,
    init_latents: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    masked_content: MaskedContent = MaskedContent.ORIGINAL,
    skip_layers: SkipLayerGuidance | None = None,
    step_hook: StepHook | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """One pass of the flow: from noise, or from `init_latents` entered at `strength`, keeping
    the area outside `mask` (0/1 at latent size, 1 = repaint) the init's. The masked area starts
    from the init (ORIGINAL), pure noise (LATENT_NOISE) or zeros (LATENT_NOTHING); FILL is done
    on the pixels before encoding. Returns the final latents."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    scheduler = make_flow_scheduler(components.spec.scheduler_config, sampler)
    check_size(components, width, height)
    check_skip_layers(components, skip_layers)
    known = None
    if init_latents is None:
        latents = initial_noise(components, positive.embeds.shape[0], width, height, generator)
        timesteps = flow_timesteps(scheduler, steps, latents.device)
    else:
        if not 0 < strength <= 1:
            raise ValueError(f"denoising strength must be in (0, 1], got {strength}")
        clean = init_latents.to(components.device, components.transformer.dtype)
        timesteps = flow_timesteps(scheduler, steps, clean.device, strength)
        noise = torch.randn(clean.shape, generator=generator, device=generator.device, dtype=clean.dtype)
        noise = noise.to(clean.device)
        start = clean
        if mask is not None:
            known = KnownArea(clean, noise, mask)
            if masked_content is MaskedContent.LATENT_NOISE:
                start = clean * (1 - mask) + noise * mask
            elif masked_content is MaskedContent.LATENT_NOTHING:
                start = clean * (1 - mask)
        latents = _noised(scheduler, start, noise, timesteps[:1].repeat(len(clean)))
    return denoise(
        components.transformer,
        scheduler,
        latents,
        timesteps,
        positive,
        negative,
        guidance_scale=guidance_scale,
        skip_layers=skip_layers,
        known=known,
        step_hook=step_hook,
        should_stop=should_stop,
    )


def pass_length(scheduler_config: Mapping[str, Any], sampler: str, steps: int, strength: float = 1.0) -> int:
    """How many steps `sample` reports for a pass (Heun's count its two evaluations apart)."""
    scheduler = make_flow_scheduler(scheduler_config, sampler)
    return len(flow_timesteps(scheduler, steps, torch.device("cpu"), strength))


@torch.inference_mode()
def txt2img(
    components: SD3Components,
    prompts: Sequence[str],
    negative_prompts: Sequence[str] | None = None,
    *,
    width: int = 1024,
    height: int = 1024,
    steps: int = 28,
    guidance_scale: float = 5.0,
    generator: torch.Generator,
    sampler: str = "Euler",
    t5_length: int = T5_MAX_LENGTH,
    skip_layers: SkipLayerGuidance | None = None,
    step_hook: StepHook | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Image.Image]:
    """Pictures for `prompts` (one each), with SD 3.5's defaults: 28 steps, CFG 5, Euler.

    ValueError (before any work) for a sampler that does not fit flow matching, a size the
    latent grid cannot take, or prompt lists of different lengths."""
    negatives = _negatives(prompts, negative_prompts)
    if steps < 1:
        raise ValueError("steps must be at least 1")
    make_flow_scheduler(components.spec.scheduler_config, sampler)
    check_size(components, width, height)
    check_skip_layers(components, skip_layers)
    positive = encode_prompts(components, prompts, t5_length)
    negative = encode_prompts(components, negatives, t5_length) if guidance_scale > 1 else None
    latents = sample(
        components,
        positive,
        negative,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        sampler=sampler,
        skip_layers=skip_layers,
        step_hook=step_hook,
        should_stop=should_stop,
    )
    return decode(components.vae, latents)


@torch.inference_mode()
def img2img(
    components: SD3Components,
    prompts: Sequence[str],
    init_images: Sequence[Image.Image],
    negative_prompts: Sequence[str] | None = None,
    *,
    strength: float = 0.6,
    steps: int = 28,
    guidance_scale: float = 5.0,
    generator: torch.Generator,
    sampler: str = "Euler",
    t5_length: int = T5_MAX_LENGTH,
    masks: Sequence[Image.Image] | None = None,
    masked_content: MaskedContent = MaskedContent.ORIGINAL,
    skip_layers: SkipLayerGuidance | None = None,
    step_hook: StepHook | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Image.Image]:
    """Pictures for `prompts` starting from `init_images` (one each, all of one size), the flow
    entered at `strength` (1: from pure noise, as txt2img). The flow's img2img mixes noise in
    linearly: latent = sigma * noise + (1 - sigma) * image. With `masks` (L, 255 = repaint, one
    per image) it inpaints: the unmasked area follows the init image's noised latents."""
    negatives = _negatives(prompts, negative_prompts)
    if len(init_images) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(init_images)} init images")
    if masks is not None and len(masks) != len(init_images):
        raise ValueError(f"{len(init_images)} init images but {len(masks)} masks")
    if not 0 < strength <= 1:
        raise ValueError(f"denoising strength must be in (0, 1], got {strength}")
    width, height = init_images[0].size
    if any(image.size != (width, height) for image in init_images):
        raise ValueError("the init images must all have one size")
    if masks is not None and any(one.size != (width, height) for one in masks):
        raise ValueError("each mask must have its init image's size")
    check_size(components, width, height)
    pass_length(components.spec.scheduler_config, sampler, steps, strength)  # fail before any work
    positive = encode_prompts(components, prompts, t5_length)
    negative = encode_prompts(components, negatives, t5_length) if guidance_scale > 1 else None
    clean = image_to_latents(components.vae, init_images, generator, components.device)
    clean = clean.to(components.transformer.dtype)
    mask = None
    if masks is not None:
        mask = torch.cat([latent_mask(one, clean) for one in masks])
    latents = sample(
        components,
        positive,
        negative,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        sampler=sampler,
        strength=strength,
        init_latents=clean,
        mask=mask,
        masked_content=masked_content,
        skip_layers=skip_layers,
        step_hook=step_hook,
        should_stop=should_stop,
    )
    return decode(components.vae, latents)


def _keep_known(
    scheduler: SchedulerMixin, known: KnownArea, latents: torch.Tensor, timesteps: torch.Tensor, index: int
) -> torch.Tensor:
    if index + 1 < len(timesteps):
        target = _noised(
            scheduler, known.clean, known.noise, timesteps[index + 1 : index + 2].repeat(len(latents))
        )
    else:
        target = known.clean
    return target * (1 - known.mask) + latents * known.mask


def _noised(
    scheduler: SchedulerMixin, clean: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor
) -> torch.Tensor:
    """The flow's forward process at `timestep`: sigma * noise + (1 - sigma) * clean. The
    flow-matching schedulers call it scale_noise; the solvers on flow sigmas add_noise."""
    if hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(clean, timestep, noise)
    return scheduler.add_noise(clean, noise, timestep)


def _negatives(prompts: Sequence[str], negative_prompts: Sequence[str] | None) -> list[str]:
    negatives = list(negative_prompts) if negative_prompts is not None else [""] * len(prompts)
    if len(negatives) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    return negatives
