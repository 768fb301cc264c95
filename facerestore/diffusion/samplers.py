"""Stateless reverse steps over explicit (t, t_prev) ORIGINAL timesteps, and the loop that runs them.

Every step has the same signature (k-diffusion style, state in local variables only):

    step(denoiser, x, t, t_prev, *, schedule, generator) -> StepOutput(x_prev, x0)

t_prev = -1 is the last step and returns the clean estimate x0. Extra knobs are keyword-only and
bound with functools.partial, e.g. `partial(ddim_step, eta=0.5, eps_source="raw")` for DifFace.
Guidance wraps a step (`guidance.low_frequency_guidance`); it is never a flag in here.

Constants are float64 Python floats (`NoiseSchedule.pair`); tensors stay in x's dtype and device,
and the denoiser is called on x as it is (no upcast). Noise comes only from `generator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from ..errors import UsageError
from .denoiser import Denoiser, eps_from_x0
from .noise import randn_like
from .respacing import timestep_pairs
from .schedule import NoiseSchedule

VarianceKind = Literal["learned_range", "fixed_small", "fixed_large"]
EpsSource = Literal["x0", "raw"]


@dataclass(frozen=True, eq=False)
class StepOutput:
    """x_prev: the sample at t_prev (x0 itself when t_prev = -1); x0: the step's clean estimate."""

    x_prev: torch.Tensor
    x0: torch.Tensor


class Step(Protocol):
    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        t: int,
        t_prev: int,
        *,
        schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
    ) -> StepOutput: ...


@dataclass(frozen=True, eq=False)
class Progress:
    """What the loop reports after each network call: step `index` of `total` (0-based).

    x is the sample the step produced (at t_prev), x0 the step's clean estimate.
    """

    index: int
    total: int
    t: int
    t_prev: int
    x: torch.Tensor
    x0: torch.Tensor


def learned_range_log_variance(
    schedule: NoiseSchedule, var_frac: torch.Tensor, t: int, t_prev: int, *, t_next: int | None = None
) -> torch.Tensor:
    """Nichol & Dhariwal 2021 eq. 15 for the step t -> t_prev of a (possibly respaced) grid.

        log Sigma = frac * log(beta_step) + (1 - frac) * log(beta~_clipped),   frac = (v + 1) / 2

    with beta_step = 1 - alpha_bar_t / alpha_bar_{t_prev} and beta~ the posterior variance of the
    same pair: what guided-diffusion's SpacedDiffusion computes from its recomputed betas. For the
    last step (t_prev = -1) beta~ = 0 and, like upstream, the posterior variance of the step above
    (t_next -> t, t_next = the grid's next timestep, default t + 1) is used instead. That value
    never reaches a sample (the last step adds no noise) but keeps the number identical upstream's.
    """
    c = schedule.pair(t, t_prev, t_next=t_next)
    max_log, min_log = math.log(c.beta), c.posterior_log_variance_clipped
    return var_frac * max_log + (1.0 - var_frac) * min_log


def ddpm_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    t: int,
    t_prev: int,
    *,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
    variance: VarianceKind = "learned_range",
) -> StepOutput:
    """Ancestral DDPM step x_t -> x_{t_prev} (guided-diffusion `p_sample` on a respaced grid).

    Notation (Ho et al. 2020 eq. 6-7, 11; Nichol & Dhariwal 2021 eq. 15; DR2 eq. 3):
        x            x_t, the current sample                     t, t_prev  original timesteps
        pred.x0      x^_0, clipped to [-1, 1] by the denoiser     c          schedule.pair(t, t_prev)
        mean         mu~(x_t, x^_0) = c.coef_x0 x^_0 + c.coef_xt x_t                     (eq. 7)
        log_var      "learned_range": frac log(beta_step) + (1 - frac) log(beta~)  (N&D eq. 15)
                     "fixed_small":   log(beta~)     "fixed_large": log(beta_step)  (Ho Sec. 3.2)
        x_prev       mean + exp(log_var / 2) z,  z ~ N(0, I)                          (eq. 11)

    Steps:
        1. pred = denoiser(x_t, t).
        2. t_prev = -1: return x^_0 (the posterior mean is exactly x^_0 there; no noise).
        3. mean from the clipped x^_0, log variance of the pair, one draw of z.
    """
    pred = denoiser(x, t)
    if t_prev < 0:
        schedule.check_timestep(t)
        return StepOutput(x_prev=pred.x0, x0=pred.x0)
    c = schedule.pair(t, t_prev)
    mean = c.posterior_mean_coef_x0 * pred.x0 + c.posterior_mean_coef_xt * x
    noise = randn_like(x, generator)
    if variance == "learned_range":
        if pred.var_frac is None:
            raise UsageError("variance='learned_range' needs a denoiser that predicts var_frac (LearnedRangeDenoiser)")
        log_var = learned_range_log_variance(schedule, pred.var_frac, t, t_prev)
        return StepOutput(x_prev=mean + torch.exp(0.5 * log_var) * noise, x0=pred.x0)
    if variance == "fixed_small":
        std = math.exp(0.5 * c.posterior_log_variance_clipped)
    elif variance == "fixed_large":
        std = math.sqrt(c.beta)
    else:
        raise UsageError(f"unknown variance {variance!r}; choose learned_range, fixed_small or fixed_large")
    return StepOutput(x_prev=mean + std * noise, x0=pred.x0)


def ddim_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    t: int,
    t_prev: int,
    *,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    eps_source: EpsSource = "x0",
) -> StepOutput:
    """DDIM step x_t -> x_{t_prev} (guided-diffusion `ddim_sample`; DifFace with eps_source="raw").

    Notation (Song et al. 2021, "DDIM", eq. 12 and 16; DifFace eq. 6), a = alpha_bar_t,
    a' = alpha_bar_{t_prev}:
        x0       x^_0 from the denoiser, clipped to [-1, 1] when the denoiser clips
        eps      "x0":  re-derived from the clipped x^_0, (sqrt(1/a) x_t - x^_0) / sqrt(1/a - 1)
                        (guided-diffusion, and DT-BFR's copy of DifFace's sampler)
                 "raw": the network's own eps (DifFace `ddim_sample` uses `pred_noise`)
        sigma    eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')                           (eq. 16)
        x_prev   sqrt(a') x^_0 + sqrt(1 - a' - sigma^2) eps + sigma z                     (eq. 12)

    Steps:
        1. pred = denoiser(x_t, t); choose eps.
        2. t_prev = -1: return x^_0 (a' = 1 makes sigma = 0 and x_prev = x^_0).
        3. Deterministic part, then noise only when sigma > 0 (eta = 0 draws nothing).
    With eta = 0, t_prev may exceed t: that is the deterministic inversion x_t -> x_{t_next}
    (guided-diffusion `ddim_reverse_sample`).
    """
    if eta < 0:
        raise UsageError(f"eta must be >= 0, got {eta}")
    pred = denoiser(x, t)
    if t_prev < 0:
        schedule.check_timestep(t)
        return StepOutput(x_prev=pred.x0, x0=pred.x0)
    if t_prev == t or (t_prev > t and eta != 0):
        raise UsageError(f"DDIM needs t_prev < t (or t_prev > t with eta=0 to invert), got t={t}, t_prev={t_prev}")
    if eps_source == "x0":
        eps = eps_from_x0(schedule, x, t, pred.x0)
    elif eps_source == "raw":
        eps = pred.eps
    else:
        raise UsageError(f"unknown eps_source {eps_source!r}; choose 'x0' (guided-diffusion) or 'raw' (DifFace)")
    a, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    sigma = 0.0 if t_prev > t else eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
    direction = 1.0 - a_prev - sigma**2
    if direction < 0:
        raise UsageError(f"eta={eta} is too large: sigma^2 exceeds 1 - alpha_bar_prev at t={t}")
    x_prev = math.sqrt(a_prev) * pred.x0 + math.sqrt(direction) * eps
    if sigma > 0:
        x_prev = x_prev + sigma * randn_like(x, generator)
    return StepOutput(x_prev=x_prev, x0=pred.x0)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    *,
    schedule: NoiseSchedule,
    step: Step = ddpm_step,
    start: int | None = None,
    stop_at: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[Progress], None] | None = None,
) -> torch.Tensor:
    """Run `step` down the grid `timesteps` (increasing original timesteps) and return the result.

    x:        the sample to denoise first at `start` (default: the top of the grid). The caller
              makes it, e.g. `schedule.q_sample(estimate, t, noise)`; its noise level is not
              checked, so DifFace's off-by-one (noised to t=400, first denoised at t=396) is
              expressed as q_sample at 400 and start=396.
    stop_at:  return the step's x^_0 at this grid timestep instead of continuing (DR2's tau).
              Without it the loop runs to t_prev = -1 and returns the final x0.
    callback: called after every network call with a `Progress`.
    Network calls = number of grid steps from start down to stop_at, both included.
    """
    pairs = timestep_pairs(timesteps, start=start, stop_at=stop_at)
    for index, (t, t_prev) in enumerate(pairs):
        out = step(denoiser, x, t, t_prev, schedule=schedule, generator=generator)
        if callback is not None:
            callback(Progress(index=index, total=len(pairs), t=t, t_prev=t_prev, x=out.x_prev, x0=out.x0))
        if stop_at is not None and t == stop_at:
            return out.x0
        x = out.x_prev
    return x
