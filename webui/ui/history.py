"""The History tab: this user's recent results, also those of jobs whose browser tab was closed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from webui.jobs import JobState
from webui.ui.context import PRIVATE, UiContext
from webui.ui.results import gallery_entries, image_gallery, infotext_box, selected_item

MAX_IMAGES = 200


def history_items(ctx: UiContext, request: gr.Request) -> list[dict[str, Any]]:
    """Images of the caller's finished jobs still kept by the queue, newest first."""
    items: list[dict[str, Any]] = []
    for job in reversed(ctx.jobs.jobs(ctx.caller(request))):
        result = job.result
        if job.state is JobState.FAILED or result is None:
            continue
        for path, infotext, seed in zip(result.paths, result.infotexts, result.seeds):
            items.append({"path": str(path), "infotext": infotext, "seed": seed})
    return [item for item in items if Path(item["path"]).is_file()][:MAX_IMAGES]


@dataclass
class HistoryTab:
    load: Callable[..., tuple[Any, ...]]  # the app also runs it when the tab is opened
    outputs: list[Any]


def build_history_tab(ctx: UiContext, allowed_roots: Callable[[], list[Path]]) -> HistoryTab:
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", elem_id="history-refresh", scale=0, min_width=120)
        summary = gr.Markdown(elem_id="history-summary")
    gallery = image_gallery("Your recent images (newest first)", "history-gallery", columns=5, height=560)
    infotext = infotext_box("history-infotext")
    items = gr.State([])

    def load(request: gr.Request) -> tuple[Any, Any, Any, Any]:
        found = history_items(ctx, request)
        hours = ctx.jobs.retention_seconds / 3600
        note = (
            f"{len(found)} image(s) from the last {hours:g} hour(s). Every image is also saved in "
            f"`{ctx.studio.settings.outputs_dir}`."
        )
        first = found[0]["infotext"] if found else ""
        return gallery_entries(found, allowed_roots()), found, first, note

    def select(found: list[dict[str, Any]], event: gr.SelectData) -> Any:
        item = selected_item(found, event.index)
        return item["infotext"] if item else gr.skip()

    outputs = [gallery, items, infotext, summary]
    refresh.click(load, outputs=outputs, **PRIVATE)
    gallery.select(select, inputs=items, outputs=infotext, **PRIVATE)
    return HistoryTab(load, outputs)
