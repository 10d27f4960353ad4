"""What a fresh `pip install -r requirements.txt` gives: every third-party module the app imports
is pinned there, cv2 comes from the headless OpenCV build, and the Python floor is the one the
pins need."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.outputs import DEFAULT_PAYLOAD, embed_watermark, read_watermark

ROOT = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            pins[_canonical(name.split("[")[0])] = version.split(";")[0].strip()
    return pins


def _imported_top_level_modules(folder: Path, *, leaving_out: Path | None = None) -> set[str]:
    modules = set()
    for source in folder.rglob("*.py"):
        if leaving_out is not None and source.is_relative_to(leaving_out):
            continue
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def _unpinned(modules: set[str], pins: dict[str, str]) -> dict[str, object]:
    owners = importlib.metadata.packages_distributions()
    unpinned: dict[str, object] = {}
    for module in sorted(modules):
        if module in sys.stdlib_module_names or module == "webui":
            continue
        distributions = {_canonical(name) for name in owners.get(module, [])}
        if not distributions & pins.keys():
            unpinned[module] = sorted(distributions) or "not installed"
    return unpinned


def test_every_third_party_module_the_app_imports_is_pinned() -> None:
    """The cluster package alone may need more: requirements-cluster.txt (Ray), which is optional."""
    pins = _pins(ROOT / "requirements.txt")
    cluster = ROOT / "webui" / "cluster"
    assert _unpinned(_imported_top_level_modules(ROOT / "webui", leaving_out=cluster), pins) == {}
    with_cluster = pins | _pins(ROOT / "requirements-cluster.txt")
    cluster_needs = _imported_top_level_modules(cluster)
    # Names the cluster's pins give that are not installed here (Ray, in CI) count as pinned.
    missing = {name for name in cluster_needs if importlib.util.find_spec(name) is None}
    assert set(_unpinned(cluster_needs - missing, with_cluster)) == set()
    assert missing <= {"ray"}


def test_cv2_is_the_headless_build_and_nothing_asks_for_the_other() -> None:
    pins = _pins(ROOT / "requirements.txt")
    assert "opencv-python-headless" in pins and "pywavelets" in pins
    # opencv-python (and invisible-watermark, which requires it) would put a cv2 that needs
    # libGL over the headless one.
    assert "opencv-python" not in pins and "invisible-watermark" not in pins
    installed = importlib.metadata.version("opencv-python-headless")
    assert installed == pins["opencv-python-headless"]


def test_the_python_floor_matches_what_the_pins_need() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["requires-python"] == ">=3.11"
    assert project["tool"]["ruff"]["target-version"] == "py311"
    for name in ("numpy", "diffusers"):
        needs = importlib.metadata.metadata(name)["Requires-Python"]
        assert "3.11" in needs or "3.12" in needs, (name, needs)


def _noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8))


def test_our_watermark_reads_and_is_read_by_invisible_watermark() -> None:
    """The layout is invisible-watermark's dwtDct: checked against the library where it is installed."""
    imwatermark = pytest.importorskip("imwatermark")

    def to_bgr(image: Image.Image) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])

    for seed in range(3):
        original = _noise(seed)
        decoder = imwatermark.WatermarkDecoder("bytes", len(DEFAULT_PAYLOAD) * 8)
        assert bytes(decoder.decode(to_bgr(embed_watermark(original)), "dwtDct")) == DEFAULT_PAYLOAD
        encoder = imwatermark.WatermarkEncoder()
        encoder.set_watermark("bytes", DEFAULT_PAYLOAD)
        theirs = Image.fromarray(np.ascontiguousarray(encoder.encode(to_bgr(original), "dwtDct")[:, :, ::-1]))
        assert read_watermark(theirs) == DEFAULT_PAYLOAD
        # On an unmarked image both read the same garbage.
        assert read_watermark(original) == bytes(decoder.decode(to_bgr(original), "dwtDct"))
