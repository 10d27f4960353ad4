"""Ceilings an admin sets on what one request may ask for (`--max-size`, `--max-steps`, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from webui.engine.request import (
    MAX_BATCH,
    MAX_BATCH_COUNT,
    MAX_SIDE,
    MAX_STEPS,
    GenerationError,
    GenerationRequest,
)
from webui.styles import StyleBook, StyleError


class LimitError(GenerationError):
    """A request over an admin's limit; `limit` names the flag that sets it."""

    def __init__(self, message: str, field: str, limit: str) -> None:
        super().__init__(message, field)
        self.limit = limit


_FLAGS = {
    "max_pixels": "--max-size",
    "max_batch_size": "--max-batch-size",
    "max_batch_count": "--max-batch-count",
    "max_steps": "--max-steps",
    "max_prompt_chars": "--max-prompt-chars",
}
# The engine has no prompt ceiling of its own; this one only keeps `engine_maxima` finite.
MAX_PROMPT_CHARS = 10_000_000


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 2048 * 2048  # width x height of one image
    max_batch_size: int = 8
    max_batch_count: int = 100
    max_steps: int = 150
    max_body_mb: float = 64.0  # enforced on every HTTP request body
    max_queued_per_user: int = 100
    max_prompt_chars: int = 10_000  # each prompt, styles applied; a long one is slow and goes into every PNG

    def __post_init__(self) -> None:
        """A limit above what the engine can do would promise what it then refuses."""
        for name, value, ceiling in (
            ("max_pixels", self.max_pixels, MAX_SIDE * MAX_SIDE),
            ("max_batch_size", self.max_batch_size, MAX_BATCH),
            ("max_batch_count", self.max_batch_count, MAX_BATCH_COUNT),
            ("max_steps", self.max_steps, MAX_STEPS),
            ("max_prompt_chars", self.max_prompt_chars, MAX_PROMPT_CHARS),
        ):
            if not 1 <= value <= ceiling:
                raise ValueError(
                    f"{name} ({_FLAGS[name]}) must be from 1 to {ceiling} (what the engine can do), "
                    f"got {value}"
                )
        if self.max_body_mb <= 0 or self.max_queued_per_user < 1:
            raise ValueError("max_body_mb and max_queued_per_user must be positive")

    @classmethod
    def engine_maxima(cls) -> Limits:
        """No ceiling below what the engine itself can do (one's own machine, the CLI)."""
        return cls(
            max_pixels=MAX_SIDE * MAX_SIDE,
            max_batch_size=MAX_BATCH,
            max_batch_count=MAX_BATCH_COUNT,
            max_steps=MAX_STEPS,
            max_prompt_chars=MAX_PROMPT_CHARS,
        )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_script_images(self) -> int:
        """All the images one script's job may make: as many as the largest plain job."""
        return self.max_batch_size * self.max_batch_count

    def check(self, request: GenerationRequest, styles: StyleBook | None = None) -> None:
        """Raise LimitError (or GenerationError for a value that cannot work at all); `styles`
        lets the prompt ceiling apply to the prompts as the styles expand them."""
        request.validate()  # first: the size maths below needs finite numbers
        self._check_prompts(request, styles)
        pixels = request.width * request.height
        if pixels > self.max_pixels:
            raise LimitError(
                f"{request.width}x{request.height} is {pixels} pixels, over this server's limit of "
                f"{self.max_pixels} pixels per image (--max-size)",
                "width" if request.width >= request.height else "height",
                "--max-size",
            )
        if request.enable_hr:
            width, height = request.hr_size
            if width * height > self.max_pixels:
                raise LimitError(
                    f"hires fix would make {width}x{height}, {width * height} pixels, over this server's "
                    f"limit of {self.max_pixels} pixels per image (--max-size)",
                    "hr_scale",
                    "--max-size",
                )
            if request.hr_second_pass_steps > self.max_steps:
                raise LimitError(
                    f"hr_second_pass_steps {request.hr_second_pass_steps} is over this server's limit of "
                    f"{self.max_steps} (--max-steps)",
                    "hr_second_pass_steps",
                    "--max-steps",
                )
        for field, value, ceiling, flag in (
            ("batch_size", request.batch_size, self.max_batch_size, "--max-batch-size"),
            ("n_iter", request.n_iter, self.max_batch_count, "--max-batch-count"),
            ("steps", request.steps, self.max_steps, "--max-steps"),
        ):
            if value > ceiling:
                raise LimitError(
                    f"{field} {value} is over this server's limit of {ceiling} ({flag})", field, flag
                )

    def _check_prompts(self, request: GenerationRequest, styles: StyleBook | None) -> None:
        texts = [
            ("prompt", request.prompt),
            ("negative_prompt", request.negative_prompt),
            ("hr_prompt", request.hr_prompt),
            ("hr_negative_prompt", request.hr_negative_prompt),
        ]
        if styles is not None and request.styles:
            try:
                expanded = styles.apply(request.styles, request.prompt, request.negative_prompt)
            except StyleError:
                expanded = None  # an unknown style: the studio's preflight names it
            if expanded is not None:
                texts += [("styles", expanded[0]), ("styles", expanded[1])]
        for field, text in texts:
            if len(text) > self.max_prompt_chars:
                applied = " with its styles applied" if field == "styles" else ""
                raise LimitError(
                    f"{field}{applied} is {len(text)} characters, over this server's limit of "
                    f"{self.max_prompt_chars} (--max-prompt-chars)",
                    field,
                    "--max-prompt-chars",
                )


class ScriptBudget:
    """Checks each generation a script's job makes against the limits, and counts its images.

    Call it once per planned generation (before the job is queued) or per real one (while it
    runs): a script must not get round the limits a plain request is held to."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.images = 0

    def __call__(self, request: GenerationRequest, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        try:
            self.limits.check(request)
        except LimitError as error:
            raise LimitError(f"{prefix}{error}", "script_args", error.limit) from None
        except GenerationError as error:  # a value no request may have; the script's arguments made it
            raise GenerationError(f"{prefix}{error}", "script_args") from None
        self.images += request.batch_size * request.n_iter
        if self.images > self.limits.max_script_images:
            raise LimitError(
                f"{prefix}the script would make more than {self.limits.max_script_images} images, "
                "the most one job may make on this server (--max-batch-size x --max-batch-count)",
                "script_args",
                "--max-batch-count",
            )


def parse_size(text: str) -> int:
    """`2048x2048` or a plain pixel count -> pixels (for `--max-size`)."""
    cleaned = text.lower().replace(" ", "")
    try:
        if "x" in cleaned:
            width, height = cleaned.split("x", 1)
            pixels = int(width) * int(height)
        else:
            pixels = int(cleaned)
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT such as 2048x2048, got {text!r}") from None
    if pixels <= 0:
        raise ValueError(f"the size must be positive, got {text!r}")
    return pixels
