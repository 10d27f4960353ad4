"""The OpenAPI document tells the truth: schemathesis sends a few generated requests to every
operation of a real server and checks each answer against the document (status, content type,
body schema) and that none is a 5xx. Also: a wrong method gets 405 with Allow, not 404."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
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

from tests.http_helpers import USERS, LiveServer, live_server
from tests.schema_fuzz import fuzz_settings

CALLER = ("bob", USERS["bob"])  # not an admin: installing an extension answers 403, no clone
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 3  # per operation and mode: enough to reach each documented answer, bounded in time
# Training runs for minutes whatever its body says; tests/test_training_api.py covers it.
LONG_RUNNING = {"POST /api/v1/train"}
SMALL = {"prompt": "a red square", "steps": 1, "width": 64, "height": 64, "seed": 1}


@pytest.fixture(scope="module")
def api(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with the page mounted (it receives unknown paths) and tiny limits, so that any
    generation the fuzzer asks for is at most 2 steps at 64x64."""
    checkpoint = tiny_dir / "tiny-sd15.safetensors"
    with live_server(tmp_path_factory.mktemp("openapi"), [checkpoint]) as running:
        running.jobs.set_limits(max_pixels=64 * 64, max_steps=2, max_batch_size=1, max_batch_count=1)
        yield running


@pytest.fixture(scope="module")
def document(api: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(httpx.get(f"{api.url}/openapi.json", auth=CALLER).json())


def _call(document: schemathesis.BaseSchema, url: str, label: str, **parts: object) -> schemathesis.Response:
    """One chosen request, its answer checked against the document like the generated ones."""
    method, path = label.split(" ", 1)
    case = document[path][method].Case(media_type="application/json" if "body" in parts else None, **parts)
    return case.call_and_validate(base_url=url, auth=CALLER, checks=CHECKS, timeout=60)


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, url: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @fuzz_settings(EXAMPLES)  # no shrinking: the first failure is reported
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=url, auth=CALLER, checks=CHECKS, timeout=60)

    try:
        run()
    except Unsatisfiable:
        # Negative mode found nothing the document forbids (a string path parameter takes any
        # text): there is no wrong request of this kind to send.
        assert mode is GenerationMode.NEGATIVE


def test_answers_agree_with_the_openapi_document(
    api: LiveServer, document: schemathesis.BaseSchema, subtests: pytest.Subtests
) -> None:
    operations = [result.ok() for result in document.get_all_operations()]
    assert len(operations) > 40
    for operation in operations:
        if operation.label in LONG_RUNNING:
            continue
        declared = operation.definition.raw
        takes_input = bool(declared.get("parameters")) or "requestBody" in declared
        # Without parameters or a body there is nothing to get wrong: no negative case exists.
        modes = (
            [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if takes_input else [GenerationMode.POSITIVE]
        )
        for mode in modes:
            with subtests.test(msg=f"{operation.label} ({mode.value})"):
                _fuzz(operation, mode, api.url)


def test_successful_answers_agree_with_the_document(
    api: LiveServer, document: schemathesis.BaseSchema
) -> None:
    """Generated bodies are almost all refused (any random sampler name is unknown), so the
    answers that carry images, PNG files and event streams are asked for here on purpose."""
    url = api.url
    image = _call(document, url, "POST /sdapi/v1/txt2img", body=SMALL).json()["images"][0]
    assert (
        _call(document, url, "POST /sdapi/v1/img2img", body={**SMALL, "init_images": [image]}).status_code
        == 200
    )
    assert _call(document, url, "POST /sdapi/v1/png-info", body={"image": image}).json()["info"]
    upscale = {"image": image, "upscaling_resize": 1}
    assert _call(document, url, "POST /sdapi/v1/extra-single-image", body=upscale).status_code == 200
    job = _call(document, url, "POST /api/v1/jobs/txt2img", body=SMALL).json()["id"]
    ids = {"job_id": job}
    for _ in range(600):
        state = _call(document, url, "GET /api/v1/jobs/{job_id}", path_parameters=ids).json()["state"]
        if state not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert state == "done"
    events = _call(document, url, "GET /api/v1/jobs/{job_id}/events", path_parameters=ids)
    assert events.headers["content-type"][0].startswith("text/event-stream")
    assert b"event: done" in events.content
    png = _call(
        document, url, "GET /api/v1/jobs/{job_id}/images/{index}", path_parameters={**ids, "index": 0}
    )
    assert png.content.startswith(b"\x89PNG")
    _call(document, url, "GET /api/v1/jobs/{job_id}/preview", path_parameters=ids)  # PNG, or 404 if none


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/v1/jobs", "GET"),
        ("GET", "/sdapi/v1/txt2img", "POST"),
        ("PUT", "/sdapi/v1/options", "GET, POST"),
        ("POST", "/api/v1/jobs/abc/images/0", "GET"),
        ("DELETE", "/api/v1/ext/wildcards/wildcards", "GET"),
    ],
)
def test_a_wrong_method_is_405_with_allow(api: LiveServer, method: str, path: str, allow: str) -> None:
    answer = httpx.request(method, f"{api.url}{path}", auth=CALLER)
    assert answer.status_code == 405
    assert answer.headers["allow"] == allow
    assert answer.json()["error"] == "method not allowed"
    assert method in answer.json()["detail"]


@pytest.mark.parametrize("path", ["/api/v1/nothing", "/sdapi/v1/nothing/else", "/api/v2/jobs"])
def test_an_unknown_api_path_is_404_in_the_error_shape(api: LiveServer, path: str) -> None:
    answer = httpx.get(f"{api.url}{path}", auth=CALLER)
    assert answer.status_code == 404
    assert answer.json() == {"error": "not found", "detail": f"no route {path}"}


def test_the_page_still_answers_its_own_paths(api: LiveServer) -> None:
    assert httpx.get(f"{api.url}/", auth=CALLER).status_code == 200
    assert httpx.get(f"{api.url}/docs", auth=CALLER).status_code == 200
