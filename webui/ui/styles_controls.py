"""Prompt styles beside a tab's prompts: pick styles for the request, write them into the prompt
boxes (A1111's ✎ button), save the current prompts as a new style."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gradio as gr

from webui.styles import Style, StyleBook, StyleError
from webui.ui.context import PRIVATE
from webui.ui.controls import GenerationControls
from webui.ui.fields import Field
from webui.ui.results import ResultsPanel, hide_error, show_error, show_notice

log = logging.getLogger(__name__)


@dataclass
class StyleControls:
    styles: gr.Dropdown
    refresh: gr.Button
    apply: gr.Button
    name: gr.Textbox
    save: gr.Button

    @property
    def field(self) -> Field:
        # A pasted infotext already holds the styled prompt: keeping a selection would style it twice.
        return Field("styles", self.styles, to_request=lambda names: list(names or []), default=[])


def style_names(book: StyleBook) -> list[str]:
    """The styles to list; an unreadable styles.csv lists none rather than breaking the page."""
    try:
        return book.names()
    except StyleError as error:
        log.warning("%s", error)
        return []


def build_style_controls(tab: str, book: StyleBook) -> StyleControls:
    styles = gr.Dropdown(
        choices=style_names(book),
        value=[],
        multiselect=True,
        label="Styles",
        elem_id=f"{tab}-styles",
    )
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", elem_id=f"{tab}-styles-refresh", min_width=60)
        apply = gr.Button("Apply", size="sm", elem_id=f"{tab}-styles-apply", min_width=60)
    with gr.Row(equal_height=True):
        name = gr.Textbox(
            placeholder="New style name",
            show_label=False,
            container=False,
            max_lines=1,
            elem_id=f"{tab}-style-name",
            scale=3,
            min_width=100,
        )
        save = gr.Button("Save", size="sm", elem_id=f"{tab}-style-save", scale=0, min_width=60)
    return StyleControls(styles, refresh, apply, name, save)


class StyledTab(Protocol):
    """What wiring styles needs of a generation tab: its style controls, prompts and error box."""

    styles: StyleControls
    controls: GenerationControls
    panel: ResultsPanel


def wire_styles(book: StyleBook, tabs: Sequence[StyledTab]) -> None:
    """Apply works on its own tab; saving or refreshing updates the style list of every tab."""
    dropdowns = [tab.styles.styles for tab in tabs]

    def listings() -> list[Any]:
        return [gr.Dropdown(choices=style_names(book))] * len(dropdowns)

    for tab in tabs:
        controls, error = tab.styles, tab.panel.error

        def apply(names: list[str] | None, prompt: str, negative: str) -> tuple[Any, ...]:
            try:
                styled = book.apply(list(names or []), prompt or "", negative or "")
            except StyleError as problem:
                return gr.skip(), gr.skip(), gr.skip(), show_error(str(problem))
            return *styled, [], hide_error()

        def save(name: str, prompt: str, negative: str) -> list[Any]:
            name = (name or "").strip()
            try:
                replacing = name in book.names()
                book.save(Style(name, prompt or "", negative or ""))
            except (StyleError, OSError) as problem:
                unchanged = [gr.skip()] * (1 + len(dropdowns))
                return [show_error(f"Could not save the style: {problem}"), *unchanged]
            # Said in the tab; a replacement out loud: the old text (and its {prompt}) is gone.
            done = "was replaced with the current prompts" if replacing else "was saved"
            return [show_notice(f"Style '{name}' {done}: pick it in Styles."), "", *listings()]

        prompts = [tab.controls.prompt, tab.controls.negative_prompt]
        controls.apply.click(
            apply,
            inputs=[controls.styles, *prompts],
            outputs=[*prompts, controls.styles, error],
            **PRIVATE,
        )
        controls.save.click(
            save, inputs=[controls.name, *prompts], outputs=[error, controls.name, *dropdowns], **PRIVATE
        )
        controls.refresh.click(listings, outputs=dropdowns, **PRIVATE)
