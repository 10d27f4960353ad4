"""Jobs on a local Ray cluster of two CPU workers: both busy at once, checkpoint affinity, and a
worker killed mid-job whose job finishes on the other while the app serves on.

One cluster for the module (starting two workers takes a while); skipped without Ray
(requirements-cluster.txt)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray")

from webui.cluster.executor import ClusterExecutor  # noqa: E402
from webui.cluster.start import start_cluster  # noqa: E402
from webui.engine.request import GenerationRequest  # noqa: E402
from webui.jobs import Caller, Job, JobQueue, JobState  # noqa: E402
from webui.server import BackgroundServer, create_app  # noqa: E402
from webui.settings import Settings  # noqa: E402
from webui.studio import Studio  # noqa: E402
from webui.tools.tiny_networks import write_tiny_lora  # noqa: E402

BOB = Caller("bob")
CAROL = Caller("carol")
READY_S = 240  # two workers importing torch and building their studios on a busy 2-core machine


@dataclass
class Cluster:
    studio: Studio
    jobs: JobQueue
    executor: ClusterExecutor
    url: str

    def workers(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/workers", timeout=30).json()

    def wait_until_idle(self, timeout_s: float = READY_S) -> None:
        deadline = time.monotonic() + timeout_s
        while any(worker["state"] != "idle" for worker in self.workers()):
            assert time.monotonic() < deadline, self.workers()
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data = tmp_path_factory.mktemp("cluster")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name in ("alpha", "beta"):
        shutil.copy(tiny_dir / "tiny-sd15.safetensors", folder / f"{name}.safetensors")
    (data / "models" / "Lora").mkdir()
    write_tiny_lora("sd15", data / "models" / "Lora" / "tinystyle.safetensors")
    studio = Studio(Settings.for_data_dir(data, watermark=False, device="cpu", precision="fp32"))
    executor = start_cluster(
        studio,
        2,
        None,
        init_options={
            "num_cpus": 2,
            "include_dashboard": False,
            "object_store_memory": 80 * 2**20,
            "log_to_driver": False,
        },
    )
    jobs = JobQueue(studio, executor=executor).start()
    try:
        with BackgroundServer(create_app(studio, jobs, credentials=None, cmd_flags={}, with_ui=False)) as url:
            running = Cluster(studio, jobs, executor, url)
            running.wait_until_idle()
            yield running
    finally:
        jobs.stop()
        executor.close()
        ray.shutdown()


def request(steps: int = 3, seed: int = 1, **fields: object) -> GenerationRequest:
    fields.setdefault("prompt", "a lighthouse")
    return GenerationRequest(steps=steps, width=64, height=64, seed=seed, **fields)  # type: ignore[arg-type]


def finished(job: Job, timeout_s: float = 120) -> Job:
    assert job.wait(timeout_s), f"job {job.id} did not finish"
    return job


def test_two_workers_run_two_jobs_at_once_and_stop_them_when_asked(cluster: Cluster) -> None:
    warm = [cluster.jobs.submit(request(steps=1, seed=seed), BOB, checkpoint="alpha") for seed in (1, 2)]
    assert {finished(job).worker for job in warm} == {"w1", "w2"}  # both idle: one job each
    first = cluster.jobs.submit(request(steps=150, seed=5), BOB, checkpoint="alpha")
    second = cluster.jobs.submit(request(steps=150, seed=6), CAROL, checkpoint="alpha")
    deadline = time.monotonic() + 120
    both_running, previewed = False, None
    while not both_running and not (first.state.finished or second.state.finished):
        assert time.monotonic() < deadline
        statuses = [cluster.jobs.status(job) for job in (first, second)]
        both_running = all(s.state is JobState.RUNNING and s.step > 0 for s in statuses)
        previewed = previewed or first.preview()
        time.sleep(0.02)
    assert both_running, (first.state, first.error, second.state, second.error)
    assert cluster.jobs.counts() == (2, 0) and {first.worker, second.worker} == {"w1", "w2"}
    busy = {worker["id"]: worker for worker in cluster.workers()}
    assert busy[first.worker]["state"] == "busy" and busy[first.worker]["job"] == first.id
    previewed = previewed or first.preview()
    assert previewed is not None and previewed[1].size == (8, 8)  # drawn on the worker, shown here
    for job in (first, second):  # stop passes on to the workers
        cluster.jobs.interrupt(job)
    for job in (first, second):
        assert finished(job, 60).state is JobState.INTERRUPTED
        assert cluster.jobs.status(job).step < 150


def test_a_worker_gives_the_seeds_and_infotext_of_one_with_a_lora(cluster: Cluster) -> None:
    with_lora = request(steps=6, seed=5, prompt="a lighthouse <lora:tinystyle:0.8>")
    job = finished(cluster.jobs.submit(with_lora, BOB, checkpoint="alpha"))
    assert job.state is JobState.DONE, job.error
    described = httpx.get(f"{cluster.url}/api/v1/jobs/{job.id}", timeout=30).json()
    assert described["worker"] == job.worker and described["started"] <= described["finished"]
    here = cluster.studio.generate(with_lora, checkpoint="alpha", save=False)  # in this process
    assert job.result.seeds == here.seeds == [5]
    assert job.result.infotexts == here.infotexts and "Lora hashes" in here.infotexts[0]


def test_a_job_goes_to_the_worker_that_holds_its_checkpoint(cluster: Cluster) -> None:
    cluster.wait_until_idle()
    first = finished(cluster.jobs.submit(request(seed=7), BOB, checkpoint="beta"))
    assert first.state is JobState.DONE
    cluster.wait_until_idle()  # the health check has read what each worker holds
    workers = {worker["id"]: worker for worker in cluster.workers()}
    holder = workers[first.worker]
    other = next(worker for id_, worker in workers.items() if id_ != first.worker)
    assert "beta" in [held["name"] for held in holder["checkpoints"]]
    assert "beta" not in [held["name"] for held in other["checkpoints"]]
    # Least loaded alone would send one of the next two to the other worker: the holder has done more.
    for seed in (8, 9):
        again = finished(cluster.jobs.submit(request(seed=seed), CAROL, checkpoint="beta"))
        assert again.state is JobState.DONE and again.worker == first.worker
    counts = {worker["id"]: worker["jobs_done"] for worker in cluster.workers()}
    assert counts[first.worker] > counts[other["id"]]


@pytest.mark.slow
def test_a_killed_worker_job_finishes_on_the_other_and_the_worker_is_replaced(cluster: Cluster) -> None:
    cluster.wait_until_idle()
    client = httpx.Client(base_url=cluster.url, timeout=30)
    body = {
        "prompt": "a lighthouse",
        "steps": 60,
        "width": 64,
        "height": 64,
        "seed": 11,
        "save_images": False,
    }
    job_id = client.post("/api/v1/jobs/txt2img", json=body).json()["id"]
    deadline = time.monotonic() + 120
    while (described := client.get(f"/api/v1/jobs/{job_id}").json())["progress"]["step"] < 2:
        assert described["state"] in ("queued", "running") and time.monotonic() < deadline, described
        time.sleep(0.05)
    victim = next(worker for worker in cluster.workers() if worker["id"] == described["worker"])
    os.kill(victim["pid"], signal.SIGKILL)
    while (described := client.get(f"/api/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert client.get("/api/v1/queue").status_code == 200  # the app serves on
        assert time.monotonic() < deadline + 120, described
        time.sleep(0.2)
    assert described["state"] == "done", described
    assert described["worker"] != victim["id"]
    assert described["seeds"] == [11] and len(described["images"]) == 1  # made once, not twice
    replaced = next(worker for worker in cluster.workers() if worker["id"] == victim["id"])
    assert "died" in replaced["last_error"] and str(victim["pid"]) in replaced["last_error"]
    cluster.wait_until_idle()  # the replacement starts on the same machine
    replacement = next(worker for worker in cluster.workers() if worker["id"] == victim["id"])
    assert replacement["pid"] not in (None, victim["pid"])
    # ... and takes jobs again.
    after = finished(cluster.jobs.submit(request(seed=12), BOB, checkpoint="alpha"))
    assert after.state is JobState.DONE


@pytest.mark.slow
def test_a_job_whose_second_worker_dies_too_fails_saying_so(cluster: Cluster) -> None:
    cluster.wait_until_idle()
    job = cluster.jobs.submit(request(steps=150, seed=13), BOB, checkpoint="alpha")
    killed: list[dict] = []
    deadline = time.monotonic() + 180
    while len(killed) < 2:
        status = cluster.jobs.status(job)
        assert not status.state.finished and time.monotonic() < deadline, (status, killed)
        if status.step >= 2 and status.worker not in [worker["id"] for worker in killed]:
            victim = next(worker for worker in cluster.workers() if worker["id"] == status.worker)
            os.kill(victim["pid"], signal.SIGKILL)
            killed.append(victim)
        time.sleep(0.05)
    assert finished(job).state is JobState.FAILED
    for victim in killed:
        assert f"worker {victim['id']} died while running it" in job.error
    assert job.error.endswith("it is not run a third time")
