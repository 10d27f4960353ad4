"""Simulate the cluster's dispatcher: throughput against the number of workers, and the model
loads that checkpoint affinity saves over round-robin. Pure simulation with fixed job costs: no
Ray, no models, no device; it ends in about a second.

    python -m webui.tools.cluster_bench
    python -m webui.tools.cluster_bench --job-s 5 --disk-s 12.5 --move-s 1.2 --checkpoints 6

Each worker runs one job at a time and keeps models as the cache does: `--vram-models` on its
device, `--ram-models` more in RAM, least recently used demoted first. A job costs `--job-s`,
plus `--move-s` when its checkpoint is in that worker's RAM, or `--disk-s` when it is in neither.
The queue hands jobs out in order; only the choice of a free worker differs:

- affinity: webui.cluster.choice.choose_worker, as the server does (VRAM, then RAM, then the
  least loaded);
- round-robin: the next free worker in turn, whatever it holds.

Two workloads: a backlog (every job waiting at the start: the most jobs per minute the workers
can do) and an open stream (jobs arrive at random at `--load` of what the workers can do, so
several are often idle and the choice matters most).
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from webui.cluster.choice import Candidate, choose_worker


@dataclass(frozen=True)
class Costs:
    job_s: float
    disk_s: float
    move_s: float
    vram_models: int
    ram_models: int


@dataclass
class SimWorker:
    id: str
    costs: Costs
    vram: OrderedDict[str, None] = field(default_factory=OrderedDict)  # least recently used first
    ram: OrderedDict[str, None] = field(default_factory=OrderedDict)
    jobs_done: int = 0
    disk_loads: int = 0
    moves: int = 0

    def run(self, checkpoint: str) -> float:
        """Seconds the job takes here; the worker's memory changes as the cache's would."""
        extra = 0.0
        if checkpoint in self.vram:
            self.vram.move_to_end(checkpoint)
        else:
            if checkpoint in self.ram:
                del self.ram[checkpoint]
                extra, self.moves = self.costs.move_s, self.moves + 1
            else:
                extra, self.disk_loads = self.costs.disk_s, self.disk_loads + 1
            self.vram[checkpoint] = None
            while len(self.vram) > self.costs.vram_models:  # demote the least recently used
                demoted, _ = self.vram.popitem(last=False)
                self.ram[demoted] = None
                while len(self.ram) > self.costs.ram_models:
                    self.ram.popitem(last=False)
        self.jobs_done += 1
        return self.costs.job_s + extra

    def candidate(self) -> Candidate:
        return Candidate(self.id, frozenset(self.vram), frozenset(self.ram), 0, self.jobs_done)


Policy = Callable[[str, list[SimWorker]], SimWorker]


def affinity_policy() -> Policy:
    def choose(checkpoint: str, free: list[SimWorker]) -> SimWorker:
        chosen = choose_worker(checkpoint, [worker.candidate() for worker in free])
        assert chosen is not None
        return next(worker for worker in free if worker.id == chosen.id)

    return choose


def round_robin_policy(count: int) -> Policy:
    turn = [0]

    def choose(_checkpoint: str, free: list[SimWorker]) -> SimWorker:
        by_index = {int(worker.id): worker for worker in free}
        for step in range(count):  # the next free worker at or after the turn
            index = (turn[0] + step) % count
            if index in by_index:
                turn[0] = index + 1
                return by_index[index]
        raise AssertionError("no free worker")

    return choose


@dataclass(frozen=True)
class Outcome:
    jobs_per_min: float
    disk_loads: int
    moves: int
    loading_share: float  # of the workers' busy time, spent loading and moving models
    mean_wait_s: float
    mean_turnaround_s: float  # from arrival to done


def simulate(jobs: Sequence[tuple[float, str]], workers: int, costs: Costs, policy: Policy) -> Outcome:
    """`jobs`: (arrival second, checkpoint) in arrival order; served in that order."""
    pool = [SimWorker(str(index), costs) for index in range(workers)]
    free = list(pool)
    busy: list[tuple[float, int]] = []  # (free again at, worker index)
    waiting: list[tuple[float, str]] = []
    waits: list[float] = []
    turnarounds: list[float] = []
    busy_s = 0.0
    now, arrived, end = 0.0, 0, 0.0
    while arrived < len(jobs) or waiting or busy:
        next_arrival = jobs[arrived][0] if arrived < len(jobs) else float("inf")
        next_free = busy[0][0] if busy else float("inf")
        now = min(next_arrival, next_free)
        while busy and busy[0][0] <= now:
            _, index = heapq.heappop(busy)
            free.append(pool[index])
        while arrived < len(jobs) and jobs[arrived][0] <= now:
            waiting.append(jobs[arrived])
            arrived += 1
        while waiting and free:
            arrival, checkpoint = waiting.pop(0)
            worker = policy(checkpoint, free)
            free.remove(worker)
            waits.append(now - arrival)
            took = worker.run(checkpoint)
            busy_s += took
            done_at = now + took
            turnarounds.append(done_at - arrival)
            end = max(end, done_at)
            heapq.heappush(busy, (done_at, int(worker.id)))
    disk_loads = sum(worker.disk_loads for worker in pool)
    moves = sum(worker.moves for worker in pool)
    return Outcome(
        60 * len(jobs) / end,
        disk_loads,
        moves,
        (disk_loads * costs.disk_s + moves * costs.move_s) / busy_s,
        statistics.fmean(waits),
        statistics.fmean(turnarounds),
    )


def workload(count: int, checkpoints: int, rate_per_s: float | None, seed: int) -> list[tuple[float, str]]:
    """`count` jobs over `checkpoints` checkpoints, the first few more popular (weights 1/rank);
    all at once without a rate, else arriving at random at `rate_per_s`."""
    rng = random.Random(seed)
    names = [f"ckpt{index}" for index in range(checkpoints)]
    weights = [1 / (rank + 1) for rank in range(checkpoints)]
    at, jobs = 0.0, []
    for _ in range(count):
        if rate_per_s is not None:
            at += rng.expovariate(rate_per_s)
        jobs.append((at, rng.choices(names, weights)[0]))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--jobs-per-worker", type=int, default=50)
    parser.add_argument("--checkpoints", type=int, default=6)
    parser.add_argument("--job-s", type=float, default=5.0, help="one job's generation (default 5)")
    parser.add_argument("--disk-s", type=float, default=12.5, help="a load from disk (default 12.5)")
    parser.add_argument("--move-s", type=float, default=1.2, help="a RAM -> VRAM move (default 1.2)")
    parser.add_argument("--vram-models", type=int, default=1)
    parser.add_argument("--ram-models", type=int, default=2)
    parser.add_argument(
        "--load",
        type=float,
        default=0.3,
        help="the open stream's jobs per second, as a share of "
        "what the workers could do without any load (default 0.3)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    costs = Costs(args.job_s, args.disk_s, args.move_s, args.vram_models, args.ram_models)
    print(
        f"job {costs.job_s} s, disk load {costs.disk_s} s, RAM -> VRAM {costs.move_s} s; each worker "
        f"keeps {costs.vram_models} model(s) in VRAM and {costs.ram_models} in RAM; "
        f"{args.checkpoints} checkpoints, {args.jobs_per_worker} jobs per worker"
    )
    for title, rate in (("backlog", None), (f"open stream at {args.load:.0%} load", args.load)):
        print(f"\n{title}")
        print(
            "workers | policy      | jobs/min | x 1 worker | disk loads | RAM->VRAM | loading "
            "| mean wait s | mean turnaround s"
        )
        base = None  # the first row's jobs per minute
        for count in args.workers:
            jobs = workload(
                count * args.jobs_per_worker,
                args.checkpoints,
                None if rate is None else rate * count / costs.job_s,
                args.seed,
            )
            for name, policy in (("affinity", affinity_policy()), ("round-robin", round_robin_policy(count))):
                outcome = simulate(jobs, count, costs, policy)
                if base is None:
                    base = outcome.jobs_per_min
                print(
                    f"{count:7d} | {name:11s} | {outcome.jobs_per_min:8.1f} "
                    f"| {outcome.jobs_per_min / base:10.2f} "
                    f"| {outcome.disk_loads:10d} | {outcome.moves:9d} | {outcome.loading_share:7.0%} "
                    f"| {outcome.mean_wait_s:11.1f} | {outcome.mean_turnaround_s:17.1f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
