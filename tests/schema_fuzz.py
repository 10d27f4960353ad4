"""How this project drives schemathesis: through hypothesis directly (its pytest plugin breaks on
pytest 9), reproducibly, without shrinking, so every generated request is one real call."""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings


def fuzz_settings(examples: int) -> settings:
    """Seeded, no example database, no deadline, no shrinking (a failure is reported as found)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
