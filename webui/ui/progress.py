"""The live panel's HTML: a progress bar with step, total and ETA, the queue position, the preview."""

from __future__ import annotations

import base64
import html
import io

from PIL import Image

from webui.jobs import JobState, JobStatus
from webui.jobs.workers import LOCAL_WORKER

# Previews bigger than this (TAESD, full VAE) travel as JPEG: a 1024² PNG every step would be MBs.
_PNG_PIXELS = 256 * 256


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def status_line(status: JobStatus, running_elsewhere: int = 0) -> str:
    """One line of text for the job's state, e.g. "Step 5/20 · batch 2/3 · ETA 4 s"."""
    if status.state is JobState.QUEUED:
        ahead = ""
        if running_elsewhere == 1:
            ahead = " (another job is running)"
        elif running_elsewhere > 1:
            ahead = f" ({running_elsewhere} jobs are running on the workers)"
        return f"Waiting in the queue: position {status.position or 1}{ahead}"
    if status.state is JobState.RUNNING:
        if status.step == 0:
            return "Starting: loading the model and encoding the prompt"
        parts = [f"Step {status.step}/{status.steps}"]
        if status.batches > 1:
            parts.append(f"batch {status.batch + 1}/{status.batches}")
        eta = format_eta(status.eta_seconds)
        if eta:
            parts.append(f"ETA {eta}")
        if status.worker and status.worker != LOCAL_WORKER:  # several workers: say which
            parts.append(f"on worker {status.worker}")
        return " · ".join(parts)
    return status.state.value.capitalize()


def image_data_url(image: Image.Image) -> str:
    stream = io.BytesIO()
    if image.width * image.height <= _PNG_PIXELS:
        image.save(stream, format="PNG")
        kind = "png"
    else:
        image.convert("RGB").save(stream, format="JPEG", quality=85)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(stream.getvalue()).decode('ascii')}"


def live_html(status: JobStatus, preview: str | None, running_elsewhere: int = 0) -> str:
    """The bar (its width is the whole job's progress), its text, and the latest preview if any."""
    percent = 0.0 if status.state is JobState.QUEUED else round(100 * status.progress, 1)
    text = html.escape(status_line(status, running_elsewhere))
    parts = [
        f'<div class="live-progress" data-state="{status.state.value}" data-step="{status.step}" '
        f'data-steps="{status.steps}">',
        f'<div class="live-bar" style="width: {percent}%"></div>',
        f'<span class="live-text">{text}</span></div>',
    ]
    if preview:
        parts.append(f'<img class="live-preview" alt="live preview" src="{preview}">')
    return "".join(parts)
