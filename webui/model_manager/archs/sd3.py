"""Stable Diffusion 3.5 (Medium, Large, Large Turbo): an MMDiT on flow matching, a 16-channel
VAE, CLIP-L + CLIP-G + optional T5-XXL. Its files are read by model_manager/sd3/."""

from webui.model_manager.archs.base import (
    Arch,
    Architecture,
    DenoisingFamily,
    LatentFormat,
    TextConditioning,
)

SD3_LATENTS = LatentFormat(
    channels=16,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    preview_factors=(),  # none known: a map is fitted to each model's VAE (engine/preview_fit.py)
    preview_bias=(0.0, 0.0, 0.0),
    taesd_stem="taesd3",
)

SD3 = Architecture(
    arch=Arch.SD3,
    family=DenoisingFamily.FLOW,
    latent=SD3_LATENTS,
    text_encoders=(),
    conditioning=TextConditioning.CLIP_PAIR_AND_T5,
    size_conditioning=False,
    native_size=1024,
    v_prediction_native_size=1024,
    unet_heads=None,
    transformer_depth_per_level=False,
    upcast_attention_for_v=False,
    ays_table="StableDiffusionSigmas",
    lora_loader="sd3",
    lora_key_prefixes=("transformer.", "lora_unet_joint_blocks_"),
    context_width=4096,
)
