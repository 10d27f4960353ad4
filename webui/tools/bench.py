"""Benchmark generation: our engine against diffusers' stock pipeline on the same weights, same run.

    python -m webui.tools.bench                                  # what this machine can do
    python -m webui.tools.bench --compile on --cuda-graphs --json bench.json
    python -m webui.tools.cpu_bench                              # full-size SD1.5 on the CPU, 4 steps

On CUDA: full-size random-weight SD1.5 at 512x512 and SDXL at 1024x1024 (a random checkpoint
costs exactly what the real one does), batch 1 and 4, CFG on, 20/30/50 steps. Without CUDA:
the tiny test checkpoints at small sizes, so a run ends in minutes. For each case it prints and
stores (--json) end-to-end seconds per image, it/s of the UNet loop, peak memory, the stock
pipeline's figures and the ratios, the engine's per-step overhead, time to first preview, the
cost of a preview every step, the compute floor (FLOPs of the run / the device's peak) and our
share of it, and how far our pixels are from the stock pipeline's. Then the RAM -> VRAM model
switch against the measured pinned bandwidth (webui.tools.swap_bench). docs/benchmarks.md
explains every figure and keeps the results.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import psutil
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from webui.engine.devices import resolve_dtype
from webui.engine.generate import Engine
from webui.engine.preview import vae_decode, with_previews
from webui.engine.request import GenerationRequest
from webui.engine.samplers import make_scheduler
from webui.engine.speed import prepare_unet, use_compile_cache
from webui.engine.speed_options import SpeedOptions
from webui.engine.steps import StepInfo
from webui.jobs.job import Job
from webui.model_manager.detect import Arch
from webui.model_manager.load import LoadedModel, load_model
from webui.settings import add_speed_flags, speed_options
from webui.tools import swap_bench

SAMPLER = "Euler"
PROMPT, NEGATIVE = "a lighthouse on a cliff at dusk, oil painting", "blurry, low quality"
FULL_SIZES = {"sd15": 512, "sdxl": 1024}
TINY_SIZES = {"sd15": 128, "sdxl": 128}
FULL_STEPS = (20, 30, 50)
TINY_STEPS = (20, 50)
# Dense fp16/bf16 tensor-core peaks from the vendors' datasheets, matched on the device name.
DATASHEET_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("T4", 65.0),
)
# Targets from the issue; each is judged only where its case ran on its kind of device.
TARGETS = {
    "sd15_512_b1_50_seconds": 0.5,
    "sd15_its_ratio": 2.5,
    "sdxl_1024_b1_30_seconds": 1.2,
    "preview_cost": 0.02,
    "switch_ratio": swap_bench.TARGET_RATIO,
    "cpu_step_overhead": 0.03,
}


@dataclass(frozen=True)
class Case:
    arch: str
    size: int
    batch: int
    steps: int

    @property
    def label(self) -> str:
        return f"{self.arch} {self.size}px b{self.batch} {self.steps} steps"


@dataclass
class RunFigures:
    seconds: float  # end to end, median: prompt encoding, the loop, the VAE decode, PIL images
    seconds_per_image: float
    loop_its: float  # UNet loop iterations per second, steps 2..N (the first step's launch excluded)
    peak_bytes: int  # CUDA: peak allocated; CPU: peak RSS growth over the run
    samples_s: list[float]
    # CPU only: loop seconds per step spent outside UNet calls (scheduler, guidance, the loop itself)
    outside_unet_s: float | None = None


@dataclass
class CaseResult:
    case: Case
    ours: RunFigures
    stock: RunFigures | None
    its_ratio: float | None  # our loop it/s / stock's
    seconds_ratio: float | None  # stock's end-to-end seconds / ours
    step_overhead: float | None  # our seconds per step / stock's - 1 (same options: the loop's own cost)
    max_pixel_difference: int | None  # ours vs stock, in 0-255 levels
    mean_pixel_difference: float | None
    first_preview_s: float  # from the call to the first preview image a reader can show
    with_previews_s: float  # end to end with a preview every step, drawn by a reader as they come
    preview_cost: float  # with_previews_s / ours.seconds - 1
    flops: float  # the run's floating-point operations (UNet steps with CFG, VAE decode, text)
    floor_s: float  # flops / the device's peak
    floor_share: float  # floor_s / our end-to-end seconds
    # CPU: (our time per step outside the UNet - stock's) / stock's whole step; the loop's own cost,
    # free of the UNet's run-to-run noise
    loop_overhead: float | None = None
    # CUDA: synchronizing CUDA calls PyTorch reported between the end of step 1 and the last step
    # (previews on, every step); 0 means the host never waited for the GPU inside the loop
    loop_syncs: int | None = None


@dataclass
class Report:
    date: str
    git_commit: str | None
    device: dict[str, Any]
    versions: dict[str, str | None]
    dtype: str
    tiny: bool
    speed: dict[str, object]
    peak_flops: float
    peak_flops_source: str
    measured_matmul_flops: float
    repeats: int
    cases: list[CaseResult] = field(default_factory=list)
    swaps: list[swap_bench.SwapResult] = field(default_factory=list)
    bandwidth: swap_bench.Bandwidth | None = None
    targets: dict[str, dict[str, object]] = field(default_factory=dict)


# -- timing ---------------------------------------------------------------------------------------
class _StepClock:
    """Marks the end of every step without waiting for the device (CUDA events are queued).

    With `unet` (CPU only, where a call's wall time is its cost) it also times every UNet call.
    """

    def __init__(self, device: torch.device, unet: torch.nn.Module | None = None) -> None:
        self.device, self.marks = device, []
        self.unet_calls: list[tuple[float, float]] = []
        self._hooks = []
        if unet is not None and device.type == "cpu":
            self._hooks = [
                unet.register_forward_pre_hook(lambda *_: self.unet_calls.append((time.perf_counter(), 0.0))),
                unet.register_forward_hook(lambda *_: self._unet_done()),
            ]

    def _unet_done(self) -> None:
        began, _ = self.unet_calls[-1]
        self.unet_calls[-1] = (began, time.perf_counter())

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def outside_unet_s(self) -> float | None:
        """Seconds per step between the first and last step's end not spent in the UNet."""
        if not self._hooks or len(self.marks) < 2:
            return None
        first, last = self.marks[0], self.marks[-1]
        inside = sum(end - began for began, end in self.unet_calls if began >= first and end <= last)
        return (last - first - inside) / (len(self.marks) - 1)

    def mark(self) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def loop_its(self) -> float:
        """Steps per second between the first and the last step's end."""
        if len(self.marks) < 2:
            return float("nan")
        first, last = self.marks[0], self.marks[-1]
        if self.device.type == "cuda":
            last.synchronize()
            seconds = first.elapsed_time(last) / 1000
        else:
            seconds = last - first
        return (len(self.marks) - 1) / seconds


class _PeakMemory:
    """Peak device memory (CUDA) or peak growth of the process's RSS, sampled every millisecond."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._peak = self._base = 0

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = self._peak = self._process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type != "cuda":
            self._stop.set()
            self._thread.join()

    @property
    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return self._peak - self._base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Runner = Callable[[Callable[[], None]], list[Image.Image]]  # run(mark) calls mark() after every step


def _timed_runs(
    runners: dict[str, Runner],
    device: torch.device,
    repeats: int,
    batch: int,
    unet: torch.nn.Module | None = None,
) -> dict[str, tuple[RunFigures, list[Image.Image]]]:
    """One warm-up each (it also compiles), then `repeats` rounds taking the runners in turn, so a
    slow spell of a shared machine hits every contender alike; medians per runner. With `unet`,
    its calls are timed too (see `_StepClock`)."""
    for run in runners.values():
        run(lambda: None)
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    its: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, list[int]] = {name: [] for name in runners}
    outside: dict[str, list[float]] = {name: [] for name in runners}
    images: dict[str, list[Image.Image]] = {}
    for _ in range(repeats):
        for name, run in runners.items():
            clock = _StepClock(device, unet)
            gc.collect()
            try:
                with _PeakMemory(device) as memory:
                    started = time.perf_counter()
                    images[name] = run(clock.mark)
                    _sync(device)
                    samples[name].append(time.perf_counter() - started)
            finally:
                clock.close()
            its[name].append(clock.loop_its())
            peaks[name].append(memory.peak_bytes)
            if (value := clock.outside_unet_s()) is not None:
                outside[name].append(value)
    out = {}
    for name in runners:
        seconds = statistics.median(samples[name])
        figures = RunFigures(
            seconds,
            seconds / batch,
            statistics.median(its[name]),
            max(peaks[name]),
            samples[name],
            statistics.median(outside[name]) if outside[name] else None,
        )
        out[name] = (figures, images[name])
    return out


# -- the two contenders ---------------------------------------------------------------------------
def _request(case: Case) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        steps=case.steps,
        width=case.size,
        height=case.size,
        batch_size=case.batch,
        cfg_scale=7.0,
        seed=1234,
        sampler_name=SAMPLER,
    )


def stock_pipeline(
    model: LoadedModel, scheduler: SchedulerMixin
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """diffusers' own pipeline over a loaded model's components: the reference we are measured against."""
    if model.arch is Arch.SDXL:
        pipe = StableDiffusionXLPipeline(
            vae=model.vae,
            text_encoder=model.text_encoders[0],
            text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0],
            tokenizer_2=model.tokenizers[1],
            unet=model.unet,
            scheduler=scheduler,
            add_watermarker=False,  # ours watermarks when saving images, not in the engine
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=model.text_encoders[0],
            tokenizer=model.tokenizers[0],
            unet=model.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_stock(model: LoadedModel, case: Case) -> Runner:
    pipe = stock_pipeline(model, make_scheduler(SAMPLER, "Automatic", model.spec.scheduler_config))

    def run(mark: Callable[[], None]) -> list[Image.Image]:
        _plain_unet(model)  # diffusers' defaults, not the options our runs left on the model

        def on_step(_pipe: object, _step: int, _timestep: object, kwargs: dict) -> dict:
            mark()
            return kwargs

        return pipe(
            prompt=[PROMPT] * case.batch,
            negative_prompt=[NEGATIVE] * case.batch,
            num_inference_steps=case.steps,
            guidance_scale=7.0,
            width=case.size,
            height=case.size,
            generator=[torch.Generator("cpu").manual_seed(1234 + i) for i in range(case.batch)],
            callback_on_step_end=on_step,
        ).images

    return run


def _run_ours(engine: Engine, case: Case) -> Runner:
    request = _request(case)

    def run(mark: Callable[[], None]) -> list[Image.Image]:
        return engine.generate(request, on_step=lambda _info: mark()).images

    return run


def _run_with_previews(engine: Engine, case: Case, first_previews: list[float]) -> Runner:
    """Our engine with a preview every step, through the real path: the step hook, `with_previews`
    (which starts each copy to the host) and a Job, with a reader thread woken by each step to draw
    the new preview, as a page would if it polled fast enough. Appends the time from the call to
    the first drawn preview."""
    request = _request(case)

    def run(mark: Callable[[], None]) -> list[Image.Image]:
        job = Job(request, "bench", "bench", arch=engine.model.arch)
        previews = with_previews(job.on_step, period=1)
        finished, stepped = threading.Event(), threading.Event()
        first: list[float] = []

        def reader() -> None:
            last = 0
            while not finished.is_set():
                stepped.wait(0.05)
                stepped.clear()
                preview = job.preview()
                if preview is not None and preview[0] != last:
                    last = preview[0]
                    if not first:
                        first.append(time.perf_counter())

        def hook(info: StepInfo) -> None:
            previews(info)
            stepped.set()
            mark()

        watcher = threading.Thread(target=reader, daemon=True)
        watcher.start()
        started = time.perf_counter()
        try:
            return engine.generate(request, on_step=hook).images
        finally:
            finished.set()
            watcher.join()
            first_previews.append(first[0] - started if first else float("nan"))

    return run


# -- compute floor --------------------------------------------------------------------------------
@torch.inference_mode()
def count_flops(model: LoadedModel, case: Case) -> float:
    """FLOPs of one job: `steps` UNet calls at batch 2x (CFG), the VAE decode, the text encoders."""
    latent = case.size // 8
    device, dtype = model.device, model.dtype
    sample = torch.randn((2 * case.batch, 4, latent, latent), device=device, dtype=dtype)
    tokens = torch.zeros((2, 77), dtype=torch.long, device=device)
    width = model.unet.config.cross_attention_dim
    context = torch.randn((2 * case.batch, 77, width), device=device, dtype=dtype)
    added = None
    if model.arch is Arch.SDXL:
        config = model.unet.config
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {
            "text_embeds": torch.randn((2 * case.batch, pooled), device=device, dtype=dtype),
            "time_ids": torch.zeros((2 * case.batch, 6), device=device, dtype=dtype),
        }
    with FlopCounterMode(display=False) as unet_counter:
        model.unet(
            sample, torch.tensor(999, device=device), encoder_hidden_states=context, added_cond_kwargs=added
        )
    with FlopCounterMode(display=False) as rest:
        vae_decode(model, torch.randn((case.batch, 4, latent, latent), device=device, dtype=dtype))
        for encoder in model.text_encoders:
            encoder(tokens, output_hidden_states=True)
    return float(unet_counter.get_total_flops() * case.steps + rest.get_total_flops())


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str, float]:
    """(peak FLOP/s for the floor, where that figure comes from, a measured matmul's FLOP/s)."""
    measured = measure_matmul_flops(device, dtype)
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        name = torch.cuda.get_device_name(device)
        for key, tflops in DATASHEET_TFLOPS:
            if key in name:
                return tflops * 1e12, f"datasheet dense {str(dtype).removeprefix('torch.')} ({key})", measured
    return measured, "measured matmul (no datasheet figure for this device and precision)", measured


def measure_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The best of a few large matmuls: what this device really does at its densest."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn((size, size), device=device, dtype=dtype)
    b = torch.randn((size, size), device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        _sync(device)
        started = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * size**3 / best


# -- one case -------------------------------------------------------------------------------------
def run_case(
    model: LoadedModel,
    case: Case,
    speed: SpeedOptions,
    repeats: int,
    peak: float,
    *,
    stock: bool = True,
) -> CaseResult:
    device = model.device
    engine = Engine(model, speed=speed)
    first_previews: list[float] = []
    runners = {"ours": _run_ours(engine, case), "previews": _run_with_previews(engine, case, first_previews)}
    resolved = speed.resolve(device)
    unet = model.unet if resolved.compile == "off" else None  # a compiled UNet runs no Python hooks
    if stock and (resolved.channels_last or resolved.fuse_qkv or resolved.attention != "sdpa"):
        # Our options change the UNet's layout or processors; switching them back and forth
        # between runs would time that conversion, so the stock runs go first, on their own.
        measured = _timed_runs({"stock": _run_stock(model, case)}, device, repeats, case.batch, unet)
        measured |= _timed_runs(runners, device, repeats, case.batch, unet)
    else:
        contenders = runners | ({"stock": _run_stock(model, case)} if stock else {})
        measured = _timed_runs(contenders, device, repeats, case.batch, unet)
    ours, images = measured["ours"]
    with_previews = measured["previews"][0].seconds
    first_preview = statistics.median(first_previews[1:])  # not the warm-up's
    stock_figures, stock_images = measured.get("stock", (None, None))
    flops = count_flops(model, case)
    floor = flops / peak
    syncs = count_loop_syncs(engine, case)
    result = CaseResult(
        case=case,
        ours=ours,
        stock=stock_figures,
        its_ratio=None,
        seconds_ratio=None,
        step_overhead=None,
        max_pixel_difference=None,
        mean_pixel_difference=None,
        first_preview_s=first_preview,
        with_previews_s=with_previews,
        preview_cost=with_previews / ours.seconds - 1,
        flops=flops,
        floor_s=floor,
        floor_share=floor / ours.seconds,
        loop_syncs=syncs,
    )
    if stock_figures is not None and stock_images is not None:
        difference = np.abs(_pixels(images) - _pixels(stock_images))
        result = replace(
            result,
            its_ratio=ours.loop_its / stock_figures.loop_its,
            seconds_ratio=stock_figures.seconds / ours.seconds,
            step_overhead=stock_figures.loop_its / ours.loop_its - 1,
            loop_overhead=_loop_overhead(ours, stock_figures),
            max_pixel_difference=int(difference.max()),
            mean_pixel_difference=float(difference.mean()),
        )
    return result


def count_loop_syncs(engine: Engine, case: Case) -> int | None:
    """CUDA only: run the case with previews every step under PyTorch's sync debug mode, switched on
    after the first step (whose scheduler set-up may look up its index once) and off after the last."""
    if engine.model.device.type != "cuda":
        return None
    request = _request(case)
    job = Job(request, "bench", "bench", arch=engine.model.arch)
    previews = with_previews(job.on_step, period=1)

    def hook(info: StepInfo) -> None:
        previews(info)
        torch.cuda.set_sync_debug_mode("warn" if info.step < info.total else "default")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            engine.generate(request, on_step=hook)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def _loop_overhead(ours: RunFigures, stock: RunFigures) -> float | None:
    if ours.outside_unet_s is None or stock.outside_unet_s is None:
        return None
    return (ours.outside_unet_s - stock.outside_unet_s) / (1 / stock.loop_its)


def _plain_unet(model: LoadedModel) -> None:
    prepare_unet(
        model, SpeedOptions(channels_last="off", fuse_qkv="off").resolve(model.device), loras_active=False
    )


def _pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


# -- the whole run --------------------------------------------------------------------------------
def cases_for(
    arches: list[str], tiny: bool, sizes: list[int] | None, batches: list[int], steps: list[int]
) -> list[Case]:
    default_sizes = TINY_SIZES if tiny else FULL_SIZES
    return [
        Case(arch, size, batch, count)
        for arch in arches
        for size in (sizes or [default_sizes[arch]])
        for batch in batches
        for count in steps
    ]


def run(args: argparse.Namespace) -> Report:
    device = swap_bench.pick_device(args.device)
    tiny = args.tiny or device.type != "cuda"
    dtype = resolve_dtype(device, args.precision)
    speed = speed_options(args)
    speed.resolve(device)  # refuse an impossible option before minutes of work
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    if speed.compile != "off":
        use_compile_cache(folder / "torch-compile")
    peak, source, measured = peak_flops(device, dtype)
    report = Report(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        git_commit=swap_bench.git_commit(),
        device=swap_bench.describe_device(device),
        versions={**swap_bench.versions(), "diffusers": diffusers.__version__},
        dtype=str(dtype).removeprefix("torch."),
        tiny=tiny,
        speed={**asdict(speed), "resolved": asdict(speed.resolve(device))},
        peak_flops=peak,
        peak_flops_source=source,
        measured_matmul_flops=measured,
        repeats=args.repeats,
    )
    steps = args.steps or list(TINY_STEPS if tiny else FULL_STEPS)
    cases = cases_for(args.arch, tiny, args.size, args.batch, steps)
    for arch in args.arch:
        path = swap_bench.checkpoint_for(arch, folder, tiny=tiny)
        with _loaded(path, device, dtype) as model:
            for case in (c for c in cases if c.arch == arch):
                print(f"running {case.label} ...", flush=True)
                report.cases.append(
                    run_case(model, case, speed, args.repeats, peak, stock=not args.skip_stock)
                )
    if not args.skip_swap:
        bandwidth_bytes = swap_bench.TINY_BANDWIDTH_BYTES if tiny else swap_bench.FULL_BANDWIDTH_BYTES
        report.bandwidth = swap_bench.measure_bandwidth(device, bandwidth_bytes)
        for arch in args.arch:
            path = swap_bench.checkpoint_for(arch, folder, tiny=tiny)
            report.swaps.append(swap_bench.measure_swaps(arch, path, device, report.bandwidth, args.repeats))
    report.targets = judge_targets(report)
    return report


@contextmanager
def _loaded(path: Path, device: torch.device, dtype: torch.dtype) -> Iterator[LoadedModel]:
    model = load_model(path, device, dtype)
    try:
        yield model
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def judge_targets(report: Report) -> dict[str, dict[str, object]]:
    """The issue's targets that this run can speak to: {name: {value, target, met}}."""
    on_gpu = report.device.get("type") == "cuda" and not report.tiny
    judged: dict[str, dict[str, object]] = {}

    def judge(name: str, value: float | None, at_most: bool = True) -> None:
        if value is None or value != value:  # None or NaN
            return
        target = TARGETS[name]
        judged[name] = {
            "value": value,
            "target": target,
            "met": value <= target if at_most else value >= target,
        }

    for result in report.cases:
        case = result.case
        if on_gpu and (case.arch, case.size, case.batch, case.steps) == ("sd15", 512, 1, 50):
            judge("sd15_512_b1_50_seconds", result.ours.seconds)
            judge("sd15_its_ratio", result.its_ratio, at_most=False)
        if on_gpu and (case.arch, case.size, case.batch, case.steps) == ("sdxl", 1024, 1, 30):
            judge("sdxl_1024_b1_30_seconds", result.ours.seconds)
    costs = [r.preview_cost for r in report.cases]
    if costs:
        judge("preview_cost", max(statistics.median(costs), 0.0))
    if not on_gpu:
        overheads = [r.loop_overhead for r in report.cases if r.loop_overhead is not None]
        if overheads:
            judge("cpu_step_overhead", statistics.median(overheads))
    if on_gpu and report.swaps:
        judge("switch_ratio", max(s.ratio for s in report.swaps))
    return judged


# -- printing -------------------------------------------------------------------------------------
def format_report(report: Report) -> str:
    device, versions = report.device["name"], report.versions
    lines = [
        f"{device}, {report.dtype}, torch {versions['torch']}, diffusers {versions['diffusers']}, "
        f"commit {(report.git_commit or 'unknown')[:7]}, {report.date}",
        f"speed options: {report.speed['resolved']}",
        f"peak for the floor: {report.peak_flops / 1e12:.2f} TFLOP/s ({report.peak_flops_source}); "
        f"measured matmul {report.measured_matmul_flops / 1e12:.2f} TFLOP/s",
        "",
    ]
    header = (
        "case", "s/img", "it/s", "peak MB", "stock s/img", "stock it/s", "stock MB",
        "it/s x", "e2e x", "step ovh", "loop ovh", "1st preview", "preview cost", "floor", "share",
        "diff max/mean", "syncs",
    )  # fmt: skip
    rows = [header]
    for r in report.cases:
        stock = r.stock
        rows.append(
            (
                r.case.label,
                f"{r.ours.seconds_per_image:.3f}",
                f"{r.ours.loop_its:.1f}",
                f"{r.ours.peak_bytes / 2**20:.0f}",
                f"{stock.seconds_per_image:.3f}" if stock else "-",
                f"{stock.loop_its:.1f}" if stock else "-",
                f"{stock.peak_bytes / 2**20:.0f}" if stock else "-",
                f"{r.its_ratio:.2f}" if r.its_ratio else "-",
                f"{r.seconds_ratio:.2f}" if r.seconds_ratio else "-",
                f"{r.step_overhead:+.1%}" if r.step_overhead is not None else "-",
                f"{r.loop_overhead:+.2%}" if r.loop_overhead is not None else "-",
                f"{r.first_preview_s * 1000:.0f} ms",
                f"{r.preview_cost:+.1%}",
                f"{r.floor_s * 1000:.1f} ms",
                f"{r.floor_share:.1%}",
                f"{r.max_pixel_difference}/{r.mean_pixel_difference:.3f}"
                if r.max_pixel_difference is not None
                else "-",
                str(r.loop_syncs) if r.loop_syncs is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    if report.bandwidth is not None:
        lines += ["", f"pinned host -> device: {report.bandwidth.h2d_bytes_per_s / 1e9:.1f} GB/s"]
        for swap in report.swaps:
            lines.append(
                f"switch {swap.arch}: RAM -> VRAM {swap.ram_to_vram_s * 1000:.1f} ms for "
                f"{swap.model_bytes / 1e9:.2f} GB; floor {swap.floor_s * 1000:.1f} ms; ratio {swap.ratio:.2f}"
                + (" (CPU stand-in: no real copy)" if report.device.get("type") != "cuda" else "")
            )
    if report.targets:
        lines += ["", "targets:"]
        for name, verdict in report.targets.items():
            met = "met" if verdict["met"] else "NOT met"
            lines.append(f"  {name}: {verdict['value']:.4g} (target {verdict['target']}) {met}")
    return "\n".join(lines)


def to_json(report: Report) -> dict[str, Any]:
    return asdict(report)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python -m webui.tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=list(FULL_SIZES), default=list(FULL_SIZES))
    parser.add_argument("--size", nargs="+", type=int, help="image sides (default: 512/1024, tiny: 128)")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--steps", nargs="+", type=int, help="default: 20 30 50 (tiny: 20 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case, after one warm-up")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints (always without CUDA)")
    add_speed_flags(parser)
    parser.add_argument("--skip-stock", action="store_true", help="only our engine")
    parser.add_argument("--skip-swap", action="store_true", help="no model switch timing")
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "webui-bench"), help="checkpoints")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    report = run(args)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(to_json(report), indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
