"""Slows password guessing: failed logins are counted per user name and per client address.

Each is a token bucket: `burst` failures are allowed at once, then one more every `refill_s`
seconds. Past that, logins for that name, or from that address, are answered 429 with
Retry-After without even looking at the password, so guessing gains nothing from waiting less.
A correct password for another name is not affected; nor is one from an address that has
logged in as that name before (the real user's), which only its address's bucket limits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Buckets kept at most per kind; full ones (no recent failure) are dropped first.
_MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class ThrottleRule:
    burst: int  # failures allowed at once
    refill_s: float  # then one more every this many seconds


@dataclass(frozen=True)
class LoginLimits:
    # One name: 10 tries, then 2 a minute (120 guesses an hour at most, whoever sends them).
    per_user: ThrottleRule = ThrottleRule(burst=10, refill_s=30.0)
    # One address: 30 tries over any names, then 6 a minute.
    per_address: ThrottleRule = ThrottleRule(burst=30, refill_s=10.0)


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _Buckets:
    rule: ThrottleRule
    clock: Callable[[], float]
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def _level(self, key: str, now: float) -> float:
        bucket = self.buckets.get(key)
        if bucket is None:
            return float(self.rule.burst)
        return min(self.rule.burst, bucket.tokens + (now - bucket.at) / self.rule.refill_s)

    def wait_s(self, key: str) -> float:
        """Seconds until `key` may try again; 0: now."""
        level = self._level(key, self.clock())
        return 0.0 if level >= 1 else (1 - level) * self.rule.refill_s

    def spend(self, key: str) -> None:
        now = self.clock()
        level = self._level(key, now)
        if key not in self.buckets and len(self.buckets) >= _MAX_BUCKETS:
            self._forget_full(now)
        self.buckets[key] = _Bucket(max(level - 1, 0.0), now)

    def refund(self, key: str) -> None:
        bucket = self.buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(bucket.tokens + 1, self.rule.burst)

    def _forget_full(self, now: float) -> None:
        for key in [key for key in self.buckets if self._level(key, now) >= self.rule.burst]:
            del self.buckets[key]
        if len(self.buckets) >= _MAX_BUCKETS:  # a flood of names: forget the oldest
            oldest = sorted(self.buckets, key=lambda key: self.buckets[key].at)
            for key in oldest[: len(oldest) // 2]:
                del self.buckets[key]


class LoginThrottle:
    """Failed-login counters of one server; used from its event loop only (no lock needed)."""

    def __init__(
        self, limits: LoginLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        limits = limits or LoginLimits()
        self._users = _Buckets(limits.per_user, clock)
        self._addresses = _Buckets(limits.per_address, clock)
        self._trusted: set[tuple[str, str]] = set()  # (name, address) pairs that logged in

    def retry_after(self, user: str, address: str) -> int:
        """Whole seconds to wait before this name may log in from this address; 0: go ahead."""
        user_wait = 0.0 if (user, address) in self._trusted else self._users.wait_s(user)
        wait = max(user_wait, self._addresses.wait_s(address))
        return math.ceil(wait) if wait > 0 else 0

    def attempt(self, user: str, address: str) -> None:
        """Count a login as failed before its password is checked, so parallel guesses cannot
        all slip through while the first ones are being checked; `succeeded` takes it back."""
        if (user, address) not in self._trusted:
            self._users.spend(user)
        self._addresses.spend(address)

    def succeeded(self, user: str, address: str) -> None:
        if (user, address) not in self._trusted:
            self._users.refund(user)
            if len(self._trusted) >= _MAX_BUCKETS:
                self._trusted.clear()
            self._trusted.add((user, address))
        self._addresses.refund(address)
