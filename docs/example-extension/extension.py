"""The example extension of docs/extensions.md: one of each thing an extension can add.

- "Seed sweep", a script in the Script menu: the same prompt over N consecutive seeds.
- "Latent offset", an always-on script with a step hook: adds a constant to the latent for the
  first steps, which brightens (or, negative, darkens) the whole image.
- an "Example" tab, a setting ("Greeting"), and GET /api/v1/ext/example/hello.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from webui.extensions.api import (
    AlwaysOnScript,
    DenoiseStep,
    ExtensionSetup,
    GenerationRequest,
    ResultParts,
    ScriptArg,
    ScriptRun,
    StudioResult,
    fixed_seed,
    read_args,
)


@dataclass(frozen=True)
class SweepArgs:
    count: int
    stride: int


class SeedSweep:
    """A selectable script: it is given the whole job and makes its own generations."""

    title = "Seed sweep"
    modes = frozenset({"txt2img", "img2img"})
    args = (
        ScriptArg("count", "Images", "number", 4, minimum=1, maximum=64),
        ScriptArg("stride", "Seed step", "number", 1, minimum=1),
    )

    def parse_args(self, values: Any) -> SweepArgs:
        return SweepArgs(**read_args(self.title, self.args, values))

    def run(self, request: GenerationRequest, args: SweepArgs, run: ScriptRun) -> StudioResult:
        parts = ResultParts()
        first = fixed_seed(request.seed)
        for number in range(args.count):
            if run.control.interrupted:
                return parts.result(interrupted=True)
            seed = (first + number * args.stride) % 2**32
            parts.extend(run.generate(replace(request, seed=seed, n_iter=1, batch_size=1)))
        return parts.result()


class LatentOffset(AlwaysOnScript):
    """An always-on script: its hooks run in every job, with the arguments the job gives it."""

    title = "Latent offset"
    args = (
        ScriptArg("offset", "Offset (0 = off)", "number", 0.0, minimum=-2.0, maximum=2.0),
        ScriptArg("steps", "For the first steps", "number", 3, minimum=1),
    )

    def on_step(self, step: DenoiseStep, args: Any) -> None:
        if args["offset"] and step.step <= args["steps"]:
            step.latents = step.latents + args["offset"]  # the UNet sees the new latent


def setup(ext: ExtensionSetup) -> None:
    ext.add_script(SeedSweep())
    ext.add_alwayson(LatentOffset())
    ext.add_settings(ScriptArg("greeting", "Greeting", "text", "Hello from the example extension"))
    ext.add_tab("Example", lambda: _tab(ext))
    ext.add_router(_router(ext))


def _tab(ext: ExtensionSetup) -> None:
    import gradio as gr  # only when the page is built: the extension loads without a web framework

    gr.Markdown("This tab comes from `docs/example-extension`.", elem_id="example-intro")
    greet = gr.Button("Greet", elem_id="example-greet")
    out = gr.Textbox(label="Greeting", elem_id="example-greeting", interactive=False)
    greet.click(lambda: ext.setting("greeting"), outputs=out, queue=False)


def _router(ext: ExtensionSetup) -> Any:
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/hello", summary="The greeting from the Settings tab")
    def hello() -> dict[str, str]:
        return {"greeting": ext.setting("greeting")}

    return router
