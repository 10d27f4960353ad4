"""A1111's names for the things a request picks, and for our request's fields in its body."""

from __future__ import annotations

# override_settings keys a single request may change; the rest are ignored, as A1111 ignores unknowns.
CHECKPOINT_OPTION = "sd_model_checkpoint"
VAE_OPTION = "sd_vae"
CLIP_SKIP_OPTION = "CLIP_stop_at_last_layers"
SAVE_OPTION = "samples_save"
RNG_OPTION = "randn_source"  # A1111's "Random number generator source": CPU, GPU or NV

# Our request's field names where A1111's body calls the same thing something else.
_A1111_FIELDS = {
    "checkpoint": f"override_settings.{CHECKPOINT_OPTION}",
    "vae": f"override_settings.{VAE_OPTION}",
    "clip_skip": f"override_settings.{CLIP_SKIP_OPTION}",
    "init_image": "init_images.0",
    "more_init_images": "init_images",
    "rng": f"override_settings.{RNG_OPTION}",
    "mask_blur_y": "mask_blur_y",
}


def a1111_field(field: str | None) -> str | None:
    """The body field an A1111 client sent for one of our request's fields."""
    return _A1111_FIELDS.get(field, field) if field else None
