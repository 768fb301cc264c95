"""Synthetic degradations for training and evaluation (IDM eq. 11, following GFPGAN's pipeline).

    x_d = [ (x (*) k_sigma) downsampled by r  + n_delta ]_JPEG_q , then resized back to the input size

with sigma in [0.2, 10], r in [1, 8], delta in [0, 15] (on the 0-255 scale) and q in [50, 100]
(Zhao et al. 2023, sec. 4.1). Like GFPGAN, the blur kernel is 41x41, the resizes are bilinear and
JPEG goes through OpenCV. Parameters are drawn from a numpy Generator and returned with the image, so
every degraded sample can be reproduced and reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

BLUR_KERNEL_SIZE = 41


@dataclass(frozen=True)
class Eq11Ranges:
    """Closed intervals the parameters are drawn from (uniformly)."""

    sigma: tuple[float, float] = (0.2, 10.0)
    scale: tuple[float, float] = (1.0, 8.0)
    noise: tuple[float, float] = (0.0, 15.0)
    jpeg: tuple[float, float] = (50.0, 100.0)


@dataclass(frozen=True)
class Eq11Params:
    sigma: float  # Gaussian blur std in pixels
    scale: float  # downsampling factor r
    noise: float  # Gaussian noise std on the 0-255 scale
    jpeg: int  # JPEG quality

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def sample_eq11(rng: np.random.Generator, ranges: Eq11Ranges = Eq11Ranges()) -> Eq11Params:
    return Eq11Params(
        sigma=float(rng.uniform(*ranges.sigma)),
        scale=float(rng.uniform(*ranges.scale)),
        noise=float(rng.uniform(*ranges.noise)),
        jpeg=int(round(rng.uniform(*ranges.jpeg))),
    )


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip float RGB [0,1] through an OpenCV JPEG encoder at this quality."""
    bgr = np.round(np.clip(image, 0, 1)[..., ::-1] * 255.0).astype(np.uint8)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buffer, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def apply_eq11(image: np.ndarray, params: Eq11Params, rng: np.random.Generator) -> np.ndarray:
    """Degrade float32 RGB HxWx3 in [0,1]; the result has the input's size and lies in [0,1]."""
    height, width = image.shape[:2]
    x = cv2.GaussianBlur(image.astype(np.float32), (BLUR_KERNEL_SIZE, BLUR_KERNEL_SIZE), params.sigma, borderType=cv2.BORDER_REFLECT_101)
    small = (max(1, round(width / params.scale)), max(1, round(height / params.scale)))
    x = cv2.resize(x, small, interpolation=cv2.INTER_LINEAR)
    if params.noise > 0:
        x = x + rng.normal(0.0, params.noise / 255.0, size=x.shape).astype(np.float32)
    x = jpeg_compress(np.clip(x, 0.0, 1.0), params.jpeg)
    x = cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(x, 0.0, 1.0)


def degrade_eq11(image: np.ndarray, rng: np.random.Generator, ranges: Eq11Ranges = Eq11Ranges()) -> tuple[np.ndarray, Eq11Params]:
    """Draw parameters and apply them: (degraded image, parameters used)."""
    params = sample_eq11(rng, ranges)
    return apply_eq11(image, params, rng), params
