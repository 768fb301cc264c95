"""Metric values in JSON: finite ones rounded, inf / -inf / nan as text, and read back."""

from __future__ import annotations

import json
import math

from facerestore.metrics import MetricResult
from facerestore.metrics.json_numbers import json_number, read_json_number


def test_non_finite_values_become_text_and_finite_ones_are_rounded():
    assert json_number(math.inf, 3) == "inf"
    assert json_number(-math.inf, 3) == "-inf"
    assert json_number(math.nan, 3) == "nan"
    assert json_number(27.314159, 3) == 27.314
    assert json_number(27.314159, 4) == 27.3142
    assert json_number(27.314159) == 27.314159  # no digits: the value as is
    assert json_number(None, 3) is None
    assert json.dumps([json_number(v, 2) for v in (math.inf, -math.inf, math.nan, 1.005)], allow_nan=False) == '["inf", "-inf", "nan", 1.0]'


def test_read_json_number_is_the_inverse():
    assert read_json_number("inf") == math.inf
    assert read_json_number("-inf") == -math.inf
    assert math.isnan(read_json_number("nan"))
    assert read_json_number(27.314) == 27.314
    assert read_json_number(None) is None


def test_a_metric_line_shows_the_same_text():
    assert str(MetricResult("psnr", math.inf)) == "psnr: inf"
    assert str(MetricResult("psnr", -math.inf)) == "psnr: -inf"  # was "inf": the sign was lost
    assert str(MetricResult("psnr", 27.314159)) == "psnr: 27.3142"
