"""Phase 6: SIGKILL the server at several moments (idle, with jobs waiting, mid-job, while an
image is being saved, during start-up), start it again on the same data dir, and check that
nothing is lost, nothing runs twice to completion, and no temp file is left behind."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.hostile.load import PER_USER, wait_all
from tests.hostile.load import SEED as LOAD_SEED
from tests.hostile.report import Phase
from tests.hostile.server import USERS, Server

SEED = 3_141_590_000
_OUTPUT = re.compile(r"^\d+-(\d+)\.png$")


@dataclass
class Expected:
    owner: str
    seeds: list[int]


@dataclass
class Ledger:
    """Every job sent, what it must end with, and what had finished before each kill."""

    jobs: dict[str, Expected] = field(default_factory=dict)
    next_seed: int = SEED
    finished_before: dict[str, float] = field(default_factory=dict)

    def submit(self, server: Server, user: str, n_iter: int = 1, batch_size: int = 1) -> str:
        seed, self.next_seed = self.next_seed, self.next_seed + 100
        body = {"prompt": f"kill test {seed}", "steps": 8, "width": 128, "height": 128, "seed": seed}
        body |= {"n_iter": n_iter, "batch_size": batch_size}
        with server.client(user) as client:
            job_id = client.post("/api/v1/jobs/txt2img", json=body).json()["id"]
        self.jobs[job_id] = Expected(user, [seed + i for i in range(n_iter * batch_size)])
        return job_id


def _everyone(server: Server) -> dict[str, dict]:
    with server.client("alice") as admin:
        return {job["id"]: job for job in admin.get("/api/v1/jobs", params={"everyone": True}).json()}


def _job(server: Server, job_id: str, user: str) -> dict:
    with server.client(user) as client:
        return client.get(f"/api/v1/jobs/{job_id}").json()


def _in_batch(server: Server, job_id: str, batch: int) -> bool:
    status = _job(server, job_id, "bob")
    progress = status["progress"]
    return status["state"] == "running" and progress["batch"] == batch and progress["step"] >= 3


def temp_files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*.tmp") if p.is_file()]


def _wait_for(predicate, timeout: float = 60, pause: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(pause)
    return False


class Killer:
    def __init__(self, server: Server, phase: Phase, ledger: Ledger) -> None:
        self.server, self.phase, self.ledger = server, phase, ledger
        self.kills: list[str] = []

    def kill_and_restart(self, moment: str) -> None:
        before = _everyone(self.server)
        self.ledger.finished_before |= {
            i: j["finished"] for i, j in before.items() if j["state"] == "done" and i in self.ledger.jobs
        }
        states = Counter(job["state"] for job in before.values())
        self.kill_now(f"{moment} (states just before: {dict(sorted(states.items()))})")
        self.server.start()
        self.after_restart()

    def kill_now(self, moment: str) -> None:
        self.server.kill()
        left = temp_files(self.server.data_dir)
        self.kills.append(moment + (f"; {len(left)} .tmp file(s) on disk at the kill" if left else ""))

    def after_restart(self) -> None:
        left = temp_files(self.server.data_dir)
        if left:
            self.phase.find(f"after restart {len(self.kills)}: .tmp files left: {[p.name for p in left]}")
        now = _everyone(self.server)
        for job_id, expected in self.ledger.jobs.items():
            job = now.get(job_id)
            if job is None:
                self.phase.find(f"job {job_id} of {expected.owner} lost at kill {len(self.kills)}")
            elif (
                job_id in self.ledger.finished_before
                and job["finished"] != self.ledger.finished_before[job_id]
            ):
                self.phase.find(f"job {job_id} finished before kill {len(self.kills)} ran again")
            elif job["state"] not in ("done", "queued", "running"):
                self.phase.find(
                    f"job {job_id} is {job['state']} after kill {len(self.kills)}: {job['error']}"
                )


def run(server: Server, ledger: Ledger, load_jobs: dict[str, list[str]]) -> Phase:
    phase = Phase("6. SIGKILL and restart")
    killer = Killer(server, phase, ledger)
    # 1. idle: everything before has finished.
    snapshot = _everyone(server)
    killer.kill_and_restart("idle, after the load")
    again = _everyone(server)
    with server.client("alice") as admin:
        changed = [
            i
            for i, job in snapshot.items()
            if i not in again or again[i]["state"] != job["state"] or again[i]["seeds"] != job["seeds"]
        ]
        unreadable = [
            i
            for ids in load_jobs.values()
            for i in ids
            if admin.get(f"/api/v1/jobs/{i}/images/0").status_code != 200
        ]
    phase.figures["jobs listed before the idle kill / after"] = f"{len(snapshot)} / {len(again)}"
    if changed or unreadable:
        phase.find(f"idle kill: {len(changed)} jobs changed, {len(unreadable)} load images unreadable")

    # 2. jobs waiting: eight queued from the four users, killed as the last is accepted.
    users = list(USERS)
    for index in range(8):
        ledger.submit(server, users[index % 4], n_iter=2)
    killer.kill_and_restart("8 jobs just queued (one starting)")

    # 3. mid-job: the second batch of four, then the last batch of four.
    for batch in (1, 3):
        job = ledger.submit(server, "bob", n_iter=4)
        ledger.submit(server, "carol", n_iter=1)
        caught = _wait_for(partial(_in_batch, server, job, batch), pause=0.005)
        killer.kill_and_restart(f"mid-job, batch {batch + 1} of 4" + ("" if caught else " (missed: later)"))

    # 4. during a save: kill as soon as a temp file of an image being written shows.
    caught_saves = 0
    for attempt in range(3):
        for user in users:
            ledger.submit(server, user, n_iter=2, batch_size=2)
        outputs = server.data_dir / "outputs"
        seen = _wait_for(lambda outputs=outputs: any(_temp_in(outputs)), timeout=30, pause=0)
        server.kill()
        present = temp_files(server.data_dir)
        caught_saves += bool(present)
        if not seen:
            moment = "no save seen in 30 s"
        elif present:
            moment = f"killed with {', '.join(p.name for p in present)} on disk"
        else:
            moment = "a .tmp was seen, the save finished before the kill landed"
        killer.kills.append(f"during a save, try {attempt + 1}: {moment}")
        server.start()
        killer.after_restart()

    # 5. during start-up: killed while it restores its jobs and loads the model.
    ledger.submit(server, "dave", n_iter=2)
    killer.kill_now("one job just queued (no check before the next kill)")
    server.spawn()
    time.sleep(6)
    last = server.logs[-1].read_text(errors="replace").strip().splitlines()[-1:] or ["(nothing logged)"]
    killer.kill_now(f"during start-up, 6 s after launch (its log's last line: {last[0][:100]!r})")
    server.start()
    killer.after_restart()

    final = wait_all(server, list(ledger.jobs), timeout=600)
    check_final(phase, server, ledger, final, load_jobs)
    phase.figures["kills"] = len(killer.kills)
    phase.figures["moments"] = killer.kills
    phase.figures["kills that left a .tmp on disk (then removed at start)"] = caught_saves
    phase.figures["start-up times s"] = [round(s, 1) for s in server.starts]
    return phase.end()


def _temp_in(outputs: Path) -> list[str]:
    found = []
    for folder, _dirs, files in os.walk(outputs):
        found += [f for f in files if f.endswith(".tmp")]
        del folder
    return found


def check_final(
    phase: Phase, server: Server, ledger: Ledger, final: dict[str, dict], load_jobs: dict[str, list[str]]
) -> None:
    files: Counter[int] = Counter()
    for path in (server.data_dir / "outputs").rglob("*.png"):
        if match := _OUTPUT.match(path.name):
            files[int(match.group(1))] += 1
    done = exact = 0
    for job_id, expected in ledger.jobs.items():
        job = final.get(job_id)
        if job is None:
            continue  # reported at the kill that lost it
        done += job["state"] == "done"
        ok = (
            job["state"] == "done"
            and job["seeds"] == expected.seeds
            and len(job["images"]) == len(expected.seeds)
        )
        once = all(files[seed] == 1 for seed in expected.seeds)
        exact += ok and once
        if not ok:
            phase.find(f"job {job_id}: {job['state']}, seeds {job['seeds']} (wanted {expected.seeds})")
        if not once:
            phase.find(
                f"job {job_id}: output files per seed {[files[s] for s in expected.seeds]} (want 1 each)"
            )
    phase.figures["jobs sent during the kills"] = len(ledger.jobs)
    phase.figures["of them done in the end / exact (seeds, images, one file per image)"] = f"{done} / {exact}"
    load_files = [files[LOAD_SEED + i] for i in range(PER_USER)]
    phase.figures["load jobs' output files per seed (4 users each)"] = dict(Counter(load_files))
    if set(load_files) != {len(load_jobs)}:
        phase.find(f"load output files per seed: {load_files}")
    left = temp_files(server.data_dir)
    phase.figures[".tmp files left at the end"] = len(left)
