"""The x0-regression objective of IDM (Zhao et al. 2023, eq. 5 and 7): pure tensor maths.

Notation (IDM eq. 5-7, after SR3, Saharia et al. 2022 sec. 2):
    x0      the clean target [B, C, H, W] in [-1, 1]
    gamma   the noise level, gamma = alpha_bar in (0, 1), one per sample [B]
    eps     standard normal noise shaped like x0
    x_t     sqrt(gamma) x0 + sqrt(1 - gamma) eps                                      (eq. 5)
    f       the network: f(x_t, gamma) -> x0 estimate; the caller binds the condition
            (IDM: `ConcatCondition(net, x_d)`, the degraded image concatenated to x_t)
    loss    mean over all elements of |f(x_t, gamma) - x0|^p                           (eq. 7)

IDM regresses x0 directly in its first intrinsic iteration and uses p = 1: p = 2 "yields obviously
bad results" (colour shifts, appendix A, Fig. 10).

Noise levels (`sample_noise_levels`):
    "discrete"    t ~ U{0, ..., T-1}, gamma = alpha_bar_t: exactly the levels the sampler visits.
    "continuous"  t ~ U{0, ..., T-1}, gamma ~ U(alpha_bar_t, alpha_bar_{t-1}), alpha_bar_{-1} = 1
                  (SR3, after WaveGrad): every level between two timesteps is trained, so
                  the net is defined for any schedule or step count at inference.
Input perturbation (`perturbed_noise`, DDPM-IP, Ning et al. 2023): x_t is built from eps + s xi with
xi a second standard normal, while the target stays x0. At sampling time x_t comes from the net's own
earlier predictions, not from the true x0 (exposure bias); training on slightly wrong x_t teaches the
net to expect that. For x0 regression the target holds no noise, so the perturbation is exactly a
noise of standard deviation sqrt(1 + s^2) in x_t.
Randomness comes only from the explicit generator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from ..errors import UsageError
from .schedule import NoiseSchedule

NoiseLevels = Literal["continuous", "discrete"]
GammaNet = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_noise_levels(
    schedule: NoiseSchedule,
    n: int,
    *,
    generator: torch.Generator | None = None,
    kind: NoiseLevels = "continuous",
) -> torch.Tensor:
    """n noise levels gamma (float64 [n], CPU) drawn as described in the module docstring."""
    if kind not in ("continuous", "discrete"):
        raise UsageError(f"unknown noise-level sampling {kind!r}; choose continuous or discrete")
    t = torch.randint(0, schedule.num_timesteps, (n,), generator=generator)
    table = torch.from_numpy(schedule.alphas_cumprod.copy())
    high = table[t]
    if kind == "discrete":
        return high
    previous = torch.cat([torch.ones(1, dtype=torch.float64), table])[t]  # alpha_bar_{t-1}
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return high + u * (previous - high)


def perturbed_noise(
    shape: torch.Size | tuple[int, ...],
    scale: float,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """eps + scale * xi (DDPM-IP, module docstring): the noise that builds x_t; scale 0 gives plain eps."""
    if scale < 0:
        raise UsageError(f"the input perturbation must be >= 0, got {scale}")
    noise = torch.randn(shape, generator=generator)
    if scale > 0:
        noise = noise + scale * torch.randn(shape, generator=generator)
    return noise


def noisy_sample(x0: torch.Tensor, gamma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(gamma) x0 + sqrt(1 - gamma) eps (eq. 5), gamma [B] broadcast over the sample."""
    if noise.shape != x0.shape:
        raise UsageError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    if gamma.shape != (x0.shape[0],):
        raise UsageError(f"gamma must have shape ({x0.shape[0]},), got {tuple(gamma.shape)}")
    g = gamma.to(dtype=torch.float64).view(-1, *([1] * (x0.ndim - 1)))
    a = g.sqrt().to(device=x0.device, dtype=x0.dtype)  # coefficients in float64, then x0's dtype
    b = (1.0 - g).sqrt().to(device=x0.device, dtype=x0.dtype)
    return a * x0 + b * noise.to(x0.dtype)


def x0_regression_loss(
    net: GammaNet,
    x0: torch.Tensor,
    gamma: torch.Tensor,
    noise: torch.Tensor,
    *,
    p: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, prediction): eq. 7 with x_t built from (x0, gamma, noise); net gets gamma as float32 [B].

    The loss is a 0-dim tensor in float32 (computed in float32 even when the net runs in bf16/fp16).
    """
    if p not in (1, 2):
        raise UsageError(f"the x0 loss takes p = 1 (L1, IDM) or 2 (L2), got {p}")
    x_t = noisy_sample(x0, gamma, noise)
    prediction = net(x_t, gamma.to(device=x0.device, dtype=torch.float32))
    if prediction.shape != x0.shape:
        raise UsageError(f"the network returned shape {tuple(prediction.shape)} for targets {tuple(x0.shape)}")
    error = prediction.float() - x0.float()
    loss = error.abs().mean() if p == 1 else error.square().mean()
    return loss, prediction
