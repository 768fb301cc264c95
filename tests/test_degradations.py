"""Synthetic degradations: every parameter is honoured (measured on impulses, flat images, stripes and
JPEG statistics), draws are reproducible, and `facerestore degrade` writes copies plus parameters."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.errors import UsageError
from facerestore.image_io import read_image, to_uint8, write_image
from facerestore.training.degradations import (
    PRESETS,
    DegradationParams,
    DegradationSpec,
    apply_degradation,
    camera_noise_std,
    degrade,
    degrade_eq11,
    downsample,
    jpeg_compress,
    linear_to_srgb,
    motion_kernel,
    sample_params,
    srgb_to_linear,
)

register()
runner = CliRunner()
ONLY = DegradationParams()  # no stage at all: each test switches on the one it measures


def impulse(size: int = 81) -> np.ndarray:
    image = np.zeros((size, size, 3), np.float32)
    image[size // 2, size // 2] = 1.0
    return image


def moments(response: np.ndarray) -> tuple[float, float, float]:
    """(var along x, var along y, covariance) of a 2-D response treated as a distribution."""
    w = response / response.sum()
    y, x = np.mgrid[0 : w.shape[0], 0 : w.shape[1]].astype(np.float64)
    mx, my = (w * x).sum(), (w * y).sum()
    return float((w * (x - mx) ** 2).sum()), float((w * (y - my) ** 2).sum()), float((w * (x - mx) * (y - my)).sum())


def face_like(h: int = 64, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    return np.clip(np.stack([0.5 + 0.35 * np.sin(9 * x + 2 * y), 0.45 + 0.3 * np.cos(7 * y), 0.4 + 0.3 * x * y], -1), 0, 1).astype(np.float32)


# ----------------------------------------------------------------- parameters are honoured


@pytest.mark.parametrize("sigma", [1.0, 2.5, 4.0])
def test_gaussian_blur_impulse_response_has_variance_sigma_squared(sigma):
    out = apply_degradation(impulse(), DegradationParams(blur="gaussian", sigma=sigma), np.random.default_rng(0))
    vx, vy, cov = moments(out[..., 0].astype(np.float64))
    assert vx == pytest.approx(sigma**2, rel=0.03) and vy == pytest.approx(sigma**2, rel=0.03)
    assert abs(cov) < 1e-6


@pytest.mark.parametrize("length,angle", [(9.0, 0.0), (15.0, 90.0), (12.0, 30.0), (20.0, 135.0)])
def test_motion_blur_impulse_response_is_a_line_of_the_given_length_and_angle(length, angle):
    out = apply_degradation(impulse(), DegradationParams(blur="motion", motion_length=length, motion_angle=angle), np.random.default_rng(0))
    vx, vy, cov = moments(out[..., 0].astype(np.float64))
    # Principal axes of the response: the long one is the line (variance L^2/12), the short one ~0.
    cov_matrix = np.array([[vx, cov], [cov, vy]])
    values, vectors = np.linalg.eigh(cov_matrix)
    assert values[1] == pytest.approx(length**2 / 12, rel=0.06)
    assert values[0] < 0.25  # only the bilinear splat's width across the line
    direction = vectors[:, 1]
    measured = math.degrees(math.atan2(-direction[1], direction[0])) % 180  # rows grow downwards
    assert min(abs(measured - angle), 180 - abs(measured - angle)) < 2.0
    assert motion_kernel(length, angle).sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "laplace", "poisson"])
@pytest.mark.parametrize("delta", [5.0, 15.0])
def test_noise_std_on_a_flat_mid_grey_image(kind, delta):
    flat = np.full((160, 160, 3), 0.5, np.float32)
    out = apply_degradation(flat, DegradationParams(noise_kind=kind, noise=delta), np.random.default_rng(1))
    assert float(out.std()) == pytest.approx(delta / 255, rel=0.03)
    assert abs(float(out.mean()) - 0.5) < 0.002


def test_laplace_noise_is_heavier_tailed_than_gaussian_and_poisson_follows_the_signal():
    flat = np.full((200, 200, 3), 0.5, np.float32)
    kurt = {}
    for kind in ("gaussian", "laplace"):
        z = apply_degradation(flat, DegradationParams(noise_kind=kind, noise=10.0), np.random.default_rng(2)) - 0.5
        kurt[kind] = float((z**4).mean() / (z**2).mean() ** 2)
    assert kurt["gaussian"] == pytest.approx(3.0, abs=0.15) and kurt["laplace"] == pytest.approx(6.0, abs=0.6)
    dark = np.full((200, 200, 3), 0.125, np.float32)  # Poisson: std scales with sqrt(signal)
    out = apply_degradation(dark, DegradationParams(noise_kind="poisson", noise=10.0), np.random.default_rng(3))
    assert float(out.std()) == pytest.approx(10.0 / 255 * math.sqrt(0.125 / 0.5), rel=0.05)


def test_camera_noise_variance_is_shot_times_signal_plus_read_in_linear_light():
    shot, read = 4e-3, 2e-5
    stds = []
    for level in (0.05, 0.2, 0.45):
        flat = np.full((200, 200, 3), float(linear_to_srgb(np.float64(level))), np.float32)
        out = apply_degradation(flat, DegradationParams(noise_kind="camera", shot=shot, read=read), np.random.default_rng(4))
        linear = srgb_to_linear(out.astype(np.float64))
        assert float(linear.var()) == pytest.approx(shot * level + read, rel=0.08)
        stds.append(float(linear.std()))
    assert stds[0] < stds[1] < stds[2]  # signal-dependent, unlike the additive kinds
    grey = np.full((200, 200, 3), 0.5, np.float32)
    out = apply_degradation(grey, DegradationParams(noise_kind="camera", shot=shot, read=read), np.random.default_rng(5))
    assert float(out.std()) * 255 == pytest.approx(camera_noise_std(shot, read), rel=0.05)  # the reported std


def blockiness(image: np.ndarray) -> float:
    """Mean jump across 8x8 block borders minus the mean jump inside blocks (luma, 0-255)."""
    luma = (image @ np.array([0.299, 0.587, 0.114], np.float32)) * 255
    jumps = np.abs(np.diff(luma, axis=1))
    border = jumps[:, 7::8].mean()
    inside = np.delete(jumps, np.s_[7::8], axis=1).mean()
    return float(border - inside)


def test_jpeg_quality_is_the_encoder_quality():
    image = face_like(96, 96)
    rng = np.random.default_rng(0)
    sizes, blocks = [], []
    for q in (10, 30, 60, 90):
        out = apply_degradation(image, DegradationParams(jpeg=q), rng)
        bgr = np.round(image[..., ::-1] * 255).astype(np.uint8)
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
        expected = cv2.imdecode(buffer, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
        np.testing.assert_array_equal(out, expected)  # exactly OpenCV at quality q
        sizes.append(len(buffer))
        blocks.append(blockiness(out))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 2
    assert blocks[0] > blocks[-1] + 1.0 and blocks[0] > 4 * max(blocks[-1], 0.1)


@pytest.mark.parametrize("r", [2.0, 3.0, 4.0, 7.5])
def test_downsample_factor_sets_the_low_resolution_size(r):
    small = downsample(face_like(96, 128), r)
    assert small.shape[:2] == (round(96 / r), round(128 / r))


def test_downsampling_removes_detail_finer_than_the_factor():
    x = np.arange(128, dtype=np.float32)
    stripes = np.repeat((0.5 + 0.4 * np.sin(2 * np.pi * x / 4.0))[None, :, None], 3, axis=2).repeat(64, axis=0)
    coarse = np.repeat((0.5 + 0.4 * np.sin(2 * np.pi * x / 32.0))[None, :, None], 3, axis=2).repeat(64, axis=0)
    for interpolation in ("bilinear", "bicubic", "area"):
        params = DegradationParams(scale=4.0, interpolation=interpolation)
        fine_out = apply_degradation(stripes, params, np.random.default_rng(0))
        coarse_out = apply_degradation(coarse, params, np.random.default_rng(0))
        assert fine_out.shape == stripes.shape
        assert fine_out[8:-8, 8:-8].std(axis=1).mean() < 0.1 * stripes.std()  # period 4 px is gone at r = 4
        assert coarse_out[8:-8, 8:-8].std() > 0.8 * coarse.std()  # period 32 px survives


def test_grayscale_gives_three_equal_channels():
    out = apply_degradation(face_like(), DegradationParams(gray=True), np.random.default_rng(0))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    for seed in range(5):
        _, params = degrade(face_like(), np.random.default_rng(seed), "gray")
        assert params.gray


# ----------------------------------------------------------------- draws: presets, ranges, reproducibility


def test_eq11_preset_reproduces_degrade_eq11_exactly():
    image = face_like()
    for seed in range(6):
        a, pa = degrade_eq11(image, np.random.default_rng(seed))
        b, pb = degrade(image, np.random.default_rng(seed), "eq11")
        assert (pb.sigma, pb.scale, pb.noise, pb.jpeg) == (pa.sigma, pa.scale, pa.noise, pa.jpeg)
        np.testing.assert_array_equal(a, b)


def test_fixed_severities_match_the_evaluation_presets():
    for name, (sigma, r, noise, q) in {"mild": (1.5, 2, 3, 85), "medium": (4, 4, 8, 70), "severe": (8, 8, 12, 55)}.items():
        p = sample_params(np.random.default_rng(0), PRESETS[name])
        assert (p.blur, p.sigma, p.scale, p.noise_kind, p.noise, p.jpeg) == ("gaussian", sigma, r, "gaussian", noise, q)


def test_drawn_parameters_stay_in_their_ranges():
    spec = PRESETS["mixed"]
    kinds, grays, motions = set(), 0, 0
    for seed in range(300):
        p = sample_params(np.random.default_rng(seed), spec)
        assert p.blur in ("none", "gaussian", "motion")
        if p.blur == "gaussian":
            assert spec.sigma[0] <= p.sigma <= spec.sigma[1]
        if p.blur == "motion":
            motions += 1
            assert spec.motion_length[0] <= p.motion_length <= spec.motion_length[1] and 0 <= p.motion_angle <= 180
        assert spec.scale[0] <= p.scale <= spec.scale[1]
        assert p.jpeg is None or spec.jpeg[0] <= p.jpeg <= spec.jpeg[1]
        kinds.add(p.noise_kind)
        grays += p.gray
    assert kinds == {"none", "gaussian", "laplace", "poisson", "camera"}
    assert 10 < grays < 60 and 25 < motions < 90  # gray_prob 0.1, motion 0.9 * 0.2 of 300


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_reproducible_under_a_seed(name):
    image = face_like()
    a, pa = degrade(image, np.random.default_rng(7), name)
    b, pb = degrade(image, np.random.default_rng(7), name)
    assert pa == pb
    np.testing.assert_array_equal(a, b)
    assert a.shape == image.shape and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    if name != "none":
        c, pc = degrade(image, np.random.default_rng(8), name)
        assert pc != pa or not np.array_equal(a, c)
    else:
        np.testing.assert_array_equal(a, image)


def test_bad_specs_are_usage_errors():
    for bad in (dict(blur_prob=1.5), dict(scale=(0.5, 2.0)), dict(jpeg=(0.0, 50.0)), dict(noise_kinds=("pink",)),
                dict(interpolations=("lanczos",)), dict(sigma=(3.0, 1.0))):
        with pytest.raises(UsageError):
            DegradationSpec(**bad)
    with pytest.raises(UsageError):
        degrade(face_like(), np.random.default_rng(0), "nonsense")


def test_jpeg_compress_round_trip_is_close_at_high_quality():
    image = face_like()
    assert np.abs(jpeg_compress(image, 100) - image).mean() < 0.01


# ----------------------------------------------------------------- facerestore degrade


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    write_image(src / "a.png", face_like(48, 48))
    write_image(src / "sub" / "b.jpg", face_like(40, 56))
    write_image(src / "sub" / "c.png", face_like(32, 32)[..., :1].repeat(3, axis=2), gray=True)
    return src


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_degrade_command_writes_copies_and_parameters(tree, tmp_path):
    out = tmp_path / "out"
    result = run("degrade", tree, "--out", out, "--preset", "medium", "--seed", "3")
    assert result.exit_code == 0, result.output
    for rel in ("a.png", "sub/b.jpg", "sub/c.png"):
        source, copy = read_image(tree / rel), read_image(out / rel)
        assert copy.rgb.shape == source.rgb.shape
        assert np.abs(copy.rgb - source.rgb).mean() > 0.005  # actually degraded
    assert read_image(out / "sub" / "c.png").gray
    report = json.loads((out / "degradations.json").read_text())
    assert report["preset"] == "medium" and report["seed"] == 3
    assert sorted(r["path"] for r in report["images"]) == ["a.png", "sub/b.jpg", "sub/c.png"]
    assert all(r["sigma"] == 4.0 and r["scale"] == 4.0 and r["jpeg"] == 70 for r in report["images"])
    rows = list(csv.DictReader((out / "degradations.csv").open()))
    assert [r["path"] for r in rows] == [r["path"] for r in report["images"]] and rows[0]["noise"] == "8.0"


def test_degrade_keeps_bit_depth_and_alpha(tmp_path):
    """A 16-bit source gives a 16-bit copy (as restore and clean-dataset do); alpha is carried through."""
    alpha = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    write_image(tmp_path / "src" / "deep.png", face_like(40, 40), bit_depth=16, alpha=alpha)
    assert run("degrade", tmp_path / "src", "--out", tmp_path / "out", "--preset", "mild", "-q").exit_code == 0
    copy = read_image(tmp_path / "out" / "deep.png")
    assert copy.bit_depth == 16 and copy.alpha is not None
    np.testing.assert_allclose(copy.alpha, alpha, atol=1 / 65535)
    levels = np.unique(np.round(copy.rgb * 65535)) % 257  # 8-bit values scaled to 16 bits are multiples of 257
    assert np.count_nonzero(levels) > 0  # the noise and blur of the copy kept their 16-bit precision


def test_degrade_ext_is_any_case_and_a_gif_becomes_png(tmp_path):
    from PIL import Image

    write_image(tmp_path / "src" / "a.png", face_like(32, 32))
    assert run("degrade", tmp_path / "src", "--out", tmp_path / "upper", "--ext", ".JPG", "-q").exit_code == 0
    assert read_image(tmp_path / "upper" / "a.jpg").width == 32
    Image.fromarray(to_uint8(face_like(32, 32))).save(tmp_path / "anim.gif")
    assert run("degrade", tmp_path / "anim.gif", "--out", tmp_path / "gif", "-q").exit_code == 0
    assert read_image(tmp_path / "gif" / "anim.png").width == 32  # a format we read but do not write


def test_degrade_command_is_reproducible_and_seeded(tree, tmp_path):
    for name in ("one", "two"):
        assert run("degrade", tree, "--out", tmp_path / name, "--preset", "eq11", "--seed", "5", "-q").exit_code == 0
    assert run("degrade", tree, "--out", tmp_path / "three", "--preset", "eq11", "--seed", "6", "-q").exit_code == 0
    assert (tmp_path / "one" / "a.png").read_bytes() == (tmp_path / "two" / "a.png").read_bytes()
    one = json.loads((tmp_path / "one" / "degradations.json").read_text())["images"]
    assert one == json.loads((tmp_path / "two" / "degradations.json").read_text())["images"]
    assert one != json.loads((tmp_path / "three" / "degradations.json").read_text())["images"]
    # parameters are keyed by the file, not the order: degrading one file alone gives the same draw
    assert run("degrade", tree / "a.png", "--out", tmp_path / "alone", "--preset", "eq11", "--seed", "5", "-q").exit_code == 0
    alone = json.loads((tmp_path / "alone" / "degradations.json").read_text())["images"][0]
    assert alone == next(r for r in one if r["path"] == "a.png")


def test_degrade_command_errors_are_one_line(tree, tmp_path):
    (tree / "broken.png").write_bytes(b"not an image")
    result = run("degrade", tree, "--out", tmp_path / "out", "-q")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert (tmp_path / "out" / "a.png").is_file()  # the others went on
    bad = run("degrade", tree, "--out", tmp_path / "x", "--preset", "nonsense")
    assert bad.exit_code == 2 and "unknown degradation preset" in bad.output
    negative = run("degrade", tree, "--out", tmp_path / "x", "--seed", "-1")
    assert negative.exit_code == 2 and "--seed must be between 0 and 2^63-1" in negative.output
    inside = run("degrade", tree, "--out", tree / "degraded")
    assert inside.exit_code == 2 and "inside" in inside.output


def test_degrade_never_writes_one_file_over_another(tree, tmp_path):
    """x.jpg and x.png under --ext png, or one file degraded into its own folder, would silently
    replace a file: both are usage errors before anything is written."""
    write_image(tree / "a.jpg", face_like(48, 48))
    clash = run("degrade", tree, "--out", tmp_path / "out", "--ext", "png")
    assert clash.exit_code == 2 and "would both be written as" in clash.output
    assert not (tmp_path / "out").exists()
    before = (tree / "a.png").read_bytes()
    beside = run("degrade", tree / "a.jpg", "--out", tree, "--ext", "png")
    assert beside.exit_code == 2 and "is the folder of" in beside.output
    assert (tree / "a.png").read_bytes() == before and not (tree / "degradations.json").exists()
    mine = write_image(tmp_path / "a.png", face_like(48, 48))  # a file of the user's beside the source folder
    mine_before = mine.read_bytes()
    parent = run("degrade", tree, "--out", tmp_path)
    assert parent.exit_code == 2 and "holds the source folder" in parent.output
    assert mine.read_bytes() == mine_before


def test_degrade_goes_on_after_an_image_its_output_format_cannot_hold(tree, tmp_path):
    write_image(tree / "wide.png", np.full((4, 17000, 3), 0.5, np.float32))
    result = run("degrade", tree, "--out", tmp_path / "out", "--ext", "webp", "--preset", "none")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "over WebP's limit of 16383 px per side" in errors[0]
    assert (tmp_path / "out" / "a.webp").is_file() and (tmp_path / "out" / "degradations.json").is_file()


def test_a_copy_that_would_land_on_its_source_is_refused_with_degrades_options(tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(tree / "a.png")  # the copy of a.png would be written through the link
    before = (tree / "a.png").read_bytes()
    result = run("degrade", tree / "a.png", "--out", out)
    assert result.exit_code == 1 and (tree / "a.png").read_bytes() == before
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "would overwrite the input" in error and "choose another --out folder" in error
    assert "--suffix" not in result.output  # an option restore has, degrade has not


def interrupt_after(monkeypatch, count: int) -> list[Path]:
    """Ctrl-C (KeyboardInterrupt) as degrade is about to write its copy number `count` + 1; returns the paths written."""
    from facerestore.training import degrade_files

    real, written = degrade_files.write_image, []

    def write(path, *args, **kwargs):
        if len(written) == count:
            raise KeyboardInterrupt
        written.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(degrade_files, "write_image", write)
    return written


def test_an_interrupted_degrade_keeps_every_copys_parameters_and_a_rerun_ends_as_an_uninterrupted_run(tree, tmp_path, monkeypatch):
    from facerestore.training.degrade_files import MANIFEST, STATE_DIR, degrade_tree, read_manifest

    args = ("--preset", "eq11", "--seed", "7", "-q")
    assert run("degrade", tree, "--out", tmp_path / "whole", *args).exit_code == 0
    whole = json.loads((tmp_path / "whole" / "degradations.json").read_text())["images"]
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        degrade_tree(tree, out, preset="eq11", seed=7)
    kept = read_manifest(out / STATE_DIR / MANIFEST)  # the two copies written have their parameters on disk
    assert sorted(kept) == ["a.png", "sub/b.jpg"] and list(kept.values()) == whole[:2]
    assert not (out / "degradations.json").exists()  # it always describes a whole run
    with open(out / STATE_DIR / MANIFEST, "a") as manifest:  # and a kill -9 in the middle of the next record
        manifest.write('{"path": "sub/c.png", "sour')
    monkeypatch.undo()
    again = interrupt_after(monkeypatch, 99)
    assert run("degrade", tree, "--out", out, *args).exit_code == 0
    assert again == [out / "sub" / "c.png"]  # only what was missing
    for name in ("degradations.json", "degradations.csv", "a.png", "sub/b.jpg", "sub/c.png"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_rerun_with_other_settings_starts_over(tree, tmp_path, monkeypatch):
    from facerestore.training.degrade_files import degrade_tree

    out = tmp_path / "out"
    assert run("degrade", tree, "--out", out, "--preset", "medium", "-q").exit_code == 0
    said: list[str] = []
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        degrade_tree(tree, out, preset="severe", on_message=said.append)
    assert said == [f"{out} held copies made with other settings (--preset medium -> severe); degrading every image again"]
    assert not (out / "degradations.json").exists()  # it listed medium copies, one of which is severe now
    monkeypatch.undo()
    result = run("degrade", tree, "--out", out, "--preset", "severe")
    assert result.exit_code == 0 and "2 degraded with preset severe, 1 already done, 0 failed" in result.output
    report = json.loads((out / "degradations.json").read_text())
    assert report["preset"] == "severe" and [r["sigma"] for r in report["images"]] == [8.0, 8.0, 8.0]


def copies(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".facerestore" not in p.as_posix()
                  and not p.name.startswith("degradations."))


def test_a_start_over_removes_the_earlier_copies_it_will_not_rewrite_and_a_same_settings_rerun_keeps_and_names_them(tree, tmp_path):
    """QA: `-p mild`, rm a source, `-p medium` said it started over but left the mild copy of the
    gone source (and `--ext png` then `-p mild` left a severe .png beside the mild .jpg): a later
    train read two presets. A rerun with the same settings keeps such copies and says so."""
    out = tmp_path / "out"
    assert run("degrade", tree, "--out", out, "--preset", "mild", "-q").exit_code == 0
    (tree / "sub" / "c.png").unlink()
    same = run("degrade", tree, "--out", out, "--preset", "mild")
    assert same.exit_code == 0 and "0 degraded with preset mild, 2 already done, 0 failed" in same.output
    assert (f"1 copy in {out} has no source any more ({out / 'sub' / 'c.png'}); it is kept, but not in degradations.json: "
            "delete it if train or evaluate should not read it") in " ".join(same.output.split())
    assert copies(out) == ["a.png", "sub/b.jpg", "sub/c.png"]
    medium = run("degrade", tree, "--out", out, "--preset", "medium")
    assert medium.exit_code == 0 and medium.output.splitlines()[0] == (
        f"{out} held copies made with other settings (--preset mild -> medium); degrading every image again "
        "and removing 1 earlier copy it will not rewrite (another --ext, or a source that is gone)")
    assert copies(out) == ["a.png", "sub/b.jpg"]

    # another --ext: same settings keep the .jpg (and say so); the start-over after removes the severe .png
    assert run("degrade", tree, "--out", out, "--preset", "severe", "-q").exit_code == 0
    png = run("degrade", tree, "--out", out, "--preset", "severe", "--ext", "png")
    assert png.exit_code == 0 and "1 degraded with preset severe, 1 already done, 0 failed" in png.output
    assert f"1 copy in {out} was made with another --ext ({out / 'sub' / 'b.jpg'}); it is kept" in " ".join(png.output.split())
    assert copies(out) == ["a.png", "sub/b.jpg", "sub/b.png"]
    mild = run("degrade", tree, "--out", out, "--preset", "mild")
    assert mild.exit_code == 0 and "removing 1 earlier copy it will not rewrite" in mild.output
    assert run("degrade", tree, "--out", tmp_path / "fresh", "--preset", "mild", "-q").exit_code == 0
    assert copies(out) == copies(tmp_path / "fresh") == ["a.png", "sub/b.jpg"]
    for name in ("degradations.json", "a.png", "sub/b.jpg"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


def test_a_start_over_removes_the_temp_file_a_killed_write_left_beside_a_copy_of_another_ext(tree, tmp_path):
    """The temp files of a killed run were removed beside this run's targets only: one beside an
    earlier copy in another --ext stayed after that copy was removed."""
    out = tmp_path / "out"
    assert run("degrade", tree, "--out", out, "--preset", "mild", "--ext", "png", "-q").exit_code == 0
    stray = out / "sub" / ".b.png.k1ll3d42.tmp"  # as write_image names its temp file for sub/b.png
    stray.write_bytes(b"half a png")
    assert run("degrade", tree, "--out", out, "--preset", "medium", "-q").exit_code == 0
    assert not stray.exists() and copies(out) == ["a.png", "sub/b.jpg", "sub/c.png"]


def test_a_start_over_removes_only_listed_copies_inside_dst(tree, tmp_path):
    """Records that name a file outside DST (through a link, '..', an absolute path), a link, a file
    that is not an image, or the user's own files in DST: none of them is removed."""
    from facerestore.training.degrade_files import MANIFEST, STATE_DIR

    out, outside = tmp_path / "out", tmp_path / "outside"
    assert run("degrade", tree, "--out", out, "--preset", "mild", "-q").exit_code == 0
    write_image(outside / "x.png", face_like(16, 16))
    (out / "away").symlink_to(outside)
    (out / "link.png").symlink_to(outside / "x.png")
    (out / "notes.txt").write_text("mine")
    write_image(out / "mine.png", face_like(16, 16))
    listed = ["away/x.png", "../outside/x.png", str(outside / "x.png"), "link.png", "notes.txt", 7, ""]
    with open(out / STATE_DIR / MANIFEST, "a") as manifest:
        manifest.writelines(json.dumps({"path": p, "source": "x.png"}) + "\n" for p in listed)
    (tree / "sub" / "c.png").unlink()
    result = run("degrade", tree, "--out", out, "--preset", "medium")
    assert result.exit_code == 0 and "removing 1 earlier copy it will not rewrite" in result.output  # sub/c.png only
    assert (outside / "x.png").is_file() and (out / "link.png").is_symlink() and (out / "notes.txt").is_file() and (out / "mine.png").is_file()
    assert not (out / "sub" / "c.png").exists()


def test_a_start_over_whose_redo_fails_leaves_no_copy_of_the_other_preset(tree, tmp_path):
    out = tmp_path / "out"
    assert run("degrade", tree, "--out", out, "--preset", "mild", "-q").exit_code == 0
    (tree / "sub" / "c.png").write_bytes(b"not an image any more")
    result = run("degrade", tree, "--out", out, "--preset", "medium")
    assert result.exit_code == 1 and "2 degraded with preset medium, 1 failed" in result.output
    assert copies(out) == ["a.png", "sub/b.jpg"]


def test_a_dst_from_before_the_manifest_is_cleaned_by_its_degradations_json(tree, tmp_path):
    """Runs before done.jsonl left only degradations.json: it lists the copies just as well."""
    import shutil

    from facerestore.training.degrade_files import STATE_DIR

    out = tmp_path / "out"
    assert run("degrade", tree, "--out", out, "--preset", "mild", "-q").exit_code == 0
    shutil.rmtree(out / STATE_DIR)
    (tree / "a.png").unlink()
    result = run("degrade", tree, "--out", out, "--preset", "medium")
    assert result.exit_code == 0 and result.output.splitlines()[0] == (
        f"{out} held copies whose settings are unknown ({out / STATE_DIR / 'settings.json'} is missing or unreadable); "
        "degrading every image again and removing 1 earlier copy it will not rewrite (another --ext, or a source that is gone)")
    assert copies(out) == ["sub/b.jpg", "sub/c.png"]


def test_a_rerun_removes_the_temp_files_a_killed_write_left_and_nothing_else(tree, tmp_path):
    out = tmp_path / "out"
    stale = [out / ".a.png.k3x9q2zw.tmp", out / "sub" / ".c.png.0a1b2c3d.tmp", out / ".degradations.json.zz8y7x6w.tmp"]
    mine = [out / "notes.tmp", out / ".a.png.keep", out / "sub" / ".c.png", out / ".other.png.0a1b2c3d.tmp"]  # not degrade's temp names
    for file in stale + mine:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"half a file")
    result = run("degrade", tree, "--out", out, "--preset", "mild")
    assert result.exit_code == 0, result.output
    assert "removed 3 unfinished temporary files of an earlier run" in result.output
    assert not any(file.exists() for file in stale)
    assert all(file.read_bytes() == b"half a file" for file in mine)


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(tree, tmp_path, monkeypatch):
    from facerestore.training import degrade_files

    out = tmp_path / "out"
    interrupt_after(monkeypatch, 1)
    result = run("degrade", tree, "--out", out, "--preset", "mild")
    assert result.exit_code == 130
    assert result.output.strip() == (f"interrupted; the copies written so far are kept, their parameters in {out / '.facerestore-degrade' / 'done.jsonl'}: "
                                     "rerun the same command to degrade the rest and write degradations.json")
    monkeypatch.setattr(degrade_files, "list_images", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))  # while listing a large tree
    early = run("degrade", tree, "--out", tmp_path / "new", "--preset", "mild")
    assert early.exit_code == 130 and early.output.strip() == "interrupted before any copy was written; run the same command again"


def test_a_source_replaced_at_the_same_path_is_degraded_again_and_only_it(tree, tmp_path, monkeypatch):
    """A rerun kept the copy of the image that used to be at sub/c.png (and its parameters, which
    happen to be the same: they are keyed by the path) as done."""
    from facerestore.training.degrade_files import MANIFEST, STATE_DIR

    out = tmp_path / "out"
    assert run("degrade", tree, "--out", out, "--preset", "eq11", "-q").exit_code == 0
    old_copy = (out / "sub" / "c.png").read_bytes()
    write_image(tree / "sub" / "c.png", face_like(32, 32)[::-1, ::-1, :1].repeat(3, axis=2), gray=True)  # another image, same path
    stat = (tree / "a.png").stat()
    os.utime(tree / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: not a change
    written = interrupt_after(monkeypatch, 99)
    result = run("degrade", tree, "--out", out, "--preset", "eq11")
    assert result.exit_code == 0, result.output
    assert "1 degraded with preset eq11, 2 already done, 1 changed file redone, 0 failed" in result.output
    assert written == [out / "sub" / "c.png"]
    monkeypatch.undo()
    assert run("degrade", tree, "--out", tmp_path / "fresh", "--preset", "eq11", "-q").exit_code == 0
    for name in ("degradations.json", "degradations.csv", "a.png", "sub/b.jpg", "sub/c.png"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    assert (out / "sub" / "c.png").read_bytes() != old_copy
    again = run("degrade", tree, "--out", out, "--preset", "eq11")
    assert "0 degraded with preset eq11, 3 already done, 0 failed" in again.output  # the redone copy is recorded with its new source

    # a manifest written before sources were recorded is still read, and its copies trusted
    lines = (out / STATE_DIR / MANIFEST).read_text().splitlines()
    old = [{k: v for k, v in json.loads(line).items() if k not in ("source_size", "source_mtime_ns", "source_sha256")} for line in lines]
    (out / STATE_DIR / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in old))
    write_image(tree / "sub" / "c.png", face_like(32, 32)[..., :1].repeat(3, axis=2), gray=True)
    trusted = run("degrade", tree, "--out", out, "--preset", "eq11")
    assert trusted.exit_code == 0 and "0 degraded with preset eq11, 3 already done, 0 failed" in trusted.output


def test_a_changed_source_that_no_longer_reads_leaves_no_stale_copy(tree, tmp_path):
    out = tmp_path / "out"
    assert run("degrade", tree, "--out", out, "--preset", "mild", "-q").exit_code == 0
    (tree / "sub" / "c.png").write_bytes(b"not an image any more")
    result = run("degrade", tree, "--out", out, "--preset", "mild")
    assert result.exit_code == 1 and "0 degraded with preset mild, 2 already done, 1 changed file redone, 1 failed" in result.output
    assert not (out / "sub" / "c.png").exists()
    assert [r["path"] for r in json.loads((out / "degradations.json").read_text())["images"]] == ["a.png", "sub/b.jpg"]


def test_a_second_degrade_into_a_folder_in_use_is_refused_and_leaves_the_first_runs_temp_files(tree, tmp_path):
    """Both runs wrote, and the second one's cleanup deleted the temp file the first was writing."""
    from facerestore.training.out_lock import output_lock

    out = tmp_path / "out"
    live = out / ".a.png.k3x9q2zw.tmp"  # what the running one is writing
    with output_lock(out):
        live.write_bytes(b"half written")
        result = run("degrade", tree, "--out", out, "--preset", "mild")
        assert live.read_bytes() == b"half written"
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {out} is being written by another run (pid {os.getpid()}); wait for it to end, or choose another --out"
    assert sorted(p.name for p in out.rglob("*")) == [live.name]  # nothing else written


def test_degrade_releases_its_lock_however_it_ends(tree, tmp_path, monkeypatch):
    import facerestore.training.degrade_files as degrade_files
    from facerestore.errors import BadImage
    from facerestore.training.out_lock import LOCK_NAME, output_lock

    def released(out: Path) -> bool:
        with output_lock(out):
            pass
        return not (out / LOCK_NAME).exists()

    assert run("degrade", tree, "--out", tmp_path / "done", "--preset", "mild", "-q").exit_code == 0
    assert released(tmp_path / "done")
    interrupt_after(monkeypatch, 1)
    assert run("degrade", tree, "--out", tmp_path / "ctrl-c", "--preset", "mild", "-q").exit_code == 130
    assert released(tmp_path / "ctrl-c")
    monkeypatch.undo()

    def full(path, payload):
        raise BadImage(f"cannot write {path} (No space left on device)")

    monkeypatch.setattr(degrade_files, "write_bytes", full)  # settings.json, at the start of the run
    failed = run("degrade", tree, "--out", tmp_path / "full", "--preset", "mild", "-q")
    assert failed.exit_code == 1 and "No space left on device" in failed.output
    assert released(tmp_path / "full")


def test_a_lock_a_killed_degrade_left_is_taken_over_with_a_note(tree, tmp_path):
    import socket
    import subprocess
    import sys

    from facerestore.training.out_lock import LOCK_NAME

    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}) + "\n")
    result = run("degrade", tree, "--out", out, "--preset", "mild")
    assert result.exit_code == 0, result.output
    assert f"{out} was locked by pid {gone.pid}, which ended without releasing it; taking the lock over" in result.output
    assert "3 degraded with preset mild" in result.output and not (out / LOCK_NAME).exists()


def test_a_broken_link_in_the_source_is_named_not_skipped_silently(tree, tmp_path):
    """list_images reports what it leaves out of SRC (a broken link, a folder it cannot list);
    clean-dataset says so (9cf8ba0), degrade dropped them without a word."""
    (tree / "gone.png").symlink_to(tmp_path / "missing.png")
    result = run("degrade", tree, "--out", tmp_path / "out", "--preset", "mild", "-q")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"warning: skipped {tree / 'gone.png'}: is a broken link (its target does not exist)"]
    assert not (tmp_path / "out" / "gone.png").exists()


@pytest.mark.parametrize("recorded", [b"\xff\xfe{", b"[1, 2]"])
def test_a_settings_file_that_is_not_utf8_or_not_an_object_starts_over(tree, tmp_path, recorded):
    """degrade read its settings.json itself, catching only JSONDecodeError: bytes that are not UTF-8
    ended in a UnicodeDecodeError traceback (the case 34aad62 fixed in check_settings, via read_settings)."""
    from facerestore.training.degrade_files import STATE_DIR

    out = tmp_path / "out"
    (out / STATE_DIR).mkdir(parents=True)
    (out / STATE_DIR / "settings.json").write_bytes(recorded)
    result = run("degrade", tree, "--out", out, "--preset", "mild", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "3 degraded with preset mild, 0 failed" in result.output
    assert json.loads((out / STATE_DIR / "settings.json").read_text())["seed"] == 1


def test_the_presets_table_of_docs_training_gives_each_presets_real_ranges():
    """docs/training.md's preset table is what a user picks a preset by: it left out the dr2 presets'
    blur and JPEG and the downsampling of motion, camera and gray (1-4 and 1-2, not eq. 11's 1-8)."""
    def span(pair) -> str:
        return f"{pair[0]:g}-{pair[1]:g}"

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in doc.splitlines() if line.startswith("| `")}
    dr2 = [PRESETS[f"dr2-{level}"] for level in ("mild", "medium", "severe")]
    row = rows["`dr2-mild`, `dr2-medium`, `dr2-severe`"]
    assert f"blur sigma {' / '.join(span(p.sigma) for p in dr2)}," in row
    assert f"downsampling by {' / '.join(f'{p.scale[0]:g}' for p in dr2)}," in row
    assert f"noise {' / '.join(span(p.noise) for p in dr2)} drawn" in row
    assert f"JPEG {' / '.join(span(p.jpeg) for p in dr2)} " in row
    assert f"downsampling r {span(PRESETS['motion'].scale)} " in rows["`motion`"]
    assert f"{span(PRESETS['motion'].motion_length)} px" in rows["`motion`"]
    camera = PRESETS["camera"]
    assert f"(sigma {span(camera.sigma)}), downsampling r {span(camera.scale)}, JPEG {span(camera.jpeg)} " in rows["`camera`"]
    assert f"downsampling r {span(PRESETS['gray'].scale)}, then grayscale" in rows["`gray`"]


def test_a_link_up_or_to_dst_is_not_followed_so_a_rerun_never_degrades_its_own_copies(tree, tmp_path):
    """SRC/up -> .. led the walk out of SRC into DST beside it: the second run degraded its own copies
    (DST/up/dst/a.png) and each rerun found more "already done". A link that holds SRC is named and
    left out; DST is never walked, also not through a link to it."""
    out = tmp_path / "dst"
    write_image(tmp_path / "beside" / "x.png", face_like(32, 32))
    (tree / "up").symlink_to("..")
    (tree / "copies").symlink_to(out)
    first = run("degrade", tree, "--out", out, "--preset", "mild")
    assert first.exit_code == 0, first.output
    warning = (f"warning: skipped {tree / 'up'}: links to {tmp_path.resolve()}, which holds {tree}: following it would search outside {tree} "
               "and loop back into it (link to the folders you want instead)")
    assert first.output.splitlines()[0] == warning and "3 degraded with preset mild, 0 failed" in first.output
    again = run("degrade", tree, "--out", out, "--preset", "mild")
    assert again.exit_code == 0 and "0 degraded with preset mild, 3 already done, 0 failed" in again.output, again.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*") if ".facerestore" not in p.as_posix()) == [
        "a.png", "degradations.csv", "degradations.json", "sub/b.jpg", "sub/c.png"]
