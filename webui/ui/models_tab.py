"""The Models tab: every checkpoint with where it is now, switching and freeing memory, the VAE,
LoRA and embedding lists that insert into a prompt, and the checkpoint merger."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from webui.model_manager.cache import Tier
from webui.model_manager.merge import MergeMethod, MergeRecipe
from webui.model_manager.registry import ModelFile, ModelKind
from webui.model_manager.state_dict import CheckpointError
from webui.ui.context import PRIVATE, UiContext
from webui.ui.model_status import event_text, run_and_describe
from webui.ui.results import error_box, hide_error, show_error
from webui.ui.workers_panel import build_workers_table, worker_rows

if TYPE_CHECKING:
    from webui.studio import Studio

log = logging.getLogger(__name__)

TABLE_HEADERS = ["Checkpoint", "Architecture", "Hash", "Size", "Where now", "Last load or move"]
UNUSABLE_HEADERS = ["Kind", "File", "Why it cannot be used"]
INSERT_TARGETS = ("txt2img", "img2img", "inpaint")


@dataclass
class ModelsTab:
    table: gr.Dataframe
    choice: gr.Dropdown
    vae: gr.Dropdown
    status: gr.Markdown
    error: gr.Markdown
    loras: gr.Dataset
    embeddings: gr.Dataset
    insert_into: gr.Radio
    refresh: gr.Button
    switch: gr.Button
    unload: gr.Button
    evict: gr.Button
    unusable: gr.Dataframe
    workers: gr.Dataframe
    merged: Any = None  # the merge's event: the header's list follows it (app.py)
    acted: list[Any] = field(default_factory=list)  # switch/unload/evict events: the header follows


def format_size(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def checkpoint_rows(studio: Studio) -> list[list[str]]:
    """One row per checkpoint: the tier is where its weights are now; the hash shows once computed."""
    placements = {placement.path: placement for placement in studio.models.placements()}
    selected = studio.models.current_checkpoint()
    device = studio.device.type
    rows = []
    for file in studio.models.checkpoints():
        placement = placements.get(file.path)
        tier = placement.tier if placement else Tier.DISK
        where = {Tier.VRAM: f"VRAM ({device})", Tier.RAM: "RAM", Tier.DISK: "disk"}[tier]
        if placement and placement.in_use:
            where += ", in use"
        digest = studio.models.facts.cached_sha256(file.path)
        rows.append(
            [
                f"{file.name} ✓" if file.name == selected else file.name,
                file.label + weights_note(studio, file),
                digest[:10] if digest else "not hashed yet",
                format_size(file.size_bytes),
                where,
                event_text(placement.last_event) if placement and placement.last_event else "",
            ]
        )
    return rows


def weights_note(studio: Studio, file: ModelFile) -> str:
    """ ", EMA weights" or ", raw weights (has EMA)" for files with both; "" for the rest."""
    if not file.has_ema:
        return ""
    return ", EMA weights" if studio.models.uses_ema(file) else ", raw weights (has EMA)"


def ema_box(studio: Studio, title: str) -> Any:
    """The EMA checkbox for the checkpoint chosen in the dropdown: off and locked without EMA."""
    return gr.Checkbox(**_ema_box_args(studio, title))


def unusable_rows(studio: Studio) -> list[list[str]]:
    """One row per model file of any kind that the last scan refused, with its reason."""
    return [
        [file.kind.value, f"{file.name}{file.path.suffix}", file.error or ""]
        for file in studio.models.registry.unusable()
    ]


def network_samples(studio: Studio, kind: ModelKind) -> list[list[str]]:
    return [[file.name] for file in studio.models.registry.files(kind)]


def prompt_tag(kind: ModelKind, name: str) -> str:
    """What a click inserts: `<lora:name:1>` for a LoRA, the name itself for an embedding."""
    return f"<lora:{name}:1>" if kind is ModelKind.LORA else name


def insert_tag(prompt: str | None, tag: str) -> str:
    prompt = (prompt or "").rstrip()
    if not prompt:
        return tag
    return f"{prompt}, {tag}" if not prompt.endswith(",") else f"{prompt} {tag}"


def build_models_tab(ctx: UiContext) -> ModelsTab:
    studio = ctx.studio
    with gr.Row(equal_height=True):
        choice = gr.Dropdown(
            studio.models.checkpoint_titles(),
            value=studio.models.current_checkpoint(),
            label="Checkpoint",
            elem_id="models-choice",
            scale=3,
        )
        switch = gr.Button("Switch to it", variant="primary", elem_id="models-switch", scale=1, size="md")
        unload = gr.Button("Free its VRAM", elem_id="models-unload", scale=1, size="md")
        evict = gr.Button("Drop from memory", elem_id="models-evict", scale=1, size="md")
        refresh = gr.Button("Refresh lists", elem_id="models-refresh", scale=1, size="md")
    use_ema = gr.Checkbox(
        label="Use its EMA weights (files that hold both; as CompVis samples)",
        elem_id="models-ema",
        **_ema_box_args(studio, studio.models.current_checkpoint()),
    )
    error = error_box("models")
    status = gr.Markdown(elem_id="models-status")
    table = gr.Dataframe(
        value=checkpoint_rows(studio),
        headers=TABLE_HEADERS,
        interactive=False,
        wrap=True,
        elem_id="models-table",
        label="Checkpoints (✓ selected)",
    )
    vae = gr.Dropdown(
        studio.models.vae_choices(),
        value=studio.models.vae_choice,
        label="VAE (Automatic: a sidecar .vae file or the checkpoint's own)",
        elem_id="models-vae",
    )
    insert_into = gr.Radio(
        list(INSERT_TARGETS),
        value="txt2img",
        label="A click inserts into the prompt of",
        elem_id="models-insert-into",
    )
    with gr.Row():
        loras = gr.Dataset(
            components=[gr.Textbox(visible=False)],
            samples=network_samples(studio, ModelKind.LORA),
            label="LoRA (models/Lora)" + ("" if network_samples(studio, ModelKind.LORA) else ": none found"),
            elem_id="models-loras",
            samples_per_page=40,
        )
        embeddings = gr.Dataset(
            components=[gr.Textbox(visible=False)],
            samples=network_samples(studio, ModelKind.EMBEDDING),
            label="Embeddings (embeddings/)"
            + ("" if network_samples(studio, ModelKind.EMBEDDING) else ": none found"),
            elem_id="models-embeddings",
            samples_per_page=40,
        )
    unusable = gr.Dataframe(
        value=unusable_rows(studio),
        headers=UNUSABLE_HEADERS,
        interactive=False,
        wrap=True,
        elem_id="models-unusable",
        label="Files that cannot be used (fix or remove them, then refresh)",
    )
    workers = build_workers_table(ctx.jobs)
    tab = ModelsTab(
        table,
        choice,
        vae,
        status,
        error,
        loras,
        embeddings,
        insert_into,
        refresh,
        switch,
        unload,
        evict,
        unusable,
        workers,
    )
    refresh.click(lambda: worker_rows(ctx.jobs), outputs=workers, **PRIVATE)
    tab.merged = _build_merger(ctx, tab)

    def act(action: str, title: str) -> tuple[Any, Any, Any]:
        try:
            run = {
                "switch": studio.models.select_checkpoint,
                "unload": studio.models.unload_checkpoint,
                "evict": studio.models.evict_checkpoint,
            }[action]
            done = run_and_describe(studio, lambda: run(title))
        except Exception as exc:  # a broken file must not take the page down
            if not isinstance(exc, CheckpointError):
                log.exception("%s %s failed", action, title)
            return checkpoint_rows(studio), show_error(f"Could not {action} {title!r}: {exc}"), gr.skip()
        return checkpoint_rows(studio), hide_error(), done

    for button, action in ((switch, "switch"), (unload, "unload"), (evict, "evict")):
        tab.acted.append(
            button.click(
                lambda title, action=action: act(action, title),
                inputs=choice,
                outputs=[table, error, status],
                **PRIVATE,
            )
        )

    def run_select_vae(value: str) -> tuple[Any, Any]:
        try:
            studio.models.select_vae(value)
        except Exception as exc:
            if not isinstance(exc, CheckpointError):
                log.exception("selecting VAE %s failed", value)
            return gr.Dropdown(value=studio.models.vae_choice), show_error(
                f"Could not use VAE {value!r}: {exc}"
            )
        return gr.skip(), hide_error()

    vae.input(run_select_vae, inputs=vae, outputs=[vae, error], **PRIVATE)

    def pick_row(event: gr.SelectData) -> Any:
        row = event.row_value or []
        return row[0].removesuffix(" ✓") if row else gr.skip()

    table.select(pick_row, outputs=choice, **PRIVATE)
    choice.change(lambda title: ema_box(studio, title), inputs=choice, outputs=use_ema, **PRIVATE)

    def set_ema(title: str, use: bool, request: gr.Request) -> tuple[Any, Any, Any, Any]:
        if not ctx.caller(request).admin:  # the choice is the server's, for every user
            refused = show_error("only an admin may choose a checkpoint's weights")
            return gr.skip(), refused, gr.skip(), ema_box(studio, title)
        try:
            file = studio.models.find_checkpoint(title)
            ctx.live.update(ema_choices={**studio.settings.ema_choices, file.name: bool(use)})
        except (CheckpointError, ValueError) as exc:
            return (
                gr.skip(),
                show_error(f"Could not change the weights of {title!r}: {exc}"),
                gr.skip(),
                gr.skip(),
            )
        note = f"{file.name} will use its {'EMA' if use else 'raw'} weights from its next load"
        return checkpoint_rows(studio), hide_error(), note, gr.skip()

    use_ema.input(set_ema, inputs=[choice, use_ema], outputs=[table, error, status, use_ema], **PRIVATE)
    return tab


def _ema_box_args(studio: Studio, title: str) -> dict[str, Any]:
    try:
        file = studio.models.find_checkpoint(title)
    except CheckpointError:
        return {"value": False, "interactive": False}
    return {"value": studio.models.uses_ema(file), "interactive": file.has_ema}


def refresh_outputs(studio: Studio) -> tuple[Any, ...]:
    """After a rescan: the table, the dropdown, the VAE list, both network lists and the refused files."""
    studio.models.refresh_checkpoints()
    return (
        checkpoint_rows(studio),
        gr.Dropdown(choices=studio.models.checkpoint_titles(), value=studio.models.current_checkpoint()),
        gr.Dropdown(choices=studio.models.vae_choices(), value=studio.models.vae_choice),
        gr.Dataset(samples=network_samples(studio, ModelKind.LORA)),
        gr.Dataset(samples=network_samples(studio, ModelKind.EMBEDDING)),
        unusable_rows(studio),
    )


def _build_merger(ctx: UiContext, tab: ModelsTab) -> Any:
    studio = ctx.studio
    titles = studio.models.checkpoint_titles()
    with gr.Accordion("Merge checkpoints", open=False, elem_id="models-merger"):
        with gr.Row():
            primary = gr.Dropdown(titles, label="Primary (A)", elem_id="merge-primary")
            secondary = gr.Dropdown(titles, label="Secondary (B)", elem_id="merge-secondary")
            tertiary = gr.Dropdown(
                ["", *titles], value="", label="Tertiary (C, add difference)", elem_id="merge-tertiary"
            )
        with gr.Row():
            method = gr.Radio(
                [m.label for m in MergeMethod],
                value=MergeMethod.WEIGHTED_SUM.label,
                label="Method",
                elem_id="merge-method",
            )
            multiplier = gr.Slider(
                0, 1, value=0.5, step=0.05, label="Multiplier (M)", elem_id="merge-multiplier"
            )
            name = gr.Textbox(label="New checkpoint's name", placeholder="my-merge", elem_id="merge-name")
        merge = gr.Button("Merge", variant="primary", elem_id="merge-run")
        result = gr.Markdown(elem_id="merge-result")

    def run_merge(a: str, b: str, c: str, method_label: str, m: float, new_name: str) -> tuple[Any, ...]:
        try:
            if not a or not b:
                raise ValueError("choose a primary and a secondary checkpoint")
            method_of = {m.label: m for m in MergeMethod}
            recipe = MergeRecipe(
                primary=studio.models.find_checkpoint(a).path,
                secondary=studio.models.find_checkpoint(b).path,
                tertiary=studio.models.find_checkpoint(c).path if c else None,
                method=method_of[method_label],
                multiplier=m,
                name=new_name or "",
            )
            file = studio.models.merge_checkpoints(recipe)
        except (ValueError, OSError) as exc:
            return (show_error(f"Merge failed: {exc}"), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        titles = studio.models.checkpoint_titles()
        choices = gr.Dropdown(choices=titles)
        digest = studio.models.facts.cached_sha256(file.path)
        done = (
            f"Wrote **{file.name}** ({format_size(file.size_bytes)}, hash {digest[:10] if digest else '?'}) "
            f"to {file.path.parent}; it is in the lists now."
        )
        return (
            gr.Markdown(value=done, visible=True, elem_classes=[]),  # not in a past failure's style
            checkpoint_rows(studio),
            gr.Dropdown(choices=titles, value=file.name),
            choices,
            choices,
            gr.Dropdown(choices=["", *titles]),
        )

    return merge.click(
        run_merge,
        inputs=[primary, secondary, tertiary, method, multiplier, name],
        outputs=[result, tab.table, tab.choice, primary, secondary, tertiary],
        **PRIVATE,
    )
