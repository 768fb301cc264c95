"""The forward process: betas -> alpha_bar and the per-step constants every sampler needs.

Notation (Ho et al. 2020, "DDPM", eq. 4 and 6-7; guided-diffusion `gaussian_diffusion.py`):

    beta_t          betas[t]                      variance of q(x_t | x_{t-1}), t = 0..T-1
    alpha_bar_t     alphas_cumprod[t]             prod_{s<=t} (1 - beta_s);  alpha_bar_{-1} := 1
    q(x_t | x_0)    = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                      (eq. 4)

Respaced grids (guided-diffusion `SpacedDiffusion`) keep a subset of the original timesteps and
recompute the betas over the kept steps, so a step between two kept ORIGINAL timesteps
t > t_prev has

    beta_step       = 1 - alpha_bar_t / alpha_bar_{t_prev}
    beta~           = beta_step (1 - alpha_bar_{t_prev}) / (1 - alpha_bar_t)            (eq. 7)
    mu~(x_t, x_0)   = coef_x0 * x_0 + coef_xt * x_t                                     (eq. 7)
    coef_x0         = beta_step sqrt(alpha_bar_{t_prev}) / (1 - alpha_bar_t)
    coef_xt         = (1 - alpha_bar_{t_prev}) sqrt(1 - beta_step) / (1 - alpha_bar_t)

`NoiseSchedule.pair(t, t_prev)` returns exactly these numbers for any pair of original timesteps,
which is what SpacedDiffusion computes for consecutive kept steps. All host arithmetic is float64
(numpy); per-step constants are Python floats, so using them on a tensor costs no host->device copy.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UsageError

SCHEDULES = ("linear", "cosine")


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al.'s linear schedule, rescaled so any T spans the same noise range (guided-diffusion)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021 eq. 17: alpha_bar(t) = cos^2((t/T + s)/(1 + s) pi/2), s = 0.008.

    Betas are clipped at `max_beta` to avoid the singularity at t = T (their Sec. 3.2).
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.array(betas, dtype=np.float64)


@dataclass(frozen=True)
class StepConstants:
    """Scalars (float64 maths, Python floats) for one reverse step t -> t_prev of original timesteps."""

    t: int
    t_prev: int
    alpha_bar: float
    alpha_bar_prev: float
    beta: float
    posterior_variance: float
    posterior_log_variance_clipped: float
    posterior_mean_coef_x0: float
    posterior_mean_coef_xt: float


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete variance-preserving forward process, precomputed once in float64.

    Build it with `NoiseSchedule.named("linear", 1000)` or from explicit betas. Timesteps are
    always ORIGINAL integers 0..T-1; -1 stands for "clean data" (alpha_bar = 1).
    """

    betas: np.ndarray
    alphas_cumprod: np.ndarray = field(init=False, repr=False)
    sqrt_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    sqrt_one_minus_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    _device_tables: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        betas = np.array(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise UsageError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise UsageError("betas must lie in (0, 1]")
        alphas_cumprod = np.cumprod(1.0 - betas)
        tables = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        }
        for name, array in tables.items():
            array.flags.writeable = False
            object.__setattr__(self, name, array)

    @classmethod
    def named(cls, name: str = "linear", num_timesteps: int = 1000) -> NoiseSchedule:
        """guided-diffusion's `get_named_beta_schedule`: "linear" or "cosine"."""
        if num_timesteps < 1:
            raise UsageError(f"the number of diffusion steps must be positive, got {num_timesteps}")
        if name == "linear":
            return cls(linear_betas(num_timesteps))
        if name == "cosine":
            return cls(cosine_betas(num_timesteps))
        raise UsageError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def check_timestep(self, t: int, *, allow_clean: bool = False) -> int:
        """`t` as a Python int, or a UsageError naming the valid range."""
        t = operator.index(t)
        low = -1 if allow_clean else 0
        if not low <= t < self.num_timesteps:
            raise UsageError(f"timestep {t} is outside {low}..{self.num_timesteps - 1}")
        return t

    def alpha_bar(self, t: int) -> float:
        """alpha_bar_t as a float64 Python float; alpha_bar_{-1} = 1 (clean data)."""
        t = self.check_timestep(t, allow_clean=True)
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def _posterior_variance(self, t: int, t_prev: int) -> float:
        abar, abar_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        return (1.0 - abar / abar_prev) * (1.0 - abar_prev) / (1.0 - abar)

    def pair(self, t: int, t_prev: int, *, t_next: int | None = None) -> StepConstants:
        """Constants of the reverse step t -> t_prev (t_prev = -1: the last step, to clean data).

        The posterior variance of the last step is 0; like guided-diffusion, its log is "clipped"
        by using the posterior variance of the step above it, t_next -> t, where t_next is the
        grid's next kept timestep (default t + 1, the unspaced schedule). If t is the top of the
        schedule there is no step above, and log(beta_step) is used instead.
        """
        t = self.check_timestep(t)
        t_prev = self.check_timestep(t_prev, allow_clean=True)
        if t_prev >= t:
            raise UsageError(f"a reverse step needs t_prev < t, got t={t}, t_prev={t_prev}")
        abar, abar_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        beta = 1.0 - abar / abar_prev
        posterior_variance = beta * (1.0 - abar_prev) / (1.0 - abar)
        if t_prev >= 0:
            log_variance_clipped = math.log(posterior_variance)
        else:
            t_next = t + 1 if t_next is None else self.check_timestep(t_next)
            if t_next <= t:
                raise UsageError(f"t_next must be above t={t}, got {t_next}")
            if t_next < self.num_timesteps:
                log_variance_clipped = math.log(self._posterior_variance(t_next, t))
            else:
                log_variance_clipped = math.log(beta)
        return StepConstants(
            t=t,
            t_prev=t_prev,
            alpha_bar=abar,
            alpha_bar_prev=abar_prev,
            beta=beta,
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=log_variance_clipped,
            posterior_mean_coef_x0=beta * math.sqrt(abar_prev) / (1.0 - abar),
            posterior_mean_coef_xt=(1.0 - abar_prev) * math.sqrt(1.0 - beta) / (1.0 - abar),
        )

    def table(self, name: str, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        """A precomputed per-timestep array on `device` in `dtype`, built once and cached.

        Cast on the host before moving, so devices without float64 (mps) work.
        """
        device = torch.device(device)
        key = (name, device, dtype)
        cached = self._device_tables.get(key)
        if cached is None:
            array = getattr(self, name)
            cached = torch.from_numpy(np.array(array)).to(dtype=dtype).to(device)
            self._device_tables[key] = cached
        return cached

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (DDPM eq. 4).

        `t` is one original timestep for the whole batch (int, -1 returns x0), or a LongTensor [B]
        of per-sample timesteps (training). `noise` is explicit so the caller owns the randomness.
        """
        if noise.shape != x0.shape:
            raise UsageError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            if t.shape != (x0.shape[0],):
                raise UsageError(f"per-sample timesteps must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
            shape = (-1,) + (1,) * (x0.ndim - 1)
            t = t.to(x0.device)
            a = self.table("sqrt_alphas_cumprod", x0.device, x0.dtype)[t].view(shape)
            b = self.table("sqrt_one_minus_alphas_cumprod", x0.device, x0.dtype)[t].view(shape)
            return a * x0 + b * noise
        abar = self.alpha_bar(t)
        return math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise
