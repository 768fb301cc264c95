"""One denoiser contract for every network: `denoise(x_t, t) -> Prediction(x0, eps, var_frac)`.

Networks differ in what they predict (eps, x0, eps plus a variance interpolation v) and in what
they take besides x_t (a timestep, a continuous noise level, a condition image). Samplers must not
care, so each difference is one small adapter:

- output adapters turn a `Net` into a `Denoiser`: `EpsDenoiser`, `LearnedRangeDenoiser`,
  `X0Denoiser`;
- input adapters turn a network with a different signature into a `Net`: `ConcatCondition`
  (IDM: the degraded image concatenated to x_t), `NoiseLevelInput` (a continuous noise level
  instead of t).

A `Net` is any callable `(x, t) -> Tensor` where t is a LongTensor [B] filled with the ORIGINAL
integer timestep (0..T-1). Nothing remaps t: guided-diffusion checkpoints sampled on a respaced
grid (DifFace, DR2, DT-BFR) were trained on, and receive, the original integers.

Relations used (DDPM eq. 4, with a = alpha_bar_t):
    x0  = (x_t - sqrt(1 - a) eps) / sqrt(a) = sqrt(1/a) x_t - sqrt(1/a - 1) eps     (DR2 eq. 11)
    eps = (sqrt(1/a) x_t - x0) / sqrt(1/a - 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import UsageError
from .schedule import NoiseSchedule

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Prediction:
    """What a denoiser says about x_t at timestep t; all tensors have x_t's shape.

    x0:        the clean-image estimate, clipped to [-1, 1] when the adapter clips (the default,
               guided-diffusion `clip_denoised=True`).
    eps:       the network's own noise estimate (for an x0 network: derived from its unclipped x0).
               Samplers that follow guided-diffusion re-derive eps from the clipped x0 instead.
    var_frac:  for learned-range networks, (v + 1) / 2: where the step's log variance lies between
               the posterior variance (0) and beta (1). None for networks without learned variance.
    """

    x0: torch.Tensor
    eps: torch.Tensor
    var_frac: torch.Tensor | None = None


class Denoiser(Protocol):
    """`denoise(x_t, t) -> Prediction`, t an original-schedule integer shared by the batch."""

    def __call__(self, x_t: torch.Tensor, t: int) -> Prediction: ...


def timestep_batch(x: torch.Tensor, t: int) -> torch.Tensor:
    """The original integer t as the LongTensor [B] networks take (a device fill, no host copy)."""
    return torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)


def x0_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    a = schedule.alpha_bar(t)
    return math.sqrt(1.0 / a) * x_t - math.sqrt(1.0 / a - 1.0) * eps


def eps_from_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, x0: torch.Tensor) -> torch.Tensor:
    a = schedule.alpha_bar(t)
    return (math.sqrt(1.0 / a) * x_t - x0) / math.sqrt(1.0 / a - 1.0)


def _maybe_clip(x0: torch.Tensor, clip: bool) -> torch.Tensor:
    return x0.clamp(-1.0, 1.0) if clip else x0


def _check_channels(out: torch.Tensor, x_t: torch.Tensor, factor: int, kind: str) -> None:
    expected = x_t.shape[1] * factor
    if out.shape[0] != x_t.shape[0] or out.shape[1] != expected or out.shape[2:] != x_t.shape[2:]:
        raise UsageError(
            f"{kind} network returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; "
            f"expected {expected} channels of the same size"
        )


@dataclass(frozen=True, eq=False)
class EpsDenoiser:
    """A network that predicts the noise eps (guided-diffusion EPSILON with fixed variance)."""

    net: Net
    schedule: NoiseSchedule
    clip_x0: bool = True

    def __call__(self, x_t: torch.Tensor, t: int) -> Prediction:
        t = self.schedule.check_timestep(t)
        eps = self.net(x_t, timestep_batch(x_t, t))
        _check_channels(eps, x_t, 1, "eps")
        x0 = _maybe_clip(x0_from_eps(self.schedule, x_t, t, eps), self.clip_x0)
        return Prediction(x0=x0, eps=eps)


@dataclass(frozen=True, eq=False)
class LearnedRangeDenoiser:
    """A 2C-channel network: eps and v in [-1, 1] (Nichol & Dhariwal 2021 eq. 15, `learn_sigma`).

    The DifFace and DR2 priors are of this kind. v becomes var_frac = (v + 1) / 2; the sampler turns
    it into a log variance for its (t, t_prev) pair (`samplers.learned_range_log_variance`).
    """

    net: Net
    schedule: NoiseSchedule
    clip_x0: bool = True

    def __call__(self, x_t: torch.Tensor, t: int) -> Prediction:
        t = self.schedule.check_timestep(t)
        out = self.net(x_t, timestep_batch(x_t, t))
        _check_channels(out, x_t, 2, "learned-range")
        eps, v = torch.split(out, x_t.shape[1], dim=1)
        x0 = _maybe_clip(x0_from_eps(self.schedule, x_t, t, eps), self.clip_x0)
        return Prediction(x0=x0, eps=eps, var_frac=(v + 1) / 2)


@dataclass(frozen=True, eq=False)
class X0Denoiser:
    """A network that regresses x0 directly (IDM eq. 7); eps follows from its unclipped output."""

    net: Net
    schedule: NoiseSchedule
    clip_x0: bool = True

    def __call__(self, x_t: torch.Tensor, t: int) -> Prediction:
        t = self.schedule.check_timestep(t)
        x0_raw = self.net(x_t, timestep_batch(x_t, t))
        _check_channels(x0_raw, x_t, 1, "x0")
        eps = eps_from_x0(self.schedule, x_t, t, x0_raw)
        return Prediction(x0=_maybe_clip(x0_raw, self.clip_x0), eps=eps)


@dataclass(frozen=True, eq=False)
class ConcatCondition:
    """net(cat([x_t, condition], dim=1), t): conditioning by channel concatenation (IDM, SR3).

    `condition` is [B, C', H, W] (or [1, C', H, W], broadcast over the batch) on x_t's device.
    """

    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    condition: torch.Tensor

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = self.condition.to(dtype=x_t.dtype)
        if cond.shape[0] != x_t.shape[0]:
            cond = cond.expand(x_t.shape[0], *cond.shape[1:])
        return self.net(torch.cat([x_t, cond], dim=1), t)


@dataclass(frozen=True, eq=False)
class NoiseLevelInput:
    """Give the network a continuous noise level instead of the integer t (IDM eq. 6-8, SR3).

    The level is gamma_t = alpha_bar_t (IDM's notation), or sqrt(gamma_t) with `sqrt=True` (SR3's
    convention), as a float32 tensor [B]. It is a fixed function of the original t, not a remap.
    """

    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    schedule: NoiseSchedule
    sqrt: bool = False

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        table = "sqrt_alphas_cumprod" if self.sqrt else "alphas_cumprod"
        level = self.schedule.table(table, x_t.device, torch.float32)[t]
        return self.net(x_t, level)
