"""SSIM as the face-restoration papers report it (basicsr's `calculate_ssim`, i.e. Wang et al.'s
MATLAB reference): 11x11 Gaussian window with sigma 1.5, K1=0.01, K2=0.03, L=255, statistics over
the "valid" region only (5 pixels lost on each side), computed per channel and averaged.

Written with cv2/numpy rather than by calling basicsr, whose import takes about 10 s, so that the
fast metrics stay fast; the tests check it against basicsr and scikit-image on the same pairs.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from facerestore.errors import UsageError
from facerestore.metrics.images import ImageLike, prepare_pair

WINDOW = 11
SIGMA = 1.5
C1 = (0.01 * 255.0) ** 2
C2 = (0.03 * 255.0) ** 2


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    kernel = cv2.getGaussianKernel(WINDOW, SIGMA)
    return kernel @ kernel.T


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Local SSIM of two single-channel float64 images on the 0..255 scale, valid region only."""
    window, half = _window(), WINDOW // 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, window)[half:-half, half:-half]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))


def ssim(
    restored: ImageLike,
    reference: ImageLike,
    *,
    crop_border: int = 0,
    y_channel: bool = False,
    quantize: bool = True,
) -> float:
    """Structural similarity in [-1, 1] (higher is better; 1 for identical images)."""
    a, b = prepare_pair(restored, reference, crop_border=crop_border, y_channel=y_channel, quantize=quantize)
    if min(a.shape[:2]) <= WINDOW:
        raise UsageError(f"SSIM needs images larger than {WINDOW}x{WINDOW} after cropping, got {a.shape[1]}x{a.shape[0]}")
    return float(np.mean([ssim_map(a[..., c], b[..., c]).mean() for c in range(a.shape[2])]))
