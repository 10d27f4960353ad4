"""Time checkpoint switches through the model cache: disk -> VRAM, RAM -> VRAM and VRAM -> RAM.

    python -m webui.tools.swap_bench --arch sd15 sdxl --repeats 3 --json swap.json

Each architecture gets a full-size random-weight checkpoint (written once into --dir and
reused), which costs exactly what the real one does to move. The pinned host <-> device
bandwidth is measured directly with one large copy, and the RAM -> VRAM switch is judged
against the time its bytes need at that bandwidth: the target is at most 1.25x.

Without CUDA the cache runs with a stand-in GPU (`separate_device_memory=True` on the
CPU): tiers and events behave as on CUDA but a move copies nothing, so those figures are
the cache's own overhead and the bandwidth is a plain memcpy. `--tiny` uses the tiny test
checkpoints and ends in seconds. docs/benchmarks.md says what every figure means.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors import safe_open

from webui.model_manager.cache import GB, MemoryBudgets, ModelCache, ModelEvent, Tier
from webui.model_manager.load import load_model
from webui.model_manager.offload import MemoryMode
from webui.model_manager.placement import HOST, model_modules, module_tensors
from webui.tools import random_checkpoint, tiny_checkpoint

TARGET_RATIO = 1.25
ARCHES = random_checkpoint.ARCHES
DTYPE = torch.float16
GIB = 1 << 30
FULL_BANDWIDTH_BYTES = GIB
TINY_BANDWIDTH_BYTES = 64 << 20
BANDWIDTH_SAMPLES = 5
PAGE = 4096
TINY_MARKER = "webui.tiny_arch"  # tiny_checkpoint's metadata key
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Bandwidth:
    method: str
    buffer_bytes: int
    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    pageable_h2d_bytes_per_s: float | None
    h2d_samples_s: list[float]
    d2h_samples_s: list[float]


@dataclass
class SwapResult:
    arch: str
    checkpoint: str
    file_bytes: int
    model_bytes: int
    page_cache_dropped: bool
    load_s: float  # the cache's load event: file -> modules in RAM (safetensors maps the file lazily)
    first_move_s: float  # the cache's first RAM -> VRAM move, from the mapped (pageable) file
    first_touch_s: float | None  # stand-in only: reading every mapped page, which a real move does
    disk_to_vram_s: float
    ram_to_vram_s: float  # median wall time of activate() on a RAM-warm model: the switch
    ram_to_vram_move_s: float  # median of the move events alone, without the cache's bookkeeping
    vram_to_ram_s: float  # median wall time of unload()
    ram_to_vram_samples_s: list[float]
    vram_to_ram_samples_s: list[float]
    floor_s: float  # model bytes / measured host -> device bandwidth
    ratio: float
    passed: bool
    pinned_host_bytes: int | None  # CUDA only: pinned RAM held while the model sits in RAM


@dataclass
class Report:
    date: str
    git_commit: str | None
    stand_in: bool
    tiny: bool
    device: dict[str, Any]
    versions: dict[str, str | None]
    target_ratio: float
    repeats: int
    bandwidth: Bandwidth
    results: list[SwapResult] = field(default_factory=list)


# -- the machine ----------------------------------------------------------------------------------
def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA GPU")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def describe_device(device: torch.device) -> dict[str, Any]:
    cpu = {"cpu": _cpu_name(), "cpu_cores": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total}
    if device.type != "cuda":
        return {"type": "cpu", "name": f"{cpu['cpu']} ({cpu['cpu_cores']} cores), no GPU", **cpu}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": props.name, "vram_bytes": props.total_memory, **cpu}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}


def git_commit() -> str | None:
    """The checkout's commit, or None outside a git checkout or without git."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


# -- bandwidth ------------------------------------------------------------------------------------
def measure_bandwidth(device: torch.device, nbytes: int, samples: int = BANDWIDTH_SAMPLES) -> Bandwidth:
    if device.type != "cuda":
        return _memcpy_bandwidth(nbytes, samples)
    bandwidth = _cuda_bandwidth(device, nbytes, samples)
    torch.cuda.empty_cache()  # the buffers are gone; give their VRAM back before the models come
    return bandwidth


def _cuda_bandwidth(device: torch.device, nbytes: int, samples: int) -> Bandwidth:
    on_device = torch.empty(nbytes, dtype=torch.uint8, device=device)
    pinned = torch.ones(nbytes, dtype=torch.uint8, pin_memory=True)
    h2d = _timed_copies(lambda: on_device.copy_(pinned, non_blocking=True), samples, device)
    d2h = _timed_copies(lambda: pinned.copy_(on_device, non_blocking=True), samples, device)
    # A model's first move comes from pageable (mapped file) memory, which is slower.
    pageable = torch.ones(nbytes, dtype=torch.uint8)
    pageable_h2d = _timed_copies(lambda: on_device.copy_(pageable), samples, device)
    return Bandwidth(
        "pinned host <-> CUDA copy",
        nbytes,
        nbytes / statistics.median(h2d),
        nbytes / statistics.median(d2h),
        nbytes / statistics.median(pageable_h2d),
        h2d,
        d2h,
    )


def _memcpy_bandwidth(nbytes: int, samples: int) -> Bandwidth:
    source = torch.ones(nbytes, dtype=torch.uint8)
    target = torch.ones(nbytes, dtype=torch.uint8)  # ones, not empty: page faults are not a copy
    there = _timed_copies(lambda: target.copy_(source), samples, HOST)
    back = _timed_copies(lambda: source.copy_(target), samples, HOST)
    return Bandwidth(
        "memcpy (CPU stand-in)",
        nbytes,
        nbytes / statistics.median(there),
        nbytes / statistics.median(back),
        None,
        there,
        back,
    )


def _timed_copies(copy: Callable[[], object], samples: int, device: torch.device) -> list[float]:
    copy()  # warm-up: first-use costs are not bandwidth
    return [_timed(copy, device) for _ in range(samples)]


def _timed(action: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    action()
    _sync(device)
    return time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- checkpoints ----------------------------------------------------------------------------------
def checkpoint_for(arch: str, folder: Path, *, tiny: bool, seed: int = 0) -> Path:
    """The benchmark checkpoint for `arch` in `folder`, written unless an intact one is there."""
    kind = "tiny" if tiny else "random"
    path = Path(folder) / f"{kind}-{arch}-seed{seed}.safetensors"
    metadata = _metadata(path)
    marker = TINY_MARKER if tiny else random_checkpoint.METADATA_ARCH
    if metadata.get(marker) == arch and metadata.get("webui.seed") == str(seed):
        return path
    if tiny:
        return tiny_checkpoint.write_tiny_checkpoint(arch, path, seed)
    print(f"writing a full-size random {arch} checkpoint to {path} (once; later runs reuse it)", flush=True)
    return random_checkpoint.write_random_checkpoint(arch, path, seed, DTYPE)


def _metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # an unreadable file is simply rewritten
        return {}


def drop_page_cache(path: Path) -> bool:
    """Ask the kernel to forget the file's cached pages, so the first load reads the disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages (a file just written) cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


# -- the swaps ------------------------------------------------------------------------------------
def new_cache(device: torch.device) -> ModelCache:
    """A cache with room for the model in both tiers and the normal (no offload) mode."""
    stand_in = device.type != "cuda"
    vram = (
        psutil.virtual_memory().total if stand_in else torch.cuda.get_device_properties(device).total_memory
    )
    budgets = MemoryBudgets(vram_bytes=vram, ram_bytes=psutil.virtual_memory().total)
    return ModelCache(
        lambda path: load_model(path, HOST, DTYPE),
        device,
        budgets,
        MemoryMode.NORMAL,
        separate_device_memory=True,
        device_bytes=vram,
    )


@dataclass
class _FirstLoad:
    seconds: float
    load: ModelEvent
    move: ModelEvent
    first_touch_s: float | None


@dataclass
class _RoundTrips:
    activations: list[float]
    moves: list[float]
    unloads: list[float]
    pinned_host_bytes: int | None


def measure_swaps(
    arch: str, path: Path, device: torch.device, bandwidth: Bandwidth, repeats: int
) -> SwapResult:
    dropped = drop_page_cache(path)
    first, trips = _measure_in_fresh_cache(path, device, repeats)
    _free(device)
    switch = statistics.median(trips.activations)
    floor = first.move.size_bytes / bandwidth.h2d_bytes_per_s
    return SwapResult(
        arch=arch,
        checkpoint=str(path),
        file_bytes=path.stat().st_size,
        model_bytes=first.move.size_bytes,
        page_cache_dropped=dropped,
        load_s=first.load.seconds,
        first_move_s=first.move.seconds,
        first_touch_s=first.first_touch_s,
        disk_to_vram_s=first.seconds,
        ram_to_vram_s=switch,
        ram_to_vram_move_s=statistics.median(trips.moves),
        vram_to_ram_s=statistics.median(trips.unloads),
        ram_to_vram_samples_s=trips.activations,
        vram_to_ram_samples_s=trips.unloads,
        floor_s=floor,
        ratio=switch / floor,
        passed=switch / floor <= TARGET_RATIO,
        pinned_host_bytes=trips.pinned_host_bytes,
    )


def _measure_in_fresh_cache(path: Path, device: torch.device, repeats: int) -> tuple[_FirstLoad, _RoundTrips]:
    cache = new_cache(device)
    first = _first_activation(cache, path, device)
    trips = _round_trips(cache, path, device, repeats)
    if cache.tier(path) is not Tier.VRAM:
        raise RuntimeError(f"{path.name}: the cache did not keep the model in VRAM; check the budgets")
    cache.evict(path)
    return first, trips


def _first_activation(cache: ModelCache, path: Path, device: torch.device) -> _FirstLoad:
    started = time.perf_counter()
    model = cache.activate(path)
    _sync(device)
    seconds = time.perf_counter() - started
    load, move = _new_events(cache, 0, "load", "move")
    if device.type == "cuda":
        return _FirstLoad(seconds, load, move, None)
    # The stand-in's move copies nothing, so the mapped file would never be read; a real move reads it.
    touch = _timed(lambda: _touch_pages(model), device)
    return _FirstLoad(seconds + touch, load, move, touch)


def _round_trips(cache: ModelCache, path: Path, device: torch.device, repeats: int) -> _RoundTrips:
    trips = _RoundTrips([], [], [], None)
    pinned_before = _pinned_bytes(device)
    for _ in range(repeats):
        trips.unloads.append(_timed(lambda: cache.unload(path), device))
        if trips.pinned_host_bytes is None and pinned_before is not None:
            trips.pinned_host_bytes = (_pinned_bytes(device) or 0) - pinned_before
        seen = len(cache.events())
        trips.activations.append(_timed(lambda: cache.activate(path), device))
        trips.moves.append(_new_events(cache, seen, "move")[0].seconds)
    return trips


def _new_events(cache: ModelCache, start: int, *actions: str) -> list[ModelEvent]:
    """The first event of each wanted action after index `start`; fails loudly if one is missing."""
    events = cache.events()[start:]
    found = []
    for action in actions:
        match = next((e for e in events if e.action == action), None)
        if match is None:
            raise RuntimeError(f"the cache recorded no {action} event; got {[e.describe() for e in events]}")
        found.append(match)
    return found


def _touch_pages(model: Any) -> None:
    # safetensors maps the file; one byte per page makes the kernel read it all, as a copy would.
    for module in model_modules(model):
        for tensor in module_tensors(module):
            if tensor.numel():
                tensor.detach().reshape(-1).view(torch.uint8)[::PAGE].sum()


def _pinned_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return int(torch.cuda.host_memory_stats().get("active_bytes.current", 0))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- running and reporting ------------------------------------------------------------------------
def run(
    arches: list[str], device: torch.device, repeats: int, folder: Path, *, tiny: bool, bandwidth_bytes: int
) -> Report:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {arch: checkpoint_for(arch, folder, tiny=tiny) for arch in arches}
    bandwidth = measure_bandwidth(device, bandwidth_bytes)
    report = Report(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        git_commit=git_commit(),
        stand_in=device.type != "cuda",
        tiny=tiny,
        device=describe_device(device),
        versions=versions(),
        target_ratio=TARGET_RATIO,
        repeats=repeats,
        bandwidth=bandwidth,
    )
    for arch in arches:
        report.results.append(measure_swaps(arch, paths[arch], device, bandwidth, repeats))
    return report


def format_report(report: Report) -> str:
    bw = report.bandwidth
    lines = [_title(report)]
    lines.append(
        f"device: {report.device['name']}; torch {report.versions['torch']}, "
        f"CUDA {report.versions['cuda'] or '-'}; {report.date}; commit {(report.git_commit or '?')[:12]}"
    )
    pageable = (
        f", pageable host -> device {_rate(bw.pageable_h2d_bytes_per_s)}"
        if bw.pageable_h2d_bytes_per_s
        else ""
    )
    lines.append(
        f"bandwidth ({bw.method}, {bw.buffer_bytes / GIB:.2f} GiB, median of {len(bw.h2d_samples_s)}): "
        f"host -> device {_rate(bw.h2d_bytes_per_s)}, device -> host {_rate(bw.d2h_bytes_per_s)}{pageable}"
    )
    header = (
        "arch",
        "size GB",
        "disk->VRAM",
        "RAM->VRAM",
        "VRAM->RAM",
        "floor",
        "ratio",
        f"<= {TARGET_RATIO}x",
    )
    rows = [header] + [_row(result) for result in report.results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append("")
    lines += [_detail(result) for result in report.results]
    if report.stand_in:
        lines.append(
            "CPU stand-in: 'VRAM' is host memory, so RAM <-> VRAM moves copy nothing and the ratio "
            "measures the cache's bookkeeping against a memcpy floor. Run on a CUDA machine for real figures."
        )
    return "\n".join(lines)


def _title(report: Report) -> str:
    what = "tiny checkpoints" if report.tiny else "full-size random-weight checkpoints"
    where = "CPU stand-in (no CUDA device)" if report.stand_in else report.device["name"]
    return f"Model swap benchmark: {what}, {where}, median of {report.repeats}"


def _row(result: SwapResult) -> tuple[str, ...]:
    size = result.model_bytes
    return (
        result.arch,
        f"{size / GB:.2f}",
        _span(result.disk_to_vram_s, size),
        _span(result.ram_to_vram_s, size),
        _span(result.vram_to_ram_s, size),
        f"{result.floor_s:.3f} s",
        f"{result.ratio:.2f}",
        "PASS" if result.passed else "FAIL",
    )


def _detail(result: SwapResult) -> str:
    parts = [
        f"load event {result.load_s:.3f} s",
        f"first move {result.first_move_s:.3f} s",
        f"switch move alone {result.ram_to_vram_move_s:.4f} s",
    ]
    if result.first_touch_s is not None:
        parts.append(f"first read of the mapped file {result.first_touch_s:.3f} s")
    if result.pinned_host_bytes is not None:
        parts.append(f"pinned RAM while unloaded {result.pinned_host_bytes / GB:.2f} GB")
    cache = "page cache dropped" if result.page_cache_dropped else "page cache may be warm"
    return f"{result.arch}: {', '.join(parts)}; {cache}"


def _span(seconds: float, size: int) -> str:
    return f"{seconds:.3f} s ({_rate(size / seconds if seconds > 0 else 0.0)})"


def _rate(bytes_per_second: float | None) -> str:
    return f"{(bytes_per_second or 0.0) / GB:.1f} GB/s"


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=ARCHES, default=list(ARCHES))
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="RAM <-> VRAM round trips; the median is kept")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "webui-swap-bench",
        help="where benchmark checkpoints are written and reused (SDXL is about 7 GB)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints: checks the tool in seconds")
    parser.add_argument(
        "--bandwidth-mib", type=int, help="bandwidth buffer size (default 1024, 64 with --tiny)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    default_bytes = TINY_BANDWIDTH_BYTES if args.tiny else FULL_BANDWIDTH_BYTES
    nbytes = args.bandwidth_mib << 20 if args.bandwidth_mib else default_bytes
    device = pick_device(args.device)
    report = run(args.arch, device, args.repeats, args.dir, tiny=args.tiny, bandwidth_bytes=nbytes)
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
