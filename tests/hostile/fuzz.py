"""Phase 1: schemathesis over every operation of the server's OpenAPI document, driven through
hypothesis directly as tests/test_openapi_conformance.py does (its pytest plugin breaks on
pytest 9), with more examples per operation; every failure is counted, not only the first."""

from __future__ import annotations

import contextlib
from collections import Counter

import httpx
import schemathesis
from hypothesis import given
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.hostile.report import Phase
from tests.hostile.server import USERS, Server
from tests.schema_fuzz import fuzz_settings

CALLER = ("bob", USERS["bob"])  # not an admin: installing an extension answers 403, no clone
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
LONG_RUNNING = {"POST /api/v1/train"}  # minutes whatever the body; tests/test_training_api.py


def run(server: Server, examples: int) -> Phase:
    phase = Phase("1. schema fuzzing (schemathesis)")
    document = schemathesis.openapi.from_dict(httpx.get(f"{server.url}/openapi.json", auth=CALLER).json())
    operations = [result.ok() for result in document.get_all_operations()]
    counts = Counter[str]()
    for operation in operations:
        if operation.label in LONG_RUNNING:
            continue
        declared = operation.definition.raw
        takes_input = bool(declared.get("parameters")) or "requestBody" in declared
        for mode in [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else []):
            # Negative mode may find nothing the document forbids (a free-text path parameter).
            with contextlib.suppress(Unsatisfiable):
                _fuzz(server.url, operation, mode, examples, phase, counts)
    phase.figures["operations"] = len(operations)
    phase.figures["skipped"] = ", ".join(sorted(LONG_RUNNING))
    phase.figures["examples per operation and mode"] = examples
    phase.figures["cases sent"] = counts["cases"]
    phase.figures["cases failing a check"] = counts["failed"]
    phase.figures["5xx answers"] = sum(v for k, v in phase.statuses.items() if k >= 500)
    return phase.end()


def _fuzz(
    url: str,
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    examples: int,
    phase: Phase,
    counts: Counter[str],
) -> None:
    label = f"{operation.label} ({mode.value})"

    @given(case=operation.as_strategy(generation_mode=mode))
    @fuzz_settings(examples)  # no shrinking: every failure is counted instead
    def one(case: schemathesis.Case) -> None:
        counts["cases"] += 1
        try:
            response = case.call(base_url=url, auth=CALLER, timeout=60)
        except Exception as error:  # a dropped connection is a finding too
            counts["failed"] += 1
            phase.find(f"{label}: no answer: {error!r}"[:300])
            return
        phase.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as error:  # schemathesis raises its grouped check failures
            counts["failed"] += 1
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            title = next((line for line in lines if not line.startswith(("-", "="))), "?")
            phase.find(f"{label} -> {response.status_code}: {title[:200]}")

    one()
