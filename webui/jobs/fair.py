"""The waiting line: round-robin across users, each user's own jobs in the order they were sent.

One user's batch of a hundred jobs must not block everyone on a shared box: the next job comes
from the user whose turn it is, and a user who was just served goes to the back of the turns.
Not thread-safe: the queue calls it with its lock held.
"""

from __future__ import annotations

from collections import deque

from webui.jobs.job import Job


class FairLine:
    def __init__(self) -> None:
        self._by_owner: dict[str, deque[Job]] = {}
        self._turns: deque[str] = deque()  # owners with waiting jobs, whose turn comes first first

    def push(self, job: Job) -> None:
        """Queue `job` behind its owner's other waiting jobs; a new owner's turn comes last."""
        if job.owner not in self._by_owner:
            self._by_owner[job.owner] = deque()
            self._turns.append(job.owner)
        self._by_owner[job.owner].append(job)

    def push_front(self, job: Job) -> None:
        """Put `job` first of all (a job that was running when the server stopped)."""
        if job.owner in self._by_owner:
            self._turns.remove(job.owner)
        else:
            self._by_owner[job.owner] = deque()
        self._turns.appendleft(job.owner)
        self._by_owner[job.owner].appendleft(job)

    def pop(self) -> Job:
        """The next job to run; its owner's next turn comes after everyone else's."""
        owner = self._turns.popleft()
        mine = self._by_owner[owner]
        job = mine.popleft()
        if mine:
            self._turns.append(owner)
        else:
            del self._by_owner[owner]
        return job

    def remove(self, job: Job) -> bool:
        mine = self._by_owner.get(job.owner)
        if mine is None or job not in mine:
            return False
        mine.remove(job)
        if not mine:
            del self._by_owner[job.owner]
            self._turns.remove(job.owner)
        return True

    def drain(self) -> list[Job]:
        """Every waiting job, in run order; the line is empty after."""
        jobs = self.order()
        self._by_owner.clear()
        self._turns.clear()
        return jobs

    def order(self) -> list[Job]:
        """Waiting jobs in the order they will run if nobody sends more: round by round, each
        round one job of each owner in turn order."""
        lines = [self._by_owner[owner] for owner in self._turns]
        ordered: list[Job] = []
        for round_ in range(max((len(line) for line in lines), default=0)):
            ordered.extend(line[round_] for line in lines if round_ < len(line))
        return ordered

    def position(self, job: Job) -> int | None:
        """1-based place of `job` in `order()`, without building the whole order."""
        mine = self._by_owner.get(job.owner)
        if mine is None:
            return None
        try:
            round_ = mine.index(job)
        except ValueError:
            return None
        my_turn = self._turns.index(job.owner)
        ahead = round_  # my own earlier jobs
        for turn, owner in enumerate(self._turns):
            if owner != job.owner:
                # Others' jobs of earlier rounds, and of this round when their turn comes first.
                ahead += min(len(self._by_owner[owner]), round_ + 1 if turn < my_turn else round_)
        return ahead + 1

    def first_of(self, owner: str) -> Job | None:
        mine = self._by_owner.get(owner)
        return mine[0] if mine else None

    def count(self, owner: str) -> int:
        return len(self._by_owner.get(owner, ()))

    def __len__(self) -> int:
        return sum(len(line) for line in self._by_owner.values())

    def __bool__(self) -> bool:
        return bool(self._turns)

    def __contains__(self, job: object) -> bool:
        return isinstance(job, Job) and job in self._by_owner.get(job.owner, ())
