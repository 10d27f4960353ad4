"""The txt2img tab: a prompt in, images out (with hires fix for a second, larger pass)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from webui.ui.context import UiContext
from webui.ui.controls import GenerationControls
from webui.ui.generation_tab import GenerationTab, build_generation_tab
from webui.ui.hires import HiresControls, build_hires
from webui.ui.results import wire_generation


def build_txt2img(ctx: UiContext, allowed_roots: Callable[[], list[Path]]) -> GenerationTab:
    def options(controls: GenerationControls) -> HiresControls:
        return build_hires("txt2img", ctx.studio.models.hires_upscaler_names, controls)

    tab = build_generation_tab(ctx, "txt2img", build_options=options, script_mode="txt2img")
    tab.finished = wire_generation(
        ctx,
        tab.controls,
        tab.panel,
        tab.buttons,
        extra_inputs=tab.script_inputs(),
        make_request=lambda values, script_values: tab.with_script(
            tab.controls.to_request(values), script_values
        ),
        allowed_roots=allowed_roots,
    )
    return tab
