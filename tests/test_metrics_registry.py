"""The registry: every metric reports a value or a reason, and one failing metric never stops the rest."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facerestore.errors import UsageError
from facerestore.metrics import METRICS, MetricResult, compute, compute_all, metric_names


def pair(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    reference = (rng.integers(26, 204, (size, size, 3)) / 255.0).astype(np.float32)
    return reference + 2 / 255.0, reference


def test_every_metric_of_the_papers_is_registered():
    assert set(metric_names()) == {"psnr", "ssim", "lpips", "identity", "identity_deg", "lmd", "niqe", "fid"}
    for spec in METRICS.values():
        assert callable(spec.load())  # every module imports and names a real function


def test_a_value_comes_back_with_its_timing():
    restored, reference = pair()
    result = compute("psnr", restored, reference)
    assert result.ok and result.value == pytest.approx(20 * math.log10(255 / 2), abs=1e-9)
    assert result.seconds >= 0 and str(result).startswith("psnr: 42.11")
    assert compute("psnr", reference, reference).value == math.inf
    assert str(compute("psnr", reference, reference)) == "psnr: inf"


def test_options_reach_the_metric():
    restored, reference = pair()
    rgb = compute("psnr", restored, reference).value
    y = compute("psnr", restored, reference, y_channel=True).value
    assert y == pytest.approx(20 * math.log10(255 / (2 * 219 / 255)), abs=1e-9) and y != rgb


def test_missing_reference_is_a_reason_not_a_crash():
    result = compute("ssim", pair()[0])
    assert result == MetricResult("ssim", None, "unavailable", "needs a reference image (full-reference metric)")


def test_a_broken_input_is_reported_as_failed():
    restored, reference = pair()
    result = compute("ssim", restored, reference[:32])
    assert result.status == "failed" and result.value is None and "reference is 64x32" in result.reason
    result = compute("psnr", restored, reference, no_such_option=1)
    assert result.status == "failed" and "no_such_option" in result.reason


def test_unknown_metric_names_raise():
    with pytest.raises(UsageError, match="unknown metric 'psnrr'"):
        compute("psnrr", *pair())
    with pytest.raises(UsageError):
        compute_all(*pair(), names=["psnr", "nope"])


def test_compute_all_keeps_going_past_unavailable_metrics():
    """Offline with no weights: LPIPS and identity are unavailable, LMD finds no face (random
    pixels), and PSNR/SSIM still come back with values."""
    restored, reference = pair()
    results = compute_all(restored, reference, names=["psnr", "ssim", "lpips", "identity", "lmd"], options={"psnr": {"y_channel": True}})
    assert list(results) == ["psnr", "ssim", "lpips", "identity", "lmd"]
    assert results["psnr"].ok and results["psnr"].value == pytest.approx(20 * math.log10(255 / (2 * 219 / 255)), abs=1e-9)
    assert results["ssim"].ok and 0.9 < results["ssim"].value < 1.0
    for name in ("lpips", "identity", "lmd"):
        assert results[name].status == "unavailable" and results[name].value is None and results[name].reason


def test_compute_all_defaults():
    restored, reference = pair()
    assert set(compute_all(restored, reference, names=None).keys()) == {n for n, s in METRICS.items() if not s.on_sets}
    only_no_reference = compute_all(restored, names=None)
    assert list(only_no_reference) == ["niqe"]
    assert only_no_reference["niqe"].status == "failed" and "192x192" in only_no_reference["niqe"].reason


def test_an_unreadable_input_fails_every_metric_alike(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    results = compute_all(bad, pair()[1], names=["psnr", "ssim"])
    assert all(r.status == "failed" and "broken.png" in r.reason for r in results.values())
