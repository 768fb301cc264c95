"""Phi_N (MATLAB-style cubic antialiased resize) and low-frequency guidance as a step wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from facerestore.diffusion import (
    NoiseSchedule,
    Prediction,
    StepOutput,
    ddpm_step,
    eps_from_x0,
    low_frequency_guidance,
    low_pass,
    randn_like,
    replace_low_frequencies,
    resize_matrix,
    sample,
    space_timesteps,
)
from facerestore.errors import UsageError

SCHEDULE = NoiseSchedule.named("linear", 1000)


def _image(shape=(2, 3, 32, 24), seed=0, dtype=torch.float64):
    """A smooth-plus-detail test image in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    h, w = shape[-2:]
    yy = torch.linspace(0, 1, h, dtype=dtype)[:, None]
    xx = torch.linspace(0, 1, w, dtype=dtype)[None, :]
    smooth = 0.5 * torch.sin(3 * xx + 2 * yy)
    return (smooth + 0.3 * torch.rand(shape, generator=gen, dtype=dtype) - 0.15).clamp(-1, 1)


def test_resize_weights_are_the_matlab_closed_form():
    """8 -> 4 (scale 1/2, antialiased: w = s * cubic(s d)) and 4 -> 8 (scale 2, plain Keys cubic).

    Interior rows by hand: output 2 of the downscale sits at input coordinate 3.5 (1-based);
    distances 0.5, 1.5, 2.5, 3.5 give 0.5 * cubic(0.25, 0.75, 1.25, 1.75) = 111, 29, -9, -3 / 256.
    Border rows fold the taps that fall outside by symmetric reflection (-1 -> 0, n -> n-1).
    The same matrices come out of Shocher's Resizer in DR2/DT-BFR (checked against it).
    """
    down = resize_matrix(8, 4, 0.5)
    assert down[1].tolist() == [-12 / 256, 29 / 256, 111 / 256, 111 / 256, 29 / 256, -9 / 256, -3 / 256, 0.0]
    assert down[0].tolist() == [140 / 256, 102 / 256, 26 / 256, -9 / 256, -3 / 256, 0.0, 0.0, 0.0]
    assert torch.equal(down[3], down[0].flip(0))
    up = resize_matrix(4, 8, 2.0)
    # output 1 sits at input coordinate 0.75: Keys cubic of distances 0.25 (twice, after folding), 1.25, ...
    assert up[0].tolist() == [35 / 32, -3 / 32, 0.0, 0.0]
    assert up[1].tolist() == [0.796875, 0.2265625, -0.0234375, 0.0]
    assert up[3].tolist() == [-0.0703125, 0.8671875, 0.2265625, -0.0234375]
    for m in (down, up, resize_matrix(512, 32, 1 / 16), resize_matrix(32, 512, 16.0)):
        assert torch.allclose(m.sum(dim=1), torch.ones(m.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("n, shape", [(2, (3, 32, 24)), (4, (3, 64, 48)), (8, (3, 64, 64))])
def test_low_pass_matches_basicsr_matlab_imresize(n, shape):
    """basicsr.utils.matlab_functions.imresize is an independent MATLAB bicubic port.

    For integer factors the two agree to float32 rounding; basicsr pads with one mirrored strip
    (no wrap-around), which differs from the reference only when the kernel (4N taps) is wider
    than the image, a case these sizes avoid.
    """
    matlab = pytest.importorskip("basicsr.utils.matlab_functions")
    x = _image((1, *shape), seed=n)[0]
    expected = matlab.imresize(matlab.imresize(x.float(), 1 / n), n).double()
    assert torch.allclose(low_pass(x, n), expected, atol=2e-6)


def test_low_pass_properties():
    x = _image()
    assert low_pass(x, 1) is x
    constant = torch.full((1, 3, 32, 32), 0.3, dtype=torch.float64)
    assert torch.allclose(low_pass(constant, 8), constant, atol=1e-12)  # weights sum to 1
    # linear and batched over leading dims
    assert torch.allclose(low_pass(2 * x[:1] - x[1:], 4), 2 * low_pass(x[:1], 4) - low_pass(x[1:], 4), atol=1e-12)
    assert low_pass(x[0, 0], 4).shape == x.shape[-2:]
    # removes high frequencies: a Nyquist checkerboard all but vanishes at N = 2
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1
    assert low_pass(checker.double(), 2)[4:-4, 4:-4].abs().max() < 0.05
    # sizes N does not divide still come back at their own size
    assert low_pass(torch.rand(1, 3, 30, 21), 4).shape == (1, 3, 30, 21)
    with pytest.raises(UsageError):
        low_pass(x, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_pass_keeps_dtype(dtype):
    x = _image((1, 3, 64, 64))
    out = low_pass(x.to(dtype), 8)
    assert out.dtype == dtype
    assert torch.allclose(out.double(), low_pass(x, 8), atol=0.02)


def _fake_step(value: float):
    """A step that returns a known sample, so the wrapper's arithmetic can be checked exactly."""

    def step(denoiser, x, t, t_prev, *, schedule, generator=None):
        x_prev = x * 0 + value if t_prev >= 0 else x
        return StepOutput(x_prev=x_prev, x0=x)

    return step


def test_guidance_replaces_the_low_band_with_the_noisy_reference_at_t_prev():
    """x_after = x - Phi(x) + Phi(q_sample(y, t_prev, z)) with z the generator's next draw.

    Phi_N = up(down(.)) with the cubic kernel is not a projection (Phi(Phi(x)) != Phi(x); for white
    noise the gap is about 27% of Phi(x)), so Phi(x_after) == Phi(y_noisy) does not hold exactly,
    for the reference's Resizer either. What holds exactly: the high band x - Phi(x) is untouched,
    x_after = (x - Phi(x)) + Phi(y_noisy), hence Phi(x_after) - Phi(y_noisy) = Phi(h_x) - Phi(h_y)
    with h = z - Phi(z) the high bands; and the low-band gap to the reference shrinks by > 6x here.
    """
    y = _image((1, 3, 32, 32), seed=1)
    x = _image((1, 3, 32, 32), seed=2) * -1
    t, t_prev, n = 424, 414, 4

    def inner(denoiser, x_t, tt, tp, *, schedule, generator=None):
        return StepOutput(x_prev=x_t + randn_like(x_t, generator) * 0.1, x0=x_t)

    guided = low_frequency_guidance(inner, y, n, until_t=222)
    out = guided(None, x, t, t_prev, schedule=SCHEDULE, generator=torch.Generator().manual_seed(7))

    gen = torch.Generator().manual_seed(7)  # replay: the step's draw, then the reference's
    x_step = inner(None, x, t, t_prev, schedule=SCHEDULE, generator=gen).x_prev
    y_noisy = SCHEDULE.q_sample(y, t_prev, randn_like(y, gen))

    high = x_step - low_pass(x_step, n)
    assert torch.allclose(out.x_prev - low_pass(y_noisy, n), high, atol=1e-12)  # high band untouched
    leak = low_pass(high, n) - low_pass(y_noisy - low_pass(y_noisy, n), n)
    assert torch.allclose(low_pass(out.x_prev, n) - low_pass(y_noisy, n), leak, atol=1e-12)
    before = (low_pass(x_step, n) - low_pass(y_noisy, n)).norm()
    assert leak.norm() < 0.15 * before
    # noised at t_prev, not at t: q_sample at t gives a different result
    y_at_t = SCHEDULE.q_sample(y, t, randn_like(y, torch.Generator().manual_seed(7)))
    assert not torch.allclose(out.x_prev, replace_low_frequencies(x_step, y_at_t, n))


def test_n1_replaces_the_whole_sample():
    y = _image((1, 3, 16, 16))
    guided = low_frequency_guidance(_fake_step(5.0), y, 1, until_t=0)
    out = guided(None, torch.zeros(2, 3, 16, 16), 20, 10, schedule=SCHEDULE, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    expected = SCHEDULE.q_sample(y.expand(2, -1, -1, -1), 10, randn_like(torch.zeros(2, 3, 16, 16), gen))
    assert torch.allclose(out.x_prev, expected.to(out.x_prev.dtype), atol=1e-6)


def _guided_landings(grid, start, stop_at, until_t):
    """Run a guided loop with N = 1 and a fake step returning zeros; a non-zero sample = guided."""
    y = torch.ones(1, 3, 4, 4)
    guided = low_frequency_guidance(_fake_step(0.0), y, 1, until_t=until_t)
    landed = []

    def record(p):
        if p.t_prev >= 0 and p.x.abs().sum() > 0:
            landed.append(p.t_prev)

    sample(None, torch.zeros(1, 3, 4, 4), grid, schedule=SCHEDULE, step=guided,
           start=start, stop_at=stop_at, generator=torch.Generator().manual_seed(0), callback=record)  # fmt: skip
    return landed


def test_dr2_guides_every_step_before_tau():
    grid = space_timesteps(1000, "100")
    omega, tau = 42, 22
    landed = _guided_landings(grid, grid[omega], grid[tau], until_t=grid[tau])
    assert landed == [grid[i] for i in range(omega - 1, tau - 1, -1)]  # y_{t-1} for t = omega..tau+1


def test_dt_bfr_guides_while_index_is_at_least_90():
    """DT-BFR: start index 150 (first call at index 149), guide after steps from indices >= 90."""
    grid = space_timesteps(1000, "250")
    landed = _guided_landings(grid, grid[149], None, until_t=grid[89])
    assert len(landed) == 60  # the paper's 240 timesteps, 602 -> 361
    assert landed[0] == grid[148] and landed[-1] == grid[89] == 357


def test_guided_dr2_loop_is_deterministic_and_counts_calls():
    grid = space_timesteps(1000, "100")
    y = _image((1, 3, 32, 32), dtype=torch.float32)
    calls = []

    def den(x_t, t):
        calls.append(t)
        x0 = torch.tanh(x_t)
        return Prediction(x0=x0, eps=eps_from_x0(SCHEDULE, x_t, t, x0), var_frac=torch.full_like(x_t, 0.5))

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        x = SCHEDULE.q_sample(y, grid[60], randn_like(y, gen))
        step = low_frequency_guidance(ddpm_step, y, 8, until_t=grid[35])
        return sample(den, x, grid, schedule=SCHEDULE, step=step, start=grid[60], stop_at=grid[35], generator=gen)

    a = run(11)
    assert len(calls) == 60 - 35 + 1
    assert torch.equal(a, run(11)) and not torch.equal(a, run(12))
    assert a.shape == y.shape and float(a.abs().max()) <= 1.0


def test_guidance_rejects_bad_arguments():
    with pytest.raises(UsageError):
        low_frequency_guidance(ddpm_step, torch.zeros(3, 8, 8), 4, until_t=0)
    with pytest.raises(UsageError):
        low_frequency_guidance(ddpm_step, torch.zeros(1, 3, 8, 8), 2.5, until_t=0)
    assert math.isfinite(float(low_pass(torch.zeros(1, 1, 8, 8), 16).sum()))  # kernel wider than the image


def test_operators_cached_under_inference_mode_still_serve_autograd():
    """The operator cache is shared: a first call under inference_mode must not poison later training code."""
    with torch.inference_mode():
        low_pass(torch.zeros(1, 3, 40, 40), 5)
    x = torch.rand(1, 3, 40, 40, requires_grad=True)
    weights = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    (low_pass(x, 5) * weights).sum().backward()
    # Phi = up @ down on each axis: d <W, Phi X Phi^T> / dX = Phi^T W Phi, which an identity (W) misses by far
    phi = (resize_matrix(8, 40, 5.0) @ resize_matrix(40, 8, 0.2)).float()
    expected = phi.T @ weights @ phi
    assert x.grad is not None and torch.allclose(x.grad, expected, atol=1e-5) and (expected - weights).abs().max() > 0.3
