"""Run the hostile run: `.venv/bin/python -m tests.hostile [--examples 25] [--phases 123456]`.

A real server (launch.py) on a free loopback port, over a fresh data dir with a tiny checkpoint;
each phase prints its figures and findings (a 5xx, a leak, a lost job, a crash)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.hostile import fuzz, kills, load, logins, malformed, model_files
from tests.hostile.report import Phase
from tests.hostile.server import CHECKPOINT, REPO, Server


def every_job(server: Server) -> Phase:
    """All jobs the run left, by state; a failure that was not the request's fault is a finding."""
    phase = Phase("7. every job at the end")
    with server.client("alice") as admin:
        jobs = admin.get("/api/v1/jobs", params={"everyone": True}).json()
    phase.figures["jobs"] = len(jobs)
    phase.figures["by state"] = dict(Counter(job["state"] for job in jobs))
    phase.figures["failed for the request's fault (user_error)"] = sum(
        job["state"] == "failed" and job["user_error"] for job in jobs
    )
    for job in jobs:
        if job["state"] == "failed" and not job["user_error"]:
            phase.find(f"job {job['id']} failed on the server's side: {job['error']}")
    return phase.end()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--examples", type=int, default=100, help="schemathesis examples per operation and mode"
    )
    parser.add_argument("--phases", default="123456", help="which phases to run (digits)")
    parser.add_argument("--logins", type=int, default=1200, help="requests with bad credentials")
    parser.add_argument("--data-dir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    began = time.monotonic()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="hostile-run-"))
    checkpoint = data_dir / "models" / "Stable-diffusion" / f"{CHECKPOINT}.safetensors"
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "webui.tools.tiny_checkpoint", "--arch", "sd15", str(checkpoint)],
            check=True,
            cwd=REPO,
        )
    print(f"data dir: {data_dir}", flush=True)
    server = Server(data_dir)
    server.start()
    phases: list[Phase] = []
    load_jobs: dict[str, list[str]] = {}
    try:
        # Logins come after the load: the throttle they trip lasts until the kills' restarts.
        for digit in "123546":
            if digit not in args.phases:
                continue
            if digit == "1":
                phases.append(fuzz.run(server, args.examples))
            elif digit == "2":
                phases.append(malformed.run(server))
            elif digit == "3":
                phases.append(model_files.run(server))
            elif digit == "5":
                phase, load_jobs = load.run(server)
                phases.append(phase)
            elif digit == "4":
                phases.append(logins.run(server, args.logins))
            elif digit == "6":
                phases.append(kills.run(server, kills.Ledger(), load_jobs))
            print("\n".join(phases[-1].lines()), flush=True)
        phases.append(every_job(server))
        print("\n".join(phases[-1].lines()), flush=True)
    finally:
        server.kill()
    crashes = server.tracebacks()
    print(f"\nserver starts: {len(server.starts)}; tracebacks in its logs: {len(crashes)}")
    for line in crashes[:20]:
        print(f"  {line}")
    findings = sum(len(phase.findings) for phase in phases)
    print(f"findings: {findings}; wall time {time.monotonic() - began:.0f} s")
    if args.json:
        figures = {
            p.name: {**p.figures, "statuses": dict(p.statuses), "findings": p.findings, "s": p.seconds}
            for p in phases
        }
        args.json.write_text(json.dumps({"phases": figures, "tracebacks": crashes}, indent=1, default=str))
    return 1 if findings or crashes else 0


if __name__ == "__main__":
    sys.exit(main())
