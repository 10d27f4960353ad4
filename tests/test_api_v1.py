"""`/api/v1` over real HTTP: ids at once, server-sent progress with previews, images, cancel, docs."""

from __future__ import annotations

import base64
import io

from PIL import Image

from tests.http_helpers import LiveServer, read_events
from webui.outputs import read_infotext

SMALL = {"prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64}


def test_a_job_id_comes_back_at_once_and_its_progress_streams(server: LiveServer) -> None:
    server.gate.close()
    with server.client("bob") as client:
        try:
            submitted = client.post("/api/v1/jobs/txt2img", json={**SMALL, "seed": 42})
            assert submitted.status_code == 202, submitted.text
            job = submitted.json()
            assert job["state"] in ("queued", "running") and len(job["id"]) == 32
            assert server.gate.reached.wait(30)
            running = client.get(f"/api/v1/jobs/{job['id']}").json()
            assert running["state"] == "running" and running["progress"]["step"] == 1
            preview = client.get(f"/api/v1/jobs/{job['id']}/preview")
            assert preview.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(preview.content)).size == (8, 8)
        finally:
            server.gate.open()
        events = read_events(client, job["urls"]["events"])
        names = [name for name, _ in events]
        assert names[-1] == "done" and set(names[:-1]) <= {"progress"}
        final = events[-1][1]
        assert final["seeds"] == [42] and final["progress"]["fraction"] == 1.0
        png = client.get(final["images"][0])
        assert png.headers["content-type"] == "image/png"
        assert read_infotext(Image.open(io.BytesIO(png.content))) == final["infotexts"][0]
        assert job["id"] in [listed["id"] for listed in client.get("/api/v1/jobs").json()]
        # Our API saves by default, unlike A1111's.
        assert any(p.name.endswith("-42.png") for p in server.studio.settings.outputs_dir.rglob("*.png"))


def test_events_carry_previews_while_the_job_runs(server: LiveServer) -> None:
    with server.client("carol") as client:
        job = client.post("/api/v1/jobs/txt2img", json={**SMALL, "steps": 6}).json()
        events = read_events(client, f"/api/v1/jobs/{job['id']}/events")
    previews = [data["preview"] for name, data in events if name == "progress" and "preview" in data]
    for preview in previews:
        assert preview.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(preview.split(",", 1)[1]))).verify()
    assert events[-1][0] == "done"


def test_cancel_a_waiting_job_and_a_running_one(server: LiveServer) -> None:
    server.gate.close()
    with server.client("bob") as client:
        try:
            running = client.post("/api/v1/jobs/txt2img", json={**SMALL, "n_iter": 3}).json()
            assert server.gate.reached.wait(30)
            waiting = client.post("/api/v1/jobs/txt2img", json=SMALL).json()
            assert waiting["position"] == 1
            queue = client.get("/api/v1/queue").json()
            assert {j["id"] for j in queue["yours"]} == {running["id"], waiting["id"]}
            cancelled = client.post(f"/api/v1/jobs/{waiting['id']}/cancel").json()
            assert cancelled["state"] == "interrupted"
            client.post(f"/api/v1/jobs/{running['id']}/cancel")
        finally:
            server.gate.open()
        events = read_events(client, f"/api/v1/jobs/{running['id']}/events")
        assert events[-1][0] == "interrupted" and len(events[-1][1]["images"]) == 1


def test_a_failed_job_says_why_in_its_final_event(server: LiveServer) -> None:
    with server.client("bob") as client:
        job = client.post("/api/v1/jobs/txt2img", json={**SMALL, "prompt": "a cat <lora:missing:1>"}).json()
        name, final = read_events(client, f"/api/v1/jobs/{job['id']}/events")[-1]
    assert name == "failed" and "missing" in final["error"] and final["error_field"] == "prompt"


def test_users_see_and_stop_only_their_own_jobs(server: LiveServer) -> None:
    with server.client("bob") as bob, server.client("carol") as carol, server.client("alice") as admin:
        job = bob.post("/api/v1/jobs/txt2img", json=SMALL).json()
        for path in ("", "/events", "/preview", "/images/0"):
            assert carol.get(f"/api/v1/jobs/{job['id']}{path}").status_code == 404, path
        assert carol.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 404
        assert job["id"] not in [j["id"] for j in carol.get("/api/v1/jobs").json()]
        assert job["id"] not in [j["id"] for j in carol.get("/api/v1/jobs?everyone=true").json()]
        assert admin.get(f"/api/v1/jobs/{job['id']}").json()["owner"] == "bob"
        assert job["id"] in [j["id"] for j in admin.get("/api/v1/jobs?everyone=true").json()]
        assert carol.get("/api/v1/me").json() == {"user": "carol", "admin": False}
        assert admin.get("/api/v1/me").json() == {"user": "alice", "admin": True}


def test_models_and_memory(server: LiveServer) -> None:
    with server.client() as client:
        models = {m["name"]: m for m in client.get("/api/v1/models").json()}
        memory = client.get("/api/v1/memory").json()
    assert models["tiny-sd15"]["architecture"].startswith("SD 1.x") and models["tiny-sd15"]["size_bytes"] > 0
    assert models["tiny-sd15"]["where"] in ("ram", "vram") and models["tiny-sd15"]["last_event"]
    assert memory["ram"]["total"] > 0 and memory["models"]


def test_openapi_docs_are_served_without_the_internet(server: LiveServer) -> None:
    with server.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "cdn." not in page.text
        for asset in ("/static-offline-docs/swagger-ui-bundle.js", "/static-offline-docs/swagger-ui.css"):
            assert asset in page.text
            assert client.get(asset).status_code == 200
        spec = client.get("/openapi.json").json()
    for path in (
        "/api/v1/jobs/txt2img",
        "/api/v1/jobs/{job_id}/events",
        "/sdapi/v1/txt2img",
        "/sdapi/v1/progress",
    ):
        assert path in spec["paths"], path


def test_workers_list_the_server_itself_and_hide_others_jobs(server: LiveServer) -> None:
    server.gate.close()
    with server.client("bob") as bob, server.client("carol") as carol, server.client("alice") as admin:
        try:
            job = bob.post("/api/v1/jobs/txt2img", json=SMALL).json()
            assert server.gate.reached.wait(30)
            held = server.gate.held_job  # bob's, or one an earlier test left waiting
            assert held is not None
            (seen,) = admin.get("/api/v1/workers").json()
            assert seen["id"] == "local" and seen["state"] == "busy" and seen["job"] == held.id
            assert seen["device"] == "cpu" and seen["pid"] > 0 and seen["host"]
            assert {"checkpoints", "jobs_done", "last_error"} <= seen.keys()
            for user, client in (("bob", bob), ("carol", carol)):  # a job's id is its owner's to see
                shown = client.get("/api/v1/workers").json()[0]["job"]
                assert shown == (held.id if held.owner == user else None), user
        finally:
            server.gate.open()
        done = read_events(bob, job["urls"]["events"])[-1][1]
    assert done["worker"] == "local" and done["started"] <= done["finished"]
