"""A small client for a running app's `/api/v1` job API, on the standard library alone.

The command line uses it for `--server`: it must load in a fraction of a second, so nothing here
imports torch, the engine or the web framework.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

JOB_KINDS = ("txt2img", "img2img")
FINAL_STATES = ("done", "failed", "interrupted")
# The server sends a keep-alive comment every 15 s, so a minute of silence means it is gone.
_STREAM_TIMEOUT_S = 60.0
# An event stream may end early (a proxy's idle limit, a restart): how often to listen again.
_STREAM_RETRIES = 5


class ApiClientError(Exception):
    """A request the server refused (`status` 4xx), failed (5xx), or that never reached it (None)."""

    def __init__(
        self, message: str, *, status: int | None = None, field: str | None = None, error: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.error = error

    @property
    def refused(self) -> bool:
        """The request itself was at fault (bad input, no login, too many jobs), not the server."""
        return self.status is not None and 400 <= self.status < 500


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects would drop a POST body and carry the login to another host: report them instead."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`http://user:pass@host:port/base` -> (`http://host:port/base`, (user, pass)); a bare
    `host:port` gets `http://`. The login, when there is one, is percent-decoded."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, _host_and_port(parts.hostname, parts.port), parts.path, "", ""))
    auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username is not None else None
    return base.rstrip("/"), auth


def _host_and_port(host: str | None, port: int | None) -> str:
    host = host or ""
    if ":" in host:  # an IPv6 literal needs its brackets back
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def parse_auth(value: str) -> tuple[str, str]:
    """`USER:PASS` (the password may hold colons) -> (user, pass); ValueError without both parts."""
    user, colon, password = value.partition(":")
    if not colon or not user:
        raise ValueError("expected USER:PASS")
    return user, password


class ApiClient:
    """Submit a generation job, follow its events until it ends, and fetch its images."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Accept": "application/json"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._opener = urllib.request.build_opener(_NoRedirect)

    def submit(self, kind: str, body: dict[str, Any]) -> str:
        """Queue a txt2img or img2img job (an A1111-shaped body); its id."""
        if kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, got {kind!r}")
        answer = self._json("POST", f"/api/v1/jobs/{kind}", body)
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise ApiClientError(f"{self.base_url} answered the submit without a job id")
        return answer["id"]

    def follow(
        self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Listen to a job's events, calling `on_progress` for each; the final job description."""
        try:
            for _attempt in range(_STREAM_RETRIES):
                final = self._listen(job_id, on_progress)
                if final is not None:
                    return final
                job = self.job(job_id)  # the stream ended without a final event: did the job end?
                if job.get("state") in FINAL_STATES:
                    return job
        except ApiClientError as error:
            if error.status == 404:  # not the request's fault: the server restarted or forgot the job
                raise ApiClientError(f"{self.base_url} no longer knows job {job_id}") from None
            raise
        raise ApiClientError(f"the event stream of job {job_id} kept ending before the job did")

    def _listen(
        self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None
    ) -> dict[str, Any] | None:
        """One event stream: the final job description, or None if the stream ended before it."""
        path = f"/api/v1/jobs/{quote(job_id, safe='')}/events?previews=false"
        with self._open("GET", path, accept="text/event-stream", timeout=_STREAM_TIMEOUT_S) as response:
            for name, data in sse_events(response):
                payload = _parse_json(data, "an event")
                if name in FINAL_STATES:
                    return payload
                if name == "progress" and on_progress is not None:
                    on_progress(payload)
        return None

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/jobs/{quote(job_id, safe='')}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/jobs/{quote(job_id, safe='')}/cancel")

    def fetch(self, path: str) -> bytes:
        """The bytes at a server path, e.g. an image URL from a finished job."""
        if not path.startswith("/"):
            raise ApiClientError(f"expected a path on {self.base_url}, got {path!r}")
        with self._open("GET", path, accept="*/*") as response:
            return response.read()

    # -- plumbing --------------------------------------------------------------------------------
    def _json(self, method: str, path: str, body: object = None) -> Any:
        with self._open(method, path, body=body) as response:
            return _parse_json(response.read(), f"{method} {path}")

    @contextmanager
    def _open(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        accept: str = "application/json",
        timeout: float | None = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """The response, with every way HTTP can fail (also while reading it) as ApiClientError."""
        headers = {**self._headers, "Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as response:
                yield response
        except urllib.error.HTTPError as error:
            raise _refusal(error) from None
        except urllib.error.URLError as error:
            raise ApiClientError(f"cannot reach {self.base_url}: {_reason(error.reason)}") from None
        except TimeoutError:
            raise ApiClientError(f"{self.base_url} stopped answering (timed out)") from None
        except (OSError, http.client.HTTPException) as error:
            raise ApiClientError(f"the connection to {self.base_url} broke: {_reason(error)}") from None


def _refusal(error: urllib.error.HTTPError) -> ApiClientError:
    """The server's `{"error", "detail", "field"}` answer as an exception; any other body, its status."""
    try:
        answer = json.loads(error.read() or b"null")
    except (ValueError, OSError):
        answer = None
    if not isinstance(answer, dict):
        answer = {}
    detail = answer.get("detail") or answer.get("error") or f"HTTP {error.code} {error.reason}"
    if 300 <= error.code < 400:
        detail = f"the server redirects to {error.headers.get('Location')}; use that address"
    field = answer.get("field") if isinstance(answer.get("field"), str) else None
    return ApiClientError(str(detail), status=error.code, field=field, error=answer.get("error"))


def _reason(reason: object) -> str:
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def _parse_json(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ApiClientError(f"the server answered {what} with something that is not JSON") from None


def sse_events(lines: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """(event name, data) for each server-sent event; comments (keep-alives) are skipped."""
    name, data = "message", []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
