"""Which worker takes a job, and when the app uses workers at all: no Ray needed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import launch
from webui.cluster import start
from webui.cluster.choice import Candidate, choose_worker
from webui.cluster.start import cluster_specs, local_specs, wants_cluster
from webui.settings import app_parser


def test_the_worker_holding_the_checkpoint_in_vram_wins_then_ram_then_the_least_loaded() -> None:
    cold = Candidate("w1")
    warm = Candidate("w2", ram=frozenset({"a"}), jobs_done=9)
    hot = Candidate("w3", vram=frozenset({"a"}), jobs_done=20)
    assert choose_worker("a", [cold, warm, hot]) == hot
    assert choose_worker("a", [cold, warm]) == warm
    assert choose_worker("b", [hot, warm, cold]) == cold  # nobody holds b: fewest done
    assert choose_worker("b", [Candidate("w1", jobs_done=3), Candidate("w2", jobs_done=3)]).id == "w1"
    assert choose_worker("a", []) is None


def test_alternating_checkpoints_stay_on_their_workers() -> None:
    """Two idle workers, one holding a and one holding b: a, b, a, b never move a model."""
    holds = {"w1": frozenset({"a"}), "w2": frozenset({"b"})}
    for checkpoint in "abab" * 3:
        chosen = choose_worker(checkpoint, [Candidate(id, vram=held) for id, held in holds.items()])
        assert chosen is not None and checkpoint in holds[chosen.id]


def test_ray_is_used_when_asked_or_for_several_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start, "ray_installed", lambda: True)
    assert not wants_cluster(None, None, visible_gpus=1)  # one GPU: in-process, as before
    assert wants_cluster(None, None, visible_gpus=2)
    assert not wants_cluster(0, None, visible_gpus=4)  # --workers 0: in-process
    assert wants_cluster(2, None, visible_gpus=0)
    assert wants_cluster(None, "head:6379", visible_gpus=0)
    monkeypatch.setattr(start, "ray_installed", lambda: False)
    assert not wants_cluster(None, None, visible_gpus=4)  # no Ray: the app runs as it did


def test_workers_get_a_gpu_each_or_share_the_cores() -> None:
    gpus = local_specs(None, "auto", gpus=3, cpus=16)
    assert [(s.id, s.options["num_gpus"]) for s in gpus] == [("w1", 1.0), ("w2", 1.0), ("w3", 1.0)]
    assert [s.options["num_gpus"] for s in local_specs(4, "auto", gpus=2, cpus=8)] == [0.5] * 4
    cpus = local_specs(2, "cpu", gpus=2, cpus=8)  # --device cpu leaves the GPUs alone
    assert [(s.device, s.options) for s in cpus] == [("cpu", {"num_cpus": 4})] * 2
    joined = cluster_specs(None, "cpu", {"CPU": 32.0, "node:10.0.0.1": 1.0, "node:10.0.0.2": 1.0})
    assert len(joined) == 2 and all(s.options["num_cpus"] == 16 for s in joined)
    assert len(cluster_specs(None, "auto", {"CPU": 32.0, "GPU": 4.0})) == 4


def test_a_bad_worker_count_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        app_parser().parse_args(["--workers", "-1"])
    assert "the number of workers must be from 0 to 1024" in capsys.readouterr().err


def test_workers_without_ray_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(start, "ray_installed", lambda: False)
    monkeypatch.setattr(sys, "argv", ["launch.py"])
    assert launch.main(["--data-dir", str(tmp_path), "--device", "cpu", "--workers", "2"]) == 2
    assert "requirements-cluster.txt" in capsys.readouterr().err


def test_the_simulated_cluster_scales_and_affinity_saves_loads_when_workers_are_idle() -> None:
    from webui.tools.cluster_bench import Costs, affinity_policy, round_robin_policy, simulate, workload

    costs = Costs(job_s=5, disk_s=12.5, move_s=1.2, vram_models=1, ram_models=2)
    backlog = [simulate(workload(40 * n, 6, None, seed=1), n, costs, affinity_policy()) for n in (1, 4)]
    assert backlog[1].jobs_per_min > 3.5 * backlog[0].jobs_per_min
    stream = workload(200, 6, 0.3 * 8 / costs.job_s, seed=1)
    near = simulate(stream, 8, costs, affinity_policy())
    turns = simulate(stream, 8, costs, round_robin_policy(8))
    assert near.disk_loads < turns.disk_loads / 2


def test_images_a_worker_saved_on_another_machine_are_saved_here_too(tmp_path: Path) -> None:
    from PIL import Image

    from webui.cluster.copies import save_missing_here
    from webui.outputs import ImageSaver
    from webui.results import StudioResult

    here = tmp_path / "here.png"
    Image.new("RGB", (8, 8)).save(here)
    elsewhere = Path("/nonexistent/outputs/00001-7.png")
    result = StudioResult(
        [Image.new("RGB", (8, 8))] * 2, [here, elsewhere], ["a, Seed: 6", "b, Seed: 7"], [6, 7]
    )
    saver = ImageSaver(tmp_path / "outputs", watermark=False)
    assert save_missing_here(result, saver, "txt2img") == 1
    assert result.paths[0] == here and result.paths[1].is_file()
    assert result.paths[1].is_relative_to(tmp_path / "outputs" / "txt2img-images")


def test_a_head_node_address_nothing_answers_at_is_refused_at_once() -> None:
    import socket

    from webui.cluster.start import check_reachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")  # something answers: Ray takes it from there
    with pytest.raises(ConnectionError, match="ray start --head"):
        check_reachable(f"127.0.0.1:{port}")  # closed now
    check_reachable("auto")  # Ray's own address forms are left to Ray
