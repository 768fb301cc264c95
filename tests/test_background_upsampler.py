"""--bg-upsampler: tiny RRDBNet checkpoints in the official Real-ESRGAN format ({'params_ema': state},
official key names) loaded through the weights catalogue and spandrel; tiling, output sizes, the
pipeline and the command line."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facerestore import pipeline
from facerestore.background_upsampler import load_background_upsampler, load_realesrgan, upscale_tiles
from facerestore.cli.app import app, register
from facerestore.errors import UnsupportedCheckpoint, UsageError
from facerestore.image_io import Picture, read_image, write_image
from facerestore.weights.checkpoint import read_state_dict

from helpers import pin_catalogue_hashes

register()
runner = CliRunner()

GROWTH = 32  # RRDBNet's num_grow_ch: 32 in every Real-ESRGAN model (spandrel reads no other)
FILES = {"realesrgan": "RealESRGAN_x2plus.pth", "realesrgan-x4": "RealESRGAN_x4plus.pth"}
ENTRIES = {"realesrgan": "realesrgan_x2plus", "realesrgan-x4": "realesrgan_x4plus"}


def rrdbnet_state(scale: int, num_feat: int = 8, num_block: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """An RRDBNet state dict with the official key names and shapes (basicsr's RRDBNet as Real-ESRGAN
    saves it), small: x2 takes the pixel-unshuffled input (12 channels), x4 the RGB. Weights drawn
    small enough that the 1-block net stays near its input's range."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv_first": (num_feat, 3 * (4 if scale == 2 else 1))}
    for block in range(num_block):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out = num_feat if conv == 5 else GROWTH
                shapes[f"body.{block}.rdb{rdb}.conv{conv}"] = (out, num_feat + (conv - 1) * GROWTH)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[name] = (num_feat, num_feat)
    shapes["conv_last"] = (3, num_feat)
    state = {}
    for name, (out, inp) in shapes.items():
        state[f"{name}.weight"] = torch.randn(out, inp, 3, 3, generator=g) / math.sqrt(inp * 9)
        state[f"{name}.bias"] = 0.01 * torch.randn(out, generator=g)
    return state


def save_official(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state}, path)
    return path


@pytest.fixture
def weights_folder(tmp_path, monkeypatch) -> Path:
    """Both tiny checkpoints under their official names in FACERESTORE_WEIGHTS, their sha256 put in the
    catalogue so that resolving them checks it."""
    folder = tmp_path / "weights"
    paths = {name: save_official(folder / FILES[name], rrdbnet_state(2 if name == "realesrgan" else 4, seed=i))
             for i, name in enumerate(FILES)}
    pin_catalogue_hashes(monkeypatch, paths, ENTRIES)
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(folder))
    return folder


def photo(h: int = 44, w: int = 58) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([0.5 + 0.3 * np.sin(x / 5), 0.5 + 0.3 * np.cos(y / 4), 0.4 + 0.2 * np.sin((x + y) / 7)], -1)


@pytest.mark.parametrize(("name", "scale"), [("realesrgan", 2), ("realesrgan-x4", 4)])
def test_the_official_format_loads_through_the_catalogue_and_spandrel_reads_its_scale(weights_folder, isolated_home, name, scale):
    upsampler = load_background_upsampler(name)
    assert upsampler.model.architecture.id == "ESRGAN" and upsampler.scale == scale
    assert upsampler.source.suffix == ".safetensors" and upsampler.source.parent == isolated_home / "weights" / "converted"  # .pth read once, safely
    state = read_state_dict(weights_folder / FILES[name])
    assert set(state) == set(rrdbnet_state(scale))  # params_ema unwrapped, official keys kept
    assert ("unshuffle" in upsampler.model.tags) == (scale == 2)  # x2plus pixel-unshuffles its input


def test_none_loads_nothing_and_bad_values_are_usage_errors():
    assert load_background_upsampler("none") is None
    with pytest.raises(UsageError, match="--bg-upsampler 'esrgan' is not a background upsampler"):
        load_background_upsampler("esrgan")
    with pytest.raises(UsageError, match="--bg-tile must be 0"):
        load_background_upsampler("realesrgan", tile=-1)


def test_another_architecture_or_scale_is_one_line_naming_the_file():
    with pytest.raises(UnsupportedCheckpoint, match="x.pth is a ESRGAN x4 model, not Real-ESRGAN x2"):
        load_realesrgan(rrdbnet_state(4), "x.pth", 2)
    with pytest.raises(UnsupportedCheckpoint, match="y.pth is not a Real-ESRGAN"):
        load_realesrgan({"weight": torch.zeros(3, 3)}, "y.pth", 2)


@pytest.mark.parametrize("scale", [2, 4])
def test_tiles_with_a_pad_wider_than_the_receptive_field_give_the_untiled_result(scale, one_thread):
    """1 block: 17 low-resolution 3x3 convolutions before the upsampling, 4 after it at 2x and 4x
    resolution, so the receptive field reaches 18.25 pixels of the net's input: 37 photo pixels for
    x2, whose net sees the photo pixel-unshuffled at half size. A pad of 40 covers both."""
    model = load_realesrgan(rrdbnet_state(scale), "tiny", scale)
    rgb = photo(61, 75)  # odd sizes: the last tiles are ragged, and x2 pads them to its multiple
    whole = upscale_tiles(model, rgb, np.empty((61 * scale, 75 * scale, 3), np.float32), tile=0)
    tiled = upscale_tiles(model, rgb, np.empty_like(whole), tile=24, pad=40)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert whole.std() > 0.01  # not a constant: the comparison means something
    default_pad = upscale_tiles(model, rgb, np.empty_like(whole), tile=24)  # pad 10 -> 12: close, not equal
    assert 0 < np.abs(default_pad - whole).mean() < 0.01


def test_odd_tile_and_pad_are_rounded_to_the_x2_nets_multiple(one_thread):
    """A tile starting on an odd pixel would be pixel-unshuffled into other 2x2 cells than the photo."""
    model = load_realesrgan(rrdbnet_state(2), "tiny", 2)
    rgb = photo(30, 30)
    whole = upscale_tiles(model, rgb, np.empty((60, 60, 3), np.float32), tile=0)
    odd = upscale_tiles(model, rgb, np.empty_like(whole), tile=13, pad=39)  # -> tile 16, pad 40
    np.testing.assert_allclose(odd, whole, atol=1e-5)


@pytest.mark.parametrize(("name", "upscale"), [("realesrgan", 2.0), ("realesrgan-x4", 4.0), ("realesrgan", 3.0), ("realesrgan-x4", 1.5), ("realesrgan", 1.0)])
def test_output_has_the_exact_upscale_size(weights_folder, name, upscale, one_thread):
    upsampler = load_background_upsampler(name, tile=32)
    rgb = photo(43, 57)
    size = (round(57 * upscale), round(43 * upscale))
    out = upsampler.enlarge(rgb, size, np.uint8)
    assert out.shape == (size[1], size[0], 3) and out.dtype == np.uint8
    if upscale == upsampler.scale:  # the net's own result, rounded: no resize in between
        native = upscale_tiles(upsampler.model, rgb, np.empty((size[1], size[0], 3), np.float32), tile=32)
        assert np.abs(out.astype(np.float32) - native * 255).max() <= 0.5 + 1e-3
    else:  # the net's result resized with Lanczos to the exact size
        native = upsampler.enlarge(rgb, (57 * upsampler.scale, 43 * upsampler.scale), np.uint8)
        np.testing.assert_array_equal(out, cv2.resize(native, size, interpolation=cv2.INTER_LANCZOS4))


def test_sixteen_bit_photos_get_sixteen_bit_samples(weights_folder, one_thread):
    upsampler = load_background_upsampler("realesrgan")
    out = upsampler.enlarge(photo(20, 24), (48, 40), np.uint16)
    assert out.dtype == np.uint16 and out.max() > 255


def test_the_pipeline_pastes_into_the_upsampled_background(weights_folder, one_thread):
    upsampler = load_background_upsampler("realesrgan", tile=32)
    picture = Picture(samples=np.rint(photo(40, 50) * 255).astype(np.uint8), alpha=None, bit_depth=8, gray=False)
    background = pipeline.prepare_background(picture, 2.0, upsampler)
    np.testing.assert_array_equal(background, upsampler.enlarge(picture.rgb, (100, 80), np.uint8))  # samples, tile by tile, as floats
    lanczos = pipeline.prepare_background(picture, 2.0)
    assert np.abs(background.astype(int) - lanczos).mean() > 1  # the tiny net is not Lanczos


def test_without_an_upsampler_the_background_is_lanczos_as_before():
    """--bg-upsampler none: the background of every earlier version, uint8 OpenCV Lanczos of the samples."""
    samples = np.rint(photo(40, 50) * 255).astype(np.uint8)
    picture = Picture(samples=samples, alpha=None, bit_depth=8, gray=False)
    np.testing.assert_array_equal(pipeline.prepare_background(picture, 2.0, None),
                                  cv2.resize(samples, (100, 80), interpolation=cv2.INTER_LANCZOS4))


def run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_end_to_end_with_the_tiny_model(weights_folder, tmp_path, tiny_baseline):
    """A photo without a face: the whole output is the net's background, at the --upscale size."""
    source = tmp_path / "in" / "scene.png"
    write_image(source, photo(48, 64))
    result = run(source, "-o", tmp_path / "out", "--weights", tiny_baseline, "--bg-upsampler", "realesrgan", "-s", "3", "--bg-tile", "32")
    assert result.exit_code == 0, result.output
    assert "no face found" in result.output and "upscaled x3 by Real-ESRGAN, --bg-upsampler" in result.output
    written = read_image(tmp_path / "out" / "restored_imgs" / "scene.png")
    assert (written.height, written.width) == (144, 192)
    expected = load_background_upsampler("realesrgan", tile=32).enlarge(read_image(source).rgb, (192, 144), np.uint8)
    np.testing.assert_array_equal(np.rint(written.rgb * 255).astype(np.uint8), expected)


def test_cli_bg_upsampler_none_writes_the_same_bytes_as_no_option(tmp_path, tiny_baseline):
    source = tmp_path / "in" / "scene.png"
    write_image(source, photo(48, 64))
    for out, extra in (("plain", []), ("none", ["--bg-upsampler", "none"])):
        assert run(source, "-o", tmp_path / out, "--weights", tiny_baseline, "-q", *extra).exit_code == 0
    plain = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*") if p.is_file())
    assert plain == [Path("restored_imgs/scene.png")]
    for rel in plain:
        assert (tmp_path / "none" / rel).read_bytes() == (tmp_path / "plain" / rel).read_bytes()


def test_cli_missing_weights_offline_is_one_line(tmp_path, tiny_baseline):
    source = tmp_path / "scene.png"
    write_image(source, photo())
    result = run(source, "-o", tmp_path / "out", "--weights", tiny_baseline, "--bg-upsampler", "realesrgan-x4", "--offline")
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line, line
    assert "RealESRGAN_x4plus.pth (weights 'realesrgan_x4plus') is not on this machine" in line
    assert "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth" in line
    assert "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1" in line and "facerestore weights import RealESRGAN_x4plus.pth" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--bg-upsampler", "esrgan"], "--bg-upsampler 'esrgan' is not a background upsampler; use one of: none, realesrgan, realesrgan-x4"),
    (["--bg-upsampler", "realesrgan", "--bg-tile", "-5"], "--bg-tile must be 0"),
    (["--bg-upsampler", "realesrgan", "--aligned"], "--bg-upsampler does nothing with --aligned"),
])
def test_cli_usage_errors_exit_2_before_any_work(tmp_path, args, message):
    write_image(tmp_path / "a.png", photo())
    result = run(tmp_path / "a.png", "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_weights_list_pull_and_verify_know_the_real_esrgan_files(weights_folder):
    listing = run("weights", "list")
    rows = {line.split("\t")[0]: line.split("\t") for line in listing.output.splitlines() if "\t" in line}
    for name, file in (("realesrgan_x2plus", "RealESRGAN_x2plus.pth"), ("realesrgan_x4plus", "RealESRGAN_x4plus.pth")):  # sizes: the tiny files' (pinned)
        assert rows[name][1:4] == [file, f"{(weights_folder / file).stat().st_size / 1e6:.1f} MB", "BSD-3-Clause"]
    assert rows["realesrgan_x2plus"][4] == f"{weights_folder} (sha256 not checked yet)"  # list hashes nothing
    pulled = run("weights", "pull", "realesrgan_x2plus", "realesrgan_x4plus")  # offline (conftest): both are found locally
    assert pulled.exit_code == 0, pulled.output
    assert [line.split("\t")[4] for line in run("weights", "list").output.splitlines() if line.startswith("realesrgan")] == [str(weights_folder)] * 2
    verified = run("weights", "verify")
    assert verified.exit_code == 0
    statuses = {line.split()[0]: line.split()[1:] for line in verified.output.splitlines()}
    for name in ENTRIES.values():
        assert statuses[name] == ["ok", str(weights_folder / f"{name.replace('realesrgan', 'RealESRGAN')}.pth")]
