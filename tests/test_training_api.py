"""Training through the queue and `POST /api/v1/train` on a real server with a login."""

from __future__ import annotations

import io
import time

from PIL import Image

from tests.http_helpers import LiveServer, read_events

LORA = {
    "kind": "lora",
    "steps": 3,
    "batch_size": 1,
    "resolution": 64,
    "rank": 2,
    "sample_prompt": "a red circle",
}


def _wait(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "interrupted"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_a_lora_trained_over_http_is_listed_and_its_job_reports_loss_and_samples(server: LiveServer) -> None:
    with server.client("bob") as client:
        submitted = client.post("/api/v1/train", json={**LORA, "name": "http-lora"})
        assert submitted.status_code == 202, submitted.text
        events = read_events(client, submitted.json()["urls"]["events"])
        assert events[-1][0] == "done", events[-1]
        job = events[-1][1]
        assert job["type"] == "train" and job["owner"] == "bob"
        training = job["training"]
        assert training["kind"] == "lora" and training["file"] == "http-lora.safetensors"
        assert [step for step, _ in training["losses"]] == [1, 2, 3] and training["loss"] > 0
        sample = client.get(job["images"][0])
        assert Image.open(io.BytesIO(sample.content)).size == (64, 64)
        loras = client.get("/sdapi/v1/loras").json()
        assert "http-lora" in [entry["name"] for entry in loras]
        # Another user does not see bob's training job.
    with server.client("carol") as other:
        assert other.get(f"/api/v1/jobs/{job['id']}").status_code == 404


def test_bad_training_requests_are_422_naming_the_field(server: LiveServer, tmp_path) -> None:
    with server.client("bob") as client:
        cases = [
            ({**LORA, "name": "x", "learning_rate": -1}, "learning_rate"),
            ({**LORA, "name": "x", "resolution": 100}, "resolution"),
            ({**LORA, "name": "../../etc"}, "name"),
            ({**LORA, "name": "x", "dataset": str(tmp_path / "nowhere")}, "dataset"),
            ({**LORA, "name": "x", "base": "no-such-model"}, None),
            ({**LORA, "name": "x", "base": "tiny-sd15-inpaint"}, "base"),
        ]
        for body, field in cases:
            answer = client.post("/api/v1/train", json=body)
            assert answer.status_code == 422, (body, answer.text)
            if field:
                assert field in answer.text
        assert (
            client.post(
                "/api/v1/train", content=b"{nope", headers={"content-type": "application/json"}
            ).status_code
            == 400
        )


def test_folders_only_admins_may_use_anywhere_and_uncaptioned_ones_are_refused(
    server: LiveServer, tmp_path
) -> None:
    Image.new("RGB", (64, 64), "red").save(tmp_path / "one.png")
    body = {**LORA, "name": "y", "dataset": str(tmp_path)}
    with server.client("bob") as client:
        answer = client.post("/api/v1/train", json=body)
    assert answer.status_code == 422 and "only admins" in answer.json()["detail"]
    with server.client("alice") as admin:
        answer = admin.post("/api/v1/train", json=body)
    assert answer.status_code == 422 and "one.png" in answer.json()["detail"]


def test_interrupting_a_training_job_keeps_its_resume_state(server: LiveServer) -> None:
    server.gate.close()  # hold a generation so the training job waits behind it
    with server.client("bob") as client:
        try:
            blocker = client.post(
                "/api/v1/jobs/txt2img", json={"prompt": "x", "steps": 3, "width": 64, "height": 64}
            )
            training = client.post("/api/v1/train", json={**LORA, "name": "stopped", "steps": 5000}).json()
            assert client.get(f"/api/v1/jobs/{training['id']}").json()["state"] == "queued"
        finally:
            server.gate.open()
        _wait(client, blocker.json()["id"])
        deadline = time.monotonic() + 60
        while client.get(f"/api/v1/jobs/{training['id']}").json()["progress"]["step"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        client.post(f"/api/v1/jobs/{training['id']}/cancel")
        final = _wait(client, training["id"])
    assert final["state"] == "interrupted" and "resume" in final["error"]
    assert list((server.data_dir / "training").rglob("state.pt"))
    assert not (server.data_dir / "models" / "Lora" / "stopped.safetensors").exists()
