"""The Settings tab: outputs, file naming, watermark, previews, memory budgets and limits.

Applied at once and saved to the settings file (`DATA_DIR/settings.json`) for the next start."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from webui.jobs import Limits
from webui.jobs.limits import parse_size
from webui.outputs.naming import TOKENS
from webui.settings import Settings
from webui.ui.context import PRIVATE, UiContext
from webui.ui.results import hide_error, show_error

PREVIEW_LABELS = {
    "Linear (fast, rough colours)": "linear",
    "TAESD (models/VAE-approx)": "taesd",
    "Full VAE (slow, exact)": "vae",
    "None": "none",
}


def _label_of(method: str) -> str:
    return next(label for label, value in PREVIEW_LABELS.items() if value == method)


def _size_text(pixels: int) -> str:
    side = int(pixels**0.5)
    return f"{side}x{side}" if side * side == pixels else str(pixels)


def _budget(text: str | None, what: str) -> float | None:
    """An empty box is "automatic"; 0 is a real budget (keep no model there)."""
    text = str(text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"the {what} budget must be a number of GB, or empty for automatic") from None


def _budget_text(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def changes_from_form(current: Settings, values: list[Any]) -> dict[str, Any]:
    """The editable fields from the form's values; ValueError names a value that cannot be used."""
    (
        outputs,
        pattern,
        watermark,
        method_label,
        period,
        vram,
        ram,
        max_size,
        batch_size,
        batch_count,
        steps,
        body_mb,
        queued,
    ) = values
    if not str(outputs or "").strip():
        raise ValueError("the outputs folder is empty")
    if period is None or int(period) != period:
        raise ValueError("the preview period must be a whole number of steps")
    limits = replace(
        current.limits,
        max_pixels=parse_size(str(max_size)),
        max_batch_size=int(batch_size),
        max_batch_count=int(batch_count),
        max_steps=int(steps),
        max_body_mb=float(body_mb),
        max_queued_per_user=int(queued),
    )
    return {
        "outputs_dir": Path(str(outputs).strip()).expanduser(),
        "filename_pattern": str(pattern or "").strip(),
        "watermark": bool(watermark),
        "preview_method": PREVIEW_LABELS[method_label],
        "preview_period": int(period),
        "vram_budget_gb": _budget(vram, "VRAM"),
        "ram_budget_gb": _budget(ram, "RAM"),
        "limits": limits,
    }


def build_settings_tab(ctx: UiContext) -> None:
    live = ctx.live
    now = live.current
    limits: Limits = now.limits
    with gr.Column(elem_id="settings"):
        if live.pinned:
            gr.Markdown(
                f"Set by command-line flags for this run: **{', '.join(sorted(live.pinned))}**. "
                "A change here applies now, but the flag wins again at the next start.",
                elem_id="settings-pinned",
            )
        with gr.Group():
            gr.Markdown("### Saving images")
            outputs = gr.Textbox(str(now.outputs_dir), label="Outputs folder", elem_id="settings-outputs")
            pattern = gr.Textbox(
                now.filename_pattern,
                label="File name pattern (after the number, e.g. 00012-[seed])",
                info="Tokens: " + " ".join(f"[{token}]" for token in TOKENS),
                elem_id="settings-pattern",
            )
            watermark = gr.Checkbox(
                now.watermark, label="Embed the invisible watermark", elem_id="settings-watermark"
            )
        with gr.Group():
            gr.Markdown("### Live previews")
            method = gr.Radio(
                list(PREVIEW_LABELS),
                value=_label_of(now.preview_method),
                label="Method",
                elem_id="settings-preview-method",
            )
            period = gr.Number(
                now.preview_period,
                precision=0,
                minimum=1,
                label="A preview every N steps",
                elem_id="settings-preview-period",
            )
        with gr.Group():
            gr.Markdown("### Memory budgets (GB; empty = automatic)")
            with gr.Row():
                budgets = ctx.studio.models.cache.budgets
                vram = gr.Textbox(
                    _budget_text(now.vram_budget_gb),
                    label="VRAM for cached models",
                    placeholder=f"automatic (now {budgets.vram_bytes / 1e9:.1f} GB)",
                    elem_id="settings-vram",
                )
                ram = gr.Textbox(
                    _budget_text(now.ram_budget_gb),
                    label="RAM for models kept warm",
                    placeholder=f"automatic (now {budgets.ram_bytes / 1e9:.1f} GB)",
                    elem_id="settings-ram",
                )
        with gr.Group():
            gr.Markdown("### Limits on one request (admins)")
            with gr.Row():
                max_size = gr.Textbox(
                    _size_text(limits.max_pixels), label="Largest size (WxH)", elem_id="settings-max-size"
                )
                batch_size = gr.Number(
                    limits.max_batch_size, precision=0, label="Batch size", elem_id="settings-max-batch-size"
                )
                batch_count = gr.Number(
                    limits.max_batch_count,
                    precision=0,
                    label="Batch count",
                    elem_id="settings-max-batch-count",
                )
            with gr.Row():
                steps = gr.Number(limits.max_steps, precision=0, label="Steps", elem_id="settings-max-steps")
                body_mb = gr.Number(
                    limits.max_body_mb, label="Request body (MB)", elem_id="settings-max-body-mb"
                )
                queued = gr.Number(
                    limits.max_queued_per_user,
                    precision=0,
                    label="Waiting jobs per user",
                    elem_id="settings-max-queued",
                )
        apply = gr.Button("Apply and save", variant="primary", elem_id="settings-apply")
        error = gr.Markdown(visible=False, elem_id="settings-error", elem_classes=["error-box"])
        saved = gr.Markdown(elem_id="settings-saved")
    form = [
        outputs,
        pattern,
        watermark,
        method,
        period,
        vram,
        ram,
        max_size,
        batch_size,
        batch_count,
        steps,
        body_mb,
        queued,
    ]

    def run_apply(request: gr.Request, *values: Any) -> tuple[Any, Any]:
        if not ctx.caller(request).admin:
            return show_error("only an admin may change the server's settings"), ""
        try:
            live.update(**changes_from_form(live.current, list(values)))
        except (ValueError, TypeError) as error:
            return show_error(str(error)), ""
        where = f"saved to {live.file.path}" if live.file else "applied (this server keeps no settings file)"
        return hide_error(), f"Settings {where}."

    apply.click(run_apply, inputs=form, outputs=[error, saved], **PRIVATE)
