"""Few-step models and LoRAs (LCM, Turbo, Lightning, Hyper-SD, DMD2) and the settings they need.

These are distilled to make a picture in 1-8 steps without classifier-free guidance, which is
the largest speed-up a CPU user can get; with the usual 20-30 steps at CFG 7 they burn the
image. Nothing in their tensors says so, but their names and metadata do (their authors name
every release this way), so a hint is read from those, and the page and the API suggest the
settings of each family's model card.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from webui.model_manager.archs import DenoisingFamily

# Metadata keys whose text may name the family: ModelSpec's and kohya's training scripts'.
_TEXT_KEYS = ("modelspec.title", "modelspec.description", "ss_output_name", "ss_training_comment")
_STEPS = re.compile(r"\b(\d+)\s?steps?\b")


@dataclass(frozen=True)
class FewStepHint:
    family: str  # "LCM", "Turbo", "Lightning", "Hyper-SD", "DMD2"
    steps: int
    cfg_scale: float  # 1: guidance off, so the negative prompt's UNet pass is skipped
    sampler: str  # A1111 sampler and schedule-type names (webui.engine.samplers)
    scheduler: str

    @property
    def summary(self) -> str:
        """For lists and notes: "Lightning 4-step: Euler, SGM Uniform, 4 steps, CFG 1"."""
        return (
            f"{self.family} {self.steps}-step: {self.sampler}, {self.scheduler}, "
            f"{self.steps} steps, CFG {self.cfg_scale:g}"
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object] | None) -> FewStepHint | None:
        if not values:
            return None
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError:  # facts cached by another version
            return None


def few_step_hint(
    file_name: str,
    metadata: Mapping[str, str] | None = None,
    family: DenoisingFamily = DenoisingFamily.UNET,
) -> FewStepHint | None:
    """The family and settings a file's name or metadata announce; None for ordinary models.

    On flow matching (SD 3.5 Large Turbo: 4 steps without guidance, its model card says) the
    sampler is the flow's Euler: the UNet samplers named for the others do not fit it."""
    hint = _unet_hint(file_name, metadata)
    if hint is not None and family is DenoisingFamily.FLOW:
        return replace(hint, sampler="Euler", scheduler="Automatic")
    return hint


def _unet_hint(file_name: str, metadata: Mapping[str, str] | None) -> FewStepHint | None:
    text = " ".join([file_name, *((metadata or {}).get(key, "") for key in _TEXT_KEYS)]).lower()
    text = text.replace("_", " ").replace("-", " ")
    steps = _steps(text)
    if re.search(r"\blcm\b|latent consistency", text):
        return FewStepHint("LCM", steps or 4, 1.0, "LCM", "Automatic")
    if "dmd2" in text:
        return FewStepHint("DMD2", steps or 4, 1.0, "LCM", "Automatic")
    if "lightning" in text:
        return FewStepHint("Lightning", steps or 4, 1.0, "Euler", "SGM Uniform")
    if re.search(r"\bhyper\s?sd(xl|15)?\b", text):
        # Hyper-SD's "CFG" releases keep guidance (its card: 5-8); the others work without it.
        cfg = 6.0 if re.search(r"\bcfg\b", text) else 1.0
        return FewStepHint("Hyper-SD", steps or 8, cfg, "Euler", "SGM Uniform")
    if re.search(r"\bturbo\b", text):
        return FewStepHint("Turbo", steps or 4, 1.0, "Euler a", "Automatic")
    return None


def _steps(text: str) -> int | None:
    found = _STEPS.search(text)
    if found is None:
        return None
    steps = int(found.group(1))
    return steps if 1 <= steps <= 16 else None


def settings_warning(hint: FewStepHint, name: str, steps: int, cfg_scale: float) -> str | None:
    """A note when a job runs a few-step model far from its settings; None when they fit."""
    if steps <= 2 * hint.steps and cfg_scale <= max(2.0, hint.cfg_scale + 2.0):
        return None
    return (
        f"{name} is a {hint.family} model made for few steps without strong guidance; "
        f"this job used {steps} steps at CFG {cfg_scale:g}. Try {hint.summary.split(': ', 1)[1]}."
    )
