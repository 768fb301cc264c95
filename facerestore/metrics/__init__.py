"""The image-quality metrics the face-restoration papers report, behind one small registry.

    compute("psnr", restored, reference)           -> MetricResult(value=27.31)
    compute("lpips", restored, reference)          -> MetricResult(value=None, status="unavailable",
                                                      reason="LPIPS-vgg is unavailable: vgg16-... ")
    compute_all(restored, reference)               -> {name: MetricResult} for every per-image metric

Images are float32 RGB HxWx3 numpy arrays in [0, 1] (see `metrics.images` for what else is
accepted); FID takes two sets (folders, lists of files or images). A metric that cannot run here
(missing weights or package, no face found) is reported as unavailable with its one-line reason,
and a metric that breaks is reported as failed: one metric never stops the others. Modules are
imported on first use, so `import facerestore.metrics` stays cheap.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable, Literal

from facerestore.errors import FaceRestoreError, NoFaceFound, UsageError, WeightsError
from facerestore.metrics.result import MetricResult, MetricUnavailable

__all__ = ["METRICS", "MetricResult", "MetricSpec", "MetricUnavailable", "compute", "compute_all", "metric_failure", "metric_names"]


@dataclass(frozen=True)
class MetricSpec:
    """What a report needs to know about a metric, and where its function lives."""

    name: str
    module: str
    function: str
    summary: str
    better: Literal["higher", "lower"]
    needs_reference: bool = True
    on_sets: bool = False  # FID compares two sets of images, not two images

    def load(self) -> Callable[..., float]:
        return getattr(import_module(self.module), self.function)


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("psnr", "facerestore.metrics.psnr", "psnr", "PSNR in dB, 8-bit scale, over the RGB channels", "higher"),
        MetricSpec("ssim", "facerestore.metrics.ssim", "ssim", "SSIM (Wang et al., 11x11 Gaussian), mean over the RGB channels", "higher"),
        MetricSpec("lpips", "facerestore.metrics.lpips", "lpips_distance", "LPIPS v0.1 with the VGG16 backbone", "lower"),
        MetricSpec("identity", "facerestore.metrics.identity", "identity_similarity", "ArcFace (w600k_mbf) cosine similarity", "higher"),
        MetricSpec("identity_deg", "facerestore.metrics.identity", "identity_degree", "ArcFace embedding angle in degrees (\"Deg.\")", "lower"),
        MetricSpec("lmd", "facerestore.metrics.landmarks", "landmark_distance", "mean distance of the 5 landmarks, 512-crop pixels", "lower"),
        MetricSpec("niqe", "facerestore.metrics.niqe", "niqe", "NIQE, no reference (basicsr, MATLAB pristine model)", "lower", needs_reference=False),
        MetricSpec("fid", "facerestore.metrics.fid", "fid", "FID between two sets (FID Inception pool3)", "lower", on_sets=True),
    )
}
UNAVAILABLE = (MetricUnavailable, WeightsError, NoFaceFound)


def metric_names() -> list[str]:
    return list(METRICS)


def _spec(name: str) -> MetricSpec:
    if name not in METRICS:
        raise UsageError(f"unknown metric {name!r}", hint=f"choose from: {', '.join(METRICS)}")
    return METRICS[name]


def compute(name: str, restored: Any, reference: Any = None, **options: Any) -> MetricResult:
    """Run one metric; every failure comes back as a MetricResult with a reason, never raised.

    Only an unknown metric name raises (UsageError): that is a mistake in the caller, not a result.
    """
    spec = _spec(name)
    if spec.needs_reference and reference is None:
        return MetricResult(name, None, "unavailable", "needs a reference image (full-reference metric)")
    start = time.perf_counter()
    try:
        function = spec.load()
        value = function(restored, reference, **options) if spec.needs_reference else function(restored, **options)
    except Exception as exc:  # noqa: BLE001 - a report must survive a broken metric
        return metric_failure(name, exc, time.perf_counter() - start)
    return MetricResult(name, float(value), "ok", "", time.perf_counter() - start)


def metric_failure(name: str, exc: Exception, seconds: float = 0.0) -> MetricResult:
    """The result of metric `name` that raised `exc`: unavailable (missing weights or package, no face
    found) or failed, with its one-line reason (also for work done ahead for it, as FID's reference)."""
    if isinstance(exc, UNAVAILABLE):
        return MetricResult(name, None, "unavailable", exc.one_line(), seconds)
    if isinstance(exc, FaceRestoreError):
        return MetricResult(name, None, "failed", exc.one_line(), seconds)
    return MetricResult(name, None, "failed", f"{type(exc).__name__}: {exc}", seconds)


def compute_all(
    restored: Any,
    reference: Any = None,
    names: Iterable[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, MetricResult]:
    """Several metrics on one pair (or one image when no reference): {name: MetricResult}.

    By default every per-image metric that applies (the no-reference ones only when `reference`
    is None). `options` gives keyword arguments per metric, e.g. {"psnr": {"y_channel": True}}.
    Inputs are decoded once and shared by all metrics.
    """
    options = options or {}
    if names is None:
        names = [n for n, s in METRICS.items() if not s.on_sets and (reference is not None or not s.needs_reference)]
    names = list(names)
    for name in names:
        _spec(name)
    if not any(METRICS[n].on_sets for n in names):
        from facerestore.metrics.images import as_image

        try:
            restored = as_image(restored)
            reference = None if reference is None else as_image(reference)
        except Exception as exc:  # noqa: BLE001 - an unreadable input fails every metric, reported alike
            reason = exc.one_line() if isinstance(exc, FaceRestoreError) else f"{type(exc).__name__}: {exc}"
            return {name: MetricResult(name, None, "failed", reason) for name in names}
    return {name: compute(name, restored, reference, **options.get(name, {})) for name in names}
