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


def _module_imports() -> dict[str, set[str]]:
    """Every webui module's imports of other webui modules, wherever they are written (type-only
    and function-level imports included: they are circles a reader has to untangle all the same)."""
    paths = {}
    for path in (ROOT / "webui").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        paths[name] = path

    def known(module: str) -> str:
        while module not in paths and "." in module:
            module = module.rsplit(".", 1)[0]
        return module

    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("webui"):
                found.add(known(node.module))
                found.update(
                    f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in paths
                )
            elif isinstance(node, ast.Import):
                found.update(known(a.name) for a in node.names if a.name.startswith("webui"))
        graph[name] = found - {name}
    return graph


def test_no_module_imports_itself_through_others() -> None:
    graph = _module_imports()
    circles = []
    for start in sorted(graph):
        # Depth-first from each module; a path back to it is a circle.
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for target in graph.get(module, ()):
                if target == start:
                    circles.append(" -> ".join([*path, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
            if circles:
                break
    assert circles == []
