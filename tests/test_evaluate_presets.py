"""Evaluation degradations: the fixed eq. 11 severities, per-image seeding, 8-bit inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facerestore.evaluation import presets
from facerestore.metrics.psnr import psnr
from facerestore.training.degradations import Eq11Ranges


def face_like(seed: int = 0, size: int = 512) -> np.ndarray:
    """A smooth random pattern in [0.15, 0.85] on 8-bit levels (enough structure for blur and JPEG to matter)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0.15, 0.85, size=(24, 24, 3)).astype(np.float32)
    return presets.quantize(np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), 0.15, 0.85))


def test_presets_are_the_training_validation_severities():
    from facerestore.training.train_baseline import VAL_SEVERITIES

    assert presets.SEVERITIES == VAL_SEVERITIES
    assert presets.PRESETS == ("mild", "medium", "severe", "eq11")


def test_same_seed_and_name_give_identical_inputs_whatever_else_changes():
    image = face_like()
    first, params = presets.degrade(image, "medium", seed=3, key="sub/face")
    again, params_again = presets.degrade(image.copy(), "medium", seed=3, key="sub/face")
    assert np.array_equal(first, again) and params == params_again
    # another image name, seed or preset: other noise
    assert not np.array_equal(first, presets.degrade(image, "medium", seed=3, key="sub/other")[0])
    assert not np.array_equal(first, presets.degrade(image, "medium", seed=4, key="sub/face")[0])
    # what a PNG stores: 8-bit levels, so the saved input is exactly what the methods see
    assert np.abs(np.round(first * 255.0) - first * 255.0).max() < 1e-3


def test_fixed_presets_get_worse_in_order_and_reproduce_their_psnr():
    image = face_like()
    scores = {name: psnr(presets.degrade(image, name, seed=0, key="face")[0], image) for name in presets.SEVERITIES}
    assert scores["mild"] > scores["medium"] > scores["severe"] > 15.0
    # regression guard for the evaluation inputs (pinned from this implementation, OpenCV JPEG):
    # a change here means reports made before and after are not comparable
    assert scores["mild"] == pytest.approx(37.52, abs=0.15)
    assert scores["severe"] == pytest.approx(18.90, abs=0.15)
    assert psnr(presets.degrade(image, "mild", seed=0, key="face")[0], image) == scores["mild"]


def test_eq11_draws_parameters_per_image_within_the_training_ranges():
    image = face_like(size=64)
    ranges = Eq11Ranges()
    drawn = [presets.degrade(image, "eq11", seed=0, key=f"face{i}")[1] for i in range(6)]
    assert len({p.sigma for p in drawn}) == 6
    for p in drawn:
        assert ranges.sigma[0] <= p.sigma <= ranges.sigma[1] and ranges.scale[0] <= p.scale <= ranges.scale[1]
        assert ranges.noise[0] <= p.noise <= ranges.noise[1] and ranges.jpeg[0] <= p.jpeg <= ranges.jpeg[1]
    assert presets.degrade(image, "eq11", seed=0, key="face3")[1] == drawn[3]
    assert presets.preset_params("eq11") is None and presets.preset_params("mild")["jpeg"] == 85


def test_unknown_preset_is_a_usage_error():
    from facerestore.errors import UsageError

    with pytest.raises(UsageError, match="not a degradation preset"):
        presets.degrade(face_like(size=32), "extreme", seed=0, key="x")


def test_seeds_that_differ_above_32_bits_give_other_inputs():
    image = face_like(size=64)
    first = presets.degrade(image, "mild", seed=5, key="face")[0]
    assert not np.array_equal(first, presets.degrade(image, "mild", seed=5 + 2**32, key="face")[0])
    assert not np.array_equal(first, presets.degrade(image, "mild", seed=5 + 2**62, key="face")[0])
    top = presets.degrade(image, "eq11", seed=2**63 - 1, key="face")  # the largest --seed works
    assert top[0].shape == image.shape
