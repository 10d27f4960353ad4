"""Full-size SD1.5 on the CPU: our engine against diffusers' stock pipeline, same weights, same run.

    python -m webui.tools.cpu_bench                  # 512x512, 4 steps, CFG 7, 3 rounds
    python -m webui.tools.cpu_bench --cpu-bf16 off   # our fp32 path alone

Both contenders load the same random-weight checkpoint (real SD1.5 shapes, so a step costs what
a real one does), each into its own copy: our speed options change the weights' layout, and
converting it back and forth between turns would be timed. The contenders take turns, stock
first in each round, so a busy spell of a shared machine hits both; medians are reported with
the load average seen at each round, because on a shared CPU that explains most of the scatter.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.engine.devices import cpu_has_native_bf16
from webui.engine.generate import Engine
from webui.engine.speed import resolve_for
from webui.engine.speed_options import SpeedOptions
from webui.model_manager.load import load_model
from webui.tools import bench, swap_bench

CPU = torch.device("cpu")
DEFAULT_STEPS = 4  # the UNet's share of a 20-step job is larger: see docs/benchmarks.md


@dataclass
class CpuVsStock:
    date: str
    git_commit: str | None
    cpu: str
    native_bf16: bool
    threads: int
    speed: dict[str, object]  # our resolved options
    label: str
    stock_seconds: float  # end to end, median
    ours_seconds: float
    speedup: float  # stock / ours: above 1, ours is faster
    stock_samples: list[float] = field(default_factory=list)
    ours_samples: list[float] = field(default_factory=list)
    load_averages: list[float] = field(default_factory=list)  # 1-minute load at each turn
    max_pixel_difference: int = 0  # ours against stock, 0-255 levels
    mean_pixel_difference: float = 0.0


def run_cpu_vs_stock(
    folder: Path, speed: SpeedOptions, steps: int, repeats: int, *, tiny: bool = False, size: int = 512
) -> CpuVsStock:
    path = swap_bench.checkpoint_for("sd15", folder, tiny=tiny)
    case = bench.Case("sd15", size, 1, steps)
    stock_model = load_model(path, CPU, torch.float32)
    ours_model = load_model(path, CPU, torch.float32)
    engine = Engine(ours_model, speed=speed)
    loads: list[float] = []
    runners = {
        "stock": _noting_load(bench._run_stock(stock_model, case), loads),
        "ours": _noting_load(bench._run_ours(engine, case), loads),
    }
    measured = bench._timed_runs(runners, CPU, repeats, case.batch)
    (stock, stock_images), (ours, our_images) = measured["stock"], measured["ours"]
    difference = np.abs(bench._pixels(our_images) - bench._pixels(stock_images))
    return CpuVsStock(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        git_commit=swap_bench.git_commit(),
        cpu=swap_bench.describe_device(CPU)["name"],
        native_bf16=cpu_has_native_bf16(),
        threads=torch.get_num_threads(),
        speed=asdict(resolve_for(ours_model, speed)),
        label=f"{'tiny' if tiny else 'random full-size'} {case.label}, CFG 7, {bench.SAMPLER}",
        stock_seconds=stock.seconds,
        ours_seconds=ours.seconds,
        speedup=stock.seconds / ours.seconds,
        stock_samples=stock.samples_s,
        ours_samples=ours.samples_s,
        load_averages=loads[2:],  # the warm-up's left out, as its times are
        max_pixel_difference=int(difference.max()),
        mean_pixel_difference=float(difference.mean()),
    )


def _noting_load(run: bench.Runner, loads: list[float]) -> bench.Runner:
    def noted(mark: Any) -> list[Image.Image]:
        loads.append(_load_average())
        return run(mark)

    return noted


def _load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):  # not Linux
        return float("nan")


def format_cpu_vs_stock(result: CpuVsStock) -> str:
    loads = [load for load in result.load_averages if load == load]
    load_text = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "unknown"
    return "\n".join(
        [
            f"{result.label} on {result.cpu}; native bf16: {'yes' if result.native_bf16 else 'no'}; "
            f"{result.threads} threads; commit {(result.git_commit or 'unknown')[:7]}, {result.date}",
            f"our options: {result.speed}",
            f"stock  {result.stock_seconds:8.2f} s  (runs: {_seconds(result.stock_samples)})",
            f"ours   {result.ours_seconds:8.2f} s  (runs: {_seconds(result.ours_samples)})",
            f"ours is {result.speedup:.2f}x the stock pipeline end to end (median of "
            f"{len(result.ours_samples)} alternating runs; 1-minute load average {load_text})",
            f"pixels against stock: max {result.max_pixel_difference}, "
            f"mean {result.mean_pixel_difference:.3f} levels of 255",
        ]
    )


def _seconds(samples: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in samples) + f"; median {statistics.median(samples):.1f}"


def main(argv: list[str] | None = None) -> CpuVsStock:
    parser = argparse.ArgumentParser(
        prog="python -m webui.tools.cpu_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--size", type=int, help="image side (default 512; tiny: 128)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds, after one warm-up each")
    parser.add_argument("--tiny", action="store_true", help="the tiny checkpoint instead of full-size SD1.5")
    bench.add_speed_flags(parser)
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "webui-bench"), help="checkpoints")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    size = args.size or (bench.TINY_SIZES["sd15"] if args.tiny else bench.FULL_SIZES["sd15"])
    result = run_cpu_vs_stock(
        Path(args.dir), bench.speed_options(args), args.steps, args.repeats, tiny=args.tiny, size=size
    )
    print(format_cpu_vs_stock(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
