"""The MCP server at `/mcp` (streamable HTTP): the studio's tools for chat apps and coding agents.

Every tool runs as the caller LoginMiddleware put on the HTTP request that carried the call
(a token's or a Basic login's user), through the same queue, limits and job ownership as the
HTTP APIs. Generations report MCP progress while they run, and answer with PNG image content,
each image's infotext (seed included) and a URL that other tools here take back as input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi.concurrency import run_in_threadpool
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from webui import __version__
from webui.api import agent_jobs
from webui.api.auth import caller_of
from webui.api.context import ApiContext
from webui.api.errors import ApiError
from webui.api.fields import CHECKPOINT_OPTION
from webui.api.images import encode_base64, flatten_alpha, image_to_png
from webui.api.schemas import Img2ImgBody, Txt2ImgBody
from webui.jobs import Caller, Job, JobNotFound
from webui.outputs import parse_infotext, read_infotext

_POLL_S = 0.25
_DEFAULT_STEPS = 20

INSTRUCTIONS = (
    "Stable Diffusion image generation on this server. generate_image makes images from a prompt; "
    "edit_image redraws an image (img2img), inpaint_image only the white part of a mask. Each image "
    "comes back with its parameters (seed included) and a URL you can pass back as `image` to the "
    "edit tools. list_models names the checkpoints for `model`. Long jobs report progress; with "
    "wait=false a tool returns the job id at once and get_job fetches the result later."
)

# Shared parameter types: the descriptions are what an agent reads.
Prompt = Annotated[
    str, Field(description="What the image should show, e.g. 'a lighthouse at dusk, oil painting'")
]
Negative = Annotated[str, Field(description="What the image should not show, e.g. 'blurry, text'")]
Side = Annotated[
    int | None,
    Field(
        ge=64, le=4096, multiple_of=8, description="Pixels, a multiple of 8; omit for the server's default"
    ),
]
Steps = Annotated[
    int, Field(ge=1, le=150, description="Denoising steps: more is slower and finer (20 is typical)")
]
Cfg = Annotated[float, Field(ge=1, le=30, description="How closely to follow the prompt (7 is typical)")]
Sampler = Annotated[str, Field(description="Sampler name as in A1111, e.g. 'Euler a' or 'DPM++ 2M'")]
Seed = Annotated[int, Field(ge=-1, description="Seed for reproducible results; -1 picks a random one")]
Model = Annotated[
    str | None, Field(description="Checkpoint name from list_models; omit for the selected checkpoint")
]
Batch = Annotated[int, Field(ge=1, le=16, description="How many images to make at once")]
Wait = Annotated[
    bool,
    Field(description="true: wait and return the images; false: return the job id at once (see get_job)"),
]
ImageInput = Annotated[
    str,
    Field(
        description="The image: base64 PNG/JPEG (a data: URL too), or a URL this server returned "
        "for an image (…/api/v1/jobs/ID/images/N)"
    ),
]
Strength = Annotated[
    float, Field(ge=0, le=1, description="How much to change: 0 keeps the image, 1 ignores it")
]
JobId = Annotated[str, Field(description="A job id returned by a generation tool")]


class StudioTools:
    """The tools, bound to one server's services."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def register(self, server: MCPServer) -> None:
        reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)
        makes = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
        for tool, hints in (
            (self.generate_image, makes),
            (self.edit_image, makes),
            (self.inpaint_image, makes),
            (self.upscale_image, makes),
            (self.list_models, reads),
            (self.switch_model, ToolAnnotations(read_only_hint=False, idempotent_hint=True)),
            (self.get_job, reads),
            (self.cancel_job, ToolAnnotations(read_only_hint=False, destructive_hint=True)),
            (self.read_image_parameters, reads),
        ):
            server.add_tool(tool, annotations=hints)

    # -- generating --------------------------------------------------------------------------
    async def generate_image(
        self,
        context: Context,
        prompt: Prompt,
        negative_prompt: Negative = "",
        width: Side = None,
        height: Side = None,
        steps: Steps = _DEFAULT_STEPS,
        cfg_scale: Cfg = 7.0,
        sampler: Sampler = "Euler a",
        seed: Seed = -1,
        model: Model = None,
        batch: Batch = 1,
        wait: Wait = True,
    ) -> CallToolResult:
        """Generate images from a text prompt (txt2img). Returns each image as PNG with its
        parameters (seed included) and a URL for the edit tools."""
        size = self.ctx.studio.models.default_size
        body = Txt2ImgBody(
            **_generation_fields(prompt, negative_prompt, steps, cfg_scale, sampler, seed, model, batch),
            width=width or size,
            height=height or size,
        )
        return await self._run(context, body, wait)

    async def edit_image(
        self,
        context: Context,
        image: ImageInput,
        prompt: Prompt,
        negative_prompt: Negative = "",
        denoising_strength: Strength = 0.6,
        width: Side = None,
        height: Side = None,
        steps: Steps = _DEFAULT_STEPS,
        cfg_scale: Cfg = 7.0,
        sampler: Sampler = "Euler a",
        seed: Seed = -1,
        model: Model = None,
        batch: Batch = 1,
        wait: Wait = True,
    ) -> CallToolResult:
        """Redraw a whole image guided by a prompt (img2img). The size defaults to the image's own."""
        init = flatten_alpha(self._image(context, image, "image"))
        body = Img2ImgBody(
            **_generation_fields(prompt, negative_prompt, steps, cfg_scale, sampler, seed, model, batch),
            **_size_of(init, width, height),
            init_images=[encode_base64(image_to_png(init))],
            denoising_strength=denoising_strength,
        )
        return await self._run(context, body, wait)

    async def inpaint_image(
        self,
        context: Context,
        image: ImageInput,
        mask: Annotated[
            str,
            Field(
                description="The mask, same size as the image, as base64 or a URL: white marks what to "
                "repaint, black what to keep"
            ),
        ],
        prompt: Prompt,
        negative_prompt: Negative = "",
        denoising_strength: Strength = 0.75,
        masked_content: Annotated[
            Literal["fill", "original", "latent noise", "latent nothing"],
            Field(description="What the masked area starts from: 'original' keeps its colours and shapes"),
        ] = "original",
        mask_blur: Annotated[int, Field(ge=0, le=64, description="Soften the mask's edge, in pixels")] = 4,
        steps: Steps = _DEFAULT_STEPS,
        cfg_scale: Cfg = 7.0,
        sampler: Sampler = "Euler a",
        seed: Seed = -1,
        model: Model = None,
        batch: Batch = 1,
        wait: Wait = True,
    ) -> CallToolResult:
        """Repaint only the masked (white) part of an image, guided by a prompt."""
        init = flatten_alpha(self._image(context, image, "image"))
        mask_image = self._image(context, mask, "mask")
        if mask_image.size != init.size:
            raise ToolError(
                f"mask: {mask_image.size[0]}x{mask_image.size[1]} is not the image's size "
                f"{init.size[0]}x{init.size[1]}"
            )
        fills = ["fill", "original", "latent noise", "latent nothing"]
        body = Img2ImgBody(
            **_generation_fields(prompt, negative_prompt, steps, cfg_scale, sampler, seed, model, batch),
            **_size_of(init, None, None),
            init_images=[encode_base64(image_to_png(init))],
            mask=encode_base64(image_to_png(mask_image.convert("L"))),
            denoising_strength=denoising_strength,
            inpainting_fill=fills.index(masked_content),
            mask_blur=mask_blur,
        )
        return await self._run(context, body, wait)

    async def upscale_image(
        self,
        context: Context,
        image: ImageInput,
        scale: Annotated[float, Field(gt=1, le=8, description="How many times larger")] = 2.0,
        upscaler: Annotated[
            str | None,
            Field(description="Upscaler name, e.g. 'Lanczos' or an ESRGAN model; omit for the default"),
        ] = None,
    ) -> CallToolResult:
        """Enlarge an image (Extras). Returns the larger image as PNG."""
        picture = self._image(context, image, "image")
        width, height = (round(side * scale) for side in picture.size)
        limit = self.ctx.jobs.limits.max_pixels
        if width * height > limit:  # the same --max-size a generation is held to
            raise ToolError(f"{width}x{height} is over this server's limit of {limit} pixels (--max-size)")
        names = [name for name in self.ctx.studio.models.upscaler_names() if name != "None"]
        chosen = upscaler or ("Lanczos" if "Lanczos" in names else names[0])
        if chosen not in names:
            raise ToolError(f"upscaler: no {chosen!r}; this server has {', '.join(names)}")
        try:
            larger = await run_in_threadpool(self.ctx.studio.upscale_image, picture, chosen, scale=scale)
        except ValueError as error:
            raise ToolError(f"cannot upscale: {error}") from error
        (old_w, old_h), (new_w, new_h) = picture.size, larger.size
        text = f"Upscaled {old_w}x{old_h} to {new_w}x{new_h} with {chosen}."
        return CallToolResult(
            content=[
                Image(data=image_to_png(larger), format="png").to_image_content(),
                TextContent(text=text),
            ]
        )

    # -- models ------------------------------------------------------------------------------
    def list_models(self) -> str:
        """The checkpoints this server can generate with (names for `model`), and which is selected."""
        studio = self.ctx.studio
        selected = studio.models.current_checkpoint()
        models = [
            {"name": file.name, "architecture": file.label, "selected": file.name == selected}
            for file in studio.models.checkpoints()
        ]
        return json.dumps({"models": models, "selected": selected}, indent=1)

    def switch_model(
        self, context: Context, model: Annotated[str, Field(description="Checkpoint name from list_models")]
    ) -> str:
        """Select the checkpoint new jobs use by default (for everyone on this server). To use a
        model for one generation only, pass `model` to the generation tool instead."""
        try:
            self.ctx.options.write({CHECKPOINT_OPTION: model}, _caller(context))
        except ApiError as error:
            raise ToolError(str(error)) from error
        return f"Selected checkpoint: {self.ctx.studio.models.current_checkpoint()}"

    # -- jobs --------------------------------------------------------------------------------
    async def get_job(self, context: Context, job_id: JobId) -> CallToolResult:
        """A job's state and progress; a finished job's images come with it."""
        job = self._job(context, job_id)
        if job.state.finished and job.result is not None and job.result.images:
            return self._images(context, job)
        return CallToolResult(content=[TextContent(text=_describe(self.ctx, job))])

    def cancel_job(self, context: Context, job_id: JobId) -> str:
        """Stop one of your jobs; a running one keeps the images it finished."""
        job = self._job(context, job_id)
        self.ctx.jobs.interrupt(job)
        return _describe(self.ctx, job)

    def read_image_parameters(self, context: Context, image: ImageInput) -> str:
        """The generation parameters stored in an image (A1111's PNG info): prompt, seed, steps, model..."""
        text = read_infotext(self._image(context, image, "image"))
        if not text:
            return "The image holds no generation parameters."
        parsed = parse_infotext(text)
        parameters = {"prompt": parsed.prompt, "negative_prompt": parsed.negative_prompt, **parsed.params}
        return json.dumps({"infotext": text, "parameters": parameters}, indent=1, default=str)

    # -- helpers -----------------------------------------------------------------------------
    def _image(self, context: Context, value: str, field: str) -> Any:
        try:
            return agent_jobs.read_image(self.ctx, _caller(context), value, field)
        except ApiError as error:
            raise ToolError(str(error)) from error

    def _job(self, context: Context, job_id: str) -> Job:
        try:
            return self.ctx.jobs.get(job_id, _caller(context))
        except JobNotFound as error:
            raise ToolError(str(error)) from error

    async def _run(self, context: Context, body: Txt2ImgBody, wait: bool) -> CallToolResult:
        try:
            job = await agent_jobs.submit(self.ctx, _caller(context), body)
        except ApiError as error:
            raise ToolError(_refusal(error)) from error
        if not wait:
            return CallToolResult(content=[TextContent(text=_describe(self.ctx, job))])
        try:
            await self._follow(context, job)
        except asyncio.CancelledError:
            # The client gave up (or disconnected): do not leave the job running for no one.
            self.ctx.jobs.interrupt(job)
            raise
        return self._images(context, job)

    async def _follow(self, context: Context, job: Job) -> None:
        """Wait for the job, sending MCP progress (0-100) as its steps advance."""
        reported = -1.0
        while not job.state.finished:
            status = self.ctx.jobs.status(job)
            percent = round(100 * status.progress, 1)
            if percent > reported:
                reported = percent
                if status.position is not None:
                    message = f"waiting in the queue, position {status.position}"
                else:
                    message = f"batch {status.batch + 1}/{status.batches}, step {status.step}/{status.steps}"
                with contextlib.suppress(Exception):  # a client gone mid-job must not fail the wait
                    await context.report_progress(percent, 100, message)
            await asyncio.sleep(_POLL_S)
        if reported < 100:
            with contextlib.suppress(Exception):
                await context.report_progress(100, 100, f"job {job.state.value}")

    def _images(self, context: Context, job: Job) -> CallToolResult:
        try:
            done = agent_jobs.finished(self.ctx, job)
        except ApiError as error:
            raise ToolError(_refusal(error)) from error
        base = str(_request(context).base_url)
        content: list[Any] = [TextContent(text=f"Job {job.id}: {len(done.pngs)} image(s).")]
        for index, png in enumerate(done.pngs):
            infotext = done.infotexts[index] if index < len(done.infotexts) else ""
            seed = done.seeds[index] if index < len(done.seeds) else None
            url = agent_jobs.image_url(base, job, index)
            content.append(Image(data=png, format="png").to_image_content())
            content.append(TextContent(text=f"Image {index + 1}: seed {seed}\nurl: {url}\n{infotext}"))
        return CallToolResult(content=content)


def _generation_fields(
    prompt: str,
    negative_prompt: str,
    steps: int,
    cfg_scale: float,
    sampler: str,
    seed: int,
    model: str | None,
    batch: int,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "steps": steps,
        "cfg_scale": cfg_scale,
        "sampler_name": sampler,
        "seed": seed,
        "batch_size": batch,
    }
    if model:
        fields["override_settings"] = {CHECKPOINT_OPTION: model}
    return fields


def _size_of(image: Any, width: int | None, height: int | None) -> dict[str, int]:
    """The image's own size, rounded down to a multiple of 8, for a side not given."""
    own = [max(64, side - side % 8) for side in image.size]
    return {"width": width or own[0], "height": height or own[1]}


def _refusal(error: ApiError) -> str:
    kind = {429: "refused (too many jobs)", 404: "not found", 500: "failed on the server"}.get(
        error.status, "refused"
    )
    return f"{kind}: {error}"


def _describe(ctx: ApiContext, job: Job) -> str:
    status = ctx.jobs.status(job)
    return json.dumps(
        {
            "job_id": status.id,
            "state": status.state.value,
            "position": status.position,
            "progress": round(status.progress, 3),
            "step": status.step,
            "steps": status.steps,
            "error": status.error,
            "seeds": list(status.seeds),
        },
        indent=1,
    )


async def _method_not_allowed(scope: dict[str, Any], send: Any) -> None:
    body = json.dumps(
        {
            "error": "method not allowed",
            "detail": f"/mcp answers POST (MCP over streamable HTTP), not {scope['method']}",
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"allow", b"POST"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _request(context: Context) -> Any:
    request = context.request_context.request
    if request is None:
        raise ToolError("this tool needs the HTTP endpoint /mcp (it runs as the logged-in user)")
    return request


def _caller(context: Context) -> Caller:
    return caller_of(_request(context).state)


class McpEndpoint:
    """`/mcp` as an ASGI app; `async with endpoint.running():` runs its session manager."""

    def __init__(self, ctx: ApiContext) -> None:
        self.server = MCPServer(
            name="stable-diffusion-studio",
            title="Stable Diffusion studio",
            instructions=INSTRUCTIONS,
            version=__version__,
            log_level="WARNING",  # the SDK configures logging when nothing has: keep it quiet
        )
        StudioTools(ctx).register(self.server)
        # Stateless: each POST is answered on its own (progress on its event stream), so any
        # worker, user or reconnect needs no session kept here. The login in front of the whole
        # app guards this route like every other, so the SDK's own host checks are not used.
        self.server.streamable_http_app(
            stateless_http=True,
            max_request_body_size=ctx.jobs.limits.max_body_bytes,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._manager = self.server.session_manager

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] != "POST":
            # Stateless: no session to stream to (GET) or to end (DELETE); an open GET would hang.
            await _method_not_allowed(scope, send)
            return
        await self._manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self._manager.run():
            yield
