"""Phase 5: 60 jobs from four users at once. Round-robin: every user's first job finishes
before any user's fifth. Exact results: each job has its own seed, its infotext says so and is
the one inside its PNG, and the same seed and prompt give the same pixels for every user."""

from __future__ import annotations

import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from tests.hostile.report import Phase
from tests.hostile.server import USERS, Server

PER_USER = 15
SEED = 2_718_281_000  # far from the small seeds the fuzzer picks, so output files can be counted


def body(index: int) -> dict[str, object]:
    return {
        "prompt": f"a red square, number {index}",
        "steps": 8,
        "width": 128,
        "height": 128,
        "seed": SEED + index,
    }


def _submit(server: Server, user: str) -> list[str]:
    with server.client(user) as client:
        return [client.post("/api/v1/jobs/txt2img", json=body(i)).json()["id"] for i in range(PER_USER)]


def wait_all(server: Server, ids: list[str], timeout: float = 600) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    with server.client("alice") as admin:
        while True:
            jobs = {job["id"]: job for job in admin.get("/api/v1/jobs", params={"everyone": True}).json()}
            if all(jobs.get(i, {}).get("state") not in (None, "queued", "running") for i in ids):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError("jobs did not finish")
            time.sleep(0.25)


def run(server: Server) -> tuple[Phase, dict[str, list[str]]]:
    phase = Phase("5. load: 60 jobs from four users at once")
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(USERS)) as pool:
        submitted = dict(zip(USERS, pool.map(lambda u: _submit(server, u), USERS)))
    submit_seconds = time.monotonic() - began
    everything = [job for ids in submitted.values() for job in ids]
    jobs = wait_all(server, everything)
    phase.figures["jobs"] = len(everything)
    phase.figures["submitting took s"] = round(submit_seconds, 2)
    phase.figures["all done after s"] = round(time.monotonic() - began, 1)
    states = [jobs[i]["state"] for i in everything]
    phase.figures["states"] = {s: states.count(s) for s in sorted(set(states))}
    if set(states) != {"done"}:
        phase.find(f"not every job finished: {phase.figures['states']}")
        return phase.end(), submitted
    firsts = max(jobs[ids[0]]["finished"] for ids in submitted.values())
    fifths = min(jobs[ids[4]]["finished"] for ids in submitted.values())
    phase.figures["last first job finished before the first fifth job"] = f"{fifths - firsts:.2f} s before"
    if firsts >= fifths:
        phase.find("round-robin: a user's fifth job finished before another user's first")
    order = sorted(everything, key=lambda i: jobs[i]["started"])
    owners = [jobs[i]["owner"] for i in order]
    phase.figures["start order of the first 12"] = " ".join(o[0] for o in owners[:12])
    pixels: dict[int, set[str]] = {}
    exact = 0
    with server.client("alice") as admin:
        for user, ids in submitted.items():
            for index, job_id in enumerate(ids):
                job, want = jobs[job_id], body(index)
                info = job["infotexts"][0] if job["infotexts"] else ""
                png = admin.get(f"/api/v1/jobs/{job_id}/images/0")
                image = Image.open(io.BytesIO(png.content))
                good = (
                    job["seeds"] == [want["seed"]]
                    and info.startswith(f"{want['prompt']}\n")
                    and f"Seed: {want['seed']}," in info
                    and "Steps: 8," in info
                    and "Size: 128x128," in info
                    and image.info.get("parameters") == info
                    and job["owner"] == user
                )
                exact += good
                if not good:
                    phase.find(f"{user} job {index}: seeds {job['seeds']}, infotext {info[:120]!r}")
                pixels.setdefault(index, set()).add(hashlib.sha256(image.tobytes()).hexdigest())
    phase.figures["jobs with exact seed, infotext and PNG text"] = f"{exact}/{len(everything)}"
    same = sum(len(hashes) == 1 for hashes in pixels.values())
    phase.figures["seeds whose four users' images are identical"] = f"{same}/{len(pixels)}"
    if same != len(pixels):
        phase.find("the same seed and prompt gave different pixels to different users")
    return phase.end(), submitted
