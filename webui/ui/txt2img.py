"""The txt2img tab: a prompt in, images out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from webui.ui.context import UiContext
from webui.ui.controls import GenerationControls
from webui.ui.generation_tab import GenerationTab, build_generation_tab
from webui.ui.results import wire_generation


def build_txt2img(ctx: UiContext, allowed_roots: Callable[[], list[Path]]) -> GenerationTab:
    tab = build_generation_tab(ctx, "txt2img")
    wire_generation(
        ctx,
        tab,
        extra_inputs=[],
        make_request=lambda values, _extra: GenerationControls.to_request(values),
        allowed_roots=allowed_roots,
    )
    return tab
