"""The job queue on a real studio: order, owners, states, failures, interrupts, limits, retention."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.http_helpers import StepGate
from webui.engine.request import GenerationError, GenerationRequest
from webui.jobs import Caller, JobNotFound, JobQueue, JobState, Limits, QueueFull
from webui.jobs.limits import LimitError, parse_size
from webui.settings import Settings
from webui.studio import Studio

BOB = Caller("bob")
CAROL = Caller("carol")
ADMIN = Caller("alice", admin=True)


def small(**fields: object) -> GenerationRequest:
    values: dict[str, object] = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 1}
    values.update(fields)
    return GenerationRequest(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def studio(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    data = tmp_path_factory.mktemp("jobs")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", folder)
    return Studio(Settings.for_data_dir(data, watermark=False, device="cpu", precision="fp32"))


@pytest.fixture
def gate() -> StepGate:
    return StepGate()


@pytest.fixture
def queue(studio: Studio, gate: StepGate):
    jobs = JobQueue(studio, step_hooks=[gate]).start()
    yield jobs
    gate.open()
    jobs.stop()


def test_jobs_run_first_in_first_out_across_users(queue: JobQueue, gate: StepGate) -> None:
    gate.close()
    first = queue.submit(small(seed=1), BOB)
    assert gate.reached.wait(30)
    later = [queue.submit(small(seed=2), CAROL), queue.submit(small(seed=3), BOB)]
    assert [queue.position(job) for job in later] == [1, 2]
    assert queue.status(first).state is JobState.RUNNING and queue.status(first).position is None
    gate.open()
    for job in [first, *later]:
        assert job.wait(60)
    assert [job.state for job in (first, *later)] == [JobState.DONE] * 3
    assert first.finished <= later[0].started <= later[0].finished <= later[1].started
    assert [job.result.seeds for job in (first, *later)] == [[1], [2], [3]]


def test_progress_reports_steps_eta_and_a_preview(queue: JobQueue, gate: StepGate) -> None:
    gate.close()
    job = queue.submit(small(steps=4, n_iter=2), BOB)
    assert gate.reached.wait(30)
    status = queue.status(job)
    assert (status.state, status.step, status.steps, status.batch, status.batches) == (
        JobState.RUNNING,
        1,
        4,
        0,
        2,
    )
    assert status.progress == pytest.approx(1 / 8)
    step, image = job.preview()
    assert step == 1 and image.size == (8, 8)  # latent size: 64 / 8
    gate.open()
    assert job.wait(60) and job.state is JobState.DONE
    assert queue.status(job).progress == 1.0 and len(job.result.images) == 2


def test_a_failing_job_reports_its_error_and_the_worker_goes_on(studio: Studio) -> None:
    def explode(job, info) -> None:
        if job.request.prompt == "boom":
            raise RuntimeError("the GPU caught fire")

    jobs = JobQueue(studio, step_hooks=[explode]).start()
    try:
        broken = jobs.submit(small(prompt="boom"), BOB)
        unknown_lora = jobs.submit(small(prompt="a cat <lora:nowhere:1>"), BOB)
        fine = jobs.submit(small(), BOB)
        for job in (broken, unknown_lora, fine):
            assert job.wait(60)
    finally:
        jobs.stop()
    assert broken.state is JobState.FAILED and "the GPU caught fire" in broken.error
    assert not broken.user_error
    assert unknown_lora.state is JobState.FAILED and unknown_lora.user_error
    assert unknown_lora.error_field == "prompt" and "nowhere" in unknown_lora.error
    assert fine.state is JobState.DONE and len(fine.result.images) == 1


def test_requests_that_cannot_run_are_refused_before_queueing(queue: JobQueue) -> None:
    with pytest.raises(GenerationError) as refused:
        queue.submit(small(sampler_name="Euler z"), BOB)
    assert refused.value.field == "sampler_name"
    with pytest.raises(GenerationError) as refused:
        queue.submit(small(width=100), BOB)
    assert refused.value.field == "width"
    with pytest.raises(ValueError, match="nothing-like-this"):
        queue.submit(small(), BOB, checkpoint="nothing-like-this")
    assert queue.jobs(BOB) == []


def test_interrupting_a_waiting_job_means_it_never_runs(queue: JobQueue, gate: StepGate) -> None:
    gate.close()
    running = queue.submit(small(), BOB)
    assert gate.reached.wait(30)
    waiting = queue.submit(small(), CAROL)
    assert queue.interrupt(waiting)
    assert waiting.state is JobState.INTERRUPTED and waiting.started is None
    assert queue.interrupt(running)
    gate.open()
    assert running.wait(60)
    assert running.state is JobState.INTERRUPTED
    assert len(running.result.images) == 1  # the interrupted batch still gives its image


def test_skip_ends_only_the_running_batch(queue: JobQueue, gate: StepGate) -> None:
    gate.close()
    job = queue.submit(small(steps=5, n_iter=2), BOB)
    assert gate.reached.wait(30)
    assert queue.skip(job)
    gate.open()
    assert job.wait(60) and job.state is JobState.DONE
    assert len(job.result.images) == 2 and job.skipped


def test_callers_see_their_own_jobs_and_admins_everyone(queue: JobQueue) -> None:
    mine = queue.submit(small(), BOB)
    theirs = queue.submit(small(), CAROL)
    assert mine.wait(60) and theirs.wait(60)
    assert queue.get(mine.id, BOB) is mine
    with pytest.raises(JobNotFound):
        queue.get(mine.id, CAROL)
    assert queue.get(mine.id, ADMIN) is mine
    assert mine in queue.jobs(BOB) and theirs not in queue.jobs(BOB)
    assert {mine, theirs} <= set(queue.jobs(ADMIN, everyone=True))
    assert queue.jobs(BOB, everyone=True) == queue.jobs(BOB)  # only admins see everyone's


def test_limits_name_the_field_and_the_flag(studio: Studio) -> None:
    jobs = JobQueue(studio, Limits(max_pixels=parse_size("128x128"), max_steps=10, max_batch_size=2))
    for fields, field, flag in (
        ({"width": 256, "height": 128}, "width", "--max-size"),
        ({"steps": 11}, "steps", "--max-steps"),
        ({"batch_size": 3}, "batch_size", "--max-batch-size"),
        ({"enable_hr": True, "hr_scale": 4.0}, "hr_scale", "--max-size"),  # 64x64 -> 256x256
        ({"enable_hr": True, "hr_second_pass_steps": 11}, "hr_second_pass_steps", "--max-steps"),
    ):
        with pytest.raises(LimitError) as over:
            jobs.submit(small(**fields), BOB)
        assert (over.value.field, over.value.limit) == (field, flag)
        assert flag in str(over.value)
    assert parse_size("2048x1024") == 2048 * 1024 and parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("big")


def test_a_user_cannot_fill_the_queue(studio: Studio) -> None:
    jobs = JobQueue(studio, Limits(max_queued_per_user=2))  # not started: everything waits
    jobs.submit(small(), BOB)
    jobs.submit(small(), BOB)
    with pytest.raises(QueueFull):
        jobs.submit(small(), BOB)
    jobs.submit(small(), CAROL)  # others are not blocked by bob
    jobs.stop()


def test_finished_jobs_are_forgotten_after_the_retention_time(studio: Studio) -> None:
    jobs = JobQueue(studio, retention_seconds=0.2, keep_finished=10).start()
    try:
        old = jobs.submit(small(), BOB)
        assert old.wait(60)
        time.sleep(0.3)
        new = jobs.submit(small(), BOB)
        assert new.wait(60)
        with pytest.raises(JobNotFound):
            jobs.get(old.id, BOB)
    finally:
        jobs.stop()


def test_a_job_keeps_the_checkpoint_selected_when_it_was_submitted(
    studio: Studio, tiny_dir: Path, queue: JobQueue, gate: StepGate
) -> None:
    shutil.copy(tiny_dir / "tiny-sd15-inpaint.safetensors", studio.settings.ckpt_dir)
    studio.models.refresh_checkpoints()
    gate.close()
    holding = queue.submit(small(), BOB)
    assert gate.reached.wait(30)
    waiting = queue.submit(small(), BOB)
    studio.models.select_checkpoint("tiny-sd15-inpaint")
    try:
        gate.open()
        assert holding.wait(60) and waiting.wait(60)
        assert "Model: tiny-sd15," in waiting.result.infotexts[0]
        after = queue.submit(small(), BOB)
        assert after.wait(60) and "Model: tiny-sd15-inpaint" in after.result.infotexts[0]
    finally:
        studio.models.select_checkpoint("tiny-sd15")


def test_limits_cannot_promise_more_than_the_engine_does() -> None:
    with pytest.raises(ValueError, match=r"--max-steps.*500"):
        Limits(max_steps=1000)
    with pytest.raises(ValueError, match="--max-batch-count"):
        Limits(max_batch_count=0)
    assert Limits.engine_maxima().max_batch_count == 100


def test_run_works_the_queue_on_the_calling_thread(studio: Studio) -> None:
    import threading

    ran_on: list[threading.Thread] = []
    jobs = JobQueue(studio, step_hooks=[lambda job, info: ran_on.append(threading.current_thread())])
    job = jobs.submit(small(), BOB)
    jobs.run(until=lambda: job.state.finished)
    assert job.state is JobState.DONE and set(ran_on) == {threading.current_thread()}


def test_users_take_turns_and_each_sees_a_truthful_place(studio: Studio) -> None:
    """Bob's three jobs do not hold Carol and Dan back; each user's own jobs keep their order, and
    every place shown is the order the jobs then really run in."""
    ran: list[str] = []
    jobs = JobQueue(studio, step_hooks=[lambda job, info: info.step == 1 and ran.append(job.request.prompt)])
    sent = [("bob", "b1"), ("bob", "b2"), ("bob", "b3"), ("carol", "c1"), ("dan", "d1"), ("carol", "c2")]
    queued = {prompt: jobs.submit(small(prompt=prompt), Caller(owner)) for owner, prompt in sent}
    expected = ["b1", "c1", "d1", "b2", "c2", "b3"]
    assert {prompt: jobs.position(job) for prompt, job in queued.items()} == {
        prompt: place for place, prompt in enumerate(expected, 1)
    }
    assert jobs.current(Caller("carol")) is queued["c1"] and jobs.counts() == (0, 6)
    while len(ran) < len(expected):
        before = {prompt: jobs.position(job) for prompt, job in queued.items() if not job.state.finished}
        done = len(ran)
        jobs.run(until=lambda done=done: len(ran) > done and queued[ran[-1]].state.finished)
        # Each job that was n-th in line is now (n-1)-th: the places told the truth.
        after = {prompt: jobs.position(job) for prompt, job in queued.items() if not job.state.finished}
        assert after == {prompt: place - 1 for prompt, place in before.items() if place != 1}
    assert ran == expected
    assert jobs.interrupt(queued["b3"]) is False  # finished already


def test_a_late_user_waits_one_turn_not_the_whole_backlog(studio: Studio) -> None:
    jobs = JobQueue(studio)
    backlog = [jobs.submit(small(), BOB) for _ in range(5)]
    late = jobs.submit(small(), CAROL)
    assert jobs.position(late) == 2 and [jobs.position(job) for job in backlog] == [1, 3, 4, 5, 6]
    assert jobs.interrupt(backlog[0])  # a waiting job leaves the line; the places close up
    assert [jobs.position(job) for job in (backlog[1], late, *backlog[2:])] == [1, 2, 3, 4, 5]
    jobs.stop()


def test_the_queue_lists_itself_as_the_one_local_worker(queue: JobQueue) -> None:
    before = queue.workers()
    assert [(w.id, w.device, w.state) for w in before] == [("local", "cpu", "idle")]
    job = queue.submit(small(), BOB)
    assert job.wait(60) and job.state is JobState.DONE
    assert queue.status(job).worker == "local"
    (after,) = queue.workers()
    assert after.jobs_done == before[0].jobs_done + 1 and after.pid is not None
    assert any(held.name == job.checkpoint for held in after.checkpoints)


class _NoWorkerLeft:
    """An executor whose every worker is gone for good."""

    def claim(self, job: object) -> bool:
        return False

    def release(self, job: object) -> None:
        pass

    def unavailable(self) -> str:
        return "w1: died while idle"

    def workers(self) -> list:
        return []

    def close(self) -> None:
        pass


def test_with_no_worker_left_waiting_jobs_fail_with_the_reason(studio: Studio) -> None:
    jobs = JobQueue(studio, executor=_NoWorkerLeft())  # type: ignore[arg-type]
    job = jobs.submit(small(), BOB)
    jobs.start()
    try:
        assert job.wait(10)
        assert job.state is JobState.FAILED and "no worker can run jobs: w1: died while idle" in job.error
    finally:
        jobs.stop()
