"""NIQE (Mittal et al. 2013), the no-reference naturalness score of the face-restoration papers.

Computed by basicsr's `calculate_niqe` with the pristine-image model bundled in basicsr
(`niqe_pris_params.npz`, the parameters of the official MATLAB release), on the BT.601 Y channel of
the 8-bit image, 96x96 blocks, two scales: the numbers the papers print. Lower is better.

Runtime: about 0.3 s of CPU per 512x512 image (25 blocks x 2 scales of AGGD fits, single-threaded
numpy), plus 7-10 s once per process to import basicsr, which is why it is imported here lazily.
"""

from __future__ import annotations

import numpy as np

from facerestore.errors import UsageError
from facerestore.metrics.images import ImageLike, as_image, to_255
from facerestore.metrics.result import require_package

METRIC = "NIQE"
BLOCK = 96


def niqe(image: ImageLike, *, crop_border: int = 0, convert_to: str = "y") -> float:
    """NIQE of one image (no reference; lower is better). `convert_to` is "y" (the papers) or "gray"."""
    rgb = as_image(image)
    height, width = rgb.shape[:2]
    if min(height, width) - 2 * crop_border < 2 * BLOCK:
        raise UsageError(f"NIQE needs at least {2 * BLOCK}x{2 * BLOCK} pixels after cropping, got {width}x{height}")
    require_package(METRIC, "basicsr", "basicsr-fixed")
    from basicsr.metrics.niqe import calculate_niqe

    bgr_255 = to_255(rgb)[..., ::-1]  # basicsr reads images with cv2: BGR, 0..255
    return float(calculate_niqe(np.ascontiguousarray(bgr_255), crop_border, input_order="HWC", convert_to=convert_to))
