"""The benchmark command runs end to end on CPU, and its figures mean what they say."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from webui.tools import bench


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "bench.json"
    argv = ["--device", "cpu", "--arch", "sd15", "sdxl", "--batch", "2", "--steps", "3", "--size", "64"]
    report = bench.main([*argv, "--repeats", "1", "--dir", str(folder), "--json", str(out)])
    return report, json.loads(out.read_text(encoding="utf-8"))


def test_every_case_has_ours_and_stock_figures(cpu_report) -> None:
    report, stored = cpu_report
    assert report.tiny and report.device["type"] == "cpu"
    cases = [(c.case.arch, c.case.batch, c.case.steps) for c in report.cases]
    assert cases == [("sd15", 2, 3), ("sdxl", 2, 3)]
    for result in report.cases:
        for figures in (result.ours, result.stock):
            assert figures is not None and figures.seconds > 0 and figures.loop_its > 0
            assert figures.seconds_per_image == pytest.approx(figures.seconds / 2)
        assert result.its_ratio == pytest.approx(result.ours.loop_its / result.stock.loop_its)
        # Same weights, seeds and sampler: our pixels are the stock pipeline's within a level.
        assert result.max_pixel_difference is not None and result.max_pixel_difference <= 1
        assert 0 < result.first_preview_s < result.with_previews_s
        assert 0 < result.floor_s < result.ours.seconds and 0 < result.floor_share < 1
    assert stored["cases"][0]["case"] == {"arch": "sd15", "size": 64, "batch": 2, "steps": 3}
    assert stored["git_commit"] is None or len(stored["git_commit"]) == 40
    assert {swap["arch"] for swap in stored["swaps"]} == {"sd15", "sdxl"}
    # On CPU the GPU targets are not judged; the CPU ones are.
    assert set(report.targets) == {"preview_cost", "cpu_step_overhead"}


def test_flops_grow_with_steps_and_batch(tiny_model) -> None:
    model = tiny_model("sd15")
    two, four = (bench.count_flops(model, bench.Case("sd15", 64, 1, steps)) for steps in (2, 4))
    one_step = (four - two) / 2
    assert one_step > 0 and two > 2 * one_step  # the rest is the VAE decode and the text encoders
    batched = bench.count_flops(model, bench.Case("sd15", 64, 2, 2))
    assert 1.9 * two < batched < 2.1 * two + 1  # text encoding does not grow with the batch


def test_the_floor_uses_the_datasheet_peak_on_known_gpus(monkeypatch) -> None:
    monkeypatch.setattr(bench, "measure_matmul_flops", lambda device, dtype: 5e14)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    peak, source, measured = bench.peak_flops(torch.device("cuda"), torch.float16)
    assert (peak, measured) == (989e12, 5e14) and "datasheet" in source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert bench.peak_flops(torch.device("cuda"), torch.bfloat16)[0] == 756e12
    peak, source, _ = bench.peak_flops(torch.device("cpu"), torch.float32)
    assert peak == 5e14 and "measured" in source


def test_gpu_targets_are_judged_on_their_cases(cpu_report) -> None:
    report, _ = cpu_report
    result = report.cases[0]
    sd15 = replace(
        result,
        case=bench.Case("sd15", 512, 1, 50),
        ours=replace(result.ours, seconds=0.45),
        its_ratio=2.4,
        preview_cost=0.01,
    )
    sdxl = replace(result, case=bench.Case("sdxl", 1024, 1, 30), preview_cost=0.03)
    sdxl = replace(sdxl, ours=replace(result.ours, seconds=1.3))
    gpu = replace(report, device={"type": "cuda", "name": "H100"}, tiny=False, cases=[sd15, sdxl])
    targets = bench.judge_targets(gpu)
    assert targets["sd15_512_b1_50_seconds"]["met"] is True
    assert targets["sd15_its_ratio"]["met"] is False
    assert targets["sdxl_1024_b1_30_seconds"]["met"] is False
    assert targets["preview_cost"]["value"] == pytest.approx(0.02)  # the median of the cases
    assert "cpu_step_overhead" not in targets
    assert "switch_ratio" in targets
