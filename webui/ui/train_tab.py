"""The Train tab: a LoRA, an embedding, a fine-tune or a tiny model from a folder of captioned images.

The job runs in the shared queue like a generation; this tab follows it with a live loss
plot and the sample images, and the written file appears in the model lists at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from webui.jobs import Job, JobState
from webui.jobs.queue import JobNotFound, QueueFull
from webui.training.request import (
    MAX_RANK,
    MAX_TRAIN_STEPS,
    MAX_VECTORS,
    SHAPES_DATASET,
    TrainingKind,
    TrainingRequest,
)
from webui.ui.context import PRIVATE, UiContext
from webui.ui.results import error_box, hide_error, show_error

POLL_S = 0.5
_HOW_TO_USE = {
    TrainingKind.LORA: "Use it in a prompt as `<lora:{name}:1>` (Models tab → LoRA list).",
    TrainingKind.EMBEDDING: "Use it by writing `{name}` in a prompt.",
    TrainingKind.FINETUNE: "Choose `{name}` in the Checkpoint list above.",
    TrainingKind.SCRATCH: "Choose `{name}` in the Checkpoint list above.",
}


@dataclass
class TrainTab:
    started: Any  # the Train button's event: the page chains a refresh of the model lists to it


def build_train_tab(ctx: UiContext) -> TrainTab:
    studio = ctx.studio
    gr.Markdown(
        "Train on a folder **on the server** holding images with a same-named `.txt` caption beside each "
        f"(`cat.png` + `cat.txt`), or on `{SHAPES_DATASET}`, the procedural dataset the demo learned from. "
        "The job waits in the same queue as generations; Interrupt keeps its last checkpoint, and "
        "training again under the same name resumes from it."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Row():
                kind = gr.Dropdown(
                    choices=[(k.label, k.value) for k in TrainingKind],
                    value=TrainingKind.LORA.value,
                    label="What to train",
                    elem_id="train-kind",
                )
                name = gr.Textbox(
                    label="Name (the file written)", placeholder="my-style", elem_id="train-name"
                )
            dataset = gr.Textbox(
                value=SHAPES_DATASET, label="Dataset folder (or 'shapes')", elem_id="train-dataset"
            )
            base = gr.Dropdown(
                choices=studio.models.checkpoint_titles(),
                value=studio.models.current_checkpoint(),
                label="Base checkpoint (not used by 'from scratch')",
                elem_id="train-base",
            )
            with gr.Row():
                steps = gr.Number(
                    500, label="Steps", precision=0, minimum=1, maximum=MAX_TRAIN_STEPS, elem_id="train-steps"
                )
                learning_rate = gr.Number(
                    0, label="Learning rate (0: the kind's default)", minimum=0, elem_id="train-learning-rate"
                )
                batch_size = gr.Number(
                    4, label="Batch size", precision=0, minimum=1, maximum=64, elem_id="train-batch-size"
                )
            with gr.Row():
                resolution = gr.Number(
                    studio.models.default_size,
                    label="Resolution",
                    precision=0,
                    minimum=64,
                    maximum=2048,
                    step=64,
                    elem_id="train-resolution",
                )
                rank = gr.Number(
                    8, label="LoRA rank", precision=0, minimum=1, maximum=MAX_RANK, elem_id="train-rank"
                )
                vectors = gr.Number(
                    2,
                    label="Embedding vectors",
                    precision=0,
                    minimum=1,
                    maximum=MAX_VECTORS,
                    elem_id="train-vectors",
                )
            init_text = gr.Textbox(label="Embedding starts from these words (optional)", elem_id="train-init")
            with gr.Row():
                sample_prompt = gr.Textbox(label="Sample prompt", scale=3, elem_id="train-sample-prompt")
                sample_every = gr.Number(
                    0,
                    label="Sample every N steps (0: at the end)",
                    precision=0,
                    minimum=0,
                    elem_id="train-sample-every",
                )
            with gr.Row():
                train = gr.Button("Train", variant="primary", elem_id="train-start")
                interrupt = gr.Button("Interrupt", elem_id="train-interrupt")
        with gr.Column(scale=1):
            error = error_box("train")
            status = gr.Markdown("", elem_id="train-status")
            plot = gr.LinePlot(
                _losses([]),
                x="step",
                y="loss",
                title="Loss",
                height=260,
                elem_id="train-loss",
                x_title="step",
            )
            samples = gr.Image(label="Samples", interactive=False, elem_id="train-samples", height=200)
    job_id = gr.State(None)
    inputs = [kind, name, dataset, base, steps, learning_rate, batch_size, resolution, rank, vectors]
    inputs += [init_text, sample_prompt, sample_every]

    def run(request: gr.Request, *values: Any) -> Iterator[dict[Any, Any]]:
        try:
            training = _request(*values)
            job = ctx.jobs.submit_training(training, ctx.caller(request))
        except (ValueError, QueueFull) as problem:  # TrainingError and CheckpointError name the field
            yield {error: show_error(str(problem)), status: ""}
            return
        yield {job_id: job.id, error: hide_error(), plot: _losses([]), samples: None}
        yield from _follow(ctx, job, status, plot, samples)
        yield _finished(job, training, status, error)

    def stop(current: str | None, request: gr.Request) -> None:
        if current:
            with contextlib.suppress(JobNotFound):
                ctx.jobs.interrupt(ctx.jobs.get(current, ctx.caller(request)))

    started = train.click(
        run, inputs=inputs, outputs=[job_id, error, status, plot, samples], concurrency_limit=None, **PRIVATE
    )
    interrupt.click(stop, inputs=job_id, queue=False, **PRIVATE)
    return TrainTab(started)


def _request(
    kind,
    name,
    dataset,
    base,
    steps,
    learning_rate,
    batch_size,
    resolution,
    rank,
    vectors,
    init,
    prompt,
    every,
) -> TrainingRequest:
    return TrainingRequest(
        kind=TrainingKind(kind),
        name=(name or "").strip(),
        dataset=(dataset or "").strip(),
        base=base or "",
        steps=_whole(steps),
        learning_rate=float(learning_rate or 0),
        batch_size=_whole(batch_size),
        resolution=_whole(resolution),
        rank=_whole(rank),
        vectors=_whole(vectors),
        init_text=init or "",
        sample_prompt=prompt or "",
        sample_every=_whole(every),
    )


def _whole(value: Any) -> int:
    number = float(value or 0)
    return int(number) if number.is_integer() else -1  # a fraction fails validation by name


def _losses(points: list[tuple[int, float]]) -> pd.DataFrame:
    return pd.DataFrame({"step": [p[0] for p in points], "loss": [p[1] for p in points]})


def _follow(ctx: UiContext, job: Job, status: gr.Markdown, plot: gr.LinePlot, samples: gr.Image):
    seen_points, seen_preview, last_text = 0, 0, None
    while not job.wait(POLL_S):
        state = ctx.jobs.status(job)
        update: dict[Any, Any] = {}
        text = _status_text(state)
        if text != last_text:
            update[status], last_text = text, text
        points = job.losses()
        if len(points) != seen_points:
            update[plot], seen_points = _losses(points), len(points)
        if state.preview_step != seen_preview:
            preview = job.preview()
            if preview is not None:
                update[samples], seen_preview = preview[1], preview[0]
        if update:
            yield update
    preview = job.preview()
    final: dict[Any, Any] = {plot: _losses(job.losses())}
    if preview is not None:
        final[samples] = preview[1]
    yield final


def _status_text(state) -> str:
    if state.state is JobState.QUEUED:
        return f"Waiting in the queue (place {state.position})."
    phase = f" ({state.phase})" if state.phase else ""
    loss = f", loss {state.loss:.4f}" if state.loss is not None else ""
    eta = f", about {state.eta_seconds:.0f} s left" if state.eta_seconds else ""
    return f"Training{phase}: step {state.step} of {state.steps}{loss}{eta}."


def _finished(job: Job, request: TrainingRequest, status: gr.Markdown, error: gr.Markdown) -> dict[Any, Any]:
    if job.state is JobState.DONE and job.result is not None:
        use = _HOW_TO_USE[TrainingKind(request.kind)].format(name=request.name)
        seconds = job.result.seconds
        return {
            status: f"Done in {seconds:.0f} s: wrote `{job.result.path.name}`. {use}",
            error: hide_error(),
        }
    if job.state is JobState.INTERRUPTED:
        return {status: "", error: show_error(job.error or "Interrupted.")}
    return {status: "", error: show_error(job.error or "training failed")}
