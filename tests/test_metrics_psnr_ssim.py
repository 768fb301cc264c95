"""PSNR and SSIM: closed forms, and agreement with basicsr (the papers' code) and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facerestore.errors import UsageError
from facerestore.metrics.psnr import psnr
from facerestore.metrics.ssim import C1, ssim

LEVELS = 255.0


def smooth_face_like(seed: int, size: int = 64) -> np.ndarray:
    """Random 8-bit image in [0.1, 0.8], so a small offset never clips."""
    rng = np.random.default_rng(seed)
    return (rng.integers(26, 204, size=(size, size, 3)) / LEVELS).astype(np.float32)


def noisy_pair(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    clean = np.stack([0.5 + 0.3 * np.sin(6 * x), 0.5 + 0.3 * np.cos(5 * y), 0.4 + 0.2 * np.sin(4 * (x + y))], -1)
    noisy = np.clip(clean + 0.05 * rng.standard_normal(clean.shape), 0, 1)
    return np.round(clean * LEVELS) / LEVELS, np.round(noisy * LEVELS) / LEVELS


@pytest.mark.parametrize("offset", [1, 3, 10])
def test_psnr_of_a_constant_offset_is_the_closed_form(offset):
    reference = smooth_face_like(0)
    restored = reference + offset / LEVELS
    assert psnr(restored, reference) == pytest.approx(20 * math.log10(255.0 / offset), abs=1e-9)


def test_psnr_y_channel_of_a_gray_offset_is_the_closed_form():
    """An offset d in R, G and B moves BT.601 Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219/255."""
    reference = smooth_face_like(1)
    restored = reference + 5 / LEVELS
    expected = 20 * math.log10(255.0 / (5 * 219.0 / 255.0))
    assert psnr(restored, reference, y_channel=True) == pytest.approx(expected, abs=1e-9)


def test_psnr_of_identical_images_is_infinite():
    image = smooth_face_like(2)
    assert psnr(image, image) == math.inf


def test_psnr_crop_border_ignores_the_border():
    reference = smooth_face_like(3)
    restored = reference.copy()
    restored[:4] = 1.0 - restored[:4]  # damage only the top 4 rows
    assert psnr(restored, reference, crop_border=4) == math.inf
    assert psnr(restored, reference) < 30


def test_psnr_accepts_tensors_and_uint8_alike():
    import torch

    reference, restored = noisy_pair(4)
    expected = psnr(restored, reference)
    as_tensor = torch.from_numpy(restored.astype(np.float32).transpose(2, 0, 1))[None]
    as_uint8 = np.round(reference * LEVELS).astype(np.uint8)
    assert psnr(as_tensor, as_uint8) == pytest.approx(expected, abs=1e-9)


def test_float_images_on_the_255_scale_and_nan_are_refused():
    image = smooth_face_like(0)
    with pytest.raises(UsageError, match="expected \\[0, 1\\]"):
        psnr(image * 255.0, image)
    broken = image.copy()
    broken[0, 0, 0] = np.nan
    with pytest.raises(UsageError, match="NaN"):
        ssim(broken, image)


def test_different_sizes_are_refused():
    with pytest.raises(UsageError, match="64x64 but the reference is 32x32"):
        psnr(smooth_face_like(0, 64), smooth_face_like(0, 32))


def test_ssim_of_identical_images_is_one():
    image, _ = noisy_pair(5)
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    assert ssim(image, image, y_channel=True) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_two_constant_images_is_the_luminance_term():
    """No variance, no covariance: SSIM = (2ab + C1) / (a^2 + b^2 + C1) on the 0..255 scale."""
    a, b = 100.0, 130.0
    restored = np.full((32, 32, 3), a / LEVELS, np.float32)
    reference = np.full((32, 32, 3), b / LEVELS, np.float32)
    assert ssim(restored, reference) == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), rel=1e-9)


@pytest.mark.parametrize("crop_border, y_channel", [(0, False), (0, True), (4, False), (4, True)])
def test_psnr_and_ssim_match_basicsr(crop_border, y_channel):
    from basicsr.metrics import calculate_psnr, calculate_ssim

    reference, restored = noisy_pair(6)
    # basicsr's inputs: BGR, 0..255 (as cv2.imread gives)
    ref_bgr, res_bgr = (np.round(x[..., ::-1] * LEVELS) for x in (reference, restored))
    expected_psnr = calculate_psnr(res_bgr, ref_bgr, crop_border, test_y_channel=y_channel)
    expected_ssim = calculate_ssim(res_bgr, ref_bgr, crop_border, test_y_channel=y_channel)
    assert psnr(restored, reference, crop_border=crop_border, y_channel=y_channel) == pytest.approx(expected_psnr, abs=1e-4)
    assert ssim(restored, reference, crop_border=crop_border, y_channel=y_channel) == pytest.approx(expected_ssim, abs=1e-6)


def test_ssim_matches_scikit_image_gaussian_ssim():
    """skimage with Wang et al.'s settings (Gaussian sigma 1.5, population covariance) crops the same 5 pixels."""
    from skimage.metrics import structural_similarity

    reference, restored = noisy_pair(7)
    expected = structural_similarity(
        np.round(restored * LEVELS), np.round(reference * LEVELS), channel_axis=-1, data_range=255,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )
    assert ssim(restored, reference) == pytest.approx(expected, abs=1e-6)
    assert 0.3 < expected < 0.99  # a real, imperfect pair
