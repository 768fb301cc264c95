"""PSNR as the face-restoration papers report it (basicsr's `calculate_psnr` conventions).

10*log10(255^2 / MSE) on the 0..255 scale, over RGB (the default of GFPGAN/VQFR/CodeFormer-style
evaluations) or over the BT.601 Y channel (`y_channel=True`, the super-resolution habit), after
dropping `crop_border` pixels on each side. Identical images give +inf, as in basicsr.
Written with numpy rather than by calling basicsr, whose import takes about 10 s; the tests check
that both agree.
"""

from __future__ import annotations

import math

import numpy as np

from facerestore.metrics.images import ImageLike, prepare_pair

PEAK = 255.0


def psnr(
    restored: ImageLike,
    reference: ImageLike,
    *,
    crop_border: int = 0,
    y_channel: bool = False,
    quantize: bool = True,
) -> float:
    """Peak signal-to-noise ratio in dB (higher is better; +inf for identical images)."""
    a, b = prepare_pair(restored, reference, crop_border=crop_border, y_channel=y_channel, quantize=quantize)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(PEAK * PEAK / mse)
