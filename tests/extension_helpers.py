"""What the extension tests share: the shipped example and colour list, writing an extension
folder, and a Studio over the tiny SD1.5 checkpoint that loads a data folder's extensions."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

from webui.settings import Settings
from webui.studio import Studio

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "example-extension"
COLORS = (REPO / "extensions-builtin" / "wildcards" / "wildcards" / "color.txt").read_text().split()
MANIFEST = 'name = "{name}"\nversion = "1.2.3"\n'

# An always-on script whose step hook always raises: the job must finish anyway.
RAISING_STEP_HOOK = """
from webui.extensions.api import AlwaysOnScript

class Raising(AlwaysOnScript):
    title = "Raising"

    def on_step(self, step, args):
        raise RuntimeError("boom")

def setup(ext):
    ext.add_alwayson(Raising())
"""


def write_extension(root: Path, folder: str, code: str, manifest: str | None = None) -> Path:
    """`root/folder` with a manifest (named after the folder unless given) and `extension.py`."""
    path = root / folder
    path.mkdir(parents=True)
    (path / "extension.toml").write_text(manifest if manifest is not None else MANIFEST.format(name=folder))
    (path / "extension.py").write_text(textwrap.dedent(code))
    return path


def commit_as_git_repository(folder: Path) -> Path:
    """`folder` made a git repository with its files in one commit, to install from as a file:// URL."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(folder)]
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "first"]):
        subprocess.run([*git, *command], check=True)
    return folder


def install_example_and_raising(extensions_dir: Path) -> None:
    """The documented example and the "raising" extension, for the servers of the HTTP and browser tests."""
    shutil.copytree(EXAMPLE, extensions_dir / "example")
    write_extension(extensions_dir, "raising", RAISING_STEP_HOOK)


def make_studio(tiny_dir: Path, data_dir: Path, **settings: object) -> Studio:
    """A Studio on tiny SD1.5 over `data_dir`, which loads the built-in and `data_dir/extensions`."""
    return Studio(
        Settings.for_data_dir(
            data_dir,
            ckpt_dir=tiny_dir,
            ckpt=str(tiny_dir / "tiny-sd15.safetensors"),
            watermark=False,
            **settings,
        )
    )
