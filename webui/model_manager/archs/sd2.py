"""Stable Diffusion 2.x: OpenCLIP ViT-H/14 read at its penultimate layer; 512 (eps) or 768 (v) pixels."""

from webui.model_manager.archs.base import (
    Arch,
    Architecture,
    DenoisingFamily,
    TextConditioning,
    TextEncoderSlot,
)
from webui.model_manager.archs.sd1 import SD_LATENTS

SD2 = Architecture(
    arch=Arch.SD2,
    family=DenoisingFamily.UNET,
    latent=SD_LATENTS,
    text_encoders=(
        TextEncoderSlot(
            prefix="cond_stage_model.model.",
            layout="openclip",
            with_projection=False,
            drop_last_layer=True,
            pad_with_exclamation=True,
            embedding_key="clip_h",
        ),
    ),
    conditioning=TextConditioning.LAST_LAYER,
    size_conditioning=False,
    native_size=512,
    v_prediction_native_size=768,
    unet_heads=None,
    transformer_depth_per_level=False,
    # SD2-768 attention overflows fp16 unless upcast, as its reference config says.
    upcast_attention_for_v=True,
    ays_table="StableDiffusionSigmas",
    lora_loader="sd",
    context_width=1024,
)
