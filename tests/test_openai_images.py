"""`/v1`, OpenAI's images API, driven by the official `openai` client against a real server with a login."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.http_helpers import LiveServer
from webui.jobs import Caller

openai = pytest.importorskip("openai")

FAST = {"steps": 2}


@pytest.fixture(scope="module")
def token(server: LiveServer) -> str:
    with server.client("bob") as bob:
        return bob.post("/api/v1/tokens", json={"name": "openai tests"}).json()["token"]


@pytest.fixture
def client(server: LiveServer, token: str):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=120) as made:
        yield made


def _png(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def test_models_are_the_checkpoints(client) -> None:
    names = sorted(model.id for model in client.models.list())
    assert names == ["tiny-sd15", "tiny-sd15-inpaint"]


def test_a_generation_as_base64_with_its_seed(server: LiveServer, client) -> None:
    answer = client.images.generate(
        prompt="a red fox in snow", size="64x64", n=2, extra_body={**FAST, "seed": 4242}
    )
    assert len(answer.data) == 2
    image = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json)))
    assert image.size == (64, 64)
    assert "Seed: 4242" in image.info["parameters"]
    assert [item.model_extra["seed"] for item in answer.data] == [4242, 4243]
    assert answer.size == "64x64"
    # Queued as the token's user: bob sees the job, carol does not.
    job_id = answer.model_extra["job_id"]
    assert server.jobs.get(job_id, Caller("bob")).owner == "bob"
    with server.client("carol") as carol:
        assert carol.get(f"/api/v1/jobs/{job_id}").status_code == 404


def test_a_generation_as_a_url_with_a_named_model(server: LiveServer, client, token: str) -> None:
    answer = client.images.generate(
        prompt="a lighthouse", size="64x64", response_format="url", model="tiny-sd15-inpaint", extra_body=FAST
    )
    url = answer.data[0].url
    assert url.startswith(f"{server.url}/api/v1/jobs/")
    fetched = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert fetched.headers["content-type"] == "image/png"
    assert "Model: tiny-sd15-inpaint" in Image.open(io.BytesIO(fetched.content)).info["parameters"]
    assert httpx.get(url, timeout=60).status_code == 401


def test_an_edit_changes_only_the_transparent_part_of_the_mask(client) -> None:
    red = Image.new("RGB", (64, 64), (220, 20, 20))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))  # the hole: what to change
    answer = client.images.edit(
        image=("red.png", _png(red), "image/png"),
        mask=("mask.png", _png(mask), "image/png"),
        prompt="a blue circle",
        extra_body={**FAST, "seed": 5, "denoising_strength": 1.0},
    )
    edited = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).convert("RGB")
    assert edited.size == (64, 64)
    corner = edited.getpixel((1, 1))
    assert all(abs(a - b) <= 8 for a, b in zip(corner, (220, 20, 20))), corner  # kept
    assert edited.getpixel((32, 32)) != edited.getpixel((1, 1))  # repainted
    assert "Mask blur" in answer.data[0].model_extra["infotext"]


def test_an_edit_without_a_mask_redraws_the_image(client) -> None:
    answer = client.images.edit(
        image=("any.png", _png(Image.new("RGB", (72, 64), "white")), "image/png"),
        prompt="a cat",
        extra_body=FAST,
    )
    assert answer.size == "72x64"


@pytest.mark.parametrize(
    ("arguments", "error", "param"),
    [
        ({"size": "big"}, "BadRequestError", "size"),
        ({"size": "60x64"}, "BadRequestError", "size"),
        ({"model": "no-such-model"}, "NotFoundError", "model"),
        ({"n": 0}, "BadRequestError", "n"),
        ({"response_format": "gif"}, "BadRequestError", "response_format"),
    ],
)
def test_bad_requests_get_openai_errors(client, arguments: dict, error: str, param: str) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        client.images.generate(prompt="x", extra_body=FAST, **arguments)
    assert type(raised.value).__name__ == error
    body = raised.value.body
    assert body["param"] == param and body["message"] and body["type"] == "invalid_request_error"


def test_limits_apply_as_for_any_client(client) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="x", n=9, size="64x64", extra_body=FAST)
    assert "limit" in raised.value.body["message"] and raised.value.body["param"] == "n"


def test_edits_refuse_bad_files(client) -> None:
    image = ("in.png", _png(Image.new("RGB", (64, 64))), "image/png")
    opaque = ("mask.png", _png(Image.new("RGBA", (64, 64), (0, 0, 0, 255))), "image/png")
    small = ("mask.png", _png(Image.new("RGBA", (32, 32))), "image/png")
    for kwargs, param in (
        ({"image": ("x.png", b"not an image", "image/png")}, "image"),
        ({"image": image, "mask": opaque}, "mask"),
        ({"image": image, "mask": small}, "mask"),
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            client.images.edit(prompt="x", extra_body=FAST, **kwargs)
        assert raised.value.body["param"] == param


def test_without_a_valid_token_nothing_runs(server: LiveServer) -> None:
    for key in ("sdw_0123456789ab_wrong", "wrong"):
        stranger = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        with stranger, pytest.raises(openai.AuthenticationError):
            stranger.images.generate(prompt="x", extra_body=FAST)


def test_malformed_bodies_and_unknown_routes_answer_in_openai_shape(server: LiveServer, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as raw:
        for answer, status in (
            (raw.post("/v1/images/generations", content=b"{nope"), 400),
            (raw.post("/v1/images/generations", json=["a list"]), 400),
            (raw.post("/v1/images/generations", json={"prompt": ""}), 400),
            (raw.post("/v1/images/edits", json={"prompt": "x"}), 400),
            (raw.post("/v1/images/variations", json={}), 404),
            (raw.get("/v1/nothing/here"), 404),
        ):
            assert answer.status_code == status, answer.text
            assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
