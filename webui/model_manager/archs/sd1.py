"""Stable Diffusion 1.x: OpenAI CLIP ViT-L/14, a UNet with 8 heads per block, 512 pixels."""

from webui.model_manager.archs.base import (
    Arch,
    Architecture,
    DenoisingFamily,
    LatentFormat,
    TextConditioning,
    TextEncoderSlot,
)

# SD 1.x and 2.x share their VAE, so their latents look alike (factors: DESIGN.md section 7).
SD_LATENTS = LatentFormat(
    channels=4,
    scaling_factor=0.18215,
    shift_factor=0.0,
    preview_factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    preview_bias=(0.0, 0.0, 0.0),
    taesd_stem="taesd",
)

SD1 = Architecture(
    arch=Arch.SD1,
    family=DenoisingFamily.UNET,
    latent=SD_LATENTS,
    text_encoders=(
        TextEncoderSlot(
            prefix="cond_stage_model.transformer.",
            layout="hf",
            with_projection=False,
            drop_last_layer=False,
            pad_with_exclamation=False,
            embedding_key="clip_l",
        ),
    ),
    conditioning=TextConditioning.LAST_LAYER,
    size_conditioning=False,
    native_size=512,
    v_prediction_native_size=512,
    unet_heads=8,
    transformer_depth_per_level=False,
    upcast_attention_for_v=False,
    ays_table="StableDiffusionSigmas",
    lora_loader="sd",
    context_width=768,
)
