"""Phase 2: requests built by hand to be wrong: broken JSON, wrong types, huge and non-finite
numbers, lone surrogates, 4 MB prompts, images that are not images or not PNG, a decompression
bomb, unknown fields, wrong methods, path traversal on the file routes, other users' jobs.
Any 5xx is a finding; so is a file route or another user's job that answers 200."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from tests.hostile.report import Phase
from tests.hostile.server import Server

JSON_ROUTES = [
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
    "/api/v1/jobs/txt2img",
    "/api/v1/jobs/img2img",
    "/sdapi/v1/png-info",
    "/sdapi/v1/extra-single-image",
    "/sdapi/v1/extra-batch-images",
    "/sdapi/v1/interrogate",
    "/sdapi/v1/options",
    "/api/v1/tokens",
    "/v1/images/generations",
]
SMALL = '"steps": 1, "width": 64, "height": 64'
NESTED = "[" * 100_000 + "]" * 100_000
BAD_BODIES: list[bytes] = [
    s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    for s in [
        "",
        "{",
        '{"prompt": "a',
        "[]",
        "null",
        "0",
        '"text"',
        "{}}",
        b"\xff\xfe\x00garbage",
        '{"prompt": 5, ' + SMALL + "}",
        '{"prompt": ["a"], ' + SMALL + "}",
        '{"steps": "many"}',
        '{"steps": true, "width": 64, "height": 64}',
        '{"width": -64, "height": 64, "steps": 1}',
        '{"width": 64, "height": 0, "steps": 1}',
        '{"steps": -1, "width": 64, "height": 64}',
        '{"steps": 1e400, "width": 64, "height": 64}',
        '{"seed": 1e400, ' + SMALL + "}",
        '{"seed": 99999999999999999999999999999999, ' + SMALL + "}",
        '{"seed": -99999999999999999999999999999999, ' + SMALL + "}",
        '{"width": 100000000000000000000, "height": 64, "steps": 1}',
        '{"cfg_scale": NaN, ' + SMALL + "}",
        '{"cfg_scale": Infinity, ' + SMALL + "}",
        '{"denoising_strength": -Infinity, ' + SMALL + "}",
        '{"prompt": "\\ud800", ' + SMALL + "}",
        '{"negative_prompt": "x \\udfff y", ' + SMALL + "}",
        '{"prompt": "nul \\u0000 byte", ' + SMALL + "}",
        '{"batch_size": 1000, ' + SMALL + "}",
        '{"n_iter": 1000000, ' + SMALL + "}",
        '{"sampler_name": "no such sampler", ' + SMALL + "}",
        '{"scheduler": {"a": 1}, ' + SMALL + "}",
        '{"unknown_field": 1, "another": [1, 2], ' + SMALL + "}",
        '{"init_images": ["not base64 !!"], ' + SMALL + "}",
        '{"init_images": ["aGVsbG8gd29ybGQ="], ' + SMALL + "}",
        '{"image": "aGVsbG8gd29ybGQ="}',
        '{"image": "data:image/png;base64,////"}',
        '{"imageList": [{"data": "aGVsbG8=", "name": "../../x.png"}]}',
        '{"styles": "not a list", ' + SMALL + "}",
        '{"override_settings": [], ' + SMALL + "}",
        '{"override_settings": {"sd_model_checkpoint": "../../../etc/passwd"}, ' + SMALL + "}",
        '{"alwayson_scripts": {"x": {"args": "no"}}, ' + SMALL + "}",
        '{"script_name": "../../etc/passwd", ' + SMALL + "}",
        '{"prompt": ' + NESTED + "}",
        '{"n": -1, "size": "64x-64", "prompt": "x"}',
        '{"max_steps": -5, "CLIP_stop_at_last_layers": 1e999}',
        '{"name": "\\ud800"}',
    ]
]


@dataclass
class Probe:
    label: str
    method: str
    path: str
    body: bytes | None = None
    user: str | None = "bob"
    headers: dict[str, str] | None = None
    expect: str = "no-5xx"  # or "not-200" (file routes), "404" (others' jobs)


def _png(image: Image.Image, fmt: str = "PNG") -> str:
    stream = io.BytesIO()
    image.save(stream, format=fmt)
    return base64.b64encode(stream.getvalue()).decode()


def _bomb(side: int = 20_000) -> str:
    """A PNG of side x side grey pixels in a few hundred kB: decoded it would take side² bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    squeeze = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def _images() -> dict[str, str]:
    rgb = Image.new("RGB", (64, 64), (200, 30, 30))
    noise = Image.frombytes("RGB", (64, 64), random.Random(5).randbytes(64 * 64 * 3))  # 12 kB as PNG
    return {
        "jpeg": _png(rgb, "JPEG"),
        "gif": _png(rgb.convert("P"), "GIF"),
        "bmp": _png(rgb, "BMP"),
        "webp": _png(rgb, "WEBP"),
        "tiff": _png(rgb, "TIFF"),
        "1x1 png": _png(Image.new("RGB", (1, 1))),
        "16-bit png": _png(Image.new("I;16", (64, 64))),
        "cmyk jpeg": _png(Image.new("CMYK", (64, 64)), "JPEG"),
        "truncated png": _png(noise)[:2000],
        "png bomb 20000x20000": _bomb(),
        "text as data url": "data:text/plain;base64," + base64.b64encode(b"hello").decode(),
    }


def _image_probes() -> Iterator[Probe]:
    for name, data in _images().items():
        for path, body in (
            ("/sdapi/v1/img2img", {"init_images": [data], "steps": 1, "width": 64, "height": 64}),
            ("/api/v1/jobs/img2img", {"init_images": [data], "steps": 1, "width": 64, "height": 64}),
            ("/sdapi/v1/png-info", {"image": data}),
            ("/sdapi/v1/extra-single-image", {"image": data, "upscaling_resize": 1}),
            (
                "/sdapi/v1/img2img",
                {"init_images": [_png(Image.new("RGB", (64, 64)))], "mask": data, "steps": 1},
            ),
        ):
            yield Probe(f"image {name} -> {path}", "POST", path, json.dumps(body).encode())


def _huge_prompts() -> Iterator[Probe]:
    four_mb = "a" * (4 * 1024 * 1024)
    for path in (
        "/sdapi/v1/txt2img",
        "/api/v1/jobs/txt2img",
        "/api/v1/jobs/img2img",
        "/v1/images/generations",
    ):
        for field in ("prompt", "negative_prompt"):
            body = json.dumps({field: four_mb, "steps": 1, "width": 64, "height": 64}).encode()
            yield Probe(f"4 MB {field} -> {path}", "POST", path, body)
    yield Probe("4 MB style name", "POST", "/sdapi/v1/txt2img", json.dumps({"styles": [four_mb]}).encode())
    yield Probe("4 MB png-info", "POST", "/sdapi/v1/png-info", json.dumps({"image": four_mb}).encode())


WRONG_METHODS = [
    ("DELETE", "/api/v1/jobs"),
    ("GET", "/sdapi/v1/txt2img"),
    ("PUT", "/sdapi/v1/options"),
    ("PATCH", "/api/v1/me"),
    ("POST", "/api/v1/jobs/abc/images/0"),
    ("DELETE", "/sdapi/v1/progress"),
    ("PUT", "/api/v1/jobs/txt2img"),
    ("GET", "/sdapi/v1/refresh-checkpoints"),
    ("DELETE", "/api/v1/tokens"),
    ("GET", "/api/v1/train"),
    ("TRACE", "/"),
    ("OPTIONS", "/sdapi/v1/txt2img"),
    ("PROPFIND", "/api/v1/jobs"),
    ("GET", "/v1/images/generations"),
    ("DELETE", "/gradio_api/file=x"),
]


def _traversal(data_dir: str) -> Iterator[Probe]:
    names = [
        "/etc/passwd",
        "../../../../../../etc/passwd",
        "..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "....//....//....//etc/passwd",
        "/proc/self/environ",
        "/proc/self/cmdline",
        f"{data_dir}/jobs.sqlite3",
        f"{data_dir}/api_tokens.json",
        f"{data_dir}/settings.json",
        f"{data_dir}/models/Stable-diffusion/tiny-sd15.safetensors",
        f"{data_dir}/server-0.log",
        "jobs.sqlite3",
        "server-0.log",
        "launch.py",
        "C:\\Windows\\win.ini",
        "file:///etc/passwd",
        "outputs/../jobs.sqlite3",
        "a%00.png",
        "~root/.bashrc",
    ]
    for name in names:
        for route in ("/gradio_api/file=", "/gradio_api/file/", "/file="):
            yield Probe(f"file route {route}{name}", "GET", route + name, expect="not-200")
    for path in (
        "/api/v1/jobs/..%2f..%2fetc%2fpasswd",
        "/api/v1/jobs/../../etc/passwd/images/0",
        "/api/v1/jobs/%00/images/0",
        "/api/v1/jobs/" + "a" * 10_000,
        "/api/v1/ext/wildcards/wildcards/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/api/v1/ext/wildcards/wildcards/../../../../launch",
        "/api/v1/ext/wildcards/wildcards/%2e%2e%2f%2e%2e%2fjobs",
        "/api/v1/ext/wildcards/wildcards/" + "..%5c" * 6 + "etc%5cpasswd",
    ):
        yield Probe(f"job/wildcard route {path[:60]}", "GET", path, expect="not-200")


def _others(server: Server) -> Iterator[Probe]:
    """bob's jobs (one finished, one waiting) asked for by carol and dave: all must be 404."""
    with server.client("bob") as bob:
        done = bob.post("/api/v1/jobs/txt2img", json={"steps": 1, "width": 64, "height": 64}).json()["id"]
        for _ in range(600):
            if bob.get(f"/api/v1/jobs/{done}").json()["state"] not in ("queued", "running"):
                break
            time.sleep(0.05)
        waiting = bob.post(
            "/api/v1/jobs/txt2img", json={"steps": 8, "width": 128, "height": 128, "n_iter": 4}
        ).json()["id"]
    for job in (done, waiting):
        for user in ("carol", "dave"):
            base = f"/api/v1/jobs/{job}"
            for method, path in (
                ("GET", base),
                ("GET", f"{base}/events"),
                ("GET", f"{base}/images/0"),
                ("GET", f"{base}/preview"),
                ("POST", f"{base}/cancel"),
                ("POST", f"{base}/skip"),
            ):
                yield Probe(f"{user} -> bob's {method} {path[-14:]}", method, path, user=user, expect="404")


def probes(server: Server) -> Iterator[Probe]:
    for path in JSON_ROUTES:
        user = "alice" if path == "/sdapi/v1/options" else "bob"  # options: admins only past 403
        for index, body in enumerate(BAD_BODIES):
            yield Probe(f"bad body #{index} -> {path}", "POST", path, body, user=user)
    yield from _huge_prompts()
    yield from _image_probes()
    for method, path in WRONG_METHODS:
        yield Probe(f"wrong method {method} {path}", method, path)
    yield from _traversal(str(server.data_dir))
    yield from _others(server)


GROUPS = {
    "bad body": "broken JSON, wrong types, huge/NaN numbers, surrogates, unknown fields",
    "4 MB": "4 MB prompts",
    "image": "images that are not images, not PNG, or a bomb",
    "wrong method": "wrong methods",
    "file route": "path traversal on the file routes",
    "job/wildcard route": "path traversal on job and wildcard routes",
}


def _group(label: str) -> str:
    for prefix, name in GROUPS.items():
        if label.startswith(prefix):
            return name
    return "another user's job"


def run(server: Server) -> Phase:
    phase = Phase("2. malformed requests (by hand)")
    sent = 0
    by_group: dict[str, Counter[int]] = {}
    for probe in probes(server):
        sent += 1
        try:
            answer = server.raw(probe.method, probe.path, probe.body, probe.user, probe.headers)
        except Exception as error:
            phase.find(f"{probe.label}: no answer ({error!r})"[:300])
            if not server.alive():
                phase.find("the server died")
                break
            continue
        phase.statuses[answer.status] += 1
        by_group.setdefault(_group(probe.label), Counter())[answer.status] += 1
        if answer.status >= 500:
            phase.find(f"{probe.label}: {answer.status} {answer.body[:160]!r}")
        elif probe.expect == "not-200" and answer.status < 300:
            phase.find(f"{probe.label}: {answer.status}, served {len(answer.body)} bytes")
        elif probe.expect == "404" and answer.status != 404:
            phase.find(f"{probe.label}: {answer.status} instead of 404")
    phase.figures["requests"] = sent
    phase.figures["by group"] = {group: dict(sorted(c.items())) for group, c in by_group.items()}
    phase.figures["5xx"] = sum(v for k, v in phase.statuses.items() if k >= 500)
    phase.figures["server alive after"] = server.alive()
    return phase.end()
