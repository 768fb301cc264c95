"""DDPM/DDIM steps and the sampling loop against closed forms on Gaussian data.

For data x0 ~ N(mu, s^2) (elementwise) the optimal denoiser is affine and every quantity of a step
has a closed form, so sample statistics can be compared with exact numbers.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch

from facerestore.diffusion import (
    NoiseSchedule,
    Prediction,
    Progress,
    ddim_step,
    ddpm_step,
    eps_from_x0,
    learned_range_log_variance,
    randn_like,
    sample,
    space_timesteps,
)
from facerestore.errors import UsageError

SCHEDULE = NoiseSchedule.named("linear", 1000)
MU, S = 0.1, 0.5


def marginal_var(t: int) -> float:
    a = SCHEDULE.alpha_bar(t)
    return a * S * S + 1 - a


def posterior_gain(t: int) -> float:
    """E[x0 | x_t] = MU + gain (x_t - sqrt(a) MU)."""
    a = SCHEDULE.alpha_bar(t)
    return S * S * math.sqrt(a) / marginal_var(t)


def exact_reverse_frac(t: int, t_prev: int) -> float:
    """var_frac that makes the learned-range variance equal Var(x_{t_prev} | x_t) exactly."""
    c = SCHEDULE.pair(t, t_prev)
    a = SCHEDULE.alpha_bar(t)
    var_x0 = S * S * (1 - a) / marginal_var(t)
    v_true = c.posterior_variance + c.posterior_mean_coef_x0**2 * var_x0
    lo, hi = math.log(c.posterior_variance), math.log(c.beta)
    return (math.log(v_true) - lo) / (hi - lo)


class GaussianOptimalDenoiser:
    """The exact E[x0 | x_t] for N(MU, S^2) data; learned-range frac exact for the grid's next step."""

    def __init__(self, grid=None):
        self.prev = {} if grid is None else {t: (grid[i - 1] if i else -1) for i, t in enumerate(grid)}
        self.calls: list[int] = []

    def __call__(self, x_t, t):
        self.calls.append(t)
        a = SCHEDULE.alpha_bar(t)
        x0 = MU + posterior_gain(t) * (x_t - math.sqrt(a) * MU)
        t_prev = self.prev.get(t, -1)
        frac = None if t_prev < 0 else torch.full_like(x_t, exact_reverse_frac(t, t_prev))
        return Prediction(x0=x0, eps=eps_from_x0(SCHEDULE, x_t, t, x0), var_frac=frac)


def draw_marginal(t: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 1, n // 500, 500, generator=gen, dtype=torch.float64)
    return math.sqrt(SCHEDULE.alpha_bar(t)) * MU + math.sqrt(marginal_var(t)) * z


def assert_stats(x: torch.Tensor, mean: float, var: float, rel_var: float = 0.015):
    n = x.numel()
    assert float(x.mean()) == pytest.approx(mean, abs=5 * math.sqrt(var / n))
    assert float(x.var()) == pytest.approx(var, rel=rel_var)


@pytest.mark.parametrize("variance", ["learned_range", "fixed_small", "fixed_large"])
def test_ancestral_step_statistics_on_gaussian_data(variance):
    """One respaced step 602 -> 361 ("250" grid): sample mean/variance match the closed form."""
    t, t_prev = 602, 361
    x_t = draw_marginal(t, 400_000, seed=1)
    den = GaussianOptimalDenoiser(grid=(t_prev, t))
    out = ddpm_step(den, x_t, t, t_prev, schedule=SCHEDULE, generator=torch.Generator().manual_seed(2),
                    variance=variance)  # fmt: skip
    c = SCHEDULE.pair(t, t_prev)
    a = SCHEDULE.alpha_bar(t)
    slope = c.posterior_mean_coef_x0 * posterior_gain(t) + c.posterior_mean_coef_xt
    mean = slope * math.sqrt(a) * MU + c.posterior_mean_coef_x0 * (MU - posterior_gain(t) * math.sqrt(a) * MU)
    frac = exact_reverse_frac(t, t_prev)
    step_var = {
        "learned_range": math.exp(frac * math.log(c.beta) + (1 - frac) * math.log(c.posterior_variance)),
        "fixed_small": c.posterior_variance,
        "fixed_large": c.beta,
    }[variance]
    var = slope**2 * marginal_var(t) + step_var
    assert_stats(out.x_prev, mean, var)
    if variance == "learned_range":
        # the exact reverse variance reproduces the forward marginal at t_prev
        assert mean == pytest.approx(math.sqrt(SCHEDULE.alpha_bar(t_prev)) * MU, rel=1e-9)
        assert var == pytest.approx(marginal_var(t_prev), rel=1e-9)


def test_ancestral_chain_reaches_the_data_distribution():
    grid = space_timesteps(1000, "20")
    x = draw_marginal(999, 100_000, seed=3)
    out = sample(GaussianOptimalDenoiser(grid), x, grid, schedule=SCHEDULE, generator=torch.Generator().manual_seed(4))
    # The last step returns E[x0 | x_0-noisy]: mean MU, variance gain^2 * Var(x_t) at t = 0.
    assert_stats(out, MU, posterior_gain(0) ** 2 * marginal_var(0), rel_var=0.02)
    assert posterior_gain(0) ** 2 * marginal_var(0) == pytest.approx(S * S, rel=1e-3)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_statistics_on_gaussian_data(eta):
    t, t_prev = 400, 200
    x_t = draw_marginal(t, 400_000, seed=5)
    out = ddim_step(GaussianOptimalDenoiser(), x_t, t, t_prev, schedule=SCHEDULE, eta=eta,
                    generator=torch.Generator().manual_seed(6))  # fmt: skip
    a, ap = SCHEDULE.alpha_bar(t), SCHEDULE.alpha_bar(t_prev)
    sigma = eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)
    k = posterior_gain(t)
    slope = math.sqrt(ap) * k + math.sqrt(1 - ap - sigma**2) * (1 - math.sqrt(a) * k) / math.sqrt(1 - a)
    offset = math.sqrt(ap) * (MU - k * math.sqrt(a) * MU) - math.sqrt(1 - ap - sigma**2) * (
        math.sqrt(a) * (MU - k * math.sqrt(a) * MU)
    ) / math.sqrt(1 - a)
    assert_stats(out.x_prev, slope * math.sqrt(a) * MU + offset, slope**2 * marginal_var(t) + sigma**2)


class ExactX0:
    """A denoiser that knows the clean image: the 'linear toy' whose DDIM path is exact."""

    def __init__(self, x0):
        self.x0 = x0

    def __call__(self, x_t, t):
        return Prediction(x0=self.x0, eps=eps_from_x0(SCHEDULE, x_t, t, self.x0))


def _clean_and_noise(seed=7):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    return x0, torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)


def test_ddim_eta0_follows_the_noise_line_and_returns_x0():
    x0, eps = _clean_and_noise()
    grid = space_timesteps(1000, "ddim50")
    seen = []
    out = sample(ExactX0(x0), SCHEDULE.q_sample(x0, 980, eps), grid, schedule=SCHEDULE, step=ddim_step,
                 callback=seen.append)  # fmt: skip
    assert torch.allclose(out, x0, atol=1e-12)
    assert len(seen) == 50 and isinstance(seen[0], Progress)
    for p in seen[:-1]:  # every intermediate sample is q_sample(x0, t_prev, the same eps)
        assert torch.allclose(p.x, SCHEDULE.q_sample(x0, p.t_prev, eps), atol=1e-10)


def test_ddim_eta0_encode_decode_round_trip():
    x0, eps = _clean_and_noise(8)
    grid = space_timesteps(1000, "ddim25")
    den = ExactX0(x0)
    x = SCHEDULE.q_sample(x0, grid[0], eps)
    start = x.clone()
    for t, t_next in zip(grid, grid[1:], strict=False):  # deterministic inversion, t_prev > t
        x = ddim_step(den, x, t, t_next, schedule=SCHEDULE).x_prev
    assert torch.allclose(x, SCHEDULE.q_sample(x0, grid[-1], eps), atol=1e-10)
    seen = []
    out = sample(den, x, grid, schedule=SCHEDULE, step=ddim_step, callback=seen.append)
    (bottom,) = [p.x for p in seen if p.t_prev == grid[0]]
    assert torch.allclose(bottom, start, atol=1e-10)  # decoding lands back on the encoded start
    assert torch.allclose(out, x0, atol=1e-12)
    with pytest.raises(UsageError):
        ddim_step(den, x, 100, 200, schedule=SCHEDULE, eta=0.5)


def test_ddim_eta1_is_ddpm_with_posterior_variance():
    """With sigma^2 = beta~ (eta = 1), DDIM eq. 12 is exactly the DDPM posterior step."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)

    def den(x_t, t):
        x0 = torch.tanh(x_t)  # clipped-range estimate, not the truth: a generic denoiser
        return Prediction(x0=x0, eps=eps_from_x0(SCHEDULE, x_t, t, x0))

    for t, t_prev in ((602, 361), (40, 30), (999, 0)):
        a = ddim_step(den, x, t, t_prev, schedule=SCHEDULE, eta=1.0, generator=torch.Generator().manual_seed(1))
        b = ddpm_step(den, x, t, t_prev, schedule=SCHEDULE, variance="fixed_small",
                      generator=torch.Generator().manual_seed(1))  # fmt: skip
        assert torch.allclose(a.x_prev, b.x_prev, atol=1e-10)


def test_difface_raw_eps_variant_uses_the_networks_eps():
    x = torch.full((1, 3, 2, 2), 0.3, dtype=torch.float64)
    raw_eps = torch.full_like(x, 2.0)
    pred = Prediction(x0=torch.ones_like(x), eps=raw_eps)  # x0 clipped at 1: eps no longer consistent
    t, t_prev = 400, 396
    raw = ddim_step(lambda x_t, tt: pred, x, t, t_prev, schedule=SCHEDULE, eps_source="raw").x_prev
    rederived = ddim_step(lambda x_t, tt: pred, x, t, t_prev, schedule=SCHEDULE).x_prev
    ap = SCHEDULE.alpha_bar(t_prev)
    assert torch.allclose(raw, math.sqrt(ap) * pred.x0 + math.sqrt(1 - ap) * raw_eps)
    eps = eps_from_x0(SCHEDULE, x, t, pred.x0)
    assert torch.allclose(rederived, math.sqrt(ap) * pred.x0 + math.sqrt(1 - ap) * eps)
    assert not torch.allclose(raw, rederived)


def _spaced_log_variances(grid):
    """guided-diffusion SpacedDiffusion, recomputed independently: respaced betas, then
    posterior_log_variance_clipped = log(append(pv[1], pv[1:]))."""
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    kept = abar[list(grid)]
    betas = 1 - kept / np.append(1.0, kept[:-1])
    abar_s = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar_s[:-1])
    pv = betas * (1 - abar_prev) / (1 - abar_s)
    return np.log(betas), np.log(np.append(pv[1], pv[1:]))


@pytest.mark.parametrize("frac", [0.0, 0.25, 0.5, 1.0])
def test_learned_range_log_variance_matches_spaced_diffusion(frac):
    grid = space_timesteps(1000, "100")
    max_log, min_log = _spaced_log_variances(grid)
    f = torch.full((1,), frac, dtype=torch.float64)
    for k in (0, 1, 42, 99):
        t_prev = grid[k - 1] if k else -1
        t_next = grid[k + 1] if k + 1 < len(grid) else None
        ours = float(learned_range_log_variance(SCHEDULE, f, grid[k], t_prev, t_next=t_next))
        assert ours == pytest.approx(frac * max_log[k] + (1 - frac) * min_log[k], rel=1e-9, abs=1e-12)
    # the end points are log(beta_step) and log(posterior variance) of the pair
    c = SCHEDULE.pair(602, 361)
    if frac == 0.0:
        assert float(learned_range_log_variance(SCHEDULE, f, 602, 361)) == pytest.approx(math.log(c.posterior_variance))
    if frac == 1.0:
        assert float(learned_range_log_variance(SCHEDULE, f, 602, 361)) == pytest.approx(math.log(c.beta))


def test_learned_range_needs_var_frac():
    def den(x_t, t):
        return Prediction(x0=x_t, eps=x_t)

    with pytest.raises(UsageError, match="var_frac"):
        ddpm_step(den, torch.zeros(1, 3, 2, 2), 10, 5, schedule=SCHEDULE)


def _toy_learned_range(x_t, t):
    x0 = torch.tanh(x_t * 0.5 + t / 1000).clamp(-1, 1)
    return Prediction(x0=x0, eps=eps_from_x0(SCHEDULE, x_t, t, x0), var_frac=torch.sigmoid(x_t))


def test_sampling_is_deterministic_under_a_seed():
    grid = space_timesteps(1000, "25")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def run(seed, step=ddpm_step):
        return sample(_toy_learned_range, x, grid, schedule=SCHEDULE, step=step,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    eta = partial(ddim_step, eta=0.5)
    assert torch.equal(run(3, eta), run(3, eta))
    assert not torch.equal(run(3, eta), run(4, eta))


def test_start_and_early_stop_return_x0_at_tau():
    """DR2: start at omega, return the step's x^_0 at tau; calls = omega - tau + 1."""
    grid = space_timesteps(1000, "100")
    omega, tau = 42, 22
    calls, progress = [], []

    def den(x_t, t):
        calls.append(t)
        return _toy_learned_range(x_t, t)

    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = sample(den, x, grid, schedule=SCHEDULE, start=grid[omega], stop_at=grid[tau],
                 generator=torch.Generator().manual_seed(1), callback=progress.append)  # fmt: skip
    assert len(calls) == omega - tau + 1 == 21
    assert calls[0] == 424 and calls[-1] == 222
    assert [p.index for p in progress] == list(range(21)) and progress[-1].total == 21
    assert torch.equal(out, progress[-1].x0)  # the x^_0 of the step at tau, not its sample
    assert not torch.equal(out, progress[-1].x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_samples_track_float32(dtype):
    grid = space_timesteps(1000, "10")
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def den(x_t, t):
        assert x_t.dtype == dtype  # the net is called in x's dtype, never upcast
        return _toy_learned_range(x_t, t)

    ref = sample(_toy_learned_range, x, grid, schedule=SCHEDULE, generator=torch.Generator().manual_seed(5))
    low = sample(den, x.to(dtype), grid, schedule=SCHEDULE, generator=torch.Generator().manual_seed(5))
    assert low.dtype == dtype
    assert torch.allclose(low.float(), ref, atol=0.05)
    ddim = sample(den, x.to(dtype), grid, schedule=SCHEDULE, step=partial(ddim_step, eta=0.5),
                  generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert ddim.dtype == dtype and torch.isfinite(ddim.float()).all()


def test_noise_is_drawn_in_float32_and_cast():
    gen = torch.Generator().manual_seed(0)
    half = randn_like(torch.zeros(4, 4, dtype=torch.float16), torch.Generator().manual_seed(0))
    full = torch.randn(4, 4, generator=gen)
    assert half.dtype == torch.float16 and torch.equal(half, full.half())
