"""CPU bf16: close to the fp32 image, exact when turned off, on by default only where it pays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

# The same request and fresh-model helpers as the other speed options' tests.
from tests.test_speed import CPU, REQUEST, _fresh, _pixels
from webui.engine import speed as speed_module
from webui.engine.devices import cpu_has_native_bf16
from webui.engine.generate import Engine
from webui.engine.speed import resolve_for
from webui.engine.speed_options import SpeedOptions
from webui.settings import add_speed_flags, speed_options
from webui.tools import cpu_bench


def _is_nhwc(weight: torch.Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_cpu_bf16_stays_within_the_noise_of_a_bf16_model(tiny_dir, arch: str) -> None:
    exact = _pixels(
        Engine(_fresh(tiny_dir, arch), speed=SpeedOptions(cpu_bf16="off")).generate(REQUEST).images
    )
    whole_bf16 = _pixels(Engine(_fresh(tiny_dir, arch, torch.bfloat16)).generate(REQUEST).images)
    model = _fresh(tiny_dir, arch)
    images = Engine(model, speed=SpeedOptions(cpu_bf16="on")).generate(REQUEST).images
    difference, floor = np.abs(_pixels(images) - exact), np.abs(whole_bf16 - exact)
    assert 0 < difference.mean() < 1  # it does run in bf16, and moves pixels by under a level on average
    assert difference.mean() <= floor.mean()  # fp32 latents, sums and guidance: no worse than a bf16 model
    assert difference.max() <= max(floor.max(), 8)
    assert _is_nhwc(model.unet.conv_in.weight) and _is_nhwc(model.vae.decoder.conv_in.weight)
    assert model.unet.conv_in.weight.dtype == torch.float32  # the weights themselves stay fp32


def test_turned_off_it_is_exactly_the_plain_path_again(tiny_dir) -> None:
    plain = _pixels(
        Engine(_fresh(tiny_dir, "sd15"), speed=SpeedOptions(cpu_bf16="off")).generate(REQUEST).images
    )
    model = _fresh(tiny_dir, "sd15")
    on = Engine(model, speed=SpeedOptions(cpu_bf16="on")).generate(REQUEST).images
    assert not np.array_equal(_pixels(on), plain)
    off = Engine(model, speed=SpeedOptions(cpu_bf16="off")).generate(REQUEST).images
    assert np.array_equal(_pixels(off), plain)  # no rounded weights or stale layout left behind
    assert model.unet.conv_in.weight.is_contiguous() and model.vae.decoder.conv_in.weight.is_contiguous()


def test_auto_turns_on_for_full_size_fp32_models_on_native_bf16_cpus(tiny_dir, monkeypatch) -> None:
    assert SpeedOptions().resolve(CPU, cpu_bf16_pays=True).cpu_bf16
    assert SpeedOptions().resolve(CPU, cpu_bf16_pays=True).channels_last  # oneDNN's bf16 layout
    assert not SpeedOptions(channels_last="off").resolve(CPU, cpu_bf16_pays=True).channels_last
    assert not SpeedOptions().resolve(CPU).cpu_bf16
    assert not SpeedOptions(cpu_bf16="off").resolve(CPU, cpu_bf16_pays=True).cpu_bf16
    assert SpeedOptions(cpu_bf16="on").resolve(CPU).cpu_bf16  # asked for: even where it is emulated
    assert not SpeedOptions(cpu_bf16="on").resolve(torch.device("cuda")).cpu_bf16  # a CPU option
    with pytest.raises(ValueError, match="cpu_bf16 must be one of"):
        SpeedOptions(cpu_bf16="yes")

    tiny = _fresh(tiny_dir, "sd15")
    assert not resolve_for(tiny, SpeedOptions()).cpu_bf16  # a tiny UNet is bound by the casts
    monkeypatch.setattr(speed_module, "CPU_BF16_MIN_UNET_PARAMETERS", 0)
    assert resolve_for(tiny, SpeedOptions()).cpu_bf16 is cpu_has_native_bf16()
    assert not resolve_for(_fresh(tiny_dir, "sd15", torch.bfloat16), SpeedOptions()).cpu_bf16
    monkeypatch.setattr(speed_module, "cpu_has_native_bf16", lambda: False)
    assert not resolve_for(tiny, SpeedOptions()).cpu_bf16


def test_the_flag_reaches_the_options() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_speed_flags(parser)
    assert speed_options(parser.parse_args([])).cpu_bf16 == "auto"
    assert speed_options(parser.parse_args(["--cpu-bf16", "off"])).cpu_bf16 == "off"
    with pytest.raises(SystemExit):
        parser.parse_args(["--cpu-bf16", "maybe"])


def test_cpu_vs_stock_benchmark_prints_both_and_the_ratio(tmp_path, capsys) -> None:
    out = tmp_path / "cpu.json"
    argv = ["--tiny", "--size", "64", "--steps", "2", "--repeats", "1"]
    result = cpu_bench.main([*argv, "--cpu-bf16", "on", "--dir", str(tmp_path), "--json", str(out)])
    printed = capsys.readouterr().out
    assert "stock" in printed and "ours is" in printed and "x the stock pipeline" in printed
    figures = json.loads(out.read_text())
    assert figures["speedup"] == pytest.approx(figures["stock_seconds"] / figures["ours_seconds"])
    assert figures["speed"]["cpu_bf16"] is True
    assert len(figures["stock_samples"]) == len(figures["ours_samples"]) == 1
    assert result.max_pixel_difference > 0  # bf16 against the stock fp32 pipeline
