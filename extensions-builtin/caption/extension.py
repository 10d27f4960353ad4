"""Caption: a strip of text under (or over) each image before it is saved, and optionally a
`.txt` file with the same text beside the saved image.

The text is a template: {prompt}, {negative_prompt}, {seed}, {steps}, {cfg_scale}, {sampler},
{width}, {height}, {model} and {index} are filled in for each image.
"""

from __future__ import annotations

import string
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from webui.extensions.api import (
    AlwaysOnScript,
    ExtensionSetup,
    GenerationError,
    ImageDone,
    ImageSaved,
    ScriptArg,
    parse_infotext,
)

FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg_scale",
    "sampler",
    "width",
    "height",
    "model",
    "index",
)
MARGIN = 6


class Caption(AlwaysOnScript):
    title = "Caption"
    args = (
        ScriptArg("enabled", "Stamp a caption on each image", "bool", False),
        ScriptArg("text", "Caption ({prompt}, {seed}, {steps}, {sampler}, {model}, ...)", "text", "{prompt}"),
        ScriptArg("position", "Position", "choice", "bottom", choices=("bottom", "top")),
        ScriptArg("write_txt", "Also write the caption to a .txt beside the saved image", "bool", False),
    )

    def parse_args(self, values: Any) -> dict[str, Any]:
        args = super().parse_args(values)
        try:  # a template naming an unknown field is the user's mistake: say so before the job runs
            unknown = [
                name
                for _, name, _, _ in string.Formatter().parse(args["text"])
                if name and name not in FIELDS
            ]
        except ValueError as error:
            raise GenerationError(f"Caption: text {args['text']!r}: {error}", "alwayson_scripts") from error
        if unknown:
            raise GenerationError(
                f"Caption: unknown field {{{unknown[0]}}} in the text; use "
                + ", ".join("{" + field + "}" for field in FIELDS),
                "alwayson_scripts",
            )
        return args

    def after_image(self, image: ImageDone, args: Any) -> None:
        if not args["enabled"]:
            return
        text = caption_text(args["text"], image)
        image.image = stamp(image.image, text, args["position"])
        image.params["Caption"] = args["text"]

    def after_save(self, saved: ImageSaved, args: Any) -> None:
        if args["enabled"] and args["write_txt"]:
            text = caption_text(args["text"], saved)
            saved.path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")


def caption_text(template: str, event: ImageDone | ImageSaved) -> str:
    request = event.request
    values = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": event.seed,
        "steps": request.steps,
        "cfg_scale": request.cfg_scale,
        "sampler": request.sampler_name,
        "width": request.width,
        "height": request.height,
        "model": _model(event),
        "index": getattr(event, "index", 0),
    }
    return template.format(**values)


def _model(event: ImageDone | ImageSaved) -> str:
    if isinstance(event, ImageDone):
        return str(event.params.get("Model", ""))
    return parse_infotext(event.infotext).params.get("Model", "")


def stamp(image: Image.Image, text: str, position: str = "bottom") -> Image.Image:
    """`image` with a white strip holding `text` (wrapped to its width) added above or below."""
    font = ImageFont.load_default(size=max(10, image.width // 32))
    measure = ImageDraw.Draw(image)
    lines = _wrap(text, font, measure, image.width - 2 * MARGIN)
    line_height = int(font.size * 1.25)
    strip = Image.new("RGB", (image.width, len(lines) * line_height + 2 * MARGIN), "white")
    draw = ImageDraw.Draw(strip)
    for number, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + number * line_height), line, fill="black", font=font)
    result = Image.new("RGB", (image.width, image.height + strip.height), "white")
    top = position == "top"
    result.paste(strip, (0, 0 if top else image.height))
    result.paste(image.convert("RGB"), (0, strip.height if top else 0))
    return result


def _wrap(text: str, font: Any, draw: ImageDraw.ImageDraw, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def setup(ext: ExtensionSetup) -> None:
    ext.add_alwayson(Caption())
