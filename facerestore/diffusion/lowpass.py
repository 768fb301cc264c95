"""Phi_N(x) = up(down(x)): the low-pass filter of DR2 (eq. 10) and Kuai et al. 2025 (Alg. 1).

Both reference codes (Kaldwin0106/DR2_Drgradation_Remover `DRDR/resizer.py`, SamsungLabs/DT-BFR
`resizer.py`; the two files are identical) use Assaf Shocher's PyTorch `Resizer`, a port of
MATLAB's imresize, built as `down = Resizer(shape, 1/N)` and `up = Resizer(shape / N, N)` with
its defaults. This module rebuilds the same linear operator as dense separable matrices:

- kernel: Keys cubic with a = -0.5, support 4 input pixels;
- antialiasing when downscaling (scale s < 1): kernel s * cubic(s * d), support 4 / s;
- geometry: output pixel j (1-based) sits at input coordinate
  u = (j - (out - in * s) / 2) / s + 0.5 (1 - 1/s); taps at floor(u - support/2) + k,
  k = 0..ceil(support) + 1;
- each output's weights are normalised to sum to 1 BEFORE boundary folding;
- boundary: symmetric ("half-sample") reflection, index -1 -> 0, n -> n-1, applied periodically
  (mod 2n) as the reference's `mirror` array does.

Matrices are built once per (length, scale) in float64, then cached per device and dtype; the
filter is two small matmuls per axis, batched over any leading dimensions.

Differences from the reference, none of which change results for the sizes the methods use (H
and W divisible by N): (1) the reference computes the low-resolution size as ceil(H * (1/N)) in
floating point and builds `up` for H // N, so it breaks when N does not divide H; here the low-res
size is ceil(H / N) in exact integer arithmetic and `up` maps it back to exactly H with scale N
(the reference's own centring rule for scale and size given together). (2) The reference keeps
float32 weights; here they are float64 until cast to x's dtype. basicsr's MATLAB imresize (used
by the tests as an independent check) agrees for integer ratios; it pads by copying one mirrored
strip, which only differs (it fails) when the kernel is wider than the image.
"""

from __future__ import annotations

import functools
import math

import torch

from ..errors import UsageError


def cubic(d: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB imresize 'bicubic')."""
    ad = d.abs()
    ad2, ad3 = ad**2, ad**3
    inner = (1.5 * ad3 - 2.5 * ad2 + 1) * (ad <= 1)
    outer = (-0.5 * ad3 + 2.5 * ad2 - 4 * ad + 2) * ((ad > 1) & (ad <= 2))
    return inner + outer


@functools.lru_cache(maxsize=64)
def _resize_matrix64(in_len: int, out_len: int, scale: float) -> torch.Tensor:
    antialias = scale < 1
    support = 4.0 / scale if antialias else 4.0
    out_coords = torch.arange(1, out_len + 1, dtype=torch.float64)
    shifted = out_coords - (out_len - in_len * scale) / 2
    match = shifted / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(match - support / 2)
    taps = math.ceil(support) + 2
    field = left[:, None].long() + torch.arange(taps)[None, :] - 1  # 0-based input indices
    distance = match[:, None] - field.double() - 1
    weights = scale * cubic(scale * distance) if antialias else cubic(distance)
    sums = weights.sum(dim=1, keepdim=True)
    weights = weights / torch.where(sums == 0, torch.ones_like(sums), sums)
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    field = mirror[torch.remainder(field, 2 * in_len)]
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    matrix.scatter_add_(1, field, weights)
    return matrix


def resize_matrix(in_len: int, out_len: int, scale: float) -> torch.Tensor:
    """The [out_len, in_len] float64 matrix of a 1-D MATLAB-style cubic resize by `scale`."""
    if in_len < 1 or out_len < 1 or not scale > 0:
        raise UsageError(f"cannot resize {in_len} -> {out_len} pixels by scale {scale}")
    return _resize_matrix64(int(in_len), int(out_len), float(scale)).clone()


@functools.lru_cache(maxsize=64)
def _axis_operators(length: int, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached for the whole process: built as normal tensors (fresh copies, even when the first call
    # runs under torch.inference_mode) so later autograd code such as fine-tuning may use them.
    low = -(-length // n)
    with torch.inference_mode(False):
        down = _resize_matrix64(length, low, 1.0 / n).to(device=device, dtype=dtype, copy=True)
        up = _resize_matrix64(low, length, float(n)).to(device=device, dtype=dtype, copy=True)
    return down, up


def low_pass(x: torch.Tensor, n: int) -> torch.Tensor:
    """Phi_N(x): cubic antialiased downsampling by N, then cubic upsampling by N (same size out).

    x is [..., H, W] in any dtype and on any device; N = 1 is the identity.
    """
    if int(n) != n or n < 1:
        raise UsageError(f"the low-pass factor N must be a positive integer, got {n}")
    n = int(n)
    if n == 1:
        return x
    if x.ndim < 2:
        raise UsageError(f"low_pass needs an image [..., H, W], got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    down_h, up_h = _axis_operators(height, n, x.device, x.dtype)
    down_w, up_w = _axis_operators(width, n, x.device, x.dtype)
    small = down_h @ x @ down_w.transpose(0, 1)
    return up_h @ small @ up_w.transpose(0, 1)
