"""The settings file, live settings, file naming, preview periods and the UI's pure helpers."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
from PIL import Image

from webui.engine.preview import with_previews
from webui.engine.request import GenerationRequest
from webui.engine.steps import StepInfo
from webui.jobs import Job, JobState, Limits
from webui.outputs import ImageSaver
from webui.outputs.naming import check_pattern, expand_pattern
from webui.settings import Settings, app_parser
from webui.settings_file import SettingsFile, SettingsFileError, settings_from_args
from webui.ui.masks import image_and_mask, painted_mask
from webui.ui.progress import live_html, status_line

INFOTEXT = (
    "a lighthouse at dusk, oil painting\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned"
)


def _args(data_dir: Path, *flags: str):
    return app_parser().parse_args(["--data-dir", str(data_dir), *flags])


def test_settings_file_round_trip_and_flags_win(tmp_path: Path) -> None:
    assert settings_from_args(_args(tmp_path))[0].preview_period == 1  # no file yet: defaults
    file = SettingsFile(tmp_path / "settings.json")
    saved = Settings.for_data_dir(
        tmp_path,
        outputs_dir=tmp_path / "elsewhere",
        filename_pattern="[seed]-[model_name]",
        watermark=False,
        preview_method="vae",
        preview_period=3,
        ram_budget_gb=2.5,
        limits=Limits(max_steps=40, max_batch_size=2),
    )
    file.save(saved)
    assert json.loads(file.path.read_text())["limits"]["max_steps"] == 40

    settings, _ = settings_from_args(_args(tmp_path))
    for name in (
        "outputs_dir",
        "filename_pattern",
        "watermark",
        "preview_method",
        "preview_period",
        "ram_budget_gb",
    ):
        assert getattr(settings, name) == getattr(saved, name), name
    assert settings.limits == saved.limits

    # A flag given this run wins, field by field (one limit flag leaves the other saved limits).
    flagged, _ = settings_from_args(_args(tmp_path, "--preview-period", "5", "--max-steps", "60"))
    assert (
        flagged.preview_period == 5 and flagged.limits.max_steps == 60 and flagged.limits.max_batch_size == 2
    )
    assert flagged.preview_method == "vae"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "JSON object"),
        ('{"preview_period": 0}', "preview period"),
        ('{"filename_pattern": "[nope]"}', "[nope]"),
        ('{"limits": {"max_steps": 100000}}', "max_steps"),
        ('{"limits": {"no_such_limit": 1}}', "limits"),
        ('{"outputs_dir": 7}', "outputs_dir"),
    ],
)
def test_a_bad_settings_file_is_named_at_start(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "settings.json").write_text(content)
    with pytest.raises(SettingsFileError, match="settings.json") as error:
        settings_from_args(_args(tmp_path))
    assert message in str(error.value)
    assert (tmp_path / "settings.json").read_text() == content  # nothing is lost or rewritten


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text('{"theme": "dark", "preview_period": 4}')
    assert settings_from_args(_args(tmp_path))[0].preview_period == 4


def test_live_settings_apply_save_and_refuse_whole(tmp_path: Path) -> None:
    from webui.jobs import JobQueue
    from webui.live_settings import LiveSettings
    from webui.studio import Studio
    from webui.tools.tiny_checkpoint import write_tiny_checkpoint

    settings = Settings.for_data_dir(tmp_path, device="cpu", ckpt="tiny")
    write_tiny_checkpoint("sd15", settings.ckpt_dir / "tiny.safetensors")
    studio = Studio(settings)
    jobs = JobQueue(studio)
    live = LiveSettings(studio, jobs, SettingsFile(tmp_path / "settings.json"))

    live.update(
        outputs_dir=tmp_path / "new-out", filename_pattern="[seed]-[steps]", limits=Limits(max_steps=12)
    )
    assert (
        studio.outputs.saver.root == tmp_path / "new-out" and studio.outputs.saver.pattern == "[seed]-[steps]"
    )
    assert jobs.limits.max_steps == 12
    assert json.loads((tmp_path / "settings.json").read_text())["outputs_dir"] == str(tmp_path / "new-out")

    before = (tmp_path / "settings.json").read_text()
    with pytest.raises(ValueError, match="preview period"):
        live.update(filename_pattern="[seed]", preview_period=0)
    assert studio.settings.filename_pattern == "[seed]-[steps]"  # nothing of a refused change applied
    assert (tmp_path / "settings.json").read_text() == before
    with pytest.raises(ValueError, match="device"):
        live.update(device="cuda")  # not editable while running

    live.update(ram_budget_gb=0.0)
    assert studio.models.cache.budgets.ram_bytes == 0


def test_file_name_patterns(tmp_path: Path) -> None:
    when = datetime(2026, 11, 22, 9, 30, 0)
    assert (
        expand_pattern("[seed]-[prompt_words]", 42, INFOTEXT, when) == "42-a lighthouse at dusk oil painting"
    )
    assert (
        expand_pattern("[model_name]_[width]x[height]_[steps]", 1, INFOTEXT, when) == "v1-5-pruned_512x768_20"
    )
    assert expand_pattern("[date]-[sampler]", 1, INFOTEXT, when) == "2026-11-22-Euler a"
    assert expand_pattern("[prompt_words]", 7, "", when) == "7"  # nothing left: the seed
    assert "/" not in expand_pattern("[prompt_words]", 7, "a/b\\c: d", when)
    for bad in ("", "[nope]", "a/[seed]", "..[seed]"):
        with pytest.raises(ValueError):
            check_pattern(bad)

    saver = ImageSaver(tmp_path, watermark=False, pattern="[seed]-[model_name]", clock=lambda: when)
    path = saver.save(Image.new("RGB", (8, 8)), mode="txt2img", seed=42, infotext=INFOTEXT)
    assert path.name == "00000-42-v1-5-pruned.png"


def _step(step: int, total: int = 6) -> StepInfo:
    return StepInfo(step, total, torch.full((1, 4, 8, 8), float(step)), None, 0)


def test_preview_period_and_worker_rendering() -> None:
    job = Job(GenerationRequest(steps=6, width=64, height=64), "someone", "tiny")
    seen: list[int] = []

    def record(info: StepInfo) -> None:
        job.on_step(info)
        preview = job.preview()
        seen.append(preview[0] if preview else 0)

    hook = with_previews(record, period=2)
    for step in range(1, 7):
        hook(_step(step))
    assert seen == [0, 1, 1, 2, 2, 3]  # a new preview every second step, drawn lazily from the latent

    red = torch.tensor([1.0, -1.0, -1.0])[None, :, None, None].expand(1, 3, 64, 64)  # pixels in [-1, 1]
    job2 = Job(GenerationRequest(steps=6), "someone", "tiny")
    calls: list[float] = []

    def render(latent: torch.Tensor) -> torch.Tensor:
        calls.append(float(latent[0, 0, 0, 0]))
        return red

    hook2 = with_previews(job2.on_step, period=3, render=render)
    for step in range(1, 7):
        hook2(_step(step))
    assert calls == [3.0, 6.0]  # the worker renders only on preview steps
    step, image = job2.preview()
    assert step == 2 and image.size == (64, 64) and image.getpixel((5, 5)) == (255, 0, 0)
    assert job2.status().step == 6  # progress still counts every step

    job3 = Job(GenerationRequest(steps=6), "someone", "tiny")
    hook3 = with_previews(job3.on_step, period=0)  # previews off
    for step in range(1, 7):
        hook3(_step(step))
    assert job3.preview() is None and job3.status().step == 6


def test_live_panel_text() -> None:
    job = Job(GenerationRequest(steps=20, n_iter=3), "someone", "tiny")
    assert status_line(job.status(position=2), running_elsewhere=1) == (
        "Waiting in the queue: position 2 (another job is running)"
    )
    job.mark_running()
    assert status_line(job.status()).startswith("Starting")
    job.on_step(StepInfo(5, 20, torch.zeros(1, 4, 8, 8), None, 1))
    assert status_line(job.status()).startswith("Step 5/20 · batch 2/3")
    html = live_html(job.status(), "data:image/png;base64,AAAA")
    assert 'data-step="5"' in html and "live-preview" in html and "width: 41.7%" in html
    job.finish(JobState.DONE)
    assert status_line(job.status()) == "Done"


def test_painted_mask_and_refusals() -> None:
    background = Image.new("RGBA", (64, 32), (10, 20, 30, 255))
    layer = Image.new("RGBA", (128, 64), (0, 0, 0, 0))  # the editor's canvas may be larger
    layer.paste((255, 255, 255, 255), (0, 0, 32, 16))
    assert painted_mask([layer], (64, 32)).getbbox() == (0, 0, 16, 8)

    image, mask = image_and_mask({"background": background, "layers": [layer]}, None)
    assert image.mode == "RGB" and image.size == mask.size == (64, 32)
    uploaded = Image.new("L", (64, 32), 0)
    uploaded.paste(255, (48, 24, 64, 32))
    _, combined = image_and_mask({"background": background, "layers": [layer]}, uploaded)
    assert combined.getbbox() == (0, 0, 64, 32)

    with pytest.raises(ValueError, match="image to inpaint"):
        image_and_mask(None, None)
    with pytest.raises(ValueError, match="paint over"):
        image_and_mask({"background": background, "layers": []}, None)


def test_no_torch_in_the_ui_modules() -> None:
    """The UI drives services; tensors stay in the engine (DESIGN: imports point one way)."""
    import ast

    for path in (Path(__file__).resolve().parents[1] / "webui" / "ui").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
        }
        assert not imported & {"torch", "diffusers", "transformers"}, path.name
