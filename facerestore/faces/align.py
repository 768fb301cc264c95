"""Alignment of a detected face to the FFHQ 5-point template (ANCHORS.md 1.3).

Every official backend was trained on crops made with this template, so the crop must match it:
similarity transform (rotation, uniform scale, translation), 512x512, gray constant border.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facerestore.errors import BadImage
from facerestore.image_io import from_samples

# left eye, right eye, nose, left mouth corner, right mouth corner (x, y) for a 512 crop
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
# facexlib's border value (135,133,132) is BGR; we work in RGB
BORDER_RGB = (132 / 255.0, 133 / 255.0, 135 / 255.0)


# how far an --aligned input may be from square: aligned crops are square by construction, and
# stretching a 4:3 photo to 512x512 gives a distorted face, not a restored one
SQUARE_TOLERANCE = 0.02
# The smallest side taken for an aligned face crop: below it no face is left to restore (a 1x1
# spacer or an 8x8 icon would be blown up to 512 and "restored" without a word). 16 px keeps the
# eyes of an FFHQ-aligned crop about 4 px apart, under detection's default --min-face of 5.
MIN_ALIGNED_SIDE = 16


ALIGNED_HINT = "aligned crops are square (FFHQ alignment, e.g. 512x512); for other photos drop --aligned"


def check_aligned_crop(height: int, width: int, source: object, hint: str = ALIGNED_HINT) -> None:
    """Refuse an input given as an aligned crop that cannot be one (not square, or too small to hold a face)."""
    if abs(height - width) > max(1.0, SQUARE_TOLERANCE * max(height, width)):  # a pixel of rounding in small crops
        raise BadImage(f"{source}: {width}x{height} is not a square aligned face crop", hint=hint)
    if min(height, width) < MIN_ALIGNED_SIDE:
        raise BadImage(f"{source}: {width}x{height} is too small to be an aligned face crop (at least {MIN_ALIGNED_SIDE} px a side)",
                       hint="crop the face from a larger image")


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and the affine maps between photo and crop coordinates."""

    crop: np.ndarray  # float32 SxSx3 RGB in [0,1]
    affine: np.ndarray  # 2x3, photo -> crop
    inverse: np.ndarray  # 2x3, crop -> photo

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping src points onto dst, as a 2x3 matrix.

    facexlib uses cv2.estimateAffinePartial2D with LMEDS, which samples random subsets; the
    closed form gives the same answer on exact landmarks and is deterministic on noisy ones.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 512) -> AlignedFace:
    """Warp the face with these 5 landmarks to a size x size crop on the FFHQ template.

    `image`: RGB float32 in [0, 1], or uint8 / uint16 samples, which are made float only where the
    crop reads them, a band of the crop's rows at a time: a float copy of a whole 48 MP photo would
    be 576 MB, and of a selfie's face alone 200 MB. The crop is the same either way."""
    template = FFHQ_TEMPLATE_512 * (size / 512.0)
    affine = similarity_transform(landmarks, template)
    if image.dtype.kind == "f":
        crop = _warp(image, affine, size, size)
    else:
        crop = np.empty((size, size, image.shape[2]), np.float32)
        for top in range(0, size, ALIGN_BAND):
            rows = min(ALIGN_BAND, size - top)
            band = affine.copy()
            band[1, 2] -= top  # the band's first row is row 0 of its own warp
            region, moved = _float_region(image, band, size, rows)
            crop[top : top + rows] = _warp(region, moved, size, rows)
    return AlignedFace(crop=crop.astype(np.float32, copy=False), affine=affine, inverse=cv2.invertAffineTransform(affine))


ALIGN_BAND = 16  # crop rows warped from one float region of integer samples


def _warp(image: np.ndarray, affine: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.warpAffine(image, affine, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_RGB)


def _float_region(samples: np.ndarray, affine: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of `samples` that a width x height warp by `affine` reads (its corners mapped back,
    plus the bilinear neighbours), as float [0, 1], with `affine` moved to that part's origin."""
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], dtype=np.float64)
    source = corners @ cv2.invertAffineTransform(affine).T
    rows, columns = samples.shape[:2]
    x0 = min(max(int(np.floor(source[:, 0].min())) - 2, 0), columns - 1)
    y0 = min(max(int(np.floor(source[:, 1].min())) - 2, 0), rows - 1)
    x1 = max(min(int(np.ceil(source[:, 0].max())) + 3, columns), x0 + 1)
    y1 = max(min(int(np.ceil(source[:, 1].max())) + 3, rows), y0 + 1)
    region = from_samples(samples[y0:y1, x0:x1])
    moved = affine.copy()
    moved[:, 2] += affine[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return region, moved
