"""Import rules that keep the app's parts apart; pyproject's import-linter contracts hold the rest."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTENSIONS = [
    *sorted((ROOT / "extensions-builtin").glob("*/extension.py")),
    ROOT / "docs" / "example-extension" / "extension.py",
]


def _app_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "webui" or name.startswith("webui.")}


@pytest.mark.parametrize("path", EXTENSIONS, ids=lambda path: path.parent.name)
def test_extensions_import_only_the_public_extension_api(path: Path) -> None:
    assert _app_imports(path) == {"webui.extensions.api"}


@pytest.mark.parametrize("module", ["webui.settings", "webui.extensions.api", "webui.jobs.caller"])
def test_these_modules_load_without_torch(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_extension_api_still_hands_out_the_step_type() -> None:
    from webui.engine.steps import DenoiseStep
    from webui.extensions import api

    assert api.DenoiseStep is DenoiseStep
    assert set(api.__all__) <= set(dir(api)) | {"DenoiseStep"}
