"""SDXL base: CLIP ViT-L and OpenCLIP ViT-bigG side by side, size conditioning, 1024 pixels."""

from webui.model_manager.archs.base import (
    Arch,
    Architecture,
    DenoisingFamily,
    LatentFormat,
    TextConditioning,
    TextEncoderSlot,
)

SDXL_LATENTS = LatentFormat(
    channels=4,
    scaling_factor=0.13025,
    shift_factor=0.0,
    preview_factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    preview_bias=(0.1084, -0.0175, -0.0011),
    taesd_stem="taesdxl",
)

SDXL = Architecture(
    arch=Arch.SDXL,
    family=DenoisingFamily.UNET,
    latent=SDXL_LATENTS,
    text_encoders=(
        TextEncoderSlot(
            prefix="conditioner.embedders.0.transformer.",
            layout="hf",
            with_projection=False,
            drop_last_layer=False,
            pad_with_exclamation=False,
            embedding_key="clip_l",
        ),
        TextEncoderSlot(
            prefix="conditioner.embedders.1.model.",
            layout="openclip",
            with_projection=True,
            drop_last_layer=False,
            pad_with_exclamation=True,
            embedding_key="clip_g",
        ),
    ),
    conditioning=TextConditioning.PENULTIMATE_AND_POOLED,
    size_conditioning=True,
    native_size=1024,
    v_prediction_native_size=1024,
    unet_heads=None,
    transformer_depth_per_level=True,
    upcast_attention_for_v=False,
    ays_table="StableDiffusionXLSigmas",
    lora_loader="sdxl",
    context_width=2048,
    lora_key_prefixes=("lora_te2_", "text_encoder_2."),
    incomplete_message="an SDXL refiner; only SDXL base checkpoints are supported so far",
)
