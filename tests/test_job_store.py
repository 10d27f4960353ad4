"""Jobs outlive a restart: a new queue on the same SQLite file runs what was waiting or running,
lists what had finished (with its images), and cleans up after writes a crash cut short."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.engine.request import GenerationRequest
from webui.jobs import Caller, JobQueue, JobState, Limits, QueueFull
from webui.jobs.queue import RESTART_STOPPED_TRAINING
from webui.jobs.store import JobStore
from webui.settings import Settings
from webui.studio import Studio
from webui.training.request import TrainingRequest

BOB = Caller("bob")
CAROL = Caller("carol")


def small(**fields: object) -> GenerationRequest:
    values: dict[str, object] = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 7}
    values.update(fields)
    return GenerationRequest(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("kept-jobs")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", folder)
    return data


def _settings(data_dir: Path) -> Settings:
    return Settings.for_data_dir(data_dir, watermark=False, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def studio(data_dir: Path) -> Studio:
    return Studio(_settings(data_dir))


def _store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3", tmp_path / "jobs")


def _pixels(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


def test_waiting_jobs_run_after_a_restart_in_their_old_order(studio: Studio, tmp_path: Path) -> None:
    before = JobQueue(studio, store=_store(tmp_path))  # never started: the "crash" comes first
    init = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    sent = [
        before.submit(small(seed=1), BOB),
        before.submit(small(seed=2, init_image=init, denoising_strength=0.5), BOB),
        before.submit(small(seed=3, styles=[]), CAROL, save=False),
    ]
    places = [before.position(job) for job in sent]

    after = JobQueue(studio, store=_store(tmp_path))
    again = [after.get(job.id, caller) for job, caller in zip(sent, (BOB, BOB, CAROL))]
    assert [job.state for job in again] == [JobState.QUEUED] * 3
    assert [after.position(job) for job in again] == places == [1, 3, 2]
    assert again[1].kind.value == "img2img" and _pixels(again[1].request.init_image) == _pixels(init)
    assert (again[2].owner, again[2].save) == ("carol", False)
    after.run(until=lambda: all(job.state.finished for job in again))
    assert [job.state for job in again] == [JobState.DONE] * 3
    assert [job.result.seeds for job in again] == [[1], [2], [3]]
    assert after.jobs(CAROL) == [again[2]]


def test_finished_jobs_are_listed_with_their_images_after_a_restart(studio: Studio, tmp_path: Path) -> None:
    before = JobQueue(studio, store=_store(tmp_path))
    saved = before.submit(small(seed=11, batch_size=2), BOB)
    unsaved = before.submit(small(seed=12), BOB, save=False)
    stopped = before.submit(small(seed=13), CAROL)
    before.interrupt(stopped)
    before.run(until=lambda: saved.state.finished and unsaved.state.finished)

    after = JobQueue(studio, store=_store(tmp_path))
    for old in (saved, unsaved):
        new = after.get(old.id, BOB)
        assert new is not old and new.state is JobState.DONE
        assert (new.started, new.finished) == (old.started, old.finished)
        assert new.result.seeds == old.result.seeds and new.result.infotexts == old.result.infotexts
        assert [_pixels(image) for image in new.result.images] == [_pixels(i) for i in old.result.images]
        assert new.result.paths == old.result.paths  # outputs/ files for a saved job, none otherwise
        assert after.status(new).progress == 1.0
    assert len(after.get(saved.id, BOB).result.paths) == 2
    assert after.get(stopped.id, CAROL).state is JobState.INTERRUPTED
    assert {job.id for job in after.jobs(BOB)} == {saved.id, unsaved.id}


def test_a_crash_mid_job_keeps_the_finished_batches_and_the_rest_runs_after_restart(
    studio: Studio, data_dir: Path, tmp_path: Path
) -> None:
    """A separate process dies (os._exit) while the second of three batches samples."""
    code = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from webui.engine.request import GenerationRequest
        from webui.jobs import Caller, JobQueue
        from webui.jobs.store import JobStore
        from webui.settings import Settings
        from webui.studio import Studio

        def die(job, info):
            if info.batch_index == 1:
                os._exit(9)

        settings = Settings.for_data_dir(Path({str(data_dir)!r}), watermark=False, device="cpu",
                                         precision="fp32")
        tmp = Path({str(tmp_path)!r})
        store = JobStore(tmp / "jobs.sqlite3", tmp / "jobs")
        jobs = JobQueue(Studio(settings), step_hooks=[die], store=store)
        job = jobs.submit(GenerationRequest(prompt="a lighthouse", steps=2, width=64, height=64, seed=-1,
                                            batch_size=2, n_iter=3), Caller("bob"), save=False)
        print(job.id, flush=True)
        jobs.run()
        """
    )
    # The child keeps this process's thread count: CPU kernels sum in another order with other
    # counts, and the pixels compared below would differ by rounding.
    env = dict(os.environ)
    crashed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert crashed.returncode == 9, crashed.stderr
    job_id = crashed.stdout.split()[0]
    kept = sorted((tmp_path / "jobs" / job_id).glob("*.png"))
    assert len(kept) == 2  # the first batch, saved as it finished

    steps: list[int] = []
    after = JobQueue(
        studio, step_hooks=[lambda job, info: steps.append(info.batch_index)], store=_store(tmp_path)
    )
    job = after.get(job_id, BOB)
    assert job.state is JobState.QUEUED and after.position(job) == 1
    after.run(until=lambda: job.state.finished)
    assert job.state is JobState.DONE and len(job.result.images) == 6
    assert sorted(set(steps)) == [1, 2]  # only the second and third batches ran, and say so
    first = job.result.seeds[0]
    assert job.result.seeds == [(first + i) % 2**32 for i in range(6)]
    whole = studio.generate(small(seed=first, steps=2, batch_size=2, n_iter=3), save=False)
    assert [_pixels(image) for image in job.result.images] == [_pixels(image) for image in whole.images]
    assert job.result.infotexts == whole.infotexts


def test_a_clean_stop_keeps_waiting_and_running_jobs_for_the_next_start(
    studio: Studio, tmp_path: Path
) -> None:
    gate_reached: list[int] = []
    before = JobQueue(studio, store=_store(tmp_path), step_hooks=[lambda job, info: gate_reached.append(1)])
    before.start()
    running = before.submit(small(steps=50, seed=21), BOB)
    waiting = before.submit(small(seed=22), CAROL)
    deadline = time.monotonic() + 60
    while not gate_reached and time.monotonic() < deadline:
        time.sleep(0.01)
    before.stop()
    assert running.state is JobState.INTERRUPTED and waiting.state is JobState.INTERRUPTED

    after = JobQueue(studio, store=_store(tmp_path))
    assert (
        after.get(running.id, BOB).state is JobState.QUEUED
        and after.position(after.get(running.id, BOB)) == 1
    )
    assert after.get(waiting.id, CAROL).state is JobState.QUEUED
    after.stop()


def test_a_training_job_cut_short_by_a_restart_says_so(studio: Studio, tmp_path: Path) -> None:
    store = _store(tmp_path)
    before = JobQueue(studio, store=store)
    request = TrainingRequest(name="kept-lora", steps=5, batch_size=1, resolution=64)
    running = before.submit_training(request, BOB)
    waiting = before.submit_training(request, BOB)
    running.mark_running()
    store.started(running)  # as the worker does when it starts a job

    after = JobQueue(studio, store=_store(tmp_path))
    stopped = after.get(running.id, BOB)
    assert stopped.state is JobState.INTERRUPTED and stopped.error == RESTART_STOPPED_TRAINING
    assert "restart" in stopped.error and stopped.result is None
    again = after.get(waiting.id, BOB)
    assert again.state is JobState.QUEUED and isinstance(again.request, TrainingRequest)
    assert again.request.name == "kept-lora" and again.request.kind == request.kind
    assert JobQueue(studio, store=_store(tmp_path)).get(running.id, BOB).state is JobState.INTERRUPTED


def test_expired_jobs_go_and_cut_short_writes_are_removed_at_start(studio: Studio, tmp_path: Path) -> None:
    before = JobQueue(studio, store=_store(tmp_path))
    job = before.submit(small(seed=31), BOB, save=False)
    before.run(until=lambda: job.state.finished)
    own_folder = tmp_path / "jobs" / job.id
    assert list(own_folder.glob("*.png"))
    day = studio.settings.outputs_dir / "txt2img-images" / "2026-01-01"
    day.mkdir(parents=True, exist_ok=True)
    partial = day / ".00007-31.0badc0de.tmp"
    partial.write_bytes(b"half a png")
    not_ours = day / "notes.tmp"
    not_ours.write_text("a user's file")

    after = JobQueue(studio, retention_seconds=0.0, store=_store(tmp_path))
    assert after.jobs(BOB) == [] and not own_folder.exists()
    assert not partial.exists() and not_ours.exists()


# -- a real server, killed and started again ----------------------------------------------------
REPO = Path(__file__).resolve().parent.parent


class _Server:
    """launch.py in a subprocess on `data_dir`; killed with SIGKILL, as a crash or power cut would."""

    def __init__(self, data_dir: Path, port: int) -> None:
        env = {key: value for key, value in os.environ.items() if key != "WEBUI_AUTH"}
        env["OMP_NUM_THREADS"] = "1"
        self.base = f"http://127.0.0.1:{port}"
        self.log = data_dir / f"server-{time.monotonic_ns()}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "launch.py"), "--data-dir", str(data_dir), "--port", str(port)]
                + ["--device", "cpu", "--precision", "fp32", "--no-watermark", "--preview-method", "none"],
                cwd=data_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            try:
                self.get("/api/v1/queue")
                return
            except OSError:
                time.sleep(0.2)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return response.read()

    def job(self, job_id: str) -> dict:
        return json.loads(self.get(f"/api/v1/jobs/{job_id}"))

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait(self, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while (status := self.job(job_id))["state"] not in states:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # two real server starts (about 40 s here): the restart itself is the test
def test_a_killed_server_comes_back_with_its_jobs(tiny_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", models)
    body = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 5}
    first = _Server(tmp_path, _free_port())
    try:
        done = first.post("/api/v1/jobs/txt2img", body)["id"]
        first.wait(done, ("done",))
        png = first.get(f"/api/v1/jobs/{done}/images/0")
        long = first.post("/api/v1/jobs/txt2img", {**body, "steps": 150, "n_iter": 100})["id"]
        first.wait(long, ("running",))
        queued = first.post("/api/v1/jobs/txt2img", {**body, "seed": 6})["id"]
        assert first.job(queued)["state"] == "queued"
    finally:
        first.kill()

    second = _Server(tmp_path, _free_port())
    try:
        assert second.job(done)["state"] == "done"
        assert second.get(f"/api/v1/jobs/{done}/images/0") == png
        assert second.job(long)["state"] == "running"  # first in line again, from its first batch
        second.post(f"/api/v1/jobs/{long}/cancel", {})
        assert second.wait(queued, ("done",))["state"] == "done"
        assert second.wait(long, ("interrupted",))["state"] == "interrupted"
        assert {job["id"] for job in json.loads(second.get("/api/v1/jobs"))} >= {done, long, queued}
    finally:
        second.kill()


def test_a_job_whose_request_cannot_be_written_down_still_runs(studio: Studio, tmp_path: Path) -> None:
    before = JobQueue(studio, store=_store(tmp_path))
    odd = before.submit(small(seed=41, extra={"handle": object()}), BOB)  # not JSON: not kept
    plain = before.submit(small(seed=42), BOB)
    before.run(until=lambda: odd.state.finished and plain.state.finished)
    assert odd.state is JobState.DONE and plain.state is JobState.DONE
    after = JobQueue(studio, store=_store(tmp_path))
    assert [job.id for job in after.jobs(BOB)] == [plain.id]


def test_a_job_refused_for_a_full_queue_is_not_kept(studio: Studio, tmp_path: Path) -> None:
    before = JobQueue(studio, Limits(max_queued_per_user=1), store=_store(tmp_path))
    kept = before.submit(small(seed=51), BOB)
    with pytest.raises(QueueFull):
        before.submit(small(seed=52), BOB)
    after = JobQueue(studio, store=_store(tmp_path))
    assert [job.id for job in after.jobs(BOB)] == [kept.id]
