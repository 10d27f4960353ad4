"""A generation tab's right-hand side (live progress and preview, gallery, infotext) and the
handlers that run a job through the shared queue and stream its progress into it."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from webui.engine.request import GenerationRequest
from webui.jobs import Job, JobState
from webui.jobs.queue import JobNotFound, QueueFull
from webui.ui.context import PRIVATE, UiContext
from webui.ui.controls import GenerationControls
from webui.ui.progress import image_data_url, live_html

log = logging.getLogger(__name__)

POLL_S = 0.15  # how often a tab looks at its job; a step of a real model takes longer


@dataclass
class ResultsPanel:
    live: gr.HTML
    gallery: gr.Gallery
    infotext: gr.Textbox
    error: gr.Markdown
    items: gr.State  # [{"path", "infotext", "seed"}] of the last job, in gallery order
    selected: gr.State  # the gallery index shown in `infotext`
    job_id: gr.State  # this browser tab's latest job: what Interrupt and Skip act on
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_extras: gr.Button


def build_results(tab: str) -> ResultsPanel:
    error = error_box(tab)  # on top, where the eye is after a click (not under the gallery)
    live = gr.HTML("", elem_id=f"{tab}-live", elem_classes=["live"], visible=False)
    gallery = image_gallery("Results", f"{tab}-gallery", columns=2, height=520)
    infotext = infotext_box(f"{tab}-infotext")
    with gr.Row():
        send_img2img = gr.Button("→ img2img", size="sm", elem_id=f"{tab}-send-img2img")
        send_inpaint = gr.Button("→ Inpaint", size="sm", elem_id=f"{tab}-send-inpaint")
        send_extras = gr.Button("→ Extras", size="sm", elem_id=f"{tab}-send-extras")
    return ResultsPanel(
        live,
        gallery,
        infotext,
        error,
        gr.State([]),
        gr.State(0),
        gr.State(None),
        send_img2img,
        send_inpaint,
        send_extras,
    )


def image_gallery(label: str, elem_id: str, *, columns: int, height: int) -> gr.Gallery:
    """Saved images as PNG (their infotext kept in downloads), with download and full screen."""
    return gr.Gallery(
        label=label,
        elem_id=elem_id,
        columns=columns,
        height=height,
        format="png",
        object_fit="contain",
        buttons=["download", "fullscreen"],
        interactive=False,
    )


def infotext_box(elem_id: str) -> gr.Textbox:
    return gr.Textbox(
        label="Generation parameters",
        lines=4,
        interactive=False,
        buttons=["copy"],
        elem_id=elem_id,
        elem_classes=["infotext"],
    )


def error_box(prefix: str) -> gr.Markdown:
    return gr.Markdown(visible=False, elem_id=f"{prefix}-error", elem_classes=["error-box"])


def show_error(message: str) -> gr.Markdown:
    return gr.Markdown(value=f"**Error:** {message}", visible=True, elem_classes=["error-box"])


def show_notice(message: str) -> gr.Markdown:
    """In the error box's place, styled as a note: the job finished, but something to know."""
    return gr.Markdown(value=f"**Note:** {message}", visible=True, elem_classes=["notice-box"])


def hide_error() -> gr.Markdown:
    return gr.Markdown(value="", visible=False)


def selected_item(items: list[dict[str, Any]], index: int | None) -> dict[str, Any] | None:
    if not items:
        return None
    return items[index if index is not None and 0 <= index < len(items) else 0]


def wire_generation(
    ctx: UiContext,
    controls: GenerationControls,
    panel: ResultsPanel,
    buttons: tuple[gr.Button, gr.Button, gr.Button],
    *,
    extra_inputs: list[gr.components.Component],
    make_request: Callable[[list[Any], list[Any]], GenerationRequest],
    allowed_roots: Callable[[], list[Path]],
    staged: tuple[gr.components.Component, gr.components.Component] | None = None,
) -> Any:
    """Generate, Interrupt and Skip (`buttons`) for one tab; the Generate event, which the page's
    header follows. `make_request(control_values, extra_values)`.

    `staged` = (shown, hidden): Generate first copies `shown` into `hidden` in the browser (see
    `stage_copy`), and `extra_inputs` name `hidden`."""
    generate, interrupt, skip = buttons
    count = len(controls.inputs)

    def run(request: gr.Request, *values: Any) -> Iterator[dict[Any, Any]]:
        try:
            job = ctx.jobs.submit(
                make_request(list(values[:count]), list(values[count:])), ctx.caller(request)
            )
        # GenerationError, CheckpointError and LimitError are ValueErrors: the user can fix them.
        except (ValueError, QueueFull) as error:
            yield {**_cleared(panel), panel.error: show_error(str(error))}
            return
        yield {panel.job_id: job.id, panel.error: hide_error()}
        yield from _follow(ctx, job, panel)
        yield _finished(job, panel, allowed_roots())

    def act(job_id: str | None, request: gr.Request, action: Callable[[Job], object]) -> None:
        if not job_id:
            return
        with contextlib.suppress(JobNotFound):  # finished and forgotten long ago: nothing to stop
            action(ctx.jobs.get(job_id, ctx.caller(request)))

    def run_interrupt(job_id: str | None, request: gr.Request) -> None:
        act(job_id, request, ctx.jobs.interrupt)

    def run_skip(job_id: str | None, request: gr.Request) -> None:
        act(job_id, request, ctx.jobs.skip)

    outputs = {
        panel.live,
        panel.gallery,
        panel.infotext,
        panel.error,
        panel.items,
        panel.selected,
        panel.job_id,
    }
    # Ctrl+Enter in a prompt box clicks this button (see KEYS_JS in app.py).
    start = generate.click if staged is None else stage_copy(generate.click, *staged).then
    finished = start(
        run,
        inputs=[*controls.inputs, *extra_inputs],
        outputs=outputs,  # type: ignore[arg-type]
        # Our job queue orders the work; Gradio's own queue would hide the queue position.
        concurrency_limit=None,
        **PRIVATE,
    )
    interrupt.click(run_interrupt, inputs=panel.job_id, queue=False, **PRIVATE)
    skip.click(run_skip, inputs=panel.job_id, queue=False, **PRIVATE)
    panel.gallery.select(_select, inputs=panel.items, outputs=[panel.infotext, panel.selected], **PRIVATE)
    controls.reuse_seed.click(
        _reuse_seed, inputs=[panel.items, panel.selected], outputs=controls.seed, queue=False, **PRIVATE
    )
    return finished


def stage_copy(
    trigger: Callable[..., Any], shown: gr.components.Component, hidden: gr.components.Component
) -> Any:
    """An event copying `shown` into the invisible `hidden` in the browser alone; `.then` it.

    For the inpaint editor. Gradio (6.31) keeps every input of a finished server event in a list
    it pushes each later progress update to, and the editor answers every push by uploading its
    layers again: hundreds of uploads per Generate on any tab. A browser-only event is not listed,
    and a hidden component is never asked for its data, so the canvas uploads once, on this copy.
    """
    return trigger(None, js="(value) => value", inputs=shown, outputs=hidden, **PRIVATE)


def _follow(ctx: UiContext, job: Job, panel: ResultsPanel) -> Iterator[dict[Any, Any]]:
    """Stream the job's progress and newest preview until it ends; only changes are sent."""
    seen_preview, preview_url, last = 0, None, None
    while not job.wait(POLL_S):
        status = ctx.jobs.status(job)
        if status.preview_step != seen_preview:
            latest = job.preview()
            if latest is not None:
                seen_preview, preview_url = latest[0], image_data_url(latest[1])
        running, _waiting = ctx.jobs.counts()
        text = live_html(status, preview_url, running if status.state is JobState.QUEUED else 0)
        if text != last:
            last = text
            yield {panel.live: gr.HTML(text, visible=True)}


def _finished(job: Job, panel: ResultsPanel, roots: list[Path]) -> dict[Any, Any]:
    outcome = job.result
    # A failure clears the last result: left there, it reads as this click's outcome.
    done: dict[Any, Any] = {**_cleared(panel), panel.live: gr.HTML("", visible=False)}
    if job.state is JobState.INTERRUPTED and (outcome is None or not outcome.images):
        done[panel.error] = show_error(job.error or "Interrupted before any image was finished.")
        return done
    if job.state is JobState.FAILED or outcome is None or not outcome.images:
        message = job.error or "the job ended without an image"
        done[panel.error] = show_error(message if job.user_error else f"Generation failed: {message}")
        return done
    items = [
        {"path": str(path), "infotext": infotext, "seed": seed}
        for path, infotext, seed in zip(outcome.paths, outcome.infotexts, outcome.seeds)
    ]
    gallery = gallery_entries(items, roots)
    done.update(
        {
            # Shown large from the start, with its download and full-screen buttons, never cropped.
            panel.gallery: gr.Gallery(value=gallery, selected_index=0),
            panel.infotext: items[0]["infotext"],
            panel.items: items,
            panel.selected: 0,
        }
    )
    notes = list(outcome.warnings)  # extensions that failed while the job still finished
    if job.state is not JobState.DONE:
        notes.insert(0, "Interrupted: showing the images finished before the stop.")
    done[panel.error] = show_notice("\n\n".join(notes)) if notes else hide_error()
    return done


def _cleared(panel: ResultsPanel) -> dict[Any, Any]:
    """Updates that empty the results (gallery, parameters, what send-to and Reuse read)."""
    return {panel.gallery: gr.Gallery(value=None), panel.infotext: "", panel.items: [], panel.selected: 0}


def _select(items: list[dict[str, Any]], event: gr.SelectData) -> tuple[Any, int]:
    item = selected_item(items, event.index)
    return (item["infotext"] if item else gr.skip()), event.index


def _reuse_seed(items: list[dict[str, Any]], index: int) -> Any:
    item = selected_item(items, index)
    return item["seed"] if item else gr.skip()


def gallery_entries(items: list[dict[str, Any]], roots: list[Path]) -> list[tuple[Any, str]]:
    return [(displayable_image(Path(item["path"]), roots), f"Seed {item['seed']}") for item in items]


def displayable_image(path: Path, roots: list[Path]) -> str | Image.Image:
    """The saved file when Gradio may serve it (the download keeps its infotext), else the pixels."""
    resolved = path.resolve()
    allowed = [Path.cwd(), Path(tempfile.gettempdir()), *roots]
    if any(resolved.is_relative_to(root.resolve()) for root in allowed):
        return str(resolved)
    with Image.open(resolved) as image:
        return image.copy()
