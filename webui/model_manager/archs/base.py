"""What an architecture is, as data: the engine and the loader read these fields instead of
asking "is this SDXL?" in a dozen places. One instance per family lives in its own module
(sd1.py, sd2.py, sdxl.py) and is listed in the registry (`__init__.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Arch(str, Enum):
    """The name an architecture is stored under (model facts, infotext, APIs): keep the values."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SD3 = "sd3"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {Arch.SD1: "SD 1.x", Arch.SD2: "SD 2.x", Arch.SDXL: "SDXL", Arch.SD3: "SD 3.5"}


class DenoisingFamily(str, Enum):
    """Which loop the engine runs: each family has its own (engine/families/)."""

    # A UNet predicting noise (epsilon) or velocity on the discrete 1000-step DDPM schedule.
    UNET = "unet"
    # A transformer predicting the flow's velocity on continuous sigmas (SD 3).
    FLOW = "flow"


class TextConditioning(str, Enum):
    """How the encoders' outputs become the denoiser's context."""

    # The last layer after its final norm; "Clip skip" N takes layer -N through that norm (SD 1/2).
    LAST_LAYER = "last_layer"
    # Each encoder's penultimate layer without the norm, side by side, plus the last encoder's
    # pooled projection (SDXL).
    PENULTIMATE_AND_POOLED = "penultimate_and_pooled"
    # CLIP-L and CLIP-G penultimate layers side by side, padded to T5's width and followed by
    # T5's sequence; pooled: both CLIPs' (SD 3).
    CLIP_PAIR_AND_T5 = "clip_pair_and_t5"


@dataclass(frozen=True)
class LatentFormat:
    """How the VAE's latents look: what noise, previews and scaling need."""

    channels: int
    scaling_factor: float  # latents are VAE output times this
    shift_factor: float  # ... after subtracting this
    # Rows: latent channels; columns: R, G, B (linear previews, see DESIGN.md section 7).
    # Empty: none is known; linear previews are fitted to each model's VAE (engine/preview_fit.py).
    preview_factors: tuple[tuple[float, float, float], ...]
    preview_bias: tuple[float, float, float]
    taesd_stem: str  # the TAESD decoder's file stem in models/VAE-approx


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of an architecture as single files store it."""

    prefix: str  # its keys' prefix in a single-file checkpoint
    layout: str  # "hf" (OpenAI CLIP in transformers' layout) or "openclip"
    with_projection: bool  # the model keeps its text projection (pooled output)
    drop_last_layer: bool  # SD2 conditions on the penultimate OpenCLIP layer
    pad_with_exclamation: bool  # OpenCLIP tokenizers pad with "!" (id 0)
    embedding_key: str  # the key of this encoder's table in multi-table embedding files

    @property
    def activation(self) -> str:
        """The MLP activation of the family's CLIP: tells SD1 from SD2 in a diffusers folder."""
        return "quick_gelu" if self.layout == "hf" else "gelu"


@dataclass(frozen=True)
class Architecture:
    arch: Arch
    family: DenoisingFamily
    latent: LatentFormat
    text_encoders: tuple[TextEncoderSlot, ...]
    conditioning: TextConditioning
    # SDXL's micro-conditioning (original size, crop, target size) beside the pooled text.
    size_conditioning: bool
    native_size: int  # pixels per side the model was trained at
    v_prediction_native_size: int  # ... for its v-prediction variant (SD 2.x 768)
    # UNet attention: a fixed head count per block (SD1), or None for 64-wide heads.
    unet_heads: int | None
    transformer_depth_per_level: bool  # transformer depth varies by level (SDXL)
    upcast_attention_for_v: bool  # v-prediction models overflow fp16 attention unless upcast
    ays_table: str  # the row of diffusers' AysSchedules for "Align Your Steps"
    lora_loader: str  # "sd", "sdxl" or "sd3": which of diffusers' LoRA loader mixins reads its LoRAs
    # Cross-attention context width of the released models (a LoRA's width tells its arch).
    context_width: int
    # Keys in LoRA files that only this architecture has (kohya and diffusers names).
    lora_key_prefixes: tuple[str, ...] = ()
    # What to say about a file that has this architecture's last encoder but not all of them.
    incomplete_message: str = ""

    def sample_size(self, prediction_type: str) -> int:
        """The UNet's latent size in its config: its native pixel size over the VAE's factor 8."""
        pixels = self.v_prediction_native_size if prediction_type == "v_prediction" else self.native_size
        return pixels // 8

    @property
    def label(self) -> str:
        return self.arch.label

    @property
    def encoders_in_checkpoint_layout(self) -> bool:
        """Whether the LDM single-file reader finds it by its text encoders (SD 1/2/XL); SD 3
        files are read by their own module (model_manager/sd3/)."""
        return bool(self.text_encoders)

    @property
    def identifying_prefix(self) -> str:
        """The key prefix that names this architecture (its last text encoder's)."""
        return self.text_encoders[-1].prefix
