"""Phase 4: wrong passwords, malformed Authorization headers and wrong bearer tokens from
eight loopback addresses (every 127.x.y.z is this machine on Linux); none may get in or crash,
the throttle answers 429, and the real users still get in from where they were before."""

from __future__ import annotations

import base64
import http.client
import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.hostile.report import Phase
from tests.hostile.server import USERS, Server, basic

ADDRESSES = [f"127.0.0.{i}" for i in range(20, 28)]
PATHS = ["/api/v1/me", "/sdapi/v1/options", "/api/v1/jobs", "/", "/gradio_api/file=x.png", "/openapi.json"]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def headers() -> list[tuple[str, str]]:
    """(kind, Authorization value) pairs; every one is wrong."""
    wrong = [("wrong password", basic(user, f"guess-{i}")) for user in USERS for i in range(6)]
    wrong += [("wrong password", basic(user, USERS[user] + " ")) for user in USERS]
    wrong += [("wrong password", basic(user, USERS[user].upper())) for user in USERS]
    unknown = [("unknown user", "Basic " + _b64(f"mallory{i}:pw".encode())) for i in range(8)]
    malformed = [
        ("malformed", value)
        for value in [
            "",
            "Basic",
            "Basic ",
            "Basic !!!not-base64!!!",
            "Basic " + _b64(b"no-colon-here"),
            "Basic " + _b64(b":"),
            "Basic " + _b64(b"bob:"),
            "Basic " + _b64(b":" + USERS["bob"].encode()),
            "Basic " + _b64(b"\xff\xfe:\xff\xfe"),
            "Basic " + _b64(b"bob\x00:x"),
            "Basic " + _b64(("bob:" + "x" * 6000).encode()),
            "Basic " + _b64(b"bob:x") + " trailing",
            "Basic " + _b64(b"bob:x") + ", Basic " + _b64(b"alice:x"),
            'Digest username="bob", realm="x"',
            "Token bob",
            "NTLM TlRMTVNTUAABAAAA",
            "basic " + _b64(b"eve:x"),
        ]
    ]
    bearer = [
        ("wrong bearer", value)
        for value in [
            "Bearer",
            "Bearer ",
            "Bearer wrong-token",
            "Bearer sdw_",
            "Bearer sdw_abcdef_",
            "Bearer sdw__secret",
            "Bearer sdw_0123456789abcdef_" + "A" * 43,
            "Bearer sdw_../../etc_passwd",
            "Bearer " + "x" * 7000,
            "Bearer \u00e9t\u00e9".encode().decode("latin-1"),
            "Bearer sdw_" + "0" * 16 + "_" + "0" * 43,
        ]
    ]
    return wrong + unknown + malformed + bearer


def _send(job: tuple[str, str, str, str]) -> tuple[str, int]:
    """One GET from `address`, sent as written (http.client lets through what httpx refuses,
    e.g. `Basic ` with nothing after it)."""
    kind, value, address, url = job
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(address, 0))
    try:
        connection.request("GET", "/" + url.split("/", 3)[3], headers={"Authorization": value})
        response = connection.getresponse()
        response.read()
        return kind, response.status
    except OSError:
        return kind, -1  # no answer: reported below
    finally:
        connection.close()


def run(server: Server, total: int = 1200) -> Phase:
    phase = Phase("4. bad credentials")
    ok_before = {user: _me(server, user, "127.0.0.1") for user in USERS}
    pairs = headers()
    jobs = [
        (kind, value, address, server.url + path)
        for (kind, value), address, path in zip(
            itertools.islice(itertools.cycle(pairs), total),
            itertools.cycle(ADDRESSES),
            itertools.cycle(PATHS),
        )
    ]
    by_kind: dict[str, Counter[int]] = {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        for kind, status in pool.map(_send, jobs):
            phase.statuses[status] += 1
            by_kind.setdefault(kind, Counter())[status] += 1
            if status < 0:
                phase.find(f"{kind}: no answer (connection dropped)")
            elif status < 400 or status >= 500:
                phase.find(f"{kind}: answered {status}")
    phase.figures["requests"] = len(jobs)
    phase.figures["distinct wrong Authorization values"] = len(pairs)
    phase.figures["addresses"] = f"{ADDRESSES[0]}-{ADDRESSES[-1]}"
    phase.figures["by kind"] = {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())}
    phase.figures["real users from 127.0.0.1 before"] = ok_before
    after = {user: _me(server, user, "127.0.0.1") for user in USERS}
    phase.figures["real users from 127.0.0.1 after"] = after
    phase.figures["alice's right password from an attacking address"] = _me(server, "alice", ADDRESSES[0])
    for user, status in after.items():
        if status != 200:
            phase.find(f"{user} could not log in from 127.0.0.1 after the attack: {status}")
    return phase.end()


def _me(server: Server, user: str, address: str) -> int:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=30, auth=(user, USERS[user])) as client:
        return client.get(f"{server.url}/api/v1/me").status_code
