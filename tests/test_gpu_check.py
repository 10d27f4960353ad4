"""The GPU check's plumbing, on the CPU: its plan, its time limits, and the report it writes."""

from __future__ import annotations

import sys
from pathlib import Path

from webui.tools.gpu_check import CheckReport, StepResult, junit_figures, markdown_rows, plan, run_step


def test_the_full_plan_runs_the_cuda_tests_the_target_cases_and_the_swaps(tmp_path: Path) -> None:
    steps = {name: command for name, command, _ in plan(tmp_path, smoke=False)}
    assert list(steps) == ["tests", "bench-sd15", "bench-sdxl", "swap"]
    assert steps["tests"][steps["tests"].index("-m", 3) + 1] == "cuda"
    sd15, sdxl = " ".join(steps["bench-sd15"]), " ".join(steps["bench-sdxl"])
    assert "--size 512" in sd15 and "--steps 50" in sd15 and "--batch 1" in sd15
    assert "--size 1024" in sdxl and "--steps 30" in sdxl
    assert "--tiny" not in sd15 + sdxl  # full-size models on the GPU
    assert all("--tiny" in " ".join(c) for n, c, _ in plan(tmp_path, smoke=True) if n != "tests")


def test_a_step_past_its_limit_is_stopped_and_reported(tmp_path: Path) -> None:
    stuck = run_step(
        "hang", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 2
    )
    assert stuck.returncode is None and not stuck.ok
    assert stuck.seconds < 30
    assert "stopped after 2 s" in stuck.output_tail
    failing = run_step("fail", [sys.executable, "-c", "raise SystemExit(3)"], 30)
    assert failing.returncode == 3 and not failing.ok


def test_junit_counts_and_failures_are_read(tmp_path: Path) -> None:
    junit = tmp_path / "t.xml"
    junit.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_cuda" name="test_a"/>'
        '<testcase classname="tests.test_cuda" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c"><skipped/></testcase>'
        "</testsuite></testsuites>",
        encoding="utf-8",
    )
    figures = junit_figures(junit)
    assert figures["tests"] == 3 and figures["failures"] == 1 and figures["skipped"] == 1
    assert figures["failed"] == ["tests.test_cuda::test_b"]
    assert junit_figures(tmp_path / "missing.xml") == {}


def test_the_markdown_rows_name_the_device_date_commit_and_figures() -> None:
    case = {
        "case": {"arch": "sd15", "size": 512, "batch": 1, "steps": 50},
        "ours": {"seconds_per_image": 0.41, "loop_its": 140.0},
        "stock": {"loop_its": 50.0},
        "its_ratio": 2.8,
        "seconds_ratio": 2.5,
        "preview_cost": 0.015,
    }
    swap = {"arch": "sdxl", "ram_to_vram_s": 0.3, "floor_s": 0.27, "ratio": 1.11, "passed": True}
    report = CheckReport(
        "2026-12-01T10:00:00+00:00",
        "abc1234",
        {"name": "NVIDIA H200"},
        False,
        450,
        [
            StepResult("tests", [], 0, 60, 135, "", {"tests": 12, "failures": 1, "errors": 0, "skipped": 0}),
            StepResult("bench-sd15", [], 0, 100, 110, "", {"cases": [case]}),
            StepResult("swap", [], None, 70, 70, "", {"results": [swap]}),
        ],
    )
    rows = markdown_rows(report)
    assert "NVIDIA H200, 2026-12-01, commit abc1234" in rows
    assert "| tests | ok (11 passed, 1 failed, 0 skipped) | 60 |" in rows
    assert "| swap | timed out | 70 |" in rows
    assert "| sd15 512px b1 50 steps | 0.410 | 140.0 | 50.0 | 2.80 | 2.50 | 1.5% |" in rows
    assert "| sdxl | 0.300 | 0.270 | 1.11 | yes |" in rows
    assert not report.ok
