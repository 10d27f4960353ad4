"""The `webuiapi` package, as bots and scripts use it against A1111, pointed at our server unchanged."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.http_helpers import USERS, LiveServer
from webui.outputs import read_infotext

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture
def api(server: LiveServer):
    client = webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1", sampler="Euler a", steps=2)
    client.set_auth("bob", USERS["bob"])
    return client


def test_txt2img_img2img_and_inpainting_through_webuiapi(api, server: LiveServer) -> None:
    result = api.txt2img(prompt="a lighthouse", seed=321, width=64, height=64, batch_size=2)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [321, 322]
    assert read_infotext(result.image) == result.info["infotexts"][0]

    init = Image.new("RGB", (64, 64), (10, 120, 200))
    redrawn = api.img2img(images=[init], prompt="a lighthouse", width=64, height=64, denoising_strength=0.6)
    assert redrawn.image.size == (64, 64) and "Denoising strength: 0.6" in redrawn.info["infotexts"][0]

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    inpainted = api.img2img(
        images=[init], mask_image=mask, prompt="a boat", width=64, height=64, mask_blur=0, inpainting_fill=1
    )
    assert inpainted.image.convert("RGB").getpixel((63, 63)) == (10, 120, 200)


def test_models_options_progress_and_png_info_through_webuiapi(api) -> None:
    assert api.util_get_current_model().startswith("tiny-sd15")
    # Titles are A1111's "name [hash]" once the file is hashed, the bare name before.
    assert any(title.startswith("tiny-sd15-inpaint") for title in api.util_get_model_names())
    api.util_set_model("tiny-sd15-inpaint")
    try:
        assert api.util_get_current_model().startswith("tiny-sd15-inpaint")
        made = api.txt2img(prompt="x", width=64, height=64)
        assert made.info["sd_model_name"] == "tiny-sd15-inpaint"
    finally:
        api.set_options({"sd_model_checkpoint": "tiny-sd15"})
    assert api.get_progress()["state"]["job_count"] == 0
    api.util_wait_for_ready(check_interval=0.1)
    assert "Euler a" in [sampler["name"] for sampler in api.get_samplers()]
    info = api.png_info(made.image)
    assert info.parameters["Prompt"] == "x" and info.info.startswith("x\n")
    upscaled = api.extra_single_image(made.image, upscaler_1="Lanczos", upscaling_resize=2)
    assert upscaled.image.size == (128, 128)
    assert api.interrupt() == {} and api.skip() == {}
