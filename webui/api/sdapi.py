"""`/sdapi/v1`: AUTOMATIC1111's API, same paths, bodies and answers, over our job queue.

Differences clients can notice are deliberate: progress, interrupt and skip act on the caller's
own job (A1111 has one global job), and features we lack answer 422 instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from webui.api.auth import caller_of
from webui.api.context import ApiContext, raise_if_failed, wait_until_finished
from webui.api.convert import img2img_request, response_info, txt2img_request
from webui.api.errors import ApiError, error_responses
from webui.api.extensions import a1111_extension_info
from webui.api.images import decode_image, encode_base64, image_to_png
from webui.api.interrogate import interrogate_router
from webui.api.schemas import (
    ExtrasBatchBody,
    ExtrasOptions,
    ExtrasSingleBody,
    Img2ImgBody,
    PngInfoBody,
    Txt2ImgBody,
)
from webui.engine.latent_upscale import LATENT_UPSCALE_MODES
from webui.engine.samplers import SAMPLERS, SCHEDULE_TYPES
from webui.jobs import Job, JobState
from webui.model_manager.embeddings import read_embedding
from webui.model_manager.registry import ModelKind
from webui.model_manager.state_dict import CheckpointError
from webui.outputs import parse_infotext, read_infotext
from webui.scripts import ScriptArg
from webui.styles import StyleError

if TYPE_CHECKING:
    from webui.studio import Studio

# cmd-flags shows these to admins only.
_ADMIN_ONLY_FLAGS = ("admin", "auth_file")


def sdapi_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111-compatible"])
    studio = ctx.studio
    router.include_router(interrogate_router(studio.settings.data_dir / "models", studio.device))

    async def generate(request: Request, body: Txt2ImgBody, build: Any) -> dict[str, Any]:
        caller = caller_of(request.state)

        def submit() -> Job:
            generation, choices = build(body, ctx.options.clip_skip, ctx.options.randn_source)
            return ctx.jobs.submit(
                generation, caller, checkpoint=choices.checkpoint, vae=choices.vae, save=choices.save
            )

        job = await run_in_threadpool(submit)
        await wait_until_finished(job)
        return await run_in_threadpool(_generation_response, ctx, job, body)

    # A generation that fails on the server (not through the request) answers 500.
    @router.post(
        "/txt2img", summary="Generate images from a prompt and wait for them", responses=error_responses(500)
    )
    async def txt2img(request: Request, body: Txt2ImgBody) -> dict[str, Any]:
        return await generate(request, body, txt2img_request)

    @router.post(
        "/img2img",
        summary="Redraw an image (with a mask: inpaint) and wait for the result",
        responses=error_responses(500),
    )
    async def img2img(request: Request, body: Img2ImgBody) -> dict[str, Any]:
        return await generate(request, body, img2img_request)

    @router.get("/progress", summary="Progress and live preview of the caller's current job")
    def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
        job = ctx.jobs.current(caller_of(request.state))
        return _progress(ctx, job, skip_current_image)

    def on_current_job(request: Request, act: Callable[[Job], object]) -> dict[str, Any]:
        """A1111 has one global job; here interrupt and skip reach only the caller's own."""
        job = ctx.jobs.current(caller_of(request.state))
        if job is not None:
            act(job)
        return {}

    @router.post("/interrupt", summary="Stop the caller's current job, keeping finished images")
    def interrupt(request: Request) -> dict[str, Any]:
        return on_current_job(request, ctx.jobs.interrupt)

    @router.post("/skip", summary="End the current batch of the caller's running job")
    def skip(request: Request) -> dict[str, Any]:
        return on_current_job(request, ctx.jobs.skip)

    @router.get("/options", summary="Server options by A1111 key")
    def get_options() -> dict[str, Any]:
        return ctx.options.read()

    @router.post(
        "/options",
        summary="Set options; sd_model_checkpoint switches the model",
        responses=error_responses(403),
    )
    def set_options(request: Request, values: dict[str, Any]) -> None:
        ctx.options.write(values, caller_of(request.state))

    @router.get("/cmd-flags", summary="The flags the server started with (secrets removed)")
    def cmd_flags(request: Request) -> dict[str, Any]:
        flags = dict(ctx.cmd_flags)
        if not caller_of(request.state).admin:
            # Who the admins are, and where the logins live, is no one else's business.
            for key in _ADMIN_ONLY_FLAGS:
                if flags.get(key):
                    flags[key] = "<hidden>"
        return flags

    @router.get("/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        models = []
        for file in studio.models.checkpoints():
            digest = studio.models.facts.cached_sha256(file.path)
            models.append(
                {
                    "title": studio.models.registry.title(file),
                    "model_name": file.name,
                    "hash": digest[:10] if digest else None,
                    "sha256": digest,
                    "filename": str(file.path),
                    "config": None,
                }
            )
        return models

    @router.get("/sd-vae")
    def sd_vae() -> list[dict[str, Any]]:
        return [
            {"model_name": f.name, "filename": str(f.path)}
            for f in studio.models.registry.files(ModelKind.VAE)
        ]

    @router.get("/samplers")
    def samplers() -> list[dict[str, Any]]:
        return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in SAMPLERS]

    @router.get("/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        return [
            {
                "name": label.lower().replace(" ", "_"),
                "label": label,
                "aliases": None,
                "default_rho": -1,
                "need_inner_model": False,
            }
            for label in SCHEDULE_TYPES
        ]

    @router.get("/upscalers")
    def upscalers() -> list[dict[str, Any]]:
        files = studio.models.upscalers.model_files()
        return [
            {
                "name": name,
                "model_name": name if name in files else None,
                "model_path": str(files[name]) if name in files else None,
                "model_url": None,
                "scale": 4,
            }
            for name in studio.models.upscaler_names()
        ]

    @router.get("/latent-upscale-modes", summary="Latent upscale modes for hires fix")
    def latent_upscale_modes() -> list[dict[str, Any]]:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.get("/prompt-styles", summary="The styles in styles.csv", responses=error_responses(500))
    def prompt_styles() -> list[dict[str, Any]]:
        try:
            styles = studio.styles.styles()
        except StyleError as error:
            raise ApiError(500, str(error)) from error
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles]

    @router.get("/loras")
    def loras() -> list[dict[str, Any]]:
        return [
            {"name": f.name, "alias": f.name, "path": str(f.path), "metadata": {}}
            for f in studio.models.registry.files(ModelKind.LORA)
        ]

    @router.get("/embeddings")
    def embeddings() -> dict[str, Any]:
        return _embeddings(ctx)

    @router.get("/memory", summary="RAM and VRAM use, and where each cached model is")
    def memory() -> dict[str, Any]:
        return _memory(ctx)

    @router.post("/png-info", summary="Read the generation parameters inside an image")
    def png_info(body: PngInfoBody) -> dict[str, Any]:
        image = decode_image(body.image, "image")
        text = read_infotext(image) or ""
        items = {
            key: value for key, value in image.info.items() if isinstance(value, str) and key != "parameters"
        }
        parameters: dict[str, Any] = {}
        if text:
            parsed = parse_infotext(text)
            parameters = {"Prompt": parsed.prompt, "Negative prompt": parsed.negative_prompt, **parsed.params}
        return {"info": text, "items": items, "parameters": parameters}

    @router.post("/extra-single-image", summary="Upscale one image")
    def extra_single_image(body: ExtrasSingleBody) -> dict[str, Any]:
        image = decode_image(body.image, "image")
        return {"html_info": "", "image": encode_base64(image_to_png(_extras(studio, image, body)))}

    @router.post("/extra-batch-images", summary="Upscale several images")
    def extra_batch_images(body: ExtrasBatchBody) -> dict[str, Any]:
        images = [decode_image(item.data, f"imageList.{i}.data") for i, item in enumerate(body.imageList)]
        return {
            "html_info": "",
            "images": [encode_base64(image_to_png(_extras(studio, im, body))) for im in images],
        }

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        studio.models.refresh_checkpoints()

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        studio.models.registry.refresh([ModelKind.VAE])

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        studio.models.registry.refresh([ModelKind.LORA, ModelKind.EMBEDDING])

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        studio.models.registry.refresh([ModelKind.EMBEDDING])

    @router.post("/unload-checkpoint", summary="Move models out of GPU memory")
    def unload_checkpoint() -> None:
        studio.models.unload_checkpoint()

    @router.post(
        "/reload-checkpoint",
        summary="Load the selected model onto the GPU again",
        responses=error_responses(422),
    )
    def reload_checkpoint() -> None:
        try:
            studio.models.reload_checkpoint()
        except CheckpointError as error:
            raise ApiError(422, str(error)) from error

    def nothing() -> list[Any]:
        return []

    for path in ("/hypernetworks", "/face-restorers", "/realesrgan-models"):
        router.add_api_route(path, nothing, methods=["GET"], summary="Nothing of this kind is installed")

    @router.get("/scripts", summary="Script titles for `script_name`, per mode (lower case, as A1111)")
    def scripts() -> dict[str, list[str]]:
        return {
            mode: [script.title.lower() for script in studio.scripts(mode)] for mode in ("txt2img", "img2img")
        }

    @router.get("/script-info", summary="Each script's positional `script_args` (or always-on `args`)")
    def script_info() -> list[dict[str, Any]]:
        return [
            {
                "name": script.title.lower(),
                "is_alwayson": alwayson,
                "is_img2img": mode == "img2img",
                "args": [_script_arg_info(arg) for arg in script.args],
            }
            for mode in ("txt2img", "img2img")
            for alwayson, scripts in (
                (False, studio.scripts(mode)),
                (True, [script for _, script in studio.extensions.alwayson(mode)]),
            )
            for script in scripts
        ]

    @router.get("/extensions", summary="Installed extensions (A1111's fields; /api/v1/extensions has more)")
    def extensions() -> list[dict[str, Any]]:
        return [a1111_extension_info(extension) for extension in studio.extensions.extensions]

    return router


def _generation_response(ctx: ApiContext, job: Job, body: Txt2ImgBody) -> dict[str, Any]:
    raise_if_failed(job)
    count = len(job.result.images) if job.result else 0
    images = [encode_base64(ctx.image_png(job, i)) for i in range(count)] if body.send_images else []
    parameters = body.model_dump()
    if isinstance(body, Img2ImgBody) and not body.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    return {"images": images, "parameters": parameters, "info": response_info(job, body)}


def _progress(ctx: ApiContext, job: Job | None, skip_image: bool) -> dict[str, Any]:
    if job is None:
        return {
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": _state(None, None),
            "current_image": None,
            "textinfo": None,
            "current_task": None,
        }
    status = ctx.jobs.status(job)
    image = None
    if not skip_image and status.state is JobState.RUNNING:
        preview = job.preview()
        image = encode_base64(image_to_png(preview[1])) if preview else None
    if status.position is not None:
        _running, waiting = ctx.jobs.counts()
        textinfo = f"Waiting in the queue: position {status.position} of {waiting}"
    else:
        textinfo = f"Batch {status.batch + 1} of {status.batches}, step {status.step} of {status.steps}"
    return {
        "progress": status.progress,
        "eta_relative": status.eta_seconds or 0.0,
        "state": _state(job, status),
        "current_image": image,
        "textinfo": textinfo,
        "current_task": job.id,
    }


def _state(job: Job | None, status: Any) -> dict[str, Any]:
    if job is None:
        return {
            "skipped": False,
            "interrupted": False,
            "stopping_generation": False,
            "job": "",
            "job_count": 0,
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": 0,
            "sampling_steps": 0,
        }
    return {
        "skipped": job.skipped,
        "interrupted": job.control.interrupted,
        "stopping_generation": False,
        "job": job.id,
        "job_count": status.batches,
        "job_timestamp": job.timestamp,
        "job_no": status.batch,
        "sampling_step": status.step,
        "sampling_steps": status.steps,
    }


def _embeddings(ctx: ApiContext) -> dict[str, Any]:
    current = ctx.studio.models.current_checkpoint_file().arch
    loaded: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    for file in ctx.studio.models.registry.files(ModelKind.EMBEDDING):
        try:
            embedding = read_embedding(file.path)
        except (CheckpointError, ValueError, OSError):
            continue
        entry = {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
            "shape": embedding.widths[0] if embedding.widths else None,
            "vectors": embedding.vector_count,
        }
        fits = embedding.arch is None or current is None or embedding.arch is current
        (loaded if fits else skipped)[file.name] = entry
    return {"loaded": loaded, "skipped": skipped}


def _memory(ctx: ApiContext) -> dict[str, Any]:
    report = ctx.studio.models.memory_report()
    ram = report["ram"]
    answer: dict[str, Any] = {
        "ram": {"free": ram["free"], "used": ram["used"], "total": ram["total"]},
        "models": report["models"],
    }
    cuda = report.get("cuda")
    if cuda:
        answer["cuda"] = {
            "system": {"free": cuda["free"], "used": cuda["total"] - cuda["free"], "total": cuda["total"]},
            "active": {"current": cuda["allocated"], "peak": cuda["peak"]},
            "allocated": {"current": cuda["allocated"], "peak": cuda["peak"]},
            "reserved": {"current": cuda["reserved"], "peak": cuda["reserved"]},
        }
    else:
        answer["cuda"] = {"error": "no CUDA device in use"}
    return answer


def _script_arg_info(arg: ScriptArg) -> dict[str, Any]:
    return {
        "label": arg.label,
        "value": arg.default,
        "minimum": arg.minimum,
        "maximum": arg.maximum,
        "step": None,
        "choices": list(arg.choices) or None,
    }


def _extras(studio: Studio, image: Any, options: ExtrasOptions) -> Any:
    if options.resize_mode not in (0, 1):
        raise ApiError(422, "resize_mode: expected 0 (scale by) or 1 (scale to)", "resize_mode")
    size = (options.upscaling_resize_w, options.upscaling_resize_h) if options.resize_mode == 1 else None
    return studio.upscale_image(
        image,
        options.upscaler_1,
        second=options.upscaler_2,
        second_visibility=options.extras_upscaler_2_visibility,
        scale=None if size else options.upscaling_resize,
        size=size,
        crop=options.upscaling_crop,
    )
