"""Issue-6 features over real HTTP: hires fix, variation seeds, tiling, styles, upscale modes."""

from __future__ import annotations

import json

from PIL import Image

from tests.http_helpers import LiveServer, b64_png, decode_png
from webui.outputs import parse_infotext, read_infotext
from webui.styles import Style
from webui.tools.tiny_upscaler import write_tiny_esrgan

SMALL = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 3}


def _post(server: LiveServer, path: str, body: dict, user: str = "bob"):
    with server.client(user) as client:
        return client.post(f"/sdapi/v1/{path}", json=body)


def test_hires_fix_through_the_api_gives_the_bigger_image_and_its_keys(server: LiveServer) -> None:
    response = _post(
        server,
        "txt2img",
        {
            **SMALL,
            "enable_hr": True,
            "hr_scale": 2,
            "hr_upscaler": "Latent",
            "denoising_strength": 0.5,
            "hr_sampler_name": "Use same sampler",
        },
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    image = decode_png(answer["images"][0])
    assert image.size == (128, 128)
    params = parse_infotext(read_infotext(image)).params
    assert params["Hires upscale"] == "2" and params["Hires upscaler"] == "Latent"
    assert params["Denoising strength"] == "0.5" and params["Size"] == "64x64"
    assert json.loads(answer["info"])["denoising_strength"] == 0.5


def test_bad_hires_upscaler_is_refused_before_queueing(server: LiveServer) -> None:
    response = _post(server, "txt2img", {**SMALL, "enable_hr": True, "hr_upscaler": "Magic 9x"})
    assert response.status_code == 422 and response.json()["field"] == "hr_upscaler"
    assert "Latent" in response.json()["detail"]


def test_variation_seed_and_tiling_reach_info_and_infotext(server: LiveServer) -> None:
    response = _post(
        server, "txt2img", {**SMALL, "subseed": 77, "subseed_strength": 0.25, "tiling": True, "batch_size": 2}
    )
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_subseeds"] == [77, 78] and info["subseed_strength"] == 0.25
    params = [parse_infotext(text).params for text in info["infotexts"]]
    assert [p["Variation seed"] for p in params] == ["77", "78"]
    assert params[0]["Variation seed strength"] == "0.25" and params[0]["Tiling"] == "True"


def test_styles_are_listed_applied_and_unknown_ones_refused(server: LiveServer) -> None:
    server.studio.styles.save(Style("moody", "{prompt}, dark, moody", "sunny"))
    with server.client() as client:
        listed = client.get("/sdapi/v1/prompt-styles").json()
    assert {"name": "moody", "prompt": "{prompt}, dark, moody", "negative_prompt": "sunny"} in listed
    response = _post(server, "txt2img", {**SMALL, "negative_prompt": "blurry", "styles": ["moody"]})
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    parsed = parse_infotext(infotext)
    assert json.loads(response.json()["info"])["all_prompts"] == ["a lighthouse, dark, moody"]
    assert parsed.prompt == "a lighthouse, dark, moody"
    assert parsed.negative_prompt == "blurry, sunny"
    unknown = _post(server, "txt2img", {**SMALL, "styles": ["no such style"]})
    assert unknown.status_code == 422 and unknown.json()["field"] == "styles"
    assert "moody" in unknown.json()["detail"]


def test_latent_upscale_modes_are_listed(server: LiveServer) -> None:
    with server.client() as client:
        names = [mode["name"] for mode in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert names[0] == "Latent" and "Latent (nearest-exact)" in names


def test_extras_upscale_with_an_esrgan_model_from_the_models_folder(server: LiveServer) -> None:
    folder = server.studio.settings.data_dir / "models" / "ESRGAN"
    write_tiny_esrgan(folder / "tiny-x4.safetensors", scale=4)
    with server.client("alice") as client:
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        listed = client.get("/sdapi/v1/upscalers").json()
    model = next(item for item in listed if item["name"] == "tiny-x4")
    assert model["model_path"].endswith("tiny-x4.safetensors")
    image = Image.new("RGB", (24, 16), (200, 40, 40))
    single = _post(
        server,
        "extra-single-image",
        {"image": b64_png(image), "upscaler_1": "tiny-x4", "upscaling_resize": 2},
    )
    assert single.status_code == 200, single.text
    assert decode_png(single.json()["image"]).size == (48, 32)
    batch = _post(
        server,
        "extra-batch-images",
        {
            "imageList": [{"data": b64_png(image), "name": "a.png"}] * 2,
            "upscaler_1": "tiny-x4",
            "resize_mode": 1,
            "upscaling_resize_w": 40,
            "upscaling_resize_h": 40,
        },
    )
    assert batch.status_code == 200, batch.text
    assert [decode_png(data).size for data in batch.json()["images"]] == [(40, 40), (40, 40)]
    unknown = _post(server, "extra-single-image", {"image": b64_png(image), "upscaler_1": "nope"})
    assert unknown.status_code == 422 and "tiny-x4" in unknown.json()["detail"]


def test_a_broken_upscaler_file_is_an_error_and_the_server_keeps_serving(server: LiveServer) -> None:
    folder = server.studio.settings.data_dir / "models" / "ESRGAN"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.pth").write_bytes(b"not a pickle at all")
    server.studio.models.upscalers.refresh()
    image = Image.new("RGB", (16, 16))
    broken = _post(server, "extra-single-image", {"image": b64_png(image), "upscaler_1": "broken"})
    assert broken.status_code in (422, 500) and "broken.pth" in broken.json()["detail"]
    fine = _post(server, "extra-single-image", {"image": b64_png(image), "upscaler_1": "Lanczos"})
    assert fine.status_code == 200


def test_hires_fix_with_an_esrgan_upscaler(server: LiveServer) -> None:
    folder = server.studio.settings.data_dir / "models" / "ESRGAN"
    write_tiny_esrgan(folder / "tiny-hires-x2.safetensors", scale=2)
    server.studio.models.upscalers.refresh()
    response = _post(
        server, "txt2img", {**SMALL, "enable_hr": True, "hr_upscaler": "tiny-hires-x2", "hr_scale": 1.5}
    )
    assert response.status_code == 200, response.text
    image = decode_png(response.json()["images"][0])
    assert image.size == (96, 96)
    assert parse_infotext(read_infotext(image)).params["Hires upscaler"] == "tiny-hires-x2"


def test_scripts_are_listed_with_their_arguments(server: LiveServer) -> None:
    with server.client() as client:
        titles = client.get("/sdapi/v1/scripts").json()
        info = client.get("/sdapi/v1/script-info").json()
    assert "x/y/z plot" in titles["txt2img"] and "sd upscale" in titles["img2img"]
    assert "sd upscale" not in titles["txt2img"]
    xyz = next(item for item in info if item["name"] == "x/y/z plot" and not item["is_img2img"])
    assert xyz["args"][0]["label"] and len(xyz["args"]) == 11


def test_xyz_plot_over_the_api_returns_the_grid_then_cells_with_their_infotexts(server: LiveServer) -> None:
    script_args = ["Steps", "1, 2", "CFG Scale", "3, 7", "Nothing", "", True, True]
    response = _post(server, "txt2img", {**SMALL, "script_name": "X/Y/Z plot", "script_args": script_args})
    assert response.status_code == 200, response.text
    answer = response.json()
    info = json.loads(answer["info"])
    images = [decode_png(data) for data in answer["images"]]
    assert len(images) == 5  # the grid, then the four cells
    assert images[0].width > 128 and images[0].height > 128  # two 64 px cells plus the label bands
    cell_params = [parse_infotext(text).params for text in info["infotexts"][1:]]
    assert sorted((p["Steps"], p["CFG scale"]) for p in cell_params) == [
        ("1", "3"),
        ("1", "7"),
        ("2", "3"),
        ("2", "7"),
    ]


def test_a_bad_script_request_is_refused_with_the_field(server: LiveServer) -> None:
    unknown = _post(server, "txt2img", {**SMALL, "script_name": "Make it pretty"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "script_name"
    assert "X/Y/Z plot" in unknown.json()["detail"]
    img2img_only = _post(server, "txt2img", {**SMALL, "script_name": "SD upscale"})
    assert img2img_only.status_code == 422
    bad_axis = _post(
        server, "txt2img", {**SMALL, "script_name": "X/Y/Z plot", "script_args": ["Sampler", "Euler, Nope"]}
    )
    assert bad_axis.status_code == 422 and "Nope" in bad_axis.json()["detail"]


def test_outpainting_and_sd_upscale_over_img2img(server: LiveServer) -> None:
    init = Image.new("RGB", (64, 64), (30, 120, 200))
    body = {**SMALL, "init_images": [b64_png(init)], "denoising_strength": 0.5}
    outpaint = _post(
        server,
        "img2img",
        {**body, "script_name": "Poor man's outpainting", "script_args": [32, 4, "fill", ["left", "right"]]},
    )
    assert outpaint.status_code == 200, outpaint.text
    wider = decode_png(outpaint.json()["images"][0])
    assert wider.size == (128, 64)
    upscale = _post(
        server, "img2img", {**body, "script_name": "SD upscale", "script_args": [16, "Lanczos", 2]}
    )
    assert upscale.status_code == 200, upscale.text
    assert decode_png(upscale.json()["images"][0]).size == (128, 128)
