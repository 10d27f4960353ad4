"""Prompts from file or textbox: one job per line; a line may set request fields with `--name value`."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from webui.engine.request import GenerationError, GenerationRequest
from webui.results import StudioResult
from webui.scripts.args import ScriptArg, read_args
from webui.scripts.base import Planned, ResultParts, ScriptRun, fixed_seed

_TRUE_WORDS = ("true", "yes", "1", "on")
_FALSE_WORDS = ("false", "no", "0", "off")


def _bool(text: str) -> bool:
    word = text.strip().lower()
    if word not in _TRUE_WORDS + _FALSE_WORDS:
        raise ValueError("expected true or false")
    return word in _TRUE_WORDS


# The options a line may give (A1111's names), with their converters. `sd_model` picks a checkpoint.
OPTIONS: dict[str, Callable[[str], Any]] = {
    "prompt": str,
    "negative_prompt": str,
    "seed": int,
    "subseed": int,
    "subseed_strength": float,
    "seed_resize_from_w": int,
    "seed_resize_from_h": int,
    "sampler_name": str,
    "scheduler": str,
    "steps": int,
    "cfg_scale": float,
    "width": int,
    "height": int,
    "batch_size": int,
    "n_iter": int,
    "clip_skip": int,
    "denoising_strength": float,
    "tiling": _bool,
    "sd_model": str,
}
_PROMPT_OPTIONS = ("prompt", "negative_prompt")


@dataclass(frozen=True)
class FileArgs:
    checkbox_iterate: bool = False
    checkbox_iterate_batch: bool = False
    prompt_position: str = "start"
    prompt_txt: str = ""


@dataclass(frozen=True)
class LineJob:
    line_number: int  # 1-based, counting empty lines, as an editor shows it
    options: dict[str, Any]


def parse_line(line: str, line_number: int) -> dict[str, Any]:
    """A plain line is a prompt; a line starting with `--` is options (prompts may run over several words)."""
    if not line.startswith("--"):
        return {"prompt": line}

    def fail(why: str) -> GenerationError:
        return GenerationError(f"Prompts from file: line {line_number}: {why}", "script_args")

    try:
        words = shlex.split(line)
    except ValueError as error:
        raise fail(str(error)) from None
    options: dict[str, Any] = {}
    pos = 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise fail(f"expected an option starting with --, got {word!r}")
        name = word[2:]
        if name not in OPTIONS:
            raise fail(f"unknown option {word!r}; known: {', '.join('--' + o for o in OPTIONS)}")
        if pos + 1 >= len(words) or (name not in _PROMPT_OPTIONS and words[pos + 1].startswith("--")):
            raise fail(f"{word} needs a value")
        pos += 1
        if name in _PROMPT_OPTIONS:  # as A1111: unquoted words up to the next option are the prompt
            taken = [words[pos]]
            pos += 1
            while pos < len(words) and not words[pos].startswith("--"):
                taken.append(words[pos])
                pos += 1
            options[name] = " ".join(taken)
            continue
        try:
            options[name] = OPTIONS[name](words[pos])
        except ValueError:
            raise fail(f"{word} cannot be {words[pos]!r}") from None
        pos += 1
    return options


class PromptsFromFile:
    """A1111's "Prompts from file or textbox".

    Positional script_args: checkbox_iterate (false: "Iterate seed every line"),
    checkbox_iterate_batch (false: "Use same random seed for all lines"), prompt_position
    ("start" or "end": where a line's prompt goes relative to the request's prompt, joined by a
    space; a line alone when the request's prompt is empty), prompt_txt (the lines).

    Empty lines are skipped. A line starting with `--` sets options, e.g. `--prompt "a cat"
    --negative_prompt "blur" --steps 10 --cfg_scale 5 --seed 3 --width 64 --height 64
    --sampler_name "Euler"`; see OPTIONS (`--sd_model` picks the line's checkpoint). Every line
    is read and checked before the first image. With either checkbox a seed of -1 becomes one
    random seed; iterating adds batch_size * n_iter to it after each line. The result holds every
    image of every line, no grid.
    """

    title = "Prompts from file or textbox"
    modes = frozenset({"txt2img", "img2img"})
    args = (
        ScriptArg("checkbox_iterate", "Iterate seed every line", "bool", False),
        ScriptArg("checkbox_iterate_batch", "Use same random seed for all lines", "bool", False),
        ScriptArg("prompt_position", "Insert prompts at the", "choice", "start", ("start", "end")),
        ScriptArg("prompt_txt", "List of prompt inputs", "multiline", ""),
    )

    def parse_args(self, args: Sequence[Any]) -> FileArgs:
        read = read_args(self.title, self.args, args)
        lines = [(n, line.strip()) for n, line in enumerate(read["prompt_txt"].splitlines(), 1)]
        for number, line in lines:
            if line:
                parse_line(line, number)  # bad lines are refused with the arguments
        return FileArgs(**read)

    def planned(self, request: GenerationRequest, args: FileArgs) -> list[Planned]:
        """One generation per line, with the line's own options (size, steps, batch, ...)."""
        return [
            Planned(
                f"Prompts from file: line {job.line_number}",
                _line_request(request, job.options, args.prompt_position, request.seed),
                job.options.get("sd_model"),
            )
            for job in _line_jobs(args)
        ]

    def run(self, request: GenerationRequest, args: FileArgs, run: ScriptRun) -> StudioResult:
        jobs = _line_jobs(args)
        if not jobs:
            raise GenerationError(
                "Prompts from file: there are no prompts (all lines are empty)", "script_args"
            )
        seed = request.seed
        if args.checkbox_iterate or args.checkbox_iterate_batch:
            seed = fixed_seed(seed)
        planned: list[tuple[LineJob, GenerationRequest, str | None]] = []
        for job in jobs:
            line_request = _line_request(request, job.options, args.prompt_position, seed)
            checkpoint = job.options.get("sd_model")
            try:
                run.preflight(line_request, checkpoint)
            except ValueError as error:
                raise GenerationError(
                    f"Prompts from file: line {job.line_number}: {error}", "script_args"
                ) from None
            planned.append((job, line_request, checkpoint))
            if args.checkbox_iterate and seed != -1:
                seed = (seed + request.batch_size * request.n_iter) % 2**32

        parts = ResultParts()
        for _job, line_request, checkpoint in planned:
            if run.control.interrupted:
                return parts.result(True)
            result = run.generate(line_request, checkpoint)
            parts.extend(result)
            if result.interrupted or run.control.interrupted:
                return parts.result(True)
        return parts.result()


def _line_jobs(args: FileArgs) -> list[LineJob]:
    return [
        LineJob(number, parse_line(line.strip(), number))
        for number, line in enumerate(args.prompt_txt.splitlines(), 1)
        if line.strip()
    ]


def _line_request(
    request: GenerationRequest, options: dict[str, Any], position: str, seed: int
) -> GenerationRequest:
    fields = {name: value for name, value in options.items() if name != "sd_model"}
    for name in _PROMPT_OPTIONS:
        line_text, own = fields.get(name), getattr(request, name)
        if line_text and own:
            fields[name] = f"{line_text} {own}" if position == "start" else f"{own} {line_text}"
    fields.setdefault("seed", seed)
    return replace(request, **fields)
