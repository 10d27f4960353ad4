"""One command for a machine with a GPU: the CUDA tests, the benchmark's target cases and the
swap benchmark, in one time budget, with one report.

    python -m webui.tools.gpu_check --out gpu-check          # on an H100/H200: under 8 minutes
    python -m webui.tools.gpu_check --smoke --out /tmp/gc    # anywhere: the tool itself, tiny, CPU

Each step runs in its own process with a share of the budget, so a hang or a crash in one
(a CUDA error, a compile that never ends) still leaves the others' figures. The report is
`gpu-check.json` (every figure of every step) and `gpu-check.md`: the rows to paste into
docs/benchmarks.md, with the device, the date and the commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The benchmark's target cases (docs/benchmarks.md): SD 1.5 at 512 px, 50 steps; SDXL at 1024 px,
# 30 steps; batch 1, against the stock pipeline, previews timed too.
FULL_BENCH_CASES = (("sd15", "512", "50"), ("sdxl", "1024", "30"))
SMOKE_BENCH_CASES = (("sd15", "64", "2"),)
# Shares of the whole budget; what a step leaves unused goes to the later ones.
STEP_SHARES = {"tests": 0.30, "bench-sd15": 0.25, "bench-sdxl": 0.30, "swap": 0.15}


@dataclass
class StepResult:
    name: str
    command: list[str]
    returncode: int | None  # None: stopped at its time limit
    seconds: float
    limit_s: float
    output_tail: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class CheckReport:
    date: str
    git_commit: str | None
    device: dict[str, Any]
    smoke: bool
    budget_s: float
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)


def run_step(name: str, command: list[str], limit_s: float, tail_chars: int = 4000) -> StepResult:
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, limit_s), check=False)
        returncode: int | None = done.returncode
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:
        returncode = None
        output = _text(stopped.stdout) + _text(stopped.stderr) + f"\n[stopped after {limit_s:.0f} s]"
    return StepResult(name, command, returncode, time.monotonic() - started, limit_s, output[-tail_chars:])


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def junit_figures(junit: Path) -> dict[str, Any]:
    """Counts and the names of failed tests from pytest's JUnit XML."""
    if not junit.is_file():
        return {}
    root = ElementTree.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {**counts, "failed": failed}


def bench_figures(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {"cases": data.get("cases", []), "targets": data.get("targets", {}), "speed": data.get("speed")}


def swap_figures(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {"bandwidth": data.get("bandwidth"), "results": data.get("results", [])}


def device_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        facts |= {
            "name": properties.name,
            "memory_gb": round(properties.total_memory / 1e9, 1),
            "capability": f"{properties.major}.{properties.minor}",
            "cuda_version": torch.version.cuda,
            "count": torch.cuda.device_count(),
        }
    return facts


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def plan(out: Path, smoke: bool) -> list[tuple[str, list[str], Path | None]]:
    """(step name, command, the file its figures land in)."""
    python = sys.executable
    steps: list[tuple[str, list[str], Path | None]] = []
    junit = out / "cuda-tests.xml"
    steps.append(
        (
            "tests",
            [
                python,
                "-m",
                "pytest",
                "-q",
                "-m",
                "cuda",
                "tests",
                f"--junitxml={junit}",
                "-p",
                "no:cacheprovider",
            ],
            junit,
        )
    )
    cases = SMOKE_BENCH_CASES if smoke else FULL_BENCH_CASES
    for arch, size, steps_count in cases:
        target = out / f"bench-{arch}.json"
        command = [python, "-m", "webui.tools.bench", "--arch", arch, "--size", size, "--batch", "1"]
        command += [
            "--steps",
            steps_count,
            "--skip-swap",
            "--json",
            str(target),
            "--dir",
            str(out / "checkpoints"),
        ]
        command += ["--tiny", "--device", "cpu", "--repeats", "1"] if smoke else ["--repeats", "3"]
        steps.append((f"bench-{arch}", command, target))
    swap = out / "swap.json"
    command = [python, "-m", "webui.tools.swap_bench", "--json", str(swap), "--dir", str(out / "checkpoints")]
    command += ["--tiny", "--device", "cpu", "--repeats", "1", "--arch", "sd15"] if smoke else []
    steps.append(("swap", command, swap))
    return steps


def run(out: Path, budget_s: float, smoke: bool) -> CheckReport:
    out.mkdir(parents=True, exist_ok=True)
    report = CheckReport(
        datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        git_commit(),
        device_facts(),
        smoke,
        budget_s,
    )
    deadline = time.monotonic() + budget_s
    planned = plan(out, smoke)
    for index, (name, command, figures_file) in enumerate(planned):
        remaining = deadline - time.monotonic()
        later = sum(STEP_SHARES.get(n, 0.1) for n, _, _ in planned[index + 1 :])
        share = STEP_SHARES.get(name, 0.1)
        limit = remaining * share / (share + later) if later else remaining
        print(f"[gpu_check] {name}: up to {limit:.0f} s: {' '.join(command)}", flush=True)
        step = run_step(name, command, limit)
        if figures_file is not None:
            reader = {"tests": junit_figures, "swap": swap_figures}.get(name, bench_figures)
            step.figures = reader(figures_file)
        print(f"[gpu_check] {name}: {'ok' if step.ok else 'FAILED'} in {step.seconds:.0f} s", flush=True)
        report.steps.append(step)
    return report


def markdown_rows(report: CheckReport) -> str:
    """The lines for docs/benchmarks.md: what ran where, the case figures and the swaps."""
    device = report.device.get("name") or ("CPU (smoke)" if report.smoke else "CPU")
    lines = [
        f"### gpu_check: {device}, {report.date[:10]}, commit {report.git_commit or '?'}",
        "",
        "| step | result | seconds |",
        "|---|---|---|",
    ]
    for step in report.steps:
        result = "ok" if step.ok else ("timed out" if step.returncode is None else f"exit {step.returncode}")
        if step.name == "tests" and step.figures:
            f = step.figures
            passed = f["tests"] - f["failures"] - f["errors"] - f["skipped"]
            result += f" ({passed} passed, {f['failures'] + f['errors']} failed, {f['skipped']} skipped)"
        lines.append(f"| {step.name} | {result} | {step.seconds:.0f} |")
    cases = [case for step in report.steps for case in step.figures.get("cases", [])]
    if cases:
        lines += [
            "",
            "| case | s/img | it/s | stock it/s | it/s x | e2e x | preview cost |",
            "|---|---|---|---|---|---|---|",
        ]
        for case in cases:
            c, ours, stock = case["case"], case["ours"], case.get("stock") or {}
            label = f"{c['arch']} {c['size']}px b{c['batch']} {c['steps']} steps"
            lines.append(
                f"| {label} | {ours['seconds_per_image']:.3f} | {ours['loop_its']:.1f} | "
                f"{_number(stock.get('loop_its'), '.1f')} | {_number(case.get('its_ratio'), '.2f')} | "
                f"{_number(case.get('seconds_ratio'), '.2f')} | {case['preview_cost'] * 100:.1f}% |"
            )
    swaps = [row for step in report.steps for row in step.figures.get("results", [])]
    if swaps:
        lines += ["", "| swap | RAM->VRAM s | floor s | ratio | met |", "|---|---|---|---|---|"]
        for row in swaps:
            lines.append(
                f"| {row['arch']} | {row['ram_to_vram_s']:.3f} | {row['floor_s']:.3f} | "
                f"{row['ratio']:.2f} | {'yes' if row['passed'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> CheckReport:
    parser = argparse.ArgumentParser(
        prog="python -m webui.tools.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="where the report goes")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all steps (default 450)")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the tool itself")
    args = parser.parse_args(argv)
    report = run(args.out, args.budget, args.smoke)
    payload = asdict(report) | {"ok": report.ok}
    (args.out / "gpu-check.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    rows = markdown_rows(report)
    (args.out / "gpu-check.md").write_text(rows, encoding="utf-8")
    print(rows)
    for step in report.steps:
        if not step.ok:
            print(f"--- {step.name} (last lines) ---\n{step.output_tail[-1500:]}")
    return report


if __name__ == "__main__":
    main()
