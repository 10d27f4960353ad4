"""Issue 21 over real HTTP: other A1111 clients' request shapes and A1111's conventions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.http_helpers import LiveServer, b64_png, decode_png
from webui.outputs import parse_infotext

SMALL = {"steps": 2, "width": 64, "height": 64}


def _post(server: LiveServer, path: str, body: dict, user: str = "bob"):
    with server.client(user) as client:
        return client.post(f"/sdapi/v1/{path}", json=body)


def _generate(server: LiveServer, path: str = "txt2img", **fields: object) -> dict:
    """A generation that must succeed; a field given as None is left out of the body."""
    body = {
        key: value
        for key, value in {"prompt": "a lighthouse", **SMALL, **fields}.items()
        if value is not None
    }
    response = _post(server, path, body)
    assert response.status_code == 200, response.text
    return response.json()


def _params(answer: dict, index: int = 0) -> dict[str, str]:
    return parse_infotext(json.loads(answer["info"])["infotexts"][index]).params


def _pixels(answer: dict, index: int = 0) -> np.ndarray:
    return np.asarray(decode_png(answer["images"][index]).convert("RGB"), dtype=np.int16)


# --- 1. options posted back whole -------------------------------------------------------------


def test_a_user_may_post_back_the_whole_options_dict_with_unchanged_limits(server: LiveServer) -> None:
    with server.client("bob") as client:
        options = client.get("/sdapi/v1/options").json()
        assert "max_steps" in options  # the admin's limits are in what every client reads
        # Open WebUI: read, set the model, post the whole dict back.
        response = client.post("/sdapi/v1/options", json={**options, "sd_model_checkpoint": "tiny-sd15"})
        assert response.status_code == 200, response.text
        changed = client.post("/sdapi/v1/options", json={**options, "max_steps": options["max_steps"] + 1})
        assert changed.status_code == 403 and "max_steps" in changed.json()["detail"]
    assert server.jobs.limits.max_steps == options["max_steps"]


def test_rng_source_is_an_option(server: LiveServer) -> None:
    with server.client("bob") as client:
        assert client.get("/sdapi/v1/options").json()["randn_source"] == "CPU"
        bad = client.post("/sdapi/v1/options", json={"randn_source": "quantum"})
        assert bad.status_code == 422 and "randn_source" in bad.json()["detail"]


# --- 2. fields honoured or refused by name ----------------------------------------------------


def test_infotext_fills_every_field_not_given(server: LiveServer) -> None:
    text = "a red fox\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 77, Size: 64x64"
    answer = _generate(server, prompt=None, infotext=text, steps=3, width=None, height=None)
    info = json.loads(answer["info"])
    assert info["prompt"] == "a red fox" and info["negative_prompt"] == "blurry"
    assert info["seed"] == 77 and info["cfg_scale"] == 5 and info["sampler_name"] == "Euler"
    assert info["steps"] == 3  # given in the body: the body wins
    # An A1111 infotext without "RNG" means A1111's default, the GPU, which is not written.
    assert "RNG" not in _params(answer)


def test_an_infotext_repeats_its_image_including_the_nv_rng(server: LiveServer) -> None:
    first = _generate(server, seed=5, override_settings={"randn_source": "NV"})
    infotext = json.loads(first["info"])["infotexts"][0]
    assert _params(first)["RNG"] == "NV"
    again = _generate(server, prompt=None, infotext=infotext)
    assert np.array_equal(_pixels(first), _pixels(again))
    cpu = _generate(server, seed=5)
    assert _params(cpu)["RNG"] == "CPU" and not np.array_equal(_pixels(first), _pixels(cpu))


def test_gpu_rng_on_a_cpu_server_draws_on_the_device_and_writes_no_rng(server: LiveServer) -> None:
    gpu = _generate(server, seed=9, override_settings={"randn_source": "GPU"})
    cpu = _generate(server, seed=9)
    assert "RNG" not in _params(gpu)
    assert np.array_equal(_pixels(gpu), _pixels(cpu))  # this server's device is the CPU


def test_disable_extra_networks_leaves_lora_tags_unapplied(server: LiveServer) -> None:
    tagged = "a lighthouse <lora:no-such-network:0.8>"
    refused = _post(server, "txt2img", {"prompt": tagged, **SMALL})
    assert refused.status_code == 422 and "no-such-network" in refused.json()["detail"]
    unapplied = _generate(server, prompt=tagged, seed=3, disable_extra_networks=True)
    plain = _generate(server, seed=3)
    assert np.array_equal(_pixels(unapplied), _pixels(plain))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("s_churn", 0.5),
        ("s_noise", 0.9),
        ("s_tmin", 0.1),
        ("s_tmax", 10.0),
        ("s_min_uncond", 0.2),
        ("restore_faces", True),
        ("comments", {"note": "x"}),
    ],
)
def test_fields_not_built_are_refused_by_name(server: LiveServer, field: str, value: object) -> None:
    response = _post(server, "txt2img", {"prompt": "a", **SMALL, field: value})
    assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}:")


def test_a1111_defaults_of_those_fields_are_accepted(server: LiveServer) -> None:
    # What SillyTavern and webuiapi send when the features are off.
    _generate(
        server,
        restore_faces=False,
        s_churn=0,
        s_tmin=0,
        s_noise=1,
        s_min_uncond=0,
        refiner_switch_at=0.8,
        comments={},
        do_not_save_grid=True,
    )


def test_the_default_sampler_is_a1111s_euler(server: LiveServer) -> None:
    assert _params(_generate(server))["Sampler"] == "Euler"


def test_firstphase_size_is_the_first_pass_of_hires_fix(server: LiveServer) -> None:
    answer = _generate(
        server,
        enable_hr=True,
        firstphase_width=64,
        firstphase_height=64,
        width=96,
        height=128,
        denoising_strength=0.5,
    )
    params = _params(answer)
    assert decode_png(answer["images"][0]).size == (96, 128)
    assert params["Size"] == "64x64" and params["Hires resize"] == "96x128"


def test_do_not_save_grid_keeps_a_scripts_grid_unsaved(server: LiveServer) -> None:
    grids = server.studio.settings.outputs_dir / "txt2img-grids"

    def grid_files() -> set:
        return set(grids.rglob("*.png")) if grids.exists() else set()

    before = grid_files()
    matrix = {"prompt": "a | b", "script_name": "prompt matrix", "save_images": True}
    _generate(server, **matrix, do_not_save_grid=True)
    assert grid_files() == before
    _generate(server, **matrix)
    assert len(grid_files() - before) == 1


def _image(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> str:
    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (8, 8, size[0] // 2, size[1] // 2))
    return b64_png(image)


def test_several_init_images_are_one_batch_an_image_each(server: LiveServer) -> None:
    red, blue = _image((200, 30, 30)), _image((30, 30, 200))
    both = _generate(
        server, "img2img", init_images=[red, blue], batch_size=2, seed=11, denoising_strength=0.5
    )
    assert len(both["images"]) == 2 and json.loads(both["info"])["all_seeds"] == [11, 12]
    alone = _generate(server, "img2img", init_images=[blue], seed=12, denoising_strength=0.5)
    # The second item is the blue image's img2img at its seed (batched maths: within a level).
    assert np.abs(_pixels(both, 1) - _pixels(alone)).max() <= 2
    too_many = _post(server, "img2img", {"init_images": [red, blue, red], "batch_size": 2, **SMALL})
    assert too_many.status_code == 422 and "init_images" in too_many.json()["detail"]


def test_resize_mode_3_upscales_the_latents(server: LiveServer) -> None:
    small = _image((40, 160, 60), (48, 48))
    latent = _generate(server, "img2img", init_images=[small], resize_mode=3, seed=4, denoising_strength=0.4)
    pixel = _generate(server, "img2img", init_images=[small], resize_mode=0, seed=4, denoising_strength=0.4)
    assert decode_png(latent["images"][0]).size == (64, 64)
    assert not np.array_equal(_pixels(latent), _pixels(pixel))
    bad = _post(server, "img2img", {"init_images": [small], "resize_mode": 4, **SMALL})
    assert bad.status_code == 422 and "resize_mode" in bad.json()["detail"]
    soft = _post(server, "img2img", {"init_images": [small], "mask_round": False, **SMALL})
    assert soft.status_code == 422 and soft.json()["field"] == "mask_round"


def test_noise_multiplier_and_image_cfg_scale(server: LiveServer) -> None:
    init = _image((90, 90, 200))
    body = {"init_images": [init], "seed": 6, "denoising_strength": 0.6, "image_cfg_scale": 1.5}
    plain = _generate(server, "img2img", **body)
    scaled = _generate(server, "img2img", **body, initial_noise_multiplier=0.5)
    assert _params(scaled)["Noise multiplier"] == "0.5" and "Noise multiplier" not in _params(plain)
    assert not np.array_equal(_pixels(plain), _pixels(scaled))


def test_mask_blur_per_axis_and_only_masked_infotext(server: LiveServer) -> None:
    init = _image((200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    body = {
        "init_images": [init],
        "mask": b64_png(mask),
        "seed": 8,
        "denoising_strength": 0.9,
        "inpaint_full_res": False,
    }
    round_blur = _generate(server, "img2img", **body, mask_blur_x=6, mask_blur_y=6)
    wide_blur = _generate(server, "img2img", **body, mask_blur_x=12, mask_blur_y=0)
    assert _params(round_blur)["Mask blur"] == "6" and "Mask blur" not in _params(wide_blur)
    assert not np.array_equal(_pixels(round_blur), _pixels(wide_blur))
    only_masked = _generate(
        server, "img2img", **{**body, "inpaint_full_res": True, "inpaint_full_res_padding": 8}
    )
    params = _params(only_masked)
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == "8"


# --- 3. samplers and schedule types -----------------------------------------------------------


def test_new_samplers_and_schedule_types_are_listed_and_run(server: LiveServer) -> None:
    with server.client() as client:
        samplers = {item["name"] for item in client.get("/sdapi/v1/samplers").json()}
        schedulers = {item["label"] for item in client.get("/sdapi/v1/schedulers").json()}
    assert {"DPM++ 3M SDE", "DPM++ 2S a"} <= samplers
    assert {"Simple", "Normal", "DDIM", "Polyexponential", "Align Your Steps", "KL Optimal"} <= schedulers
    for sampler in ("DPM++ 3M SDE", "DPM++ 2S a"):
        assert _params(_generate(server, sampler_name=sampler))["Sampler"] == sampler
    for schedule in ("align_your_steps", "KL Optimal", "Normal", "Simple", "DDIM", "Polyexponential"):
        _generate(server, sampler_name="Euler", scheduler=schedule)


def test_samplers_diffusers_cannot_run_are_refused_by_name(server: LiveServer) -> None:
    restart = _post(server, "txt2img", {"prompt": "a", "sampler_name": "Restart", **SMALL})
    assert restart.status_code == 422 and "'Restart' is not available" in restart.json()["detail"]
    kl = _post(
        server, "txt2img", {"prompt": "a", "sampler_name": "DPM++ 2M", "scheduler": "kl_optimal", **SMALL}
    )
    assert kl.status_code == 422 and "KL Optimal" in kl.json()["detail"]


# --- 7. interrogate ---------------------------------------------------------------------------


def test_interrogate_answers_501_naming_the_folder_then_captions_with_a_blip_model(
    server: LiveServer,
) -> None:
    from webui.tools.tiny_captioner import write_tiny_captioner

    image = _image((30, 120, 200))
    missing = _post(server, "interrogate", {"image": image, "model": "clip"})
    assert missing.status_code == 501 and "models/BLIP" in missing.json()["detail"]
    danbooru = _post(server, "interrogate", {"image": image, "model": "deepdanbooru"})
    assert danbooru.status_code == 422 and danbooru.json()["field"] == "model"
    write_tiny_captioner(server.data_dir / "models" / "BLIP" / "tiny-blip")
    answer = _post(server, "interrogate", {"image": image})
    assert answer.status_code == 200, answer.text
    caption = answer.json()["caption"]
    words = {"a", "photo", "of", "cat", "dog", "lighthouse", "sea"}  # the tiny model's vocabulary
    assert isinstance(caption, str) and caption and set(caption.split()) <= words
    assert _post(server, "interrogate", {"image": image}).json()["caption"] == caption  # greedy: repeatable
    bad = _post(server, "interrogate", {"image": "not base64"})
    assert bad.status_code == 422 and bad.json()["field"] == "image"


# --- 5. LyCORIS networks ----------------------------------------------------------------------


def test_loha_and_lokr_from_the_lycoris_folder_over_http(server: LiveServer) -> None:
    from webui.tools.tiny_lycoris import write_tiny_lycoris

    folder = server.data_dir / "models" / "LyCORIS"
    written = [write_tiny_lycoris(kind, folder / f"tiny-{kind}.safetensors") for kind in ("loha", "lokr")]
    try:
        with server.client() as client:
            assert client.post("/sdapi/v1/refresh-loras").status_code == 200
            names = {item["name"] for item in client.get("/sdapi/v1/loras").json()}
        assert {"tiny-loha", "tiny-lokr"} <= names
        plain = _generate(server, seed=21)
        loha = _generate(server, seed=21, prompt="a lighthouse <lora:tiny-loha:1>")
        lokr = _generate(server, seed=21, prompt="a lighthouse <lora:tiny-lokr:1>")
        assert not np.array_equal(_pixels(plain), _pixels(loha))
        assert not np.array_equal(_pixels(plain), _pixels(lokr))
        assert "tiny-loha" in _params(loha)["Lora hashes"]
        assert np.array_equal(_pixels(plain), _pixels(_generate(server, seed=21)))
    finally:
        for path in written:
            path.unlink()
        with server.client() as client:
            client.post("/sdapi/v1/refresh-loras")
