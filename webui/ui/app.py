"""The first page: txt2img with checkpoint switching, built over an injected Studio."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from webui.engine.request import MAX_STEPS, GenerationRequest
from webui.engine.samplers import SCHEDULE_TYPES, sampler_names
from webui.jobs import Caller, JobQueue, JobState

if TYPE_CHECKING:
    from webui.studio import Studio

log = logging.getLogger(__name__)

TITLE = "Stable Diffusion studio"
MAX_UI_STEPS = min(150, MAX_STEPS)
MAX_UI_SIDE = 2048
SEED_MAX = 2**32 - 1
_PROGRESS_POLL_S = 0.2

# Gradio 6 takes css at launch()/mount_gradio_app(), not in Blocks(): see launch_options().
APP_CSS = """
#header { align-items: center; }
#header h1 { margin: 0; font-size: 1.6rem; }
#demo-banner { background: #fff7e6; border: 1px solid #f0b64d; border-radius: 8px; padding: 8px 14px; }
.dark #demo-banner { background: #3a2c10; border-color: #a4761f; }
#error { background: #fdecec; border: 1px solid #e5484d; border-radius: 8px; padding: 8px 14px; }
.dark #error { background: #3b1214; border-color: #b3262b; }
#error p { margin: 0; }
#generate { min-height: 96px; font-size: 1.15rem; }
#refresh-checkpoints { align-self: center; max-width: 44px; min-width: 44px; font-size: 1.1rem; }
#infotext textarea { font-family: var(--font-mono); font-size: 0.85rem; }
"""


def launch_options(studio: Studio) -> dict[str, Any]:
    """Keyword arguments for `launch()` or `gr.mount_gradio_app()` that this page expects."""
    # Serving saved files as they are keeps the PNG infotext in what the user downloads.
    return {
        "css": APP_CSS,
        "allowed_paths": [str(Path(studio.settings.outputs_dir).resolve())],
        # Gradio's own "Use via API" page would be empty: its events are private, the API is webui/api.
        "footer_links": ["gradio", "settings"],
    }


def build_ui(studio: Studio, jobs: JobQueue, caller_named: Callable[[str | None], Caller]) -> gr.Blocks:
    """The txt2img page over `studio`, generating through the shared `jobs` queue.

    `caller_named` turns the logged-in user name (None without a login) into the job owner.
    Every handler is a closure, so no state is module-level.
    """
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Row(elem_id="header", equal_height=True):
            gr.Markdown(f"# {TITLE}", elem_id="title")
            checkpoint = gr.Dropdown(
                choices=studio.checkpoint_titles(),
                value=studio.current_checkpoint(),
                label="Checkpoint",
                elem_id="checkpoint",
                scale=2,
            )
            refresh = gr.Button("↻", elem_id="refresh-checkpoints", size="sm", scale=0, min_width=44)
            vae = gr.Dropdown(
                choices=studio.vae_choices(), value=studio.vae_choice, label="VAE", elem_id="vae", scale=1
            )
        model_status = gr.Markdown(_model_status(studio), elem_id="model-status")
        gr.Markdown(studio.demo_message, elem_id="demo-banner", visible=studio.demo_mode)

        with gr.Row():
            with gr.Column(scale=5):
                prompt = gr.Textbox(
                    label="Prompt",
                    lines=3,
                    placeholder="a lighthouse at dusk, oil painting",
                    elem_id="prompt",
                    autofocus=True,
                )
                negative_prompt = gr.Textbox(label="Negative prompt", lines=2, elem_id="negative-prompt")
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate", variant="primary", size="lg", elem_id="generate")
                interrupt = gr.Button("Interrupt", size="sm", elem_id="interrupt")

        error = gr.Markdown(visible=False, elem_id="error")

        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                with gr.Row():
                    sampler = gr.Dropdown(
                        choices=sampler_names(), value="Euler a", label="Sampling method", elem_id="sampler"
                    )
                    scheduler = gr.Dropdown(
                        choices=list(SCHEDULE_TYPES),
                        value="Automatic",
                        label="Schedule type",
                        elem_id="scheduler",
                    )
                steps = gr.Slider(
                    1,
                    min(MAX_UI_STEPS, jobs.limits.max_steps),
                    value=20,
                    step=1,
                    precision=0,
                    label="Sampling steps",
                    elem_id="steps",
                )
                with gr.Row():
                    width = gr.Slider(
                        64, MAX_UI_SIDE, value=512, step=8, precision=0, label="Width", elem_id="width"
                    )
                    height = gr.Slider(
                        64, MAX_UI_SIDE, value=512, step=8, precision=0, label="Height", elem_id="height"
                    )
                cfg_scale = gr.Slider(1, 30, value=7, step=0.5, label="CFG scale", elem_id="cfg-scale")
                # Shown in the seed box's toolbar, where Gradio drops elem_id: find them by label in #seed.
                random_seed = gr.Button("Random", size="sm")
                reuse_seed = gr.Button("Reuse last", size="sm")
                seed = gr.Number(
                    value=-1,
                    precision=0,
                    minimum=-1,
                    maximum=SEED_MAX,
                    label="Seed (-1 = random)",
                    elem_id="seed",
                    buttons=[random_seed, reuse_seed],
                )
            with gr.Column(scale=1):
                result = gr.Image(
                    label="Result",
                    type="filepath",
                    interactive=False,
                    format="png",
                    elem_id="result",
                    height=512,
                )
                infotext = gr.Textbox(
                    label="Generation parameters",
                    lines=3,
                    interactive=False,
                    buttons=["copy"],
                    elem_id="infotext",
                )
        last_seed = gr.State(-1)

        def run_generate(
            prompt_text: str,
            negative_text: str,
            sampler_name: str,
            schedule_type: str,
            step_count: float,
            cfg: float,
            image_width: float,
            image_height: float,
            seed_value: float | None,
            http: gr.Request,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio injects progress by default value
        ) -> tuple[Any, Any, Any, Any]:
            request = GenerationRequest(
                prompt=prompt_text or "",
                negative_prompt=negative_text or "",
                sampler_name=sampler_name,
                scheduler=schedule_type,
                steps=int(step_count),
                cfg_scale=float(cfg),
                width=int(image_width),
                height=int(image_height),
                seed=-1 if seed_value is None else int(seed_value),
            )

            try:
                job = jobs.submit(request, caller_named(http.username))
            # GenerationError and CheckpointError are ValueErrors: the user can fix these.
            except ValueError as exc:
                return gr.skip(), gr.skip(), _show_error(str(exc)), gr.skip()
            while not job.wait(_PROGRESS_POLL_S):
                status = jobs.status(job)
                if status.position is not None:
                    progress(0, desc=f"Waiting in the queue: position {status.position}")
                else:
                    progress((status.step, status.steps), desc="Sampling")
            outcome = job.result
            if job.state is JobState.FAILED or outcome is None or not outcome.images:
                message = job.error or "the job was stopped before any image was finished"
                prefix = "" if job.user_error else "Generation failed: "
                return gr.skip(), gr.skip(), _show_error(prefix + message), gr.skip()
            image = _displayable(outcome.paths[0], demo) if outcome.paths else outcome.images[0]
            return image, outcome.infotexts[0], _hide_error(), outcome.seeds[0]

        def run_interrupt(http: gr.Request) -> None:
            job = jobs.current(caller_named(http.username))
            if job is not None:
                jobs.interrupt(job)

        def switch(apply: Callable[[str], object], value: str, current: Callable[[], str], what: str):
            """Apply a checkpoint or VAE choice; on failure the dropdown returns to what is in use."""
            try:
                apply(value)
            except Exception as exc:
                if not isinstance(exc, ValueError):
                    log.exception("loading %s %s failed", what, value)
                message = f"Could not use {what} {value!r}: {exc}"
                return gr.Dropdown(value=current()), _show_error(message), gr.skip()
            return gr.skip(), _hide_error(), _model_status(studio)

        def run_select(title: str) -> tuple[Any, Any, Any]:
            return switch(studio.select_checkpoint, title, studio.current_checkpoint, "checkpoint")

        def run_select_vae(choice: str) -> tuple[Any, Any, Any]:
            return switch(studio.select_vae, choice, lambda: studio.vae_choice, "VAE")

        def run_refresh() -> tuple[Any, Any]:
            titles = studio.refresh_checkpoints()
            return (
                gr.Dropdown(choices=titles, value=studio.current_checkpoint()),
                gr.Dropdown(choices=studio.vae_choices(), value=studio.vae_choice),
            )

        generate.click(
            run_generate,
            inputs=[prompt, negative_prompt, sampler, scheduler, steps, cfg_scale, width, height, seed],
            outputs=[result, infotext, error, last_seed],
            api_visibility="private",  # the HTTP API lives in webui/api, not in Gradio's endpoints
            # Our job queue orders the work; Gradio's own queue would hide the queue position.
            concurrency_limit=None,
        )
        interrupt.click(run_interrupt, api_visibility="private", queue=False)
        # `.input` fires only for user changes, so resetting the value after a failure does not loop.
        checkpoint.input(
            run_select, inputs=checkpoint, outputs=[checkpoint, error, model_status], api_visibility="private"
        )
        vae.input(run_select_vae, inputs=vae, outputs=[vae, error, model_status], api_visibility="private")
        refresh.click(run_refresh, outputs=[checkpoint, vae], api_visibility="private")
        random_seed.click(lambda: -1, outputs=seed, api_visibility="private", queue=False)
        reuse_seed.click(
            lambda value: value, inputs=last_seed, outputs=seed, api_visibility="private", queue=False
        )
    return demo


def _model_status(studio: Studio) -> str:
    """The latest load, move or eviction, e.g. "moved sd_xl_base from RAM to cuda: 6.94 GB in 0.31 s"."""
    events = studio.model_events()
    return events[-1].describe() if events else ""


def _show_error(message: str) -> gr.Markdown:
    return gr.Markdown(value=f"**Error:** {message}", visible=True)


def _hide_error() -> gr.Markdown:
    return gr.Markdown(value="", visible=False)


def _displayable(path: Path, demo: gr.Blocks) -> str | Image.Image:
    """The saved file when Gradio may serve it (keeps its metadata), else the decoded image."""
    resolved = Path(path).resolve()
    roots = [Path.cwd(), Path(tempfile.gettempdir()), *(Path(root) for root in demo.allowed_paths)]
    if any(resolved.is_relative_to(root.resolve()) for root in roots):
        return str(resolved)
    with Image.open(resolved) as image:
        return image.copy()
