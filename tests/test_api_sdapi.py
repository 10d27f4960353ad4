"""`/sdapi/v1` over real HTTP: A1111-shaped requests and answers, progress, interrupt, bad input."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from PIL import Image

from tests.http_helpers import USERS, LiveServer, b64_png, decode_png
from webui.outputs import parse_infotext, read_infotext

SMALL = {"steps": 2, "width": 64, "height": 64}


def txt2img(server: LiveServer, user: str = "bob", **fields: object) -> dict:
    with server.client(user) as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "a lighthouse", **SMALL, **fields})
    assert response.status_code == 200, response.text
    return response.json()


@contextmanager
def held_txt2img(server: LiveServer, user: str, **fields: object) -> Iterator[dict]:
    """Send a txt2img from another thread and hold it at its first step; the answer dict fills
    once the block ends and the job is let go."""
    server.gate.close()
    answer: dict = {}
    worker = threading.Thread(target=lambda: answer.update(txt2img(server, user, **fields)))
    worker.start()
    try:
        assert server.gate.reached.wait(30)
        yield answer
    finally:
        server.gate.open()
        worker.join(60)


def test_txt2img_answers_like_a1111_with_the_infotext_inside_each_png(server: LiveServer) -> None:
    answer = txt2img(server, prompt="a red fox", negative_prompt="blurry", seed=1234, batch_size=2)
    info = json.loads(answer["info"])
    assert len(answer["images"]) == 2 and info["all_seeds"] == [1234, 1235]
    assert info["seed"] == 1234 and info["sd_model_name"] == "tiny-sd15"
    assert info["prompt"] == "a red fox" and info["negative_prompt"] == "blurry"
    assert len(info["sd_model_hash"]) == 10 and info["width"] == 64 and info["steps"] == 2
    for data, infotext, seed in zip(answer["images"], info["infotexts"], info["all_seeds"]):
        image = decode_png(data)
        assert image.size == (64, 64)
        assert read_infotext(image) == infotext
        assert parse_infotext(infotext).params["Seed"] == str(seed)
    assert answer["parameters"]["prompt"] == "a red fox" and answer["parameters"]["seed"] == 1234


def test_txt2img_saves_only_when_asked_as_a1111_does(server: LiveServer) -> None:
    outputs = server.studio.settings.outputs_dir / "txt2img-images"
    before = set(outputs.rglob("*.png")) if outputs.exists() else set()
    txt2img(server, seed=77)
    assert (set(outputs.rglob("*.png")) if outputs.exists() else set()) == before
    txt2img(server, seed=78, save_images=True)
    saved = set(outputs.rglob("*.png")) - before
    assert len(saved) == 1 and next(iter(saved)).name.endswith("-78.png")


def test_img2img_and_inpainting_with_a_mask(server: LiveServer) -> None:
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    with server.client() as client:
        plain = client.post(
            "/sdapi/v1/img2img",
            json={"init_images": [b64_png(init)], "denoising_strength": 0.5, **SMALL},
        )
        assert plain.status_code == 200, plain.text
        assert "Denoising strength: 0.5" in json.loads(plain.json()["info"])["infotexts"][0]
        inpaint = client.post(
            "/sdapi/v1/img2img",
            json={
                "init_images": ["data:image/png;base64," + b64_png(init)],
                "mask": b64_png(mask),
                "mask_blur": 0,
                "inpainting_fill": 1,
                "inpaint_full_res": False,
                "denoising_strength": 1.0,
                "override_settings": {"sd_model_checkpoint": "tiny-sd15-inpaint"},
                **SMALL,
            },
        )
    assert inpaint.status_code == 200, inpaint.text
    info = json.loads(inpaint.json()["info"])
    assert info["sd_model_name"] == "tiny-sd15-inpaint" and info["is_using_inpainting_conditioning"]
    result = decode_png(inpaint.json()["images"][0]).convert("RGB")
    # Outside the mask the original pixels are kept exactly.
    assert result.getpixel((2, 2)) == (200, 30, 30) and result.getpixel((60, 60)) == (200, 30, 30)
    assert inpaint.json()["parameters"]["init_images"] is None  # not echoed unless include_init_images


def test_a_transparent_init_image_without_a_mask_is_flattened_as_in_a1111(server: LiveServer) -> None:
    logo = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    logo.paste((255, 0, 0, 255), (16, 16, 48, 48))
    with server.client() as client:
        response = client.post(
            "/sdapi/v1/img2img",
            json={
                "init_images": [b64_png(logo)],
                **SMALL,
                "width": 128,
                "height": 96,
                "denoising_strength": 0.3,
            },
        )
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert decode_png(response.json()["images"][0]).size == (128, 96)
    assert not info["is_using_inpainting_conditioning"] and "Mask blur" not in info["infotexts"][0]


def test_progress_shows_the_running_job_with_a_live_preview(server: LiveServer) -> None:
    with held_txt2img(server, "carol", steps=4, seed=9) as answer:
        with server.client("carol") as client:
            progress = client.get("/sdapi/v1/progress").json()
        with server.client("bob") as client:
            other = client.get("/sdapi/v1/progress").json()
    assert progress["state"]["sampling_step"] == 1 and progress["state"]["sampling_steps"] == 4
    assert progress["state"]["job_count"] == 1 and 0 < progress["progress"] < 1
    assert decode_png(progress["current_image"]).size == (8, 8)
    assert other["state"]["job_count"] == 0 and other["current_image"] is None  # not bob's job
    assert json.loads(answer["info"])["seed"] == 9


def test_interrupt_stops_the_callers_own_job_and_no_one_elses(server: LiveServer) -> None:
    with held_txt2img(server, "carol", steps=5, n_iter=3) as answer:
        with server.client("bob") as bob:
            assert bob.post("/sdapi/v1/interrupt").status_code == 200
        assert not server.gate.held_job.control.interrupted
        with server.client("carol") as carol:
            assert carol.post("/sdapi/v1/interrupt").status_code == 200
    # Interrupted during the first of three batches: that batch's image comes back, no more.
    assert len(answer["images"]) == 1


def test_options_switch_the_model_and_override_settings_apply_to_one_request(server: LiveServer) -> None:
    with server.client() as client:
        options = client.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"].startswith("tiny-sd15")
        response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd15-inpaint"})
        assert response.status_code == 200, response.text
        try:
            assert (
                client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd15-inpaint")
            )
            assert json.loads(txt2img(server)["info"])["sd_model_name"] == "tiny-sd15-inpaint"
            once = txt2img(server, override_settings={"sd_model_checkpoint": "tiny-sd15"})
            assert json.loads(once["info"])["sd_model_name"] == "tiny-sd15"
            assert json.loads(txt2img(server)["info"])["sd_model_name"] == "tiny-sd15-inpaint"
        finally:
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd15"})
        unknown = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "no-such-model"})
        assert unknown.status_code == 422 and unknown.json()["field"] == "sd_model_checkpoint"
        skip2 = txt2img(server, override_settings={"CLIP_stop_at_last_layers": 2})
        assert "Clip skip: 2" in json.loads(skip2["info"])["infotexts"][0]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("sd-models", lambda body: {m["model_name"] for m in body} >= {"tiny-sd15", "tiny-sd15-inpaint"}),
        ("sd-vae", lambda body: body == []),
        ("samplers", lambda body: "DPM++ 2M" in {s["name"] for s in body}),
        ("schedulers", lambda body: "Karras" in {s["label"] for s in body}),
        ("upscalers", lambda body: {"None", "Lanczos", "Nearest"} <= {u["name"] for u in body}),
        ("latent-upscale-modes", lambda body: body[0] == {"name": "Latent"}),
        ("loras", lambda body: body == []),
        ("embeddings", lambda body: body == {"loaded": {}, "skipped": {}}),
        ("prompt-styles", lambda body: all(set(s) == {"name", "prompt", "negative_prompt"} for s in body)),
        ("hypernetworks", lambda body: body == []),
        ("face-restorers", lambda body: body == []),
        ("realesrgan-models", lambda body: body == []),
        ("scripts", lambda body: "x/y/z plot" in body["txt2img"] and "sd upscale" in body["img2img"]),
        ("memory", lambda body: body["ram"]["total"] > 0 and "cuda" in body),
        ("cmd-flags", lambda body: body["auth"] == "<hidden>"),
        ("options", lambda body: "sd_model_checkpoint" in body and body["max_steps"] > 0),
        ("progress", lambda body: body["progress"] == 0.0),
    ],
)
def test_read_endpoints_answer_in_a1111_shapes(server: LiveServer, path: str, expected) -> None:
    with server.client() as client:
        response = client.get(f"/sdapi/v1/{path}")
    assert response.status_code == 200, response.text
    assert expected(response.json())


def test_refresh_unload_and_reload_calls(server: LiveServer) -> None:
    with server.client() as client:
        for path in ("refresh-checkpoints", "refresh-vae", "refresh-loras", "unload-checkpoint"):
            assert client.post(f"/sdapi/v1/{path}").status_code == 200, path
        assert "ram" in {p["tier"] for p in client.get("/sdapi/v1/memory").json()["models"]}
        assert client.post("/sdapi/v1/reload-checkpoint").status_code == 200
    assert json.loads(txt2img(server)["info"])["sd_model_name"] == "tiny-sd15"


def test_png_info_and_extras(server: LiveServer) -> None:
    generated = txt2img(server, prompt="a tower", seed=5)["images"][0]
    with server.client() as client:
        info = client.post("/sdapi/v1/png-info", json={"image": generated}).json()
        assert info["parameters"]["Prompt"] == "a tower" and info["parameters"]["Seed"] == "5"
        assert info["info"].startswith("a tower\n")
        single = client.post(
            "/sdapi/v1/extra-single-image",
            json={"image": generated, "upscaler_1": "Lanczos", "upscaling_resize": 2},
        )
        assert decode_png(single.json()["image"]).size == (128, 128)
        batch = client.post(
            "/sdapi/v1/extra-batch-images",
            json={
                "imageList": [{"data": generated, "name": "a.png"}] * 2,
                "resize_mode": 1,
                "upscaler_1": "Nearest",
                "upscaling_resize_w": 96,
                "upscaling_resize_h": 80,
            },
        )
        assert [decode_png(data).size for data in batch.json()["images"]] == [(96, 80)] * 2


NOT_AN_IMAGE = "aGVsbG8gd29ybGQ="  # base64 of "hello world"
BAD_REQUESTS = [
    ("txt2img", {"prompt": "x", "steps": "many"}, 422, "steps"),
    ("txt2img", {"prompt": "x", "width": -64}, 422, "width"),
    ("txt2img", {"prompt": "x", "width": 1_000_000, "height": 64}, 422, "width"),
    ("txt2img", {"prompt": "x", "height": 100}, 422, "height"),
    ("txt2img", {"prompt": "x", "batch_size": 0}, 422, "batch_size"),
    ("txt2img", {"prompt": "x", "seed": 2**40}, 422, "seed"),
    ("txt2img", {"prompt": "x", "sampler_name": "Euler z"}, 422, "sampler_name"),
    ("txt2img", {"prompt": "x", "scheduler": "zigzag"}, 422, "scheduler"),
    (
        "txt2img",
        {"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}},
        422,
        "override_settings.sd_model_checkpoint",
    ),
    ("txt2img", {"prompt": "x", "override_settings": {"sd_vae": "nope"}}, 422, "override_settings.sd_vae"),
    (
        "txt2img",
        {"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": 40}},
        422,
        "override_settings.CLIP_stop_at_last_layers",
    ),
    ("txt2img", {"prompt": "x", "enable_hr": True, "hr_scale": 50}, 422, "hr_scale"),
    ("txt2img", {"prompt": "x", "tiling": True, "subseed_strength": 2}, 422, "subseed_strength"),
    (
        "txt2img",
        {"prompt": "x", "alwayson_scripts": {"controlnet": {"args": []}}},
        422,
        "alwayson_scripts.controlnet",
    ),
    ("txt2img", {"prompt": ["not", "text"]}, 422, "prompt"),
    ("txt2img", [1, 2, 3], 422, None),
    ("img2img", {"prompt": "x"}, 422, "init_images"),
    ("img2img", {"init_images": ["%%%"]}, 422, "init_images.0"),
    ("img2img", {"init_images": [NOT_AN_IMAGE]}, 422, "init_images.0"),
    ("img2img", {"init_images": [12]}, 422, "init_images.0"),
    ("img2img", {"init_images": ["IMAGE64"], "mask": "MASK32"}, 422, "mask"),
    ("img2img", {"init_images": ["IMAGE64"], "inpainting_fill": 7}, 422, "inpainting_fill"),
    ("png-info", {"image": NOT_AN_IMAGE}, 422, "image"),
    ("extra-batch-images", {"upscaling_resize": 2}, 422, "imageList"),
    ("extra-batch-images", {"imageList": []}, 422, "imageList"),
    ("extra-single-image", {"image": "IMAGE64", "upscaler_1": "ESRGAN 9x"}, 422, "upscaler_1"),
    ("extra-single-image", {"image": "IMAGE64", "upscaling_resize": 500}, 422, "upscaling_resize"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_that_names_the_field(
    server: LiveServer, path: str, body: object, status: int, field: str | None
) -> None:
    images = {
        "IMAGE64": b64_png(Image.new("RGB", (64, 64))),
        "MASK32": b64_png(Image.new("L", (32, 32), 255)),
    }
    payload = json.loads(json.dumps(body), object_hook=lambda d: d)
    if isinstance(payload, dict):
        for key, value in list(payload.items()):
            if isinstance(value, str) and value in images:
                payload[key] = images[value]
            if isinstance(value, list):
                payload[key] = [images.get(item, item) if isinstance(item, str) else item for item in value]
    with server.client() as client:
        response = client.post(f"/sdapi/v1/{path}", json=payload)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["detail"]
    if field is not None:
        assert answer["field"] == field, answer
    assert txt2img(server)["images"]  # and the server keeps serving


def test_malformed_json_and_oversized_bodies(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post(
            "/sdapi/v1/txt2img", content=b'{"prompt": "x",', headers={"content-type": "application/json"}
        )
        assert response.status_code == 400 and "JSON" in response.json()["detail"]
        limits = server.jobs.limits
        server.jobs.set_limits(max_body_mb=0.01)
        try:
            big = client.post("/sdapi/v1/txt2img", json={"prompt": "x" * 20_000})
        finally:
            server.jobs.limits = limits
        assert big.status_code == 413 and big.json()["limit"] == "--max-body-mb"
        # Streamed without a Content-Length, the body is counted as it arrives.
        server.jobs.set_limits(max_body_mb=0.01)
        try:
            chunks = (b'{"prompt": "' + b"x" * 4096 for _ in range(8))
            streamed = client.post(
                "/sdapi/v1/txt2img", content=chunks, headers={"content-type": "application/json"}
            )
        finally:
            server.jobs.limits = limits
        assert streamed.status_code == 413 and streamed.json()["limit"] == "--max-body-mb"
    assert txt2img(server)["images"]


def test_admin_limits_are_enforced_and_only_admins_change_them(server: LiveServer) -> None:
    with server.client("bob") as bob:
        refused = bob.post("/sdapi/v1/options", json={"max_steps": 500})
        assert refused.status_code == 403 and refused.json()["field"] == "max_steps"
        with server.client("alice") as alice:
            assert alice.post("/sdapi/v1/options", json={"max_steps": 3}).status_code == 200
            try:
                over = bob.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "steps": 4})
            finally:
                alice.post("/sdapi/v1/options", json={"max_steps": 150})
        with server.client("alice") as alice:
            beyond = alice.post("/sdapi/v1/options", json={"max_steps": 1000})
        assert beyond.status_code == 422 and "500" in beyond.json()["detail"]
        assert server.jobs.limits.max_steps == 150
    assert over.status_code == 422
    assert over.json()["field"] == "steps" and over.json()["limit"] == "--max-steps"
    assert "--max-steps" in over.json()["detail"]


def test_four_clients_sending_ten_requests_each_at_once(server: LiveServer) -> None:
    users = ["alice", "bob", "carol", "bob"]

    def one(client_index: int, request_index: int) -> tuple[int, dict]:
        seed = 1000 * (client_index + 1) + request_index
        user = users[client_index]
        with server.client(user) as client:
            response = client.post(
                "/sdapi/v1/txt2img",
                json={
                    "prompt": f"client {client_index} request {request_index}",
                    **SMALL,
                    "seed": seed,
                    "save_images": True,
                },
            )
        assert response.status_code == 200, response.text
        return seed, response.json()

    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = [pool.submit(one, c, r) for c in range(4) for r in range(10)]
        answers = [future.result(timeout=600) for future in futures]
    saved = {}
    for path in (server.studio.settings.outputs_dir / "txt2img-images").rglob("*.png"):
        saved[path.name] = read_infotext(path)
    for seed, answer in answers:
        info = json.loads(answer["info"])
        client_index, request_index = divmod(seed, 1000)
        assert info["all_seeds"] == [seed]
        assert info["prompt"] == f"client {client_index - 1} request {request_index}"
        image = decode_png(answer["images"][0])
        assert read_infotext(image) == info["infotexts"][0]
        assert parse_infotext(info["infotexts"][0]).params["Seed"] == str(seed)
        files = [name for name in saved if name.endswith(f"-{seed}.png")]
        assert len(files) == 1 and saved[files[0]] == info["infotexts"][0]
    assert len({seed for seed, _ in answers}) == 40


def test_passwords_are_not_in_any_answer(server: LiveServer) -> None:
    with server.client("alice") as client:
        for path in ("cmd-flags", "options", "memory", "sd-models", "progress"):
            text = client.get(f"/sdapi/v1/{path}").text
            assert not any(password in text for password in USERS.values()), path
