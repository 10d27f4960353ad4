"""Linear previews fitted to a model's own VAE: what SD 3's 16 channels (and any VAE without a
fixed table) get instead of a full decode each preview step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.engine.preview_fit import LinearPreview, fit_linear_preview
from webui.model_manager.archs import Arch, architecture
from webui.model_manager.load import load_model
from webui.services.models import DEMO_MODEL_FILE
from webui.training.shapes import draw_scene, scene_batch

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def demo_vae():
    return load_model(DEMO_MODEL_FILE, CPU, torch.float32).vae


def _scenes_and_latents(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo's own kind of pictures (never seen by the fit) and their latents as the UNet sees them."""
    pictures = [draw_scene(scene, 128) for scene in scene_batch(99, 12)]
    pixels = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) / 127.5 - 1 for p in pictures]))
    pixels = pixels.permute(0, 3, 1, 2)
    with torch.inference_mode():
        latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    return pixels, latents


def test_a_fitted_map_shows_a_trained_vaes_colours(demo_vae) -> None:
    """On the demo model's trained VAE the fitted map gives each latent pixel its patch's colour
    far better than SD 1.5's fixed table (made for another VAE) or the first three channels."""
    pixels, latents = _scenes_and_latents(demo_vae)
    patches = torch.nn.functional.avg_pool2d(pixels, 8)
    fitted = fit_linear_preview(demo_vae)
    table = architecture(Arch.SD1).latent
    others = {
        "sd15 table": LinearPreview(torch.tensor(table.preview_factors), torch.tensor(table.preview_bias)),
        "first channels": LinearPreview(torch.eye(4, 3), torch.zeros(3)),
    }
    error = (fitted.render(latents) - patches).abs().mean().item()
    assert error < 0.35
    for name, other in others.items():
        assert (other.render(latents) - patches).abs().mean().item() > 2 * error, name


def test_the_preview_is_latent_sized_clamped_and_on_the_latents_device() -> None:
    preview = LinearPreview(torch.full((16, 3), 10.0), torch.zeros(3))
    latents = torch.ones(2, 16, 5, 7, dtype=torch.float64)
    pixels = preview.render(latents)
    assert pixels.shape == (2, 3, 5, 7) and pixels.dtype == torch.float64
    assert pixels.max().item() == 1.0
