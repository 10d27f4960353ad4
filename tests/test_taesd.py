"""TAESD live-preview decoders from models/VAE-approx: found per architecture, loaded offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file
from torch import nn

from tests.conftest import CPU
from webui.engine.request import GenerationRequest
from webui.model_manager.detect import Arch
from webui.model_manager.state_dict import CheckpointError
from webui.model_manager.taesd import find_taesd, load_taesd, taesd_preview

LATENTS = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(5))


def _tiny_taesd(seed: int = 3) -> AutoencoderTiny:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderTiny(
            encoder_block_out_channels=(8,) * 4,
            decoder_block_out_channels=(8,) * 4,
            num_encoder_blocks=(1,) * 4,
            num_decoder_blocks=(1,) * 4,
        )
    return model.eval()


def _original_layout(model: AutoencoderTiny) -> dict[str, torch.Tensor]:
    """Decoder tensors keyed as madebyollin/taesd's Sequential, whose index 0 is a parameterless Clamp."""
    tensors = {}
    for key, value in model.state_dict().items():
        if key.startswith("decoder.layers."):
            index, rest = key.removeprefix("decoder.layers.").split(".", 1)
            tensors[f"{int(index) + 1}.{rest}"] = value.clone()
    return tensors


def _decode(model: AutoencoderTiny, latents: torch.Tensor = LATENTS) -> torch.Tensor:
    with torch.inference_mode():
        return model.decode(latents, return_dict=False)[0]


def _write(form: str, model: AutoencoderTiny, folder: Path) -> Path:
    if form == "diffusers folder":
        model.save_pretrained(folder / "taesd")
        return folder / "taesd"
    if form == "original safetensors":
        save_file(_original_layout(model), str(folder / "taesd_decoder.safetensors"))
        return folder / "taesd_decoder.safetensors"
    if form == "original pth":
        torch.save(_original_layout(model), folder / "taesdxl_decoder.pth")
        return folder / "taesdxl_decoder.pth"
    tensors = {key: value.clone() for key, value in model.state_dict().items()}
    save_file(tensors, str(folder / "taesd_decoder.safetensors"))  # diffusers keys, encoder included
    return folder / "taesd_decoder.safetensors"


FORMS = ["diffusers folder", "original safetensors", "original pth", "diffusers file"]


@pytest.mark.parametrize("form", FORMS)
def test_every_form_decodes_exactly_like_the_source(
    form: str, tmp_path: Path, no_network: list[object]
) -> None:
    source = _tiny_taesd()
    loaded = load_taesd(_write(form, source, tmp_path), CPU, torch.float32)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(_decode(loaded), _decode(source))
    assert no_network == []


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def _madebyollin_decoder(width: int = 64, stages: tuple[int, ...] = (3, 3, 3, 1)) -> nn.Sequential:
    """A replica of the original taesd.py Decoder, independent of diffusers' code."""
    layers: list[nn.Module] = [_Clamp(), nn.Conv2d(4, width, 3, padding=1), nn.ReLU()]
    for stage, count in enumerate(stages):
        layers += [_Block(width) for _ in range(count)]
        if stage < len(stages) - 1:
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1, bias=False)]
    layers.append(nn.Conv2d(width, 3, 3, padding=1))
    return nn.Sequential(*layers).eval()


def test_the_standard_original_decoder_file_loads(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        original = _madebyollin_decoder()
    state = original.state_dict()
    assert {"1.weight", "3.conv.4.weight", "7.weight", "18.conv.0.bias", "19.bias"} <= set(state)
    torch.save(state, tmp_path / "taesd_decoder.pth")
    loaded = load_taesd(tmp_path / "taesd_decoder.pth", CPU, torch.float32)
    assert loaded.config.decoder_block_out_channels == (64, 64, 64, 64)
    assert loaded.config.num_decoder_blocks == (3, 3, 3, 1)
    with torch.inference_mode():
        expected = original(LATENTS) * 2 - 1  # the original outputs [0, 1], diffusers [-1, 1]
    torch.testing.assert_close(_decode(loaded), expected)


def test_find_taesd_picks_the_decoder_for_the_architecture(tmp_path: Path) -> None:
    folder = tmp_path / "VAE-approx"
    assert find_taesd(folder, Arch.SD1) is None  # no folder at all
    folder.mkdir()
    (folder / "taesd_decoder.pth").write_bytes(b"")
    assert find_taesd(folder, Arch.SD1) == folder / "taesd_decoder.pth"
    assert find_taesd(folder, Arch.SD2) == folder / "taesd_decoder.pth"
    assert find_taesd(folder, Arch.SDXL) is None  # an SD decoder does not fit SDXL latents
    (folder / "taesdxl").mkdir()
    (folder / "taesdxl" / "config.json").write_text("{}")
    assert find_taesd(folder, Arch.SDXL) is None  # a folder without weights
    (folder / "taesdxl" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert find_taesd(folder, Arch.SDXL) == folder / "taesdxl"
    (folder / "taesdxl_decoder.safetensors").write_bytes(b"")
    assert find_taesd(folder, Arch.SDXL) == folder / "taesdxl_decoder.safetensors"
    assert find_taesd(folder, Arch.SD1) == folder / "taesd_decoder.pth"


def test_preview_images_are_eight_times_the_latent_size(tmp_path: Path) -> None:
    decoder = load_taesd(_write("original safetensors", _tiny_taesd(), tmp_path), CPU, torch.float32)
    images = taesd_preview(decoder, LATENTS.to(torch.float64))
    assert len(images) == 2
    assert all(image.mode == "RGB" and image.size == (6 * 8, 5 * 8) for image in images)


def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    for name in ("taesd_decoder.safetensors", "taesd_decoder.pth"):
        (tmp_path / name).write_bytes(b"not a tensor file")
        with pytest.raises(CheckpointError, match=f"{name}: not a TAESD decoder"):
            load_taesd(tmp_path / name, CPU, torch.float32)


def test_a_diffusers_folder_with_a_broken_config_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "taesd"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="taesd: not a TAESD decoder"):
        load_taesd(folder, CPU, torch.float32)


def test_files_with_wrong_keys_or_shapes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "taesd_decoder.safetensors"
    save_file({"first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="taesd_decoder.safetensors: not a TAESD decoder"):
        load_taesd(path, CPU, torch.float32)

    tensors = _original_layout(_tiny_taesd())
    save_file({**tensors, "3.pool.weight": torch.zeros(8)}, str(path))  # a layer DecoderTiny lacks
    with pytest.raises(CheckpointError, match=r"not a TAESD decoder: .*unexpected keys \['layers.2.pool"):
        load_taesd(path, CPU, torch.float32)

    save_file({key: value for key, value in tensors.items() if key != "3.conv.2.bias"}, str(path))
    with pytest.raises(CheckpointError, match=r"missing keys \['layers.2.conv.2.bias'\]"):
        load_taesd(path, CPU, torch.float32)

    save_file({**tensors, "3.conv.2.weight": torch.zeros(8, 8, 1, 1)}, str(path))
    with pytest.raises(CheckpointError, match="taesd_decoder.safetensors: not a TAESD decoder: .*size"):
        load_taesd(path, CPU, torch.float32)


def test_a_diffusers_folder_with_other_weights_is_refused(tmp_path: Path) -> None:
    folder = _write("diffusers folder", _tiny_taesd(), tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)}, str(weights))
    with pytest.raises(CheckpointError, match=r"taesd: not a TAESD decoder: missing keys \['decoder\.layers"):
        load_taesd(folder, CPU, torch.float32)


@pytest.mark.parametrize("method", ["taesd", "vae", "missing-taesd"])
def test_the_studio_renders_previews_on_the_worker(tmp_path: Path, method: str) -> None:
    """TAESD and full-VAE previews are image-sized and drawn on preview steps only; without a TAESD
    file the studio falls back to the linear preview (latent-sized)."""
    from webui.jobs import LOCAL_CALLER, JobQueue
    from webui.settings import Settings
    from webui.studio import Studio
    from webui.tools.tiny_checkpoint import write_tiny_checkpoint

    if method == "taesd":
        _write("diffusers folder", _tiny_taesd(), tmp_path / "models" / "VAE-approx")
    settings = Settings.for_data_dir(
        tmp_path,
        device="cpu",
        ckpt="tiny",
        preview_method="taesd" if method == "missing-taesd" else method,
        preview_period=2,
    )
    write_tiny_checkpoint("sd15", settings.ckpt_dir / "tiny.safetensors")
    sizes: list[tuple[int, int] | None] = []

    def look(job, info) -> None:
        preview = job.preview()
        sizes.append(preview[1].size if preview and info.preview_due else None)

    jobs = JobQueue(Studio(settings), step_hooks=[look])
    job = jobs.submit(GenerationRequest(steps=4, width=64, height=64, seed=1), LOCAL_CALLER)
    jobs.run(until=lambda: job.state.finished)
    assert job.error is None
    expected = (8, 8) if method == "missing-taesd" else (64, 64)
    assert sizes == [None, expected, None, expected]


def test_sd35_previews_use_a_16_channel_taesd3_decoder(tmp_path: Path) -> None:
    """TAESD3 (madebyollin's `taesd3_decoder`, 16 latent channels) draws SD 3.5's previews at the
    image's size, from the same scaled and shifted latents the transformer works on."""
    from webui.jobs import LOCAL_CALLER, JobQueue
    from webui.settings import Settings
    from webui.studio import Studio
    from webui.tools.tiny_sd3 import write_tiny_sd3_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        taesd3 = AutoencoderTiny(
            latent_channels=16,
            encoder_block_out_channels=(8,) * 4,
            decoder_block_out_channels=(8,) * 4,
            num_encoder_blocks=(1,) * 4,
            num_decoder_blocks=(1,) * 4,
        )
    folder = tmp_path / "models" / "VAE-approx"
    folder.mkdir(parents=True)
    save_file(_original_layout(taesd3), str(folder / "taesd3_decoder.safetensors"))
    assert find_taesd(folder, Arch.SD3) == folder / "taesd3_decoder.safetensors"
    assert find_taesd(folder, Arch.SD1) is None
    settings = Settings.for_data_dir(tmp_path, device="cpu", ckpt="sd35", preview_method="taesd")
    write_tiny_sd3_checkpoint("sd35-medium", settings.ckpt_dir / "sd35.safetensors")
    sizes: list[tuple[int, int]] = []

    def look(job, info) -> None:
        preview = job.preview()
        if info.preview_due and preview is not None:
            sizes.append(preview[1].size)

    jobs = JobQueue(Studio(settings), step_hooks=[look])
    request = GenerationRequest(steps=2, width=64, height=64, seed=1, sampler_name="Euler", cfg_scale=1)
    job = jobs.submit(request, LOCAL_CALLER)
    jobs.run(until=lambda: job.state.finished)
    assert job.error is None
    assert sizes == [(64, 64), (64, 64)]
