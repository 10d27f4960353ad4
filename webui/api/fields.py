"""A1111's names for the things a request picks, and for our request's fields in its body."""

from __future__ import annotations

from webui.engine.parameters import declared, declared_parameters
from webui.engine.request import GenerationRequest

# override_settings keys a single request may change; the rest are ignored, as A1111 ignores unknowns.
CHECKPOINT_OPTION = "sd_model_checkpoint"
VAE_OPTION = "sd_vae"
SAVE_OPTION = "samples_save"
_OVERRIDES = "override_settings."


def settings_fields() -> dict[str, str]:
    """Request fields an A1111 body carries as settings, and their override_settings key."""
    return {
        item.name: item.api_name.removeprefix(_OVERRIDES)
        for item in declared_parameters(GenerationRequest)
        if item.api_name.startswith(_OVERRIDES)
    }


CLIP_SKIP_OPTION = settings_fields()["clip_skip"]  # "CLIP_stop_at_last_layers"
RNG_OPTION = settings_fields()["rng"]  # "randn_source": A1111's "Random number generator source"

# Names that are not request fields: what a job picks besides its parameters.
_JOB_CHOICES = {
    "checkpoint": f"override_settings.{CHECKPOINT_OPTION}",
    "vae": f"override_settings.{VAE_OPTION}",
}


def a1111_field(field: str | None) -> str | None:
    """The body field an A1111 client sent for one of our request's fields (its declared `api`)."""
    if not field:
        return None
    if field in _JOB_CHOICES:
        return _JOB_CHOICES[field]
    try:
        return declared(GenerationRequest, field).api_name
    except KeyError:
        return field
