"""Scripts on the real Studio with tiny checkpoints: X/Y/Z plot, prompt matrix, prompts from file,
outpainting, SD upscale; and the scripts panel."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.steps import JobControl
from webui.jobs import Caller, JobQueue, JobState, Limits
from webui.jobs.limits import LimitError, parse_size
from webui.outputs import parse_infotext, read_infotext
from webui.outputs.grid import BACKGROUND, row_band_width
from webui.scripts import builtin_scripts, find_script, scripts_for
from webui.scripts.prompt_matrix import matrix_prompts
from webui.scripts.prompts_from_file import PromptsFromFile
from webui.scripts.sd_upscale import SdUpscale, blend_tiles, tile_starts
from webui.scripts.xyz_axes import AXIS_TYPES, axis_type, parse_axis
from webui.scripts.xyz_plot import XyzPlot
from webui.settings import Settings
from webui.studio import Studio

SIDE = 64


@pytest.fixture
def studio(tiny_dir: Path, tmp_path: Path) -> Studio:
    return Studio(
        Settings.for_data_dir(
            tmp_path, ckpt_dir=tiny_dir, ckpt=str(tiny_dir / "tiny-sd15.safetensors"), watermark=False
        )
    )


def _request(**fields: object) -> GenerationRequest:
    base = GenerationRequest(prompt="a cat", steps=1, width=SIDE, height=SIDE, seed=5)
    return replace(base, **fields)


def _files(studio: Studio, folder: str) -> list[Path]:
    root = studio.settings.outputs_dir / folder
    return sorted(p for p in root.rglob("*.png")) if root.exists() else []


def _params(infotext: str) -> dict[str, str]:
    return parse_infotext(infotext).params


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# -- X/Y/Z plot -------------------------------------------------------------------------------
def test_axis_values_take_lists_ranges_steps_and_counts() -> None:
    steps, cfg, prompt = axis_type("steps"), axis_type("CFG SCALE"), axis_type("Prompt S/R")
    assert parse_axis("X", steps, "1-5").values == (1, 2, 3, 4, 5)
    assert parse_axis("X", steps, "1-10 (+2), 20").values == (1, 3, 5, 7, 9, 20)
    assert parse_axis("X", steps, "10-1 (-3)").values == (10, 7, 4, 1)
    assert parse_axis("X", steps, "1-10 [5]").values == (1, 3, 5, 7, 10)
    assert parse_axis("X", cfg, "0.5-1 (+0.25)").values == (0.5, 0.75, 1.0)
    assert parse_axis("X", cfg, "1-2 [3], 7").values == (1.0, 1.5, 2.0, 7.0)
    assert parse_axis("X", axis_type("Seed"), "-1, 3").values == (-1, 3)
    assert parse_axis("X", prompt, 'cat, "dog, big", bird').values == ("cat", "dog, big", "bird")
    assert parse_axis("Y", axis_type("Nothing"), "whatever").values == (None,)
    with pytest.raises(GenerationError, match=r"Y axis \(Steps\) value 'x'"):
        parse_axis("Y", steps, "1, x")
    with pytest.raises(GenerationError, match="no values"):
        parse_axis("X", steps, " , ")
    with pytest.raises(GenerationError, match="step must not be 0"):
        parse_axis("X", steps, "1-5 (+0)")


def test_xyz_args_by_name_or_index_and_errors() -> None:
    plot = XyzPlot()
    by_index = plot.parse_args([4, "1-2", 6, [3, 7]])
    assert by_index.x.type.name == "Steps" and by_index.y.values == (3.0, 7.0)
    assert [axis.name for axis in AXIS_TYPES][4] == "Steps"
    by_name = plot.parse_args(["var. SEED", "1", "Hires steps", "2", "var. strength", "0.5", False, True])
    assert [a.type.name for a in by_name.axes] == ["Var. seed", "Hires steps", "Var. strength"]
    assert not by_name.draw_legend and by_name.include_lone_images
    with pytest.raises(GenerationError, match="x_type must be one of Nothing, Seed.*got 'Colour'") as error:
        plot.parse_args(["Colour", "1"])
    assert error.value.field == "script_args"
    with pytest.raises(GenerationError, match="at most 11"):
        plot.parse_args(["Nothing"] * 12)
    with pytest.raises(GenerationError, match="draw_legend must be true or false"):
        plot.parse_args(["Nothing", "", "Nothing", "", "Nothing", "", "maybe"])


def test_xyz_2x2_grid_cells_equal_single_generations(studio: Studio) -> None:
    request = _request()
    plot = XyzPlot()
    args = plot.parse_args(["Steps", "1, 2", "CFG Scale", "3, 7", "Nothing", "", True, True])
    result = plot.run(request, args, studio.script_run("txt2img"))

    grid = result.images[0]
    left = row_band_width(SIDE)
    top = grid.height - 2 * SIDE
    assert grid.width == left + 2 * SIDE and top > 0
    assert len(result.images) == 5 and len(result.infotexts) == 5 and len(result.paths) == 5
    assert not result.interrupted
    band = np.asarray(grid.crop((left, 0, grid.width, top)))
    assert (band != np.array(BACKGROUND)).any()
    for row, cfg in enumerate((3.0, 7.0)):
        for col, steps in enumerate((1, 2)):
            single = studio.generate(replace(request, steps=steps, cfg_scale=cfg), save=False)
            box = (left + col * SIDE, top + row * SIDE, left + (col + 1) * SIDE, top + (row + 1) * SIDE)
            assert grid.crop(box).tobytes() == single.images[0].tobytes()
            lone = result.infotexts[1 + row * 2 + col]
            assert lone == single.infotexts[0]  # the cell's own infotext: pasting it back reproduces it
    assert _params(result.infotexts[0])["Steps"] == "1" and _params(result.infotexts[0])["CFG scale"] == "3"
    grids = _files(studio, "txt2img-grids")
    assert grids == [result.paths[0]] and read_infotext(grids[0]) == result.infotexts[0]
    assert len(_files(studio, "txt2img-images")) == 4


def test_xyz_checkpoint_axis_groups_switches_and_fixes_the_seed(studio: Studio) -> None:
    run = studio.script_run("txt2img")
    through = run.generate
    calls: list[str | None] = []

    def recording(request: GenerationRequest, checkpoint: str | None = None, *, save: bool = True):
        calls.append(checkpoint)
        return through(request, checkpoint, save=save)

    run.generate = recording
    plot = XyzPlot()
    args = plot.parse_args(
        ["Checkpoint name", "tiny-sd15, tiny-sd2", "Steps", "1, 2", "Nothing", "", True, True]
    )
    result = plot.run(_request(seed=-1), args, run)

    assert calls == ["tiny-sd15", "tiny-sd15", "tiny-sd2", "tiny-sd2"]  # one switch, not three
    models = [_params(text)["Model"] for text in result.infotexts[1:]]
    assert models == ["tiny-sd15", "tiny-sd2", "tiny-sd15", "tiny-sd2"]  # grid order: x fastest
    assert len({_params(text)["Seed"] for text in result.infotexts}) == 1  # -1: one seed for all cells
    single = studio.generate(
        replace(_request(), steps=2, seed=result.seeds[0]), checkpoint="tiny-sd2", save=False
    )
    assert result.images[4].tobytes() == single.images[0].tobytes()


def test_xyz_refuses_bad_values_before_any_image(studio: Studio) -> None:
    plot = XyzPlot()
    run = studio.script_run("txt2img")
    cases = [
        (["Steps", "1", "Sampler", "Euler, nope"], "'nope'"),
        (["Checkpoint name", "tiny-sd15, missing-model"], "missing-model"),
        (["Schedule type", "Automatic, Sideways"], "Sideways"),
        (["Prompt S/R", "dog, cat"], "did not find 'dog'"),
        (["Steps", "0-1"], "steps must be between"),
    ]
    for args, message in cases:
        with pytest.raises(GenerationError, match=message) as error:
            plot.run(_request(), plot.parse_args(args), run)
        assert error.value.field == "script_args"
    assert _files(studio, "") == []


def test_xyz_prompt_search_replace_and_z_axis(studio: Studio) -> None:
    plot = XyzPlot()
    args = plot.parse_args(["Prompt S/R", "cat, dog", "Nothing", "", "Seed", "1, 2", True, True, True])
    result = plot.run(_request(negative_prompt="no cat"), args, studio.script_run("txt2img", save=False))
    grid, subs, lone = result.images[0], result.images[1:3], result.images[3:]
    assert grid.width == 2 * subs[0].width and grid.height > subs[0].height  # Z titles above
    assert [(parse_infotext(t).prompt, parse_infotext(t).negative_prompt) for t in result.infotexts[3:]] == [
        ("a cat", "no cat"),
        ("a dog", "no dog"),
        ("a cat", "no cat"),
        ("a dog", "no dog"),
    ]
    assert result.seeds[3:] == [1, 1, 2, 2] and len(lone) == 4
    assert result.paths == [] and _files(studio, "") == []


def test_interrupt_mid_plot_returns_a_partial_grid(studio: Studio) -> None:
    control = JobControl()
    run = studio.script_run("txt2img", control=control)
    through = run.generate
    count = []

    def interrupting(request: GenerationRequest, checkpoint: str | None = None, *, save: bool = True):
        result = through(request, checkpoint, save=save)
        count.append(1)
        if len(count) == 2:
            control.interrupt()  # as the UI's Interrupt button does from another thread
        return result

    run.generate = interrupting
    plot = XyzPlot()
    result = plot.run(
        _request(), plot.parse_args(["Steps", "1, 2", "CFG Scale", "3, 7", "Nothing", "", False]), run
    )
    assert result.interrupted and len(count) == 2
    grid = result.images[0]
    assert grid.size == (2 * SIDE, 2 * SIDE)  # no legend: cells only
    assert np.asarray(grid.crop((0, SIDE, 2 * SIDE, 2 * SIDE))).min() == 255  # the row not run is blank
    assert np.asarray(grid.crop((0, 0, SIDE, SIDE))).min() < 255


# -- prompt matrix ----------------------------------------------------------------------------
def test_matrix_prompts_cover_every_combination() -> None:
    assert matrix_prompts("a cat | hat | red,") == ["a cat", "a cat, hat", "a cat, red", "a cat, hat, red"]
    assert matrix_prompts("cat|hat", put_at_start=True, delimiter=" ") == ["cat", "hat cat"]
    assert len(matrix_prompts("a|b|c|d|e")) == 16


def test_prompt_matrix_grid_labels_and_seeds(studio: Studio) -> None:
    script = find_script("prompt MATRIX", "txt2img")
    run = studio.script_run("txt2img")
    result = script.run(_request(prompt="a cat | hat | red"), script.parse_args([]), run)
    assert [parse_infotext(t).prompt for t in result.infotexts[1:]] == [
        "a cat",
        "a cat, hat",
        "a cat, red",
        "a cat, hat, red",
    ]
    assert set(result.seeds) == {5}
    grid = result.images[0]
    left, top = row_band_width(SIDE), grid.height - 2 * SIDE
    assert grid.width == left + 2 * SIDE and top > 0
    assert (
        grid.crop((left + SIDE, top + SIDE, grid.width, grid.height)).tobytes() == result.images[4].tobytes()
    )
    assert (np.asarray(grid.crop((0, top, left, grid.height))) != 255).any()  # row labels drawn
    assert len(_files(studio, "txt2img-grids")) == 1 and len(_files(studio, "txt2img-images")) == 4

    negative = script.run(
        _request(negative_prompt="blur | dark"),
        script.parse_args([False, True, "negative", "space"]),
        studio.script_run("txt2img", save=False),
    )
    assert [parse_infotext(t).negative_prompt for t in negative.infotexts[1:]] == ["blur", "blur dark"]
    assert negative.seeds[1:] == [5, 6]


# -- prompts from file ------------------------------------------------------------------------
def test_prompts_from_file_reads_plain_lines_and_options(studio: Studio) -> None:
    script = PromptsFromFile()
    text = (
        "a plain line\n\n"
        '--prompt "a dog" --negative_prompt "blur" --steps 2 --cfg_scale 5 --seed 3 '
        '--width 64 --height 64 --sampler_name "Euler"\n'
    )
    result = script.run(
        _request(prompt=""),
        script.parse_args([False, False, "start", text]),
        studio.script_run("txt2img"),
    )
    assert len(result.images) == 2 and len(result.paths) == 2
    first, second = (parse_infotext(t) for t in result.infotexts)
    assert first.prompt == "a plain line" and first.params["Seed"] == "5"
    assert (second.prompt, second.negative_prompt) == ("a dog", "blur")
    assert (second.params["Steps"], second.params["CFG scale"], second.params["Seed"]) == ("2", "5", "3")
    assert second.params["Sampler"] == "Euler"

    iterated = script.run(
        _request(prompt="style", seed=10, n_iter=1),
        script.parse_args([True, False, "end", "one\ntwo"]),
        studio.script_run("txt2img", save=False),
    )
    assert iterated.seeds == [10, 11]
    assert [parse_infotext(t).prompt for t in iterated.infotexts] == ["style one", "style two"]


def test_prompts_from_file_names_unknown_options_and_lines(studio: Studio) -> None:
    script = PromptsFromFile()
    with pytest.raises(GenerationError, match=r"line 3: unknown option '--nope'"):
        script.parse_args([False, False, "start", "fine\n\n--prompt x --nope 1"])
    with pytest.raises(GenerationError, match=r"line 1: --steps cannot be 'many'"):
        script.parse_args([False, False, "start", "--steps many"])
    args = script.parse_args([False, False, "start", "ok\n--prompt x --sampler_name Nope"])
    with pytest.raises(GenerationError, match=r"line 2: unknown sampler 'Nope'"):
        script.run(_request(), args, studio.script_run("txt2img"))
    assert _files(studio, "") == []


# -- outpainting ------------------------------------------------------------------------------
def test_outpainting_grows_the_canvas_and_keeps_the_original(studio: Studio) -> None:
    script = find_script("Poor man's outpainting", "img2img")
    original = _noise((SIDE, SIDE))
    args = script.parse_args([32, 4, "original", ["left", "right"]])
    result = script.run(
        _request(init_image=original, denoising_strength=0.9), args, studio.script_run("img2img")
    )
    image = result.images[0]
    assert image.size == (SIDE + 64, SIDE)
    seam = 2 * 4
    kept = image.crop((32 + seam, 0, 32 + SIDE - seam, SIDE))
    assert kept.tobytes() == original.crop((seam, 0, SIDE - seam, SIDE)).tobytes()
    assert image.crop((0, 0, 32, SIDE)).tobytes() != Image.new("RGB", (32, SIDE)).tobytes()
    assert _params(result.infotexts[0])["Size"] == "128x64"
    assert result.paths[0].relative_to(studio.settings.outputs_dir).parts[0] == "img2img-images"

    odd = _noise((60, 60), seed=1)  # sides become multiples of 8; the extra goes to a growing side
    grown = script.run(
        _request(init_image=odd), script.parse_args([20, 2, 0, "up"]), studio.script_run("img2img")
    ).images[0]
    assert grown.size == (64, 80)
    assert grown.crop((0, 20 + 4, 60 - 4, 80)).tobytes() == odd.crop((0, 4, 56, 60)).tobytes()


# -- SD upscale -------------------------------------------------------------------------------
def test_tiles_cover_the_image_and_blend_back_exactly() -> None:
    assert tile_starts(128, 64, 16) == [0, 32, 64]
    assert tile_starts(64, 64, 16) == [0]
    assert tile_starts(100, 64, 8) == [0, 36]
    image = _noise((100, 90))
    tiles = [
        ((x, y), image.crop((x, y, x + 64, y + 64)))
        for y in tile_starts(90, 64, 8)
        for x in tile_starts(100, 64, 8)
    ]
    assert blend_tiles(image.size, tiles, 8).tobytes() == image.tobytes()


def test_sd_upscale_returns_the_upscaled_size(studio: Studio) -> None:
    script = SdUpscale()
    args = script.parse_args([16, "Lanczos", 2])
    assert script.parse_args(["<info>", 16, "Lanczos", 2]) == args  # A1111's four-value form
    original = _noise((SIDE, SIDE))
    result = script.run(
        _request(init_image=original, denoising_strength=0.5), args, studio.script_run("img2img")
    )
    assert len(result.images) == 1 and result.images[0].size == (128, 128)
    params = _params(result.infotexts[0])
    assert params["Size"] == "128x128" and params["SD upscale upscaler"] == "Lanczos"
    assert params["Denoising strength"] == "0.5" and params["Seed"] == "5"
    plain = original.resize((128, 128), Image.Resampling.LANCZOS)
    assert result.images[0].tobytes() != plain.tobytes()  # the tiles were redrawn
    assert _files(studio, "img2img-images") == result.paths  # the final image only, not the 9 tiles
    with pytest.raises(GenerationError, match="SD upscale: unknown upscaler 'Nope'") as error:
        script.run(
            _request(init_image=original),
            script.parse_args([16, "Nope", 2]),
            studio.script_run("img2img"),
        )
    assert error.value.field == "script_args"


# -- registry ---------------------------------------------------------------------------------
def test_scripts_are_found_by_title_for_their_mode() -> None:
    assert sorted(builtin_scripts()) == [
        "poor man's outpainting",
        "prompt matrix",
        "prompts from file or textbox",
        "sd upscale",
        "x/y/z plot",
    ]
    assert find_script(" x/y/z PLOT ", "txt2img").title == "X/Y/Z plot"
    with pytest.raises(
        GenerationError, match="no script 'SD upscale' for txt2img; available:.*X/Y/Z plot"
    ) as error:
        find_script("SD upscale", "txt2img")
    assert error.value.field == "script_name"


# -- the UI panel -----------------------------------------------------------------------------
def test_scripts_panel_builds_controls_and_reads_a_choice() -> None:
    import gradio as gr

    from webui.ui.scripts_panel import build_scripts_panel, group_updates

    with gr.Blocks():
        panel = build_scripts_panel("img2img", scripts_for("img2img"), {"upscalers": ["Lanczos", "Nearest"]})
    assert panel.dropdown.choices[0][0] == "None" and len(panel.groups) == 5
    assert all(not group.visible for group in panel.groups.values())
    upscale = panel.controls["SD upscale"]
    assert [c.elem_id for c in upscale] == [
        "img2img-script-sd-upscale-overlap",
        "img2img-script-sd-upscale-upscaler",
        "img2img-script-sd-upscale-scale_factor",
    ]
    assert isinstance(upscale[1], gr.Dropdown)  # the upscaler list came from `sources`

    values = [c.value for c in panel.inputs]
    assert panel.choice(values) == (None, [])
    values[0] = "X/Y/Z plot"
    xyz = panel.controls["X/Y/Z plot"]
    values[panel.inputs.index(xyz[0])] = "Steps"
    values[panel.inputs.index(xyz[1])] = "1-3"
    title, args = panel.choice(values)
    assert title == "X/Y/Z plot" and len(args) == 11
    parsed = find_script(title, "img2img").parse_args(args)
    assert parsed.x.values == (1, 2, 3) and parsed.draw_legend and parsed.margin_size == 0

    values[0] = "Poor man's outpainting"
    title, args = panel.choice(values)
    assert args == [128, 4, "fill", ["left", "right", "up", "down"]]
    assert find_script(title, "img2img").parse_args(args).direction == ("left", "right", "up", "down")
    shown = [update["visible"] for update in group_updates("SD upscale", list(panel.groups))]
    assert shown == [title == "SD upscale" for title in panel.groups]


def test_script_modules_and_panel_do_not_import_torch() -> None:
    code = (
        "import sys, webui.scripts, webui.ui.scripts_panel; webui.scripts.builtin_scripts(); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_xyz_plot_of_too_many_combinations_is_refused_before_it_starts() -> None:
    from webui.scripts import find_script

    script = find_script("X/Y/Z plot", "txt2img")
    with pytest.raises(GenerationError) as refused:
        script.parse_args(["Steps", "1-100", "CFG Scale", "1-20", "Seed", "1-2"])
    assert refused.value.field == "script_args" and "4000" in str(refused.value)


# -- the admin's limits hold for every generation a script makes -----------------------------
LOW = Limits(max_steps=8, max_pixels=parse_size("256x256"), max_batch_size=2, max_batch_count=3)
USER = Caller("bob")


@pytest.mark.parametrize(
    ("script_name", "script_args", "flag", "where"),
    [
        ("X/Y/Z plot", ["Steps", "4, 12", "Nothing", "", "Nothing", ""], "--max-steps", "cell Steps: 12"),
        ("X/Y/Z plot", ["Steps", "1-6", "CFG Scale", "1-2", "Nothing", ""], "--max-batch-count", "cell"),
        (
            "Prompts from file or textbox",
            [False, False, "start", "ok\n--width 320 --height 320"],
            "--max-size",
            "line 2",
        ),
        ("Prompts from file or textbox", [False, False, "start", "--steps 10"], "--max-steps", "line 1"),
        (
            "Prompts from file or textbox",
            [False, False, "start", "--batch_size 3"],
            "--max-batch-size",
            "line 1",
        ),
        ("Prompts from file or textbox", [False, False, "start", "a\n" * 7], "--max-batch-count", "line 7"),
        ("Prompt matrix", [], "--max-batch-count", "combination 7"),
    ],
)
def test_a_script_cannot_get_round_the_limits(
    studio: Studio, script_name: str, script_args: list[object], flag: str, where: str
) -> None:
    jobs = JobQueue(studio, LOW)  # not started: nothing runs
    request = _request(prompt="a | b | c | d", script_name=script_name, script_args=script_args)
    with pytest.raises(LimitError) as over:
        jobs.submit(request, USER)
    assert over.value.limit == flag and over.value.field == "script_args"
    assert flag in str(over.value) and where in str(over.value)
    assert jobs.jobs(USER) == [] and _files(studio, "") == []


def test_outpainting_cannot_grow_past_the_size_limit(studio: Studio) -> None:
    jobs = JobQueue(studio, LOW)
    request = _request(init_image=_noise((SIDE, SIDE)), script_name="Poor man's outpainting")
    with pytest.raises(LimitError, match=r"--max-size"):
        jobs.submit(replace(request, script_args=[128, 4, "fill", ["left", "right", "up", "down"]]), USER)
    assert jobs.submit(replace(request, script_args=[32, 4, "fill", ["left"]]), USER).state is JobState.QUEUED
    jobs.stop()


def test_a_script_within_the_limits_runs(studio: Studio) -> None:
    jobs = JobQueue(studio, LOW).start()
    try:
        job = jobs.submit(_request(script_name="X/Y/Z plot", script_args=["Steps", "1, 2"]), USER)
        assert job.wait(60) and job.state is JobState.DONE
    finally:
        jobs.stop()
    assert len(job.result.images) == 1  # the grid


def test_a_script_that_cannot_say_beforehand_is_stopped_at_the_limit(studio: Studio) -> None:
    """SD upscale (no plan of its generations): its tiles count as they run, and the job fails
    with the limit named before it makes more images than a plain job may."""
    jobs = JobQueue(studio, replace(LOW, max_batch_count=1, max_batch_size=2))
    request = _request(
        init_image=_noise((SIDE, SIDE)), script_name="SD upscale", script_args=[0, "Lanczos", 2.0]
    )
    job = jobs.submit(request, USER)  # 4 tiles of 64x64, one image each
    jobs.run(until=lambda: job.state.finished)
    assert job.state is JobState.FAILED and job.user_error
    assert job.error_field == "script_args" and "--max-batch-count" in job.error


def test_the_api_answers_a_script_over_the_limits_with_a_4xx_naming_it(server) -> None:
    limits = server.jobs.limits
    server.jobs.set_limits(max_steps=8)
    xyz = {"script_name": "X/Y/Z plot", "script_args": ["Steps", "4, 12", "Nothing", "", "Nothing", ""]}
    lines = {
        "script_name": "Prompts from file or textbox",
        "script_args": [False, False, "start", "--steps 10"],
    }
    try:
        with server.client("bob") as bob:
            answers = [
                bob.post(
                    "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64, **body}
                )
                for body in (xyz, lines)
            ]
    finally:
        server.jobs.limits = limits
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert answer.json()["limit"] == "--max-steps" and "--max-steps" in answer.json()["detail"]
    assert "cell Steps: 12" in answers[0].json()["detail"] and "line 1" in answers[1].json()["detail"]
