"""NIQE: basicsr's implementation reached through our RGB [0, 1] convention gives basicsr's number
for the file, and a blurred face scores worse (higher) than the sharp one."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facerestore.errors import UsageError
from facerestore.metrics import compute
from facerestore.metrics.niqe import niqe


@pytest.fixture
def face_file(shared_data):
    path = shared_data / "faces-hq" / "ffhq" / "00001.png"  # a 512x512 FFHQ face
    if not path.is_file():
        pytest.skip("needs ../shared/data/faces-hq/ffhq/00001.png")
    return path


def test_equals_basicsr_on_the_same_file_and_blur_scores_worse(face_file):
    from basicsr.metrics import calculate_niqe

    from facerestore.image_io import read_image

    expected = calculate_niqe(cv2.imread(str(face_file)), crop_border=0)  # basicsr's own way: BGR uint8
    rgb = read_image(face_file).rgb
    sharp = niqe(rgb)
    assert sharp == pytest.approx(expected, abs=1e-9)
    blurred = niqe(cv2.GaussianBlur(rgb, (0, 0), 2.5))
    assert blurred > sharp + 2.0, (sharp, blurred)


def test_no_reference_needed_in_the_registry(face_file):
    result = compute("niqe", face_file)  # a path is accepted too
    assert result.ok and 0 < result.value < 20


def test_too_small_images_are_refused():
    with pytest.raises(UsageError, match="192x192"):
        niqe(np.zeros((128, 128, 3), np.float32))
