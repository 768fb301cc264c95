"""Metric values in JSON files: JSON has no infinity or NaN, so those are written as text.

The PSNR of two identical images is +inf (a perfect pass-through, a face already clean), and
every report and manifest that holds a PSNR must say so without breaking strict JSON readers:

    json_number(27.314159, 3)   -> 27.314
    json_number(math.inf, 3)    -> "inf"        (also "-inf" and "nan")
    read_json_number("inf")     -> math.inf
"""

from __future__ import annotations

import math


def json_number(value: float | None, digits: int | None = None) -> float | str | None:
    """`value` for a JSON file: rounded to `digits` (as is when None) if finite, else "inf", "-inf" or "nan"."""
    if value is None:
        return None
    if math.isfinite(value):
        return value if digits is None else round(value, digits)
    return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"


def read_json_number(value: float | str | None) -> float | None:
    """The float that `json_number` wrote ("inf", "-inf", "nan" included); None stays None."""
    return None if value is None else float(value)


__all__ = ["json_number", "read_json_number"]
