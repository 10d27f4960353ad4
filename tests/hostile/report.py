"""What each phase found: counters for docs/reliability.md and findings (anything that broke)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Phase:
    name: str
    figures: dict[str, object] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def find(self, what: str) -> None:
        if what not in self.findings:
            self.findings.append(what)

    def end(self) -> Phase:
        self.seconds = round(time.monotonic() - self.began, 1)
        return self

    def lines(self) -> list[str]:
        out = [f"## {self.name} ({self.seconds} s)"]
        out += [f"  {key}: {value}" for key, value in self.figures.items()]
        if self.statuses:
            out.append("  statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items())))
        out += [f"  FINDING: {finding}" for finding in self.findings[:40]]
        if len(self.findings) > 40:
            out.append(f"  ... {len(self.findings) - 40} more findings")
        return out
