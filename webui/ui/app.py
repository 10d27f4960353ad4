"""The page: a header with the checkpoint, then one tab per job to do. Each tab is its own module;
this one lays them out and wires what crosses tabs (send-to buttons, PNG Info, the header)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from webui.model_manager.registry import ModelFile, ModelKind
from webui.model_manager.state_dict import CheckpointError
from webui.outputs import parse_infotext
from webui.ui.account_tab import build_account_tab
from webui.ui.context import PRIVATE, UiContext
from webui.ui.controls import tool_button
from webui.ui.extensions_tab import build_extension_tabs, build_extensions_settings
from webui.ui.extras import SINGLE, build_extras_tab
from webui.ui.generation_tab import GenerationTab
from webui.ui.history import build_history_tab
from webui.ui.img2img import build_img2img
from webui.ui.inpaint import EDITOR_READY_HEAD, build_inpaint
from webui.ui.masks import editor_value
from webui.ui.model_status import header_status, run_and_describe
from webui.ui.models_tab import (
    INSERT_TARGETS,
    build_models_tab,
    checkpoint_rows,
    insert_tag,
    prompt_tag,
    refresh_outputs,
    unusable_rows,
)
from webui.ui.pnginfo import build_pnginfo_tab
from webui.ui.range_notes import RANGE_NOTES_HEAD
from webui.ui.results import error_box, hide_error, selected_item, show_error
from webui.ui.settings_tab import build_settings_tab
from webui.ui.styles_controls import wire_styles
from webui.ui.tooltips import tooltips_head
from webui.ui.train_tab import build_train_tab
from webui.ui.txt2img import build_txt2img
from webui.ui.workers_panel import worker_rows

if TYPE_CHECKING:
    from webui.studio import Studio

log = logging.getLogger(__name__)

TITLE = "Stable Diffusion studio"
NOTHING_TO_SEND = "there is no result to send yet: generate an image first"
# Gradio pushes every later progress update to all outputs an event ever had (and to everything
# inside an output container such as the page's tabs), and the inpaint editor answers each by
# re-uploading its layers. Progress shown on the clicked button keeps the editor out of that list.
SEND_OPTIONS: dict[str, Any] = {**PRIVATE, "show_progress": "hidden"}

# Gradio 6 takes css and head at launch()/mount_gradio_app(), not in Blocks(): see launch_options().
APP_CSS = """
#header { align-items: center; }
#header h1 { margin: 0; font-size: 1.2rem; white-space: nowrap; }
#header #title { flex: 0 0 auto !important; min-width: 250px !important; width: 250px; }
#demo-banner { background: #fff7e6; border: 1px solid #f0b64d; border-radius: 8px; padding: 8px 14px; }
.dark #demo-banner { background: #3a2c10; border-color: #a4761f; }
.error-box { background: #fdecec; border: 1px solid #e5484d; border-radius: 8px; padding: 8px 14px; }
.dark .error-box { background: #3b1214; border-color: #b3262b; }
.error-box p, .notice-box p { margin: 0; }
.notice-box { background: #fff7e6; border: 1px solid #f0b64d; border-radius: 8px; padding: 8px 14px; }
.dark .notice-box { background: #3a2c10; border-color: #a4761f; }
.generate { min-height: 88px; font-size: 1.15rem; }
.tool-button { align-self: center; white-space: nowrap; }
.range-note { color: #b3262b; font-size: 0.85rem; padding: 2px 12px; }
.dark .range-note { color: #ff8f8f; }
.infotext textarea { font-family: var(--font-mono); font-size: 0.85rem; }
.live-progress { position: relative; height: 26px; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.live-bar { position: absolute; inset: 0 auto 0 0; background: var(--color-accent-soft, #c7d2fe);
  transition: width 0.15s linear; }
.live-text { position: relative; padding: 0 10px; line-height: 26px; font-size: 0.9rem; }
.live-preview { display: block; width: 100%; max-width: 512px; margin: 8px auto 0; border-radius: 6px;
  image-rendering: auto; }
.hr-size { padding: 6px 12px; }
.extensions-table td, .extensions-table th { text-align: left; padding: 2px 10px 2px 0; vertical-align: top; }
.pnginfo-table th { text-align: left; padding-right: 12px; vertical-align: top; white-space: nowrap; }
"""

# Ctrl+Enter (Cmd+Enter on a Mac) in a prompt box clicks that tab's Generate button.
KEYS_HEAD = """
<script>
document.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
  const box = event.target.closest && event.target.closest('[id$="-prompt"]');
  if (!box) return;
  const tab = box.id.split("-")[0];  // also for the hires prompts: "txt2img-hr-prompt"
  const button = document.getElementById(tab + "-generate");
  if (button) { event.preventDefault(); button.click(); }
});
</script>
"""


def launch_options(studio: Studio) -> dict[str, Any]:
    """Keyword arguments for `launch()` or `gr.mount_gradio_app()` that this page expects."""
    # Serving saved files as they are keeps the PNG infotext in what the user downloads.
    return {
        "css": APP_CSS + studio.extensions.css(),
        "head": KEYS_HEAD
        + tooltips_head()
        + RANGE_NOTES_HEAD
        + EDITOR_READY_HEAD
        + studio.extensions.head_html(),
        "allowed_paths": [str(Path(studio.settings.outputs_dir).resolve())],
        # Gradio's own "Use via API" page would be empty: its events are private, the API is webui/api.
        "footer_links": ["gradio", "settings"],
    }


def build_ui(ctx: UiContext) -> gr.Blocks:
    """The whole page over the injected services; every handler is a closure, nothing is global."""
    studio = ctx.studio
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:

        def allowed_roots() -> list[Path]:
            return [Path(path) for path in (demo.allowed_paths or [])]

        with gr.Row(elem_id="header", equal_height=True):
            gr.Markdown(f"# {TITLE}", elem_id="title", min_width=330)
            checkpoint = gr.Dropdown(
                choices=studio.models.checkpoint_titles(),
                value=studio.models.current_checkpoint(),
                label="Checkpoint",
                elem_id="checkpoint",
                scale=3,
            )
            refresh = tool_button("Refresh", "refresh-checkpoints")
            model_status = gr.Markdown(header_status(studio), elem_id="model-status")
        banner = gr.Markdown(
            studio.models.demo_message, elem_id="demo-banner", visible=studio.models.demo_mode
        )
        header_error = error_box("header")

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab-txt2img"):
                txt2img = build_txt2img(ctx, allowed_roots)
            with gr.Tab("img2img", id="img2img", elem_id="tab-img2img"):
                img2img = build_img2img(ctx, allowed_roots)
            with gr.Tab("Inpaint", id="inpaint", elem_id="tab-inpaint"):
                inpaint = build_inpaint(ctx, allowed_roots)
            with gr.Tab("Extras", id="extras", elem_id="tab-extras"):
                extras = build_extras_tab(
                    studio, allowed_roots, lambda path, request: ctx.record_file(path, ctx.caller(request))
                )
            with gr.Tab("Models", id="models", elem_id="tab-models") as models_page:
                models = build_models_tab(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab-pnginfo"):
                pnginfo = build_pnginfo_tab()
            with gr.Tab("History", id="history", elem_id="tab-history") as history_page:
                history = build_history_tab(ctx, allowed_roots)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                training = build_train_tab(ctx)
            build_extension_tabs(studio.extensions)
            with gr.Tab("Settings", id="settings", elem_id="tab-settings"):
                build_settings_tab(ctx)
                extension_settings = build_extensions_settings(ctx)
            if ctx.tokens is not None:
                with gr.Tab("Account", id="account", elem_id="tab-account"):
                    account = build_account_tab(ctx, ctx.tokens)
                demo.load(account.refresh, outputs=account.outputs, **PRIVATE)

        # A page opened (or reloaded) shows the extension settings as saved now, not at start.
        demo.load(extension_settings.current, outputs=extension_settings.outputs, **PRIVATE)
        # ... and the header as it is now, not as it was when the page was built at start.
        demo.load(
            lambda: (
                _checkpoint_dropdown(studio),
                header_status(studio),
            ),
            outputs=[checkpoint, model_status],
            **PRIVATE,
        )
        generation_tabs = {tab.name: tab for tab in (txt2img, img2img, inpaint)}
        for generating in generation_tabs.values():  # a job may have loaded or moved the model
            generating.finished.then(
                lambda: header_status(studio), outputs=model_status, show_progress="hidden", **PRIVATE
            )
        wire_styles(studio.styles, list(generation_tabs.values()))

        # -- the header's checkpoint ---------------------------------------------------------------
        def run_select(title: str) -> tuple[Any, Any, Any, Any]:
            try:
                done = run_and_describe(studio, lambda: studio.models.select_checkpoint(title))
            except Exception as exc:  # a broken file must not take the page down
                if not isinstance(exc, CheckpointError | ValueError):
                    log.exception("loading checkpoint %s failed", title)
                message = f"Could not use checkpoint {title!r}: {exc}"
                return (
                    gr.Dropdown(value=studio.models.current_checkpoint()),
                    show_error(message),
                    gr.skip(),
                    gr.skip(),
                )
            return gr.skip(), hide_error(), header_status(studio, done), checkpoint_rows(studio)

        # `.input` fires only for user changes, so resetting the value after a failure does not loop.
        checkpoint.input(
            run_select,
            inputs=checkpoint,
            outputs=[checkpoint, header_error, model_status, models.table],
            **PRIVATE,
        )

        def run_refresh() -> tuple[Any, ...]:
            table, choice, vae, loras, embeddings, unusable = refresh_outputs(studio)
            header = _checkpoint_dropdown(studio)
            # The demo's note goes once a checkpoint of the user's own is there: no restart needed.
            note = gr.Markdown(visible=studio.models.demo_mode and not studio.models.checkpoints())
            return header, table, choice, vae, loras, embeddings, unusable, note

        refresh_targets = [
            checkpoint,
            models.table,
            models.choice,
            models.vae,
            models.loras,
            models.embeddings,
            models.unusable,
            banner,
        ]
        refresh.click(run_refresh, outputs=refresh_targets, **PRIVATE)
        training.started.then(run_refresh, outputs=refresh_targets, **PRIVATE)  # its file appears
        models.refresh.click(run_refresh, outputs=refresh_targets, **PRIVATE)

        def sync_header(done: str) -> tuple[Any, Any]:
            """After a Models tab action: its outcome, as that tab's status line says it."""
            return gr.Dropdown(value=studio.models.current_checkpoint()), header_status(studio, done)

        models_page.select(
            lambda: (checkpoint_rows(studio), unusable_rows(studio)),
            outputs=[models.table, models.unusable],
            **PRIVATE,
        )
        models.merged.then(
            lambda: _checkpoint_dropdown(studio),
            outputs=checkpoint,
            **PRIVATE,
        )
        for event in models.acted:
            event.then(sync_header, inputs=models.status, outputs=[checkpoint, model_status], **PRIVATE)
        history_page.select(history.load, outputs=history.outputs, **PRIVATE)
        models_page.select(lambda: worker_rows(ctx.jobs), outputs=models.workers, **PRIVATE)

        # -- LoRA and embedding lists insert into a prompt -----------------------------------------
        prompts = [generation_tabs[name].controls.prompt for name in INSERT_TARGETS]
        for dataset, kind in ((models.loras, ModelKind.LORA), (models.embeddings, ModelKind.EMBEDDING)):

            def insert(sample: list[str], target: str, *texts: str, kind: ModelKind = kind) -> list[Any]:
                tag = prompt_tag(kind, sample[0])
                return [
                    insert_tag(text, tag) if name == target else gr.skip()
                    for name, text in zip(INSERT_TARGETS, texts)
                ]

            dataset.click(insert, inputs=[dataset, models.insert_into, *prompts], outputs=prompts, **PRIVATE)

        # -- send a result, or an image from PNG Info, to another tab ---------------------------
        def image_input(tab: GenerationTab) -> list[Any]:
            if tab.name == "img2img":
                return [tab.extra.image]
            if tab.name == "inpaint":
                return [tab.extra.editor]
            return []

        def as_input(tab: GenerationTab, path: str | None) -> list[Any]:
            if tab.name == "txt2img":
                return []
            if not path:
                return [gr.skip()]
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            return [image if tab.name == "img2img" else editor_value(image)]

        def unchanged(tab: GenerationTab) -> list[Any]:
            return [gr.skip()] * (len(image_input(tab)) + len(tab.controls.fill_targets()))

        extras_targets = [extras.image, extras.sources, extras.source, tabs]
        for source in generation_tabs.values():
            for button, target in (
                (source.panel.send_img2img, img2img),
                (source.panel.send_inpaint, inpaint),
            ):

                def send(
                    items: list[dict[str, Any]], index: int, target: GenerationTab = target
                ) -> list[Any]:
                    item = selected_item(items, index)
                    if item is None:
                        return [*unchanged(target), show_error(NOTHING_TO_SEND), gr.skip()]
                    fills = target.controls.fill_values(item["infotext"])
                    image = as_input(target, item["path"])
                    return [*image, *fills, hide_error(), gr.Tabs(selected=target.name)]

                button.click(
                    send,
                    inputs=[source.panel.items, source.panel.selected],
                    outputs=[*image_input(target), *target.controls.fill_targets(), source.panel.error, tabs],
                    **SEND_OPTIONS,
                    show_progress_on=button,
                )

            def send_extras(items: list[dict[str, Any]], index: int) -> list[Any]:
                item = selected_item(items, index)
                if item is None:
                    return [show_error(NOTHING_TO_SEND), *[gr.skip()] * len(extras_targets)]
                return [hide_error(), *_to_extras(item["path"])]

            source.panel.send_extras.click(
                send_extras,
                inputs=[source.panel.items, source.panel.selected],
                outputs=[source.panel.error, *extras_targets],
                **SEND_OPTIONS,
                show_progress_on=source.panel.send_extras,
            )

        for button, target in (
            (pnginfo.send_txt2img, txt2img),
            (pnginfo.send_img2img, img2img),
            (pnginfo.send_inpaint, inpaint),
        ):

            def paste(path: str | None, infotext: str, target: GenerationTab = target) -> list[Any]:
                if not infotext:
                    return [
                        *unchanged(target),
                        show_error("drop an image with generation parameters into PNG Info first"),
                        gr.skip(),
                        gr.skip(),
                        gr.skip(),
                    ]
                header, error, status = _use_model_of(studio, infotext)
                return [
                    *as_input(target, path),
                    *target.controls.fill_values(infotext),
                    error,
                    header,
                    status,
                    gr.Tabs(selected=target.name),
                ]

            button.click(
                paste,
                inputs=[pnginfo.image, pnginfo.infotext],
                outputs=[
                    *image_input(target),
                    *target.controls.fill_targets(),
                    header_error,
                    checkpoint,
                    model_status,
                    tabs,
                ],
                **SEND_OPTIONS,
                show_progress_on=button,
            )

        def pnginfo_to_extras(path: str | None) -> list[Any]:
            if not path:
                return [show_error("drop an image into PNG Info first"), *[gr.skip()] * len(extras_targets)]
            return [hide_error(), *_to_extras(path)]

        pnginfo.send_extras.click(
            pnginfo_to_extras,
            inputs=pnginfo.image,
            outputs=[header_error, *extras_targets],
            **SEND_OPTIONS,
            show_progress_on=pnginfo.send_extras,
        )
    return demo


def _to_extras(path: str) -> list[Any]:
    """Updates for the Extras tab's image, its "Single image" sub-tab and the page's tabs."""
    return [path, gr.Tabs(selected=SINGLE), SINGLE, gr.Tabs(selected="extras")]


def _use_model_of(studio: Studio, infotext: str) -> tuple[Any, Any, Any]:
    """Switch to the checkpoint an infotext names (by hash, else by name): header, error, status."""
    params = parse_infotext(infotext).params
    model_hash, model_name = (str(params.get(key) or "") for key in ("Model hash", "Model"))
    if not model_hash and not model_name:
        return gr.skip(), hide_error(), gr.skip()
    file = _checkpoint_named(studio, model_hash, model_name)
    if file is None:
        wanted = " / ".join(value for value in (model_hash, model_name) if value)
        message = (
            f"The image was made with checkpoint {wanted!r}, which is not in the checkpoint folder; "
            f"the other parameters were filled in and {studio.models.current_checkpoint()!r} stays selected."
        )
        return gr.skip(), show_error(message), gr.skip()
    if file.name == studio.models.current_checkpoint():
        return gr.skip(), hide_error(), gr.skip()
    try:
        done = run_and_describe(studio, lambda: studio.models.select_checkpoint(file.name))
    except Exception as exc:
        log.exception("loading checkpoint %s failed", file.name)
        return gr.skip(), show_error(f"Could not use checkpoint {file.name!r}: {exc}"), gr.skip()
    return gr.Dropdown(value=studio.models.current_checkpoint()), hide_error(), header_status(studio, done)


def _checkpoint_named(studio: Studio, model_hash: str, model_name: str) -> ModelFile | None:
    """The file an infotext's `Model hash` finds, else its `Model`; of two files with that hash
    (copies), the one whose name is the infotext's `Model`."""

    def find(title: str) -> ModelFile | None:
        try:
            return studio.models.find_checkpoint(title) if title else None
        except CheckpointError:
            return None

    by_hash, by_name = find(model_hash), find(model_name)
    if by_hash is not None and by_name is not None:
        digest = studio.models.facts.cached_sha256(by_name.path) if by_name.path.is_file() else None
        return by_name if digest and digest.startswith(model_hash.lower()) else by_hash
    return by_hash or by_name


def _checkpoint_dropdown(studio: Studio) -> gr.Dropdown:
    """The header's checkpoint list as it is now."""
    return gr.Dropdown(choices=studio.models.checkpoint_titles(), value=studio.models.current_checkpoint())
