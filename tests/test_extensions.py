"""Extensions: loading and its failures, hooks (order, changes, isolation), scripts, settings."""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.extension_helpers import (
    EXAMPLE,
    MANIFEST,
    commit_as_git_repository,
    make_studio,
    write_extension,
)
from webui.engine.request import GenerationError, GenerationRequest
from webui.extensions.install import InstallError, install_from_url, install_refusal
from webui.extensions.manifest import Manifest, ManifestError
from webui.extensions.registry import ExtensionFolders, Extensions, Status
from webui.outputs import parse_infotext
from webui.settings import Settings, app_parser
from webui.studio import Studio

SIDE = 64

# Records every hook call into a list shared through a module both extensions import.
RECORDER = """
from webui.extensions.api import AlwaysOnScript
from webui.scripts.args import ScriptArg

CALLS = []

class Recorder(AlwaysOnScript):
    args = (ScriptArg("tag", "Tag", "text", "{name}"),)

    def __init__(self):
        self.title = "{name} recorder"

    def before_job(self, job, args):
        CALLS.append(("before_job", args["tag"]))

    def on_step(self, step, args):
        CALLS.append(("on_step", args["tag"], step.step))

    def after_image(self, image, args):
        CALLS.append(("after_image", args["tag"], image.index))

    def after_save(self, saved, args):
        CALLS.append(("after_save", args["tag"], saved.path.name))

def setup(ext):
    ext.add_alwayson(Recorder())
"""


def request(**fields: object) -> GenerationRequest:
    return replace(GenerationRequest(prompt="a cat", steps=2, width=SIDE, height=SIDE, seed=5), **fields)


def hook_calls(studio: Studio, name: str) -> list[tuple]:
    """The CALLS list of a loaded recorder extension's module."""
    import sys

    return sys.modules[f"webui_extension_{name}.extension"].CALLS


# -- loading ----------------------------------------------------------------------------------
def test_manifest_is_read_and_checked(tmp_path: Path) -> None:
    good = write_extension(tmp_path, "good", "def setup(ext): pass\n")
    manifest = Manifest.read(good)
    assert (manifest.name, manifest.version, manifest.entry) == ("good", "1.2.3", "extension.py")
    assert manifest.unmet_needs() == []

    picky = write_extension(
        tmp_path,
        "picky",
        "def setup(ext): pass\n",
        'name = "picky"\nversion = "1"\n[needs]\nwebui = ">=99"\n'
        'packages = ["no-such-package-xyz", "pillow<1"]\n',
    )
    unmet = Manifest.read(picky).unmet_needs()
    assert any("webui >=99" in need for need in unmet)
    assert any("no-such-package-xyz (not installed)" in need for need in unmet)
    assert any("pillow<1 (installed:" in need for need in unmet)

    for text, message in (
        ('version = "1"\n', "name must be"),
        ('name = "Bad Name"\nversion = "1"\n', "lower-case"),
        ('name = "x"\nversion = "1"\nentry = "../../evil.py"\n', "inside the extension"),
        ('name = "x"\nversion = 1\n', "version must be"),
        ("name = \n", "cannot be read"),
    ):
        (good / "extension.toml").write_text(text)
        with pytest.raises(ManifestError, match=message):
            Manifest.read(good)
    (good / "extension.toml").unlink()
    with pytest.raises(ManifestError, match="no extension.toml"):
        Manifest.read(good)


def test_broken_extensions_are_reported_by_name_and_the_rest_load(tmp_path: Path) -> None:
    root = tmp_path / "extensions"
    write_extension(root, "a-syntax", "def setup(ext)\n    pass\n")
    write_extension(root, "b-raises", "def setup(ext):\n    raise RuntimeError('no setup for you')\n")
    write_extension(root, "c-nosetup", "VALUE = 1\n")
    write_extension(
        root,
        "d-needs",
        "def setup(ext): pass\n",
        'name = "d-needs"\nversion = "1"\n[needs]\nwebui = ">=99"\n',
    )
    write_extension(root, "e-import", "import no_such_module_xyz\n")
    (root / "f-nomanifest").mkdir()
    write_extension(root, "g-good", "def setup(ext): ext.log.info('hello')\n")
    write_extension(root, "h-twin", "def setup(ext): pass\n", MANIFEST.format(name="g-good"))
    write_extension(root, "i-off", "raise SystemExit('must not even be imported')\n")

    extensions = Extensions.load(ExtensionFolders(root, builtin=None), data_dir=tmp_path, disabled={"i-off"})
    status = {e.folder.name: (e.status, e.error) for e in extensions.extensions}
    assert status["a-syntax"][0] == Status.FAILED and "SyntaxError" in status["a-syntax"][1]
    assert status["b-raises"][1] == "RuntimeError: no setup for you (extension.py, line 2)"
    assert "no setup(ext) function" in status["c-nosetup"][1]
    assert "needs webui >=99" in status["d-needs"][1]
    assert "ModuleNotFoundError" in status["e-import"][1]
    assert "no extension.toml" in status["f-nomanifest"][1]
    assert status["g-good"] == (Status.LOADED, "")
    assert "already named 'g-good'" in status["h-twin"][1]
    assert status["i-off"] == (Status.DISABLED, "")
    assert [e.name for e in extensions.active()] == ["g-good"]


def test_a_hanging_setup_does_not_hang_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("webui.extensions.registry._SETUP_TIMEOUT_S", 0.3)
    root = tmp_path / "extensions"
    write_extension(root, "slow", "import time\ndef setup(ext):\n    time.sleep(5)\n")
    started = time.monotonic()
    extensions = Extensions.load(ExtensionFolders(root, builtin=None), data_dir=tmp_path)
    assert time.monotonic() - started < 3
    assert extensions.extensions[0].status == Status.FAILED
    assert "did not finish in 0.3 s" in extensions.extensions[0].error


def test_disable_extensions_flag_and_saved_choice(tiny_dir: Path, tmp_path: Path) -> None:
    args = app_parser().parse_args(["--data-dir", str(tmp_path), "--disable-extensions"])
    assert Settings.from_args(args).skipped_extensions == ("all",)
    args = app_parser().parse_args(["--data-dir", str(tmp_path), "--disable-extensions", "caption, x"])
    settings = Settings.from_args(args, {"disabled_extensions": ("wildcards",)})
    assert settings.skipped_extensions == ("caption", "x") and settings.disabled_extensions == ("wildcards",)
    studio = make_studio(tiny_dir, tmp_path, skipped_extensions=("all",))
    assert {e.name: e.status for e in studio.extensions.extensions} == {
        "caption": Status.DISABLED,
        "wildcards": Status.DISABLED,
    }
    studio = make_studio(tiny_dir, tmp_path, disabled_extensions=("caption",))
    assert [e.name for e in studio.extensions.active()] == ["wildcards"]
    assert isinstance(app_parser().parse_args([]), argparse.Namespace)


# -- hooks ----------------------------------------------------------------------------------
def test_hooks_run_in_the_documented_order(tiny_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "extensions"
    for name in ("zeta", "alpha"):  # loaded in folder-name order: alpha first
        write_extension(root, name, RECORDER.replace("{name}", name))
    studio = make_studio(tiny_dir, tmp_path)
    result = studio.generate(request(batch_size=2))
    assert len(result.images) == 2 and result.warnings == []
    calls = hook_calls(studio, "alpha")  # each extension records its own calls here
    assert [c[0] for c in calls] == [
        "before_job",
        "on_step",
        "on_step",
        "after_image",
        "after_save",
        "after_image",
        "after_save",
    ]
    assert [c[2] for c in calls if c[0] == "on_step"] == [1, 2]
    names = [c[2] for c in calls if c[0] == "after_save"]
    assert names == [path.name for path in result.paths]


def test_hooks_of_several_extensions_interleave_in_load_order(tiny_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "extensions"
    shared = tmp_path / "shared_calls.py"
    shared.write_text("CALLS = []\n")
    for name in ("zeta", "alpha"):
        code = RECORDER.replace("{name}", name).replace(
            "CALLS = []",
            f"import importlib.util, sys\n"
            f"if 'shared_calls' not in sys.modules:\n"
            f"    spec = importlib.util.spec_from_file_location('shared_calls', {str(shared)!r})\n"
            f"    sys.modules['shared_calls'] = importlib.util.module_from_spec(spec)\n"
            f"    spec.loader.exec_module(sys.modules['shared_calls'])\n"
            f"CALLS = sys.modules['shared_calls'].CALLS",
        )
        write_extension(root, name, code)
    studio = make_studio(tiny_dir, tmp_path)
    hook_calls(studio, "alpha").clear()
    studio.generate(request(steps=1))
    calls = hook_calls(studio, "alpha")
    assert [(c[0], c[1]) for c in calls] == [
        ("before_job", "alpha"),
        ("before_job", "zeta"),
        ("on_step", "alpha"),
        ("on_step", "zeta"),
        ("after_image", "alpha"),
        ("after_image", "zeta"),
        ("after_save", "alpha"),
        ("after_save", "zeta"),
    ]


CHANGER = """
from dataclasses import replace
from tests.extension_helpers import (
    EXAMPLE,
    MANIFEST,
    commit_as_git_repository,
    make_studio,
    write_extension,
)
from webui.engine.request import GenerationError
from webui.extensions.api import AlwaysOnScript
from webui.scripts.args import ScriptArg

CHOICES = ("off", "prompt", "refuse", "latent", "cond", "image")

class Changer(AlwaysOnScript):
    title = "Changer"
    args = (ScriptArg("mode", "Mode", "choice", "off", choices=CHOICES),)

    def before_job(self, job, args):
        if args["mode"] == "prompt":
            job.request = replace(job.request, prompt=job.request.prompt + ", changed")
        if args["mode"] == "refuse":
            raise GenerationError("this prompt is not welcome", "prompt")

    def on_step(self, step, args):
        if args["mode"] == "latent":
            step.latents = step.latents * 0 + 3.0
        if args["mode"] == "cond":
            step.parts = [(step.negative, 1.0)]

    def after_image(self, image, args):
        if args["mode"] == "image":
            image.image = image.image.resize((16, 16))
            image.params["Changed"] = "yes"

def setup(ext):
    ext.add_alwayson(Changer())
"""


def test_hooks_change_the_request_the_latent_the_conditioning_and_the_image(
    tiny_dir: Path, tmp_path: Path
) -> None:
    write_extension(tmp_path / "extensions", "changer", CHANGER)
    studio = make_studio(tiny_dir, tmp_path)

    def run(mode: str, **fields: object):
        return studio.generate(request(alwayson_scripts={"changer": [mode]}, **fields))

    plain = run("off")
    changed = run("prompt")
    assert parse_infotext(changed.infotexts[0]).prompt == "a cat, changed"
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(changed.images[0]))

    with pytest.raises(GenerationError, match="Changer: this prompt is not welcome") as refused:
        run("refuse")
    assert refused.value.field == "prompt"

    latent = run("latent")
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(latent.images[0]))
    # The conditioning hook turns the prompt into the negative one: CFG then guides nowhere.
    cond = run("cond", cfg_scale=7.0)
    assert np.array_equal(
        np.asarray(cond.images[0]), np.asarray(run("off", prompt="", cfg_scale=7.0).images[0])
    )

    image = run("image")
    assert image.images[0].size == (16, 16)
    assert parse_infotext(image.infotexts[0]).params["Changed"] == "yes"
    from PIL import Image

    with Image.open(image.paths[0]) as saved:
        assert saved.size == (16, 16)


def test_alwayson_arguments_are_checked_before_the_job(tiny_dir: Path, tmp_path: Path) -> None:
    write_extension(tmp_path / "extensions", "changer", CHANGER)
    studio = make_studio(tiny_dir, tmp_path)
    with pytest.raises(GenerationError, match="no always-on script 'nope'.*'Changer'") as unknown:
        studio.preflight(request(alwayson_scripts={"nope": []}))
    assert unknown.value.field == "alwayson_scripts.nope"
    with pytest.raises(GenerationError, match="mode must be one of") as bad:
        studio.preflight(request(alwayson_scripts={"CHANGER": ["sideways"]}))
    assert bad.value.field == "alwayson_scripts.Changer"
    studio.preflight(request(alwayson_scripts={" changer ": ["prompt"]}))


RAISING = """
from webui.extensions.api import AlwaysOnScript

class Raising(AlwaysOnScript):
    title = "Raising"
    calls = 0

    def on_step(self, step, args):
        type(self).calls += 1
        raise ValueError("step hook broke")

    def after_image(self, image, args):
        image.image = "not an image"

def setup(ext):
    ext.add_alwayson(Raising())
"""

SLEEPING = """
import time
from webui.extensions.api import AlwaysOnScript

class Sleeping(AlwaysOnScript):
    title = "Sleeping"
    calls = 0

    def before_job(self, job, args):
        type(self).calls += 1
        time.sleep(3)

def setup(ext):
    ext.add_alwayson(Sleeping())
"""


def test_a_raising_hook_is_skipped_for_the_job_and_reported(tiny_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "extensions"
    write_extension(root, "raising", RAISING)
    write_extension(root, "syntax", "def setup(ext)\n")
    studio = make_studio(tiny_dir, tmp_path)
    reference = make_studio(tiny_dir, tmp_path / "clean", disabled_extensions=("raising", "syntax"))

    result = studio.generate(request(steps=3, batch_size=2))
    assert len(result.images) == 2 and all(hasattr(image, "save") for image in result.images)
    assert np.array_equal(
        np.asarray(result.images[0]), np.asarray(reference.generate(request(steps=3, batch_size=2)).images[0])
    )
    script = type(studio.extensions.find("raising").setup.alwayson[0])
    assert script.calls == 1  # skipped for the rest of the job after the first failure
    assert len(result.warnings) == 2
    assert result.warnings[0].startswith(
        "Extension raising: Raising: on_step failed (ValueError: step hook broke"
    )
    assert "skipped for the rest of this job" in result.warnings[0]
    assert "after_image failed (it set image to something that is not an image)" in result.warnings[1]

    studio.generate(request(steps=3))  # the next job tries again
    assert script.calls == 2
    raising = studio.extensions.find("raising")
    assert raising.status == Status.LOADED and len(raising.problems()) >= 3
    assert studio.extensions.find("syntax").status == Status.FAILED


def test_a_slow_hook_is_left_behind_and_its_extension_stopped(tiny_dir: Path, tmp_path: Path) -> None:
    write_extension(tmp_path / "extensions", "sleeping", SLEEPING)
    write_extension(tmp_path / "extensions", "changer", CHANGER)
    studio = make_studio(tiny_dir, tmp_path, extension_timeout_s=0.3)
    started = time.monotonic()
    result = studio.generate(request(alwayson_scripts={"Changer": ["prompt"]}))
    assert time.monotonic() - started < 2.5  # did not wait the hook's 3 s
    assert len(result.images) == 1
    assert parse_infotext(result.infotexts[0]).prompt == "a cat, changed"  # others still ran
    assert result.warnings == [
        "Extension sleeping: Sleeping: before_job took longer than 0.3 s; it is off until the app restarts."
    ]
    sleeping = studio.extensions.find("sleeping")
    assert sleeping.status == Status.STOPPED and not sleeping.active
    script = type(sleeping.setup.alwayson[0])
    assert studio.generate(request()).warnings == []
    assert script.calls == 1


# -- selectable scripts -----------------------------------------------------------------------
def test_the_example_extension_script_and_step_hook(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "extensions" / "example")
    studio = make_studio(tiny_dir, tmp_path)
    example = studio.extensions.find("example")
    assert example.status == Status.LOADED, example.error
    assert "Seed sweep" in [script.title for script in studio.scripts("txt2img")]
    result = studio.generate(request(script_name="seed sweep", script_args=[3, 10], seed=100))
    assert result.seeds == [100, 110, 120] and len(result.paths) == 3

    plain = studio.generate(request())
    offset = studio.generate(request(alwayson_scripts={"Latent offset": [0.8, 2]}))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(offset.images[0]))
    # Always-on hooks run around each of a script's generations too.
    swept = studio.generate(
        request(script_name="Seed sweep", script_args=[1], alwayson_scripts={"Latent offset": [0.8, 2]})
    )
    assert np.array_equal(np.asarray(swept.images[0]), np.asarray(offset.images[0]))

    assert "javascript/example.js" not in studio.extensions.head_html()
    assert "extension example: example.js" in studio.extensions.head_html()
    assert "#example-intro" in studio.extensions.css()


def test_a_failing_extension_script_fails_its_job_with_its_name(tiny_dir: Path, tmp_path: Path) -> None:
    code = """
    from webui.scripts.args import ScriptArg, read_args

    class Broken:
        title = "Broken script"
        modes = frozenset({"txt2img"})
        args = ()

        def parse_args(self, values):
            return None

        def run(self, request, args, run):
            return {}["missing"]

    def setup(ext):
        ext.add_script(Broken())
    """
    write_extension(tmp_path / "extensions", "broken", code)
    studio = make_studio(tiny_dir, tmp_path)
    with pytest.raises(
        GenerationError, match=r"extension broken: script 'Broken script' failed in run: KeyError"
    ):
        studio.generate(request(script_name="Broken script"))
    assert len(studio.generate(request()).images) == 1  # the next job is fine


# -- settings ---------------------------------------------------------------------------------
def test_extension_settings_are_checked_applied_and_read(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "extensions" / "example")
    studio = make_studio(tiny_dir, tmp_path)
    setup = studio.extensions.find("example").setup
    assert setup.setting("greeting") == "Hello from the example extension"
    studio.apply_settings(replace(studio.settings, extension_settings={"example": {"greeting": "Hi"}}))
    assert setup.setting("greeting") == "Hi"
    with pytest.raises(ValueError, match="extension example has no setting colour"):
        studio.apply_settings(replace(studio.settings, extension_settings={"example": {"colour": "red"}}))
    assert setup.setting("greeting") == "Hi"  # nothing changed
    with pytest.raises(KeyError, match="declares no setting"):
        setup.setting("colour")
    # Sections of extensions that are not loaded now are kept as they were.
    studio.apply_settings(replace(studio.settings, extension_settings={"gone": {"x": 1}, "example": {}}))
    assert studio.settings.extension_settings["gone"] == {"x": 1}
    assert setup.setting("greeting") == "Hello from the example extension"

    # A hand-edited settings file with a setting the extension does not declare: defaults, and it starts.
    edited = make_studio(tiny_dir, tmp_path, extension_settings={"example": {"colour": "red"}})
    assert edited.extensions.find("example").setup.setting("greeting") == "Hello from the example extension"


# -- installing -------------------------------------------------------------------------------
def test_installing_is_refused_on_the_network_without_the_flag() -> None:
    assert "--enable-insecure-extension-access" in install_refusal(
        listen=True, allowed_flag=False, is_admin=True
    )
    assert install_refusal(listen=True, allowed_flag=True, is_admin=True) is None
    assert install_refusal(listen=False, allowed_flag=False, is_admin=True) is None
    assert "only an admin" in install_refusal(listen=False, allowed_flag=False, is_admin=False)
    args = app_parser().parse_args(["--listen", "--enable-insecure-extension-access"])
    assert Settings.from_args(args).allow_extension_install


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_install_from_a_git_url(tmp_path: Path) -> None:
    source = commit_as_git_repository(
        write_extension(
            tmp_path / "repos", "hello-ext", "def setup(ext): pass\n", MANIFEST.format(name="hello")
        )
    )
    extensions_dir = tmp_path / "data" / "extensions"

    folder = install_from_url(source.as_uri(), extensions_dir)
    assert folder == extensions_dir / "hello-ext" and (folder / "extension.toml").is_file()
    loaded = Extensions.load(ExtensionFolders(extensions_dir, builtin=None), data_dir=tmp_path)
    assert loaded.find("hello").status == Status.LOADED
    with pytest.raises(InstallError, match="already exists"):
        install_from_url(source.as_uri(), extensions_dir)
    with pytest.raises(InstallError, match="not a git URL"):
        install_from_url("ftp://example.com/x.git", extensions_dir)
    with pytest.raises(InstallError, match="git clone failed"):
        install_from_url((tmp_path / "nowhere").as_uri(), extensions_dir)
    plain = tmp_path / "repos" / "plain"
    plain.mkdir()
    (plain / "README").write_text("no manifest")
    commit_as_git_repository(plain)
    with pytest.raises(InstallError, match="not an extension: no extension.toml"):
        install_from_url(plain.as_uri(), extensions_dir)
    assert sorted(p.name for p in extensions_dir.iterdir()) == ["hello-ext"]  # nothing left behind
