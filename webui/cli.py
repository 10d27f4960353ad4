"""Generate from a shell: `python -m webui txt2img --prompt "a lighthouse at dusk"`.

With `--server URL` the same command runs the job on a running app through its `/api/v1` job API
and saves the images here. That path never imports torch or the Studio, so it starts at once: keep
every heavy import inside the local branch (`_run_locally`, `build_parser(server=False)`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.cli_flags import GENERATION_FLAGS, IMG2IMG_FLAGS, add_declared_flag, is_choice
from webui.cli_remote import AUTH_ENV, open_image, run_on_server
from webui.engine.parameters import declared  # no torch
from webui.engine.request import GenerationError, GenerationRequest  # no torch

if TYPE_CHECKING:
    from webui.engine.steps import StepInfo

# Model-manager flags (webui.settings.add_model_flags) that only the local engine can honour.
LOCAL_ONLY_FLAGS = (
    "--ckpt-dir",
    "--models-config",
    "--device",
    "--precision",
    "--no-watermark",
    "--no-ema",
    "--safety-checker",
    "--vram-budget",
    "--ram-budget",
    "--memory-mode",
    "--medvram",
    "--lowvram",
    "--vae-tiling",
)
LOCAL_ONLY_NOTE = (
    f"{', '.join(LOCAL_ONLY_FLAGS)} apply to the local engine only; with --server the server's own "
    "settings decide, and those flags are refused."
)


def build_parser(server: bool = False) -> argparse.ArgumentParser:
    """The command line; `server=True` builds the --server variant, which needs no torch to build."""
    parser = argparse.ArgumentParser(
        prog="python -m webui", description="Generate images from the command line"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("txt2img", "img2img"):
        command = commands.add_parser(
            name,
            help=f"{name} with the local engine, or on a running app with --server",
            description=f"{name} with the local engine, or on a running app with --server URL.",
            epilog=LOCAL_ONLY_NOTE,
        )
        if server:
            _add_remote_model_flags(command)
            scheduler_help = 'a schedule type the server knows, e.g. "Automatic" or "Karras"'
        else:
            from webui.engine.samplers import SCHEDULE_TYPES  # imports torch
            from webui.settings import add_model_flags  # imports torch

            add_model_flags(command)
            scheduler_help = f"one of: {', '.join(SCHEDULE_TYPES)}"
        _add_generation_flags(command, name, scheduler_help, server)
        _add_server_flags(command)
    return parser


def _add_generation_flags(
    command: argparse.ArgumentParser, name: str, scheduler_help: str, server: bool
) -> None:
    size_help = "default 512 (128 with the demo model)"
    # A server has its own clip skip setting: only send one when asked to.
    special: dict[str, dict[str, Any]] = {
        "prompt": {"required": True, "default": None},
        "scheduler": {"help": scheduler_help},
        "width": {"default": None, "help": size_help},
        "height": {"default": None, "help": size_help},
        "clip_skip": {"default": None if server else 1, "help": "default: 1 (--server: the server's)"},
    }
    for field in GENERATION_FLAGS:
        add_declared_flag(command, declared(GenerationRequest, field), **special.get(field, {}))
    if name == "img2img":
        command.add_argument("--init-image", type=Path, required=True)
        command.add_argument(
            "--mask", type=Path, help="white = repaint; without it, the image's alpha is used"
        )
        for field in IMG2IMG_FLAGS:
            add_declared_flag(command, declared(GenerationRequest, field))


def _add_server_flags(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group(
        "running on a server", "send the job to a running app instead; the images are still saved here"
    )
    group.add_argument(
        "--server",
        metavar="URL",
        help="the app's address, e.g. http://127.0.0.1:7860; a login may be in it: http://USER:PASS@host:port",
    )
    group.add_argument(
        "--server-auth",
        metavar="USER:PASS",
        help=f"the login for --server (default: the URL's, else ${AUTH_ENV})",
    )
    group.add_argument(
        "--server-save", action="store_true", help="also keep the images in the server's own outputs folder"
    )


def _add_remote_model_flags(command: argparse.ArgumentParser) -> None:
    """The model flags that mean something with --server; the local-only ones are refused by name."""
    command.add_argument("--data-dir", default=".", help="folder holding outputs/ (default: .)")
    command.add_argument("--outputs-dir", help="where images are saved (default: DATA_DIR/outputs)")
    command.add_argument("--ckpt", help="a checkpoint on the server, by name (default: the server's)")
    command.add_argument("--vae", help='a VAE on the server: "Automatic", "None" or a file name')
    for flag in LOCAL_ONLY_FLAGS:
        command.add_argument(flag, nargs="?", action=_LocalOnly, help=argparse.SUPPRESS)


class _LocalOnly(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        parser.error(
            f"{self.option_strings[0]} applies to the local engine; the server uses its own settings"
        )


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    names = GENERATION_FLAGS + (IMG2IMG_FLAGS if args.command == "img2img" else ())
    values: dict[str, Any] = {}
    for name in names:
        item = declared(GenerationRequest, name)
        value = getattr(args, item.flag_dest)
        values[name] = item.type(value) if is_choice(item) else value
    values["width"], values["height"] = args.width or 512, args.height or 512
    request = GenerationRequest(**values)
    if args.command == "img2img":
        request.init_image = open_image(args.init_image, "--init-image")
        request.mask = open_image(args.mask, "--mask") if args.mask else None
    return request


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if _server_requested(argv):
        return run_on_server(build_parser(server=True).parse_args(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.server_auth or args.server_save:
        parser.error("--server-auth and --server-save need --server URL")
    return _run_locally(args)


def _server_requested(argv: list[str]) -> bool:
    """Whether --server is given, decided before the full parser is built (it imports torch)."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--server")
    known, _rest = probe.parse_known_args(argv)
    return known.server is not None


# -- the local engine ----------------------------------------------------------------------------


def _run_locally(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # torch loads here, after the arguments are known to be sane
    from webui.jobs import LOCAL_CALLER, JobQueue, JobState, Limits
    from webui.model_manager.state_dict import CheckpointError
    from webui.settings_file import settings_from_args
    from webui.studio import Studio

    try:
        request = request_from_args(args)
        request.validate()
        studio = Studio(settings_from_args(args)[0])
        if studio.models.demo_mode:  # sides not given: the demo's own size
            request = replace(
                request,
                width=args.width or studio.models.default_size,
                height=args.height or studio.models.default_size,
            )
    except (GenerationError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The same queue the app runs, worked on this (main) thread; only the engine's own limits apply.
    jobs = JobQueue(studio, Limits.engine_maxima(), step_hooks=[_print_step])
    try:
        job = jobs.submit(request, LOCAL_CALLER)
        jobs.run(until=lambda: job.state.finished)
    except (GenerationError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(file=sys.stderr)
    if job.state is JobState.FAILED or job.result is None:
        print(f"error: {job.error}", file=sys.stderr)
        return 2 if job.user_error else 1
    for path, infotext in zip(job.result.paths, job.result.infotexts):
        print(f"saved {path}")
        print(infotext)
    for warning in job.result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if studio.models.demo_mode:
        print(f"note: {studio.models.demo_message}", file=sys.stderr)
    return 0


def _print_step(_job: object, info: StepInfo) -> None:
    print(f"\rstep {info.step}/{info.total}", end="", file=sys.stderr, flush=True)
