"""NoiseSchedule: closed-form alpha_bar values, per-pair constants, q_sample, device/dtype tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerestore.diffusion import NoiseSchedule, cosine_betas, linear_betas
from facerestore.errors import UsageError


def closed_form_alpha_bar(t: int, T: int = 1000) -> float:
    """prod_{s<=t} (1 - beta_s), beta_s = 1e-4 + s (0.02 - 1e-4) / (T - 1): no numpy, exact sum of logs."""
    betas = [1e-4 + s * (0.02 - 1e-4) / (T - 1) for s in range(t + 1)]
    return math.exp(math.fsum(math.log1p(-b) for b in betas))


@pytest.fixture(scope="module")
def linear() -> NoiseSchedule:
    return NoiseSchedule.named("linear", 1000)


@pytest.mark.parametrize(
    "t, rounded, precise",
    [
        (400, 0.440, 0.43996819165326784),
        (602, 0.158, 0.1579665157013596),
        (474, 0.317, 0.31706262166030047),
        (222, 0.773, 0.7725340293061421),
    ],
)
def test_sqrt_alpha_bar_golden_values(linear, t, rounded, precise):
    value = math.sqrt(linear.alpha_bar(t))
    assert round(value, 3) == rounded  # ANCHORS 4.1
    assert value == pytest.approx(precise, rel=1e-12)
    assert value == pytest.approx(math.sqrt(closed_form_alpha_bar(t)), rel=1e-12)


def test_linear_betas_endpoints_and_scaling():
    betas = linear_betas(1000)
    assert betas.dtype == np.float64
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)
    short = linear_betas(250)  # guided-diffusion rescales by 1000 / T
    assert short[0] == pytest.approx(4e-4) and short[-1] == pytest.approx(0.08)


def test_alpha_bar_of_clean_data_is_one(linear):
    assert linear.alpha_bar(-1) == 1.0
    assert linear.alpha_bar(0) == pytest.approx(1 - 1e-4)
    with pytest.raises(UsageError):
        linear.alpha_bar(1000)
    with pytest.raises(UsageError):
        linear.alpha_bar(-2)


def test_cosine_schedule_follows_its_alpha_bar_and_clips_beta():
    betas = cosine_betas(1000)
    sched = NoiseSchedule.named("cosine", 1000)
    assert betas.max() == pytest.approx(0.999)
    assert (betas <= 0.999).all()

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    # Before the clip takes effect, alpha_bar_t = f((t+1)/T) / f(0) (the product telescopes).
    for t in (0, 100, 500, 900):
        assert sched.alpha_bar(t) == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-10)


def test_unknown_schedule_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown noise schedule"):
        NoiseSchedule.named("quadratic")
    with pytest.raises(UsageError):
        NoiseSchedule(np.array([0.5, 1.5]))


def test_pair_constants_match_their_definitions(linear):
    t, t_prev = 602, 361
    c = linear.pair(t, t_prev)
    a, ap = closed_form_alpha_bar(t), closed_form_alpha_bar(t_prev)
    beta = 1 - a / ap
    assert c.beta == pytest.approx(beta, rel=1e-10)
    assert c.posterior_variance == pytest.approx(beta * (1 - ap) / (1 - a), rel=1e-10)
    assert c.posterior_log_variance_clipped == pytest.approx(math.log(c.posterior_variance), rel=1e-12)
    assert c.posterior_mean_coef_x0 == pytest.approx(beta * math.sqrt(ap) / (1 - a), rel=1e-10)
    assert c.posterior_mean_coef_xt == pytest.approx((1 - ap) * math.sqrt(1 - beta) / (1 - a), rel=1e-10)
    # Adjacent steps give back the original betas (an unspaced schedule is a special case).
    for s in (1, 10, 999):
        assert linear.pair(s, s - 1).beta == pytest.approx(float(linear.betas[s]), rel=1e-10)


def test_posterior_mean_is_the_gaussian_posterior(linear):
    """mu~ = coef_x0 x0 + coef_xt x_t is E[x_{t_prev} | x_t, x0] for the forward process."""
    t, t_prev = 474, 222
    c = linear.pair(t, t_prev)
    a, ap = c.alpha_bar, c.alpha_bar_prev
    # x_t = sqrt(a/ap) x_prev + sqrt(beta) e, x_prev = sqrt(ap) x0 + sqrt(1-ap) e'. Condition on x0:
    # Cov(x_prev, x_t | x0) = sqrt(a/ap)(1-ap); Var(x_t | x0) = 1-a.
    gain = math.sqrt(a / ap) * (1 - ap) / (1 - a)
    assert c.posterior_mean_coef_xt == pytest.approx(gain, rel=1e-12)
    assert c.posterior_mean_coef_x0 == pytest.approx(math.sqrt(ap) - gain * math.sqrt(a), rel=1e-12)
    assert c.posterior_variance == pytest.approx((1 - ap) - gain**2 * (1 - a), rel=1e-10)


def test_last_step_variance_is_clipped_like_guided_diffusion(linear):
    c = linear.pair(0, -1)
    assert c.posterior_variance == 0.0
    assert c.posterior_mean_coef_x0 == pytest.approx(1.0) and c.posterior_mean_coef_xt == pytest.approx(0.0)
    # Unspaced: log of the posterior variance at t=1. Respaced: that of the grid's step above.
    assert c.posterior_log_variance_clipped == pytest.approx(math.log(linear.pair(1, 0).posterior_variance))
    c10 = linear.pair(0, -1, t_next=10)
    assert c10.posterior_log_variance_clipped == pytest.approx(math.log(linear.pair(10, 0).posterior_variance))
    with pytest.raises(UsageError):
        linear.pair(10, 10)


def test_q_sample_int_and_per_sample_timesteps(linear):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 3, 4, 4, generator=gen, dtype=torch.float64)
    a = closed_form_alpha_bar(400)
    expected = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    assert torch.allclose(linear.q_sample(x0, 400, noise), expected, atol=1e-12)
    assert torch.equal(linear.q_sample(x0, -1, noise), x0)
    per_sample = linear.q_sample(x0, torch.tensor([400, 0, 999]), noise)
    for i, t in enumerate((400, 0, 999)):
        assert torch.allclose(per_sample[i], linear.q_sample(x0[i : i + 1], t, noise[i : i + 1])[0], atol=1e-12)
    with pytest.raises(UsageError):
        linear.q_sample(x0, 400, noise[:1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_q_sample_keeps_dtype_and_device_tables_are_cached(linear, dtype):
    x0 = torch.zeros(2, 3, 4, 4, dtype=dtype)
    out = linear.q_sample(x0, torch.tensor([5, 7]), torch.ones_like(x0))
    assert out.dtype == dtype
    table = linear.table("sqrt_alphas_cumprod", "cpu", dtype)
    assert table is linear.table("sqrt_alphas_cumprod", torch.device("cpu"), dtype)
    assert table.dtype == dtype and table.shape == (1000,)
    assert float(out[1, 0, 0, 0]) == pytest.approx(math.sqrt(1 - linear.alpha_bar(7)), rel=1e-2)
