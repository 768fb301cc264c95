"""Landmark distance (LMD) with our detector's 5 landmarks, in 512-crop pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facerestore.metrics import compute
from facerestore.metrics import landmarks as lmd


def test_mean_euclidean_distance_scaled_to_512(monkeypatch):
    """The arithmetic, with the detector replaced by known landmarks."""
    base = np.arange(10, dtype=np.float64).reshape(5, 2) * 10
    moved = base + [[3, 4], [0, 0], [6, 8], [0, 0], [0, 0]]  # distances 5, 0, 10, 0, 0
    found = iter([moved, base, moved, base])
    monkeypatch.setattr(lmd, "face_landmarks", lambda image, detector="bundled": next(found))
    assert lmd.landmark_distance(np.zeros((512, 512, 3)), np.zeros((512, 512, 3))) == pytest.approx(3.0)
    # a 256 crop: 3 px there is 6 px of a 512 crop
    assert lmd.landmark_distance(np.zeros((256, 256, 3)), np.zeros((256, 256, 3))) == pytest.approx(6.0)


def test_no_face_makes_the_metric_unavailable_not_zero():
    blank = np.full((256, 256, 3), 0.5, np.float32)
    result = compute("lmd", blank, blank)
    assert result.status == "unavailable" and result.value is None and "no face" in result.reason


@pytest.fixture
def face(shared_data) -> np.ndarray:
    from facerestore.image_io import read_image

    path = shared_data / "faces-hq" / "ffhq" / "00016.png"
    if not path.is_file():
        pytest.skip("needs ../shared/data/faces-hq/ffhq/00016.png")
    return read_image(path).rgb


def test_identical_faces_are_at_distance_zero(face):
    assert lmd.landmark_distance(face, face) == 0.0
    points = lmd.face_landmarks(face)
    assert points.shape == (5, 2) and points[0, 0] < points[1, 0]  # left eye left of right eye


def test_a_shifted_face_moves_by_the_shift(face):
    """A 24 px translation: LMD is 24 px up to the detector's jitter (a few px for mobile0.25)."""
    shifted = cv2.warpAffine(face, np.float32([[1, 0, 24], [0, 1, 0]]), (512, 512), borderMode=cv2.BORDER_REFLECT)
    assert lmd.landmark_distance(shifted, face) == pytest.approx(24.0, abs=4.0)
