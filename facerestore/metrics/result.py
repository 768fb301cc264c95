"""How a metric says it cannot run: a clear marker, never a fake or silently dropped number.

A metric whose checkpoint or package is missing raises `MetricUnavailable` (one line naming what is
missing and how to get it); the registry turns it into a `MetricResult` with no value and that
reason, so an evaluation report still runs every other metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

from facerestore.errors import FaceRestoreError, WeightsError

Status = Literal["ok", "unavailable", "failed"]


class MetricUnavailable(FaceRestoreError):
    """A metric cannot run on this machine (missing weights or package); nothing was computed."""


@dataclass(frozen=True)
class MetricResult:
    """One metric's outcome: a value, or the reason there is none."""

    name: str
    value: float | None
    status: Status = "ok"
    reason: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.name}: {self.status} ({self.reason})"
        from facerestore.metrics.json_numbers import json_number

        return f"{self.name}: {f'{self.value:.4f}' if math.isfinite(self.value) else json_number(self.value)}"


def resolve_weights(metric: str, weights: str | Path, *, offline: bool | None = None) -> Path:
    """A verified local checkpoint (catalogue name or file path), or `MetricUnavailable` saying
    which file is missing, where it comes from and the `facerestore weights import` command."""
    from facerestore.weights.store import resolve_explicit

    try:
        return resolve_explicit(weights, offline=offline)
    except WeightsError as exc:
        raise MetricUnavailable(f"{metric} is unavailable: {exc}", hint=exc.hint) from None


def require_package(metric: str, module: str, pip_name: str | None = None) -> ModuleType:
    """Import an optional package, or `MetricUnavailable` naming the pip command."""
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError:
        raise MetricUnavailable(
            f"{metric} is unavailable: the Python package '{pip_name or module}' is not installed",
            hint=f"run `pip install {pip_name or module}`",
        ) from None
