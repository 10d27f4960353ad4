"""Generate from a shell: `python -m webui txt2img --prompt "a lighthouse at dusk"`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from webui.engine.request import GenerationError, GenerationRequest, MaskedContent, ResizeMode
from webui.engine.samplers import SCHEDULE_TYPES
from webui.model_manager.state_dict import CheckpointError
from webui.settings import Settings, add_model_flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m webui", description="Generate images from the command line"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("txt2img", "img2img"):
        command = commands.add_parser(name, help=f"{name} with the local engine")
        add_model_flags(command)
        command.add_argument("--prompt", "-p", required=True)
        command.add_argument("--negative-prompt", "-n", default="")
        command.add_argument("--sampler", default="Euler a", help='A1111 name, e.g. "DPM++ 2M" or "Euler a"')
        command.add_argument("--scheduler", default="Automatic", help=f"one of: {', '.join(SCHEDULE_TYPES)}")
        command.add_argument("--steps", type=int, default=20)
        command.add_argument("--cfg-scale", type=float, default=7.0)
        command.add_argument("--width", type=int, default=512)
        command.add_argument("--height", type=int, default=512)
        command.add_argument("--seed", type=int, default=-1, help="-1 picks one and reports it")
        command.add_argument("--batch-size", type=int, default=1)
        command.add_argument("--n-iter", type=int, default=1, help="batch count")
        command.add_argument("--clip-skip", type=int, default=1)
        if name == "img2img":
            command.add_argument("--init-image", type=Path, required=True)
            command.add_argument(
                "--mask", type=Path, help="white = repaint; without it, the image's alpha is used"
            )
            command.add_argument("--denoising-strength", type=float, default=0.75)
            command.add_argument("--resize-mode", type=int, choices=[m.value for m in ResizeMode], default=0)
            command.add_argument("--mask-blur", type=int, default=4)
            command.add_argument("--invert-mask", action="store_true")
            command.add_argument(
                "--inpainting-fill", type=int, choices=[m.value for m in MaskedContent], default=1
            )
            command.add_argument(
                "--only-masked", action="store_true", help="inpaint the masked area at full size"
            )
            command.add_argument("--only-masked-padding", type=int, default=32)
    return parser


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        sampler_name=args.sampler,
        scheduler=args.scheduler,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        width=args.width,
        height=args.height,
        seed=args.seed,
        batch_size=args.batch_size,
        n_iter=args.n_iter,
        clip_skip=args.clip_skip,
    )
    if args.command == "img2img":
        request.init_image = _open_image(args.init_image, "--init-image")
        request.mask = _open_image(args.mask, "--mask") if args.mask else None
        request.denoising_strength = args.denoising_strength
        request.resize_mode = ResizeMode(args.resize_mode)
        request.mask_blur = args.mask_blur
        request.inpainting_mask_invert = args.invert_mask
        request.inpainting_fill = MaskedContent(args.inpainting_fill)
        request.inpaint_full_res = args.only_masked
        request.inpaint_full_res_padding = args.only_masked_padding
    return request


def _open_image(path: Path, flag: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError) as error:
        raise GenerationError(f"{flag} {path}: not a readable image ({error})") from error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from webui.studio import Studio  # torch loads here, after the arguments are known to be sane

    try:
        request = request_from_args(args)
        request.validate()
        studio = Studio(Settings.from_args(_with_app_defaults(args)))
        result = studio.generate(request, on_step=_print_progress)
    except (GenerationError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    for path, infotext in zip(result.paths, result.infotexts):
        print(f"saved {path}")
        print(infotext)
    if studio.demo_mode:
        print(f"note: {studio.demo_message}", file=sys.stderr)
    return 0


def _with_app_defaults(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**vars(args), port=0, listen=False)


def _print_progress(info) -> None:
    print(f"\rstep {info.step}/{info.total}", end="", file=sys.stderr, flush=True)
