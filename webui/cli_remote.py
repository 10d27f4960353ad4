"""`python -m webui txt2img|img2img --server URL`: run the job on a running app through `/api/v1`.

Nothing here imports torch, so a remote run starts at once. The images are saved locally, byte for
byte as the server sent them (infotext and watermark inside), in the usual outputs layout.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from webui.api_client import ApiClient, ApiClientError, parse_auth, split_credentials
from webui.cli_flags import GENERATION_FLAGS, IMG2IMG_FLAGS, body_fields
from webui.engine.request import GenerationError
from webui.outputs.files import ImageSaver

AUTH_ENV = "WEBUI_AUTH"
# (body field, argument, flag): the A1111 body of --server, and the flag behind a refused field.
BODY_FIELDS = body_fields(GENERATION_FLAGS)
# The body takes the mask's inversion as 0 or 1: sent apart.
IMG2IMG_BODY_FIELDS = body_fields(IMG2IMG_FLAGS, sent_apart=("inpainting_mask_invert",))
# Fields a server may name that are not copied one-to-one from an argument.
OTHER_FIELD_FLAGS = (
    ("init_images", "--init-image"),
    ("mask", "--mask"),
    ("inpainting_mask_invert", "--invert-mask"),
    ("override_settings.sd_model_checkpoint", "--ckpt"),
    ("override_settings.sd_vae", "--vae"),
    ("override_settings.CLIP_stop_at_last_layers", "--clip-skip"),
    ("clip_skip", "--clip-skip"),  # the engine's own name for it
    ("sampler", "--sampler"),
)


def open_image(path: Path, flag: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError) as error:
        raise GenerationError(f"{flag} {path}: not a readable image ({error})") from error


def run_on_server(args: argparse.Namespace) -> int:
    try:
        base_url, auth = _server_address(args)
        body = remote_body(args)
    except (GenerationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    client = ApiClient(base_url, auth)
    job_id: str | None = None
    try:
        job_id = client.submit(args.command, body)
        print(f"job {job_id} sent to {base_url}", file=sys.stderr)
        job = client.follow(job_id, _print_remote_progress)
        print(file=sys.stderr)
        return _save_remote_images(client, job, args)
    except ApiClientError as error:
        if job_id is not None:
            print(file=sys.stderr)  # end the progress line
        return _report_failure(error, logged_in=auth is not None)
    except OSError as error:  # the outputs folder, not the network: urllib's errors are ApiClientError
        print(f"error: cannot save the images: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _cancel(client, job_id)


def _server_address(args: argparse.Namespace) -> tuple[str, tuple[str, str] | None]:
    """The base URL and the login: --server-auth, else the URL's own, else $WEBUI_AUTH."""
    try:
        base_url, auth = split_credentials(args.server)
    except ValueError as error:
        raise ValueError(f"--server {args.server}: {error}") from None
    if args.server_auth:
        auth = _login("--server-auth", args.server_auth)
    elif auth is None and os.environ.get(AUTH_ENV):
        auth = _login(AUTH_ENV, os.environ[AUTH_ENV])
    return base_url, auth


def _login(source: str, value: str) -> tuple[str, str]:
    try:
        return parse_auth(value)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def remote_body(args: argparse.Namespace) -> dict[str, Any]:
    """The A1111-shaped body of `/api/v1/jobs/<txt2img|img2img>` for these arguments."""
    fields = BODY_FIELDS + (IMG2IMG_BODY_FIELDS if args.command == "img2img" else ())
    body: dict[str, Any] = {field: getattr(args, attribute) for field, attribute, _flag in fields}
    overrides = {
        "sd_model_checkpoint": args.ckpt,
        "sd_vae": args.vae,
        "CLIP_stop_at_last_layers": args.clip_skip,
    }
    body["override_settings"] = {key: value for key, value in overrides.items() if value is not None}
    body["save_images"] = args.server_save
    if args.command == "img2img":
        body["init_images"] = [_image_base64(args.init_image, "--init-image")]
        body["mask"] = _image_base64(args.mask, "--mask") if args.mask else None
        body["inpainting_mask_invert"] = int(args.invert_mask)
    return body


def _image_base64(path: Path, flag: str) -> str:
    """The file as it is (the server reads any format PIL does), once it is known to be an image."""
    open_image(path, flag)
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _print_remote_progress(event: dict[str, Any]) -> None:
    # Padded so a shorter line fully covers the longer one before it.
    print(f"\r{_progress_text(event):<32}", end="", file=sys.stderr, flush=True)


def _progress_text(event: dict[str, Any]) -> str:
    if event.get("state") == "queued":
        return f"waiting in queue: position {event.get('position')}"
    progress = event.get("progress") or {}
    text = f"step {progress.get('step', 0)}/{progress.get('steps', '?')}"
    batches = progress.get("batches") or 1
    if batches > 1:
        text += f" (batch {progress.get('batch', 0) + 1}/{batches})"
    return text


def _save_remote_images(client: ApiClient, job: dict[str, Any], args: argparse.Namespace) -> int:
    state = job.get("state")
    if state == "failed":
        field = job.get("error_field")
        print(f"error: {job.get('error') or 'the job failed'}{_field_hint(field)}", file=sys.stderr)
        return 2 if job.get("user_error") else 1
    outputs = Path(args.outputs_dir) if args.outputs_dir else Path(args.data_dir) / "outputs"
    images = _finished_images(job)
    for url_path, seed, infotext in images:
        path = save_png(outputs, args.command, seed, client.fetch(url_path))
        print(f"saved {path}")
        print(infotext)
    if state == "interrupted":
        print(f"note: job {job.get('id')} was interrupted on the server", file=sys.stderr)
        return 0 if images else 3
    return 0


def _finished_images(job: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(image URL path, seed, infotext) of each image, checked: a seed becomes part of a file name."""
    images, seeds, infotexts = job.get("images") or [], job.get("seeds") or [], job.get("infotexts") or []
    if not (len(images) == len(seeds) == len(infotexts)):
        raise ApiClientError("the server described the finished job's images inconsistently")
    for url_path, seed, infotext in zip(images, seeds, infotexts):
        if not (isinstance(url_path, str) and isinstance(seed, int) and isinstance(infotext, str)):
            raise ApiClientError("the server described the finished job's images in an unknown shape")
    return list(zip(images, seeds, infotexts))


def save_png(outputs: Path, mode: str, seed: int, png: bytes) -> Path:
    """Write the bytes as received, numbered as the app numbers its own saves."""
    return ImageSaver(outputs, watermark=False).save_encoded(png, mode=mode, seed=seed)


def _report_failure(error: ApiClientError, logged_in: bool) -> int:
    message = f"error: {error}{_field_hint(error.field)}"
    if error.status == 401:
        hint = (
            "check the user name and password"
            if logged_in
            else f"log in with --server-auth USER:PASS, http://USER:PASS@host:port or ${AUTH_ENV}"
        )
        message = f"error: login required (401): {error}; {hint}"
    print(message, file=sys.stderr)
    return 2 if error.refused else 1


def _field_hint(field: str | None) -> str:
    """` (field width, flag --width)` for a field the server blamed."""
    if not field:
        return ""
    flags = {name: flag for name, _attribute, flag in BODY_FIELDS + IMG2IMG_BODY_FIELDS}
    flags.update(OTHER_FIELD_FLAGS)
    flag = flags.get(field) or flags.get(field.split(".")[0])
    return f" (field {field}, flag {flag})" if flag else f" (field {field})"


def _cancel(client: ApiClient, job_id: str | None) -> int:
    """Ctrl+C: stop the job on the server too, so it does not run on for nobody."""
    print(file=sys.stderr)
    if job_id is None:
        print("interrupted before the server answered; the job may still run there", file=sys.stderr)
        return 130
    try:
        client.cancel(job_id)
        print(f"interrupted: cancelled job {job_id} on the server", file=sys.stderr)
    except ApiClientError as error:
        print(f"interrupted, but cancelling job {job_id} failed: {error}", file=sys.stderr)
    return 130
