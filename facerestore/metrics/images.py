"""The one input convention of the metrics, and the conversions at its edges.

Every metric takes images as float32 RGB HxWx3 numpy arrays in [0, 1] (what `image_io.read_image`
and `faces.align_face` produce). `as_image` also accepts what the rest of the program hands over:
a uint8 HxWx3 array (0..255), a gray HxW array, a torch tensor [3,H,W] or [1,3,H,W] in [0, 1]
(a method's output, one face at a time), or a path to an image file.

The papers compute PSNR/SSIM/NIQE with basicsr on 8-bit files on the 0..255 scale; `to_255` gives
that scale, rounding to 8-bit levels by default so a value computed in memory equals the value
computed on the saved PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from facerestore.errors import UsageError

if TYPE_CHECKING:
    import torch

ImageLike = Union[np.ndarray, "torch.Tensor", str, Path]

# ITU-R BT.601 luma on the 0..255 scale with the 16..235 "studio" range: MATLAB's rgb2ycbcr, which
# basicsr's `to_y_channel` (and so every face-restoration paper's "Y channel") reproduces.
Y_WEIGHTS_RGB = np.array([65.481, 128.553, 24.966]) / 255.0
Y_OFFSET = 16.0
# floats above this are 0..255 images passed by mistake; a net's slight overshoot (1.02) is clipped
MAX_FLOAT = 1.5


def as_image(image: ImageLike) -> np.ndarray:
    """Any accepted input -> float32 RGB HxWx3 in [0, 1] (see the module docstring)."""
    if isinstance(image, (str, Path)):
        from facerestore.image_io import read_image

        return read_image(Path(image)).rgb
    if not isinstance(image, np.ndarray):
        image = _tensor_to_array(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif not np.issubdtype(image.dtype, np.floating):
        raise UsageError(f"metric input has dtype {image.dtype}", hint="pass float images in [0, 1] or uint8 images")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"metric input has shape {image.shape}", hint="pass one RGB image, HxWx3 (or a tensor [3,H,W])")
    if not np.isfinite(image).all():
        raise UsageError("metric input contains NaN or infinite values", hint="check the restoration output")
    if image.size and float(image.max()) > MAX_FLOAT:
        raise UsageError(f"float metric input reaches {float(image.max()):g}: expected [0, 1]", hint="divide 0..255 images by 255 (or pass uint8)")
    return np.ascontiguousarray(image, dtype=np.float32)


def _tensor_to_array(tensor: Any) -> np.ndarray:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is None or not isinstance(tensor, torch.Tensor):
        raise UsageError(f"metric input is a {type(tensor).__name__}", hint="pass a numpy image, a torch tensor or a file path")
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise UsageError(f"metric input is a batch of {tensor.shape[0]} images", hint="pass one image at a time (batch[i])")
        tensor = tensor[0]
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise UsageError(f"metric input tensor has shape {tuple(tensor.shape)}", hint="pass a tensor [3,H,W] or [1,3,H,W] in [0, 1]")
    array = tensor.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)
    return array[..., 0] if array.shape[2] == 1 else array


def same_shape(restored: np.ndarray, reference: np.ndarray) -> None:
    """Full-reference metrics compare pixel to pixel: refuse two sizes rather than resize silently."""
    if restored.shape != reference.shape:
        raise UsageError(
            f"restored image is {restored.shape[1]}x{restored.shape[0]} but the reference is {reference.shape[1]}x{reference.shape[0]}",
            hint="compare images of the same size (restored crops against reference crops)",
        )


def to_255(image: np.ndarray, *, quantize: bool = True) -> np.ndarray:
    """[0, 1] -> float64 on the 0..255 scale, rounded to 8-bit levels unless `quantize` is False."""
    scaled = np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0
    return np.round(scaled) if quantize else scaled


def rgb_to_y(image_255: np.ndarray) -> np.ndarray:
    """RGB on the 0..255 scale -> the BT.601 Y channel (16..235), HxW, not rounded (as basicsr)."""
    return image_255 @ Y_WEIGHTS_RGB + Y_OFFSET


def crop(image: np.ndarray, border: int) -> np.ndarray:
    """Drop `border` pixels on each side (basicsr's crop_border), which the metric then ignores."""
    if border < 0:
        raise UsageError(f"crop_border {border} is negative")
    if border == 0:
        return image
    if 2 * border >= min(image.shape[:2]):
        raise UsageError(f"crop_border {border} leaves nothing of a {image.shape[1]}x{image.shape[0]} image")
    return image[border:-border, border:-border, ...]


def prepare_pair(
    restored: ImageLike, reference: ImageLike, *, crop_border: int, y_channel: bool, quantize: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Both images on the 0..255 scale, cropped, as HxWxC (C = 1 for the Y channel, else 3)."""
    a, b = as_image(restored), as_image(reference)
    same_shape(a, b)
    a, b = crop(to_255(a, quantize=quantize), crop_border), crop(to_255(b, quantize=quantize), crop_border)
    if y_channel:
        a, b = rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    return a, b
