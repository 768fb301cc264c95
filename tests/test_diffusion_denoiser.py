"""Denoiser adapters: what the network receives and how its output becomes (x0, eps, var_frac)."""

from __future__ import annotations

import math

import pytest
import torch

from facerestore.diffusion import (
    ConcatCondition,
    EpsDenoiser,
    LearnedRangeDenoiser,
    NoiseLevelInput,
    NoiseSchedule,
    X0Denoiser,
    ddim_step,
    sample,
    space_timesteps,
)
from facerestore.errors import UsageError

SCHEDULE = NoiseSchedule.named("linear", 1000)


class Recorder:
    """A fake network that remembers its inputs and returns a fixed output."""

    def __init__(self, output):
        self.output = output
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t):
        self.calls.append((x, t))
        return self.output(x, t) if callable(self.output) else self.output


def _data(seed=0, shape=(2, 3, 4, 4)):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x0, eps


def test_eps_adapter_recovers_x0_and_passes_original_integer_t():
    x0, eps = _data()
    t = 602
    x_t = SCHEDULE.q_sample(x0, t, eps)
    net = Recorder(lambda x, tt: eps)
    pred = EpsDenoiser(net, SCHEDULE)(x_t, t)
    assert torch.allclose(pred.x0, x0, atol=1e-10)
    assert torch.equal(pred.eps, eps)
    assert pred.var_frac is None
    ((_, t_seen),) = net.calls
    assert t_seen.dtype == torch.long and t_seen.tolist() == [602, 602]


def test_x0_adapter_derives_eps_from_the_unclipped_output():
    x0, eps = _data(1)
    x0 = x0 * 2  # some values outside [-1, 1]
    t = 222
    x_t = SCHEDULE.q_sample(x0, t, eps)
    pred = X0Denoiser(lambda x, tt: x0, SCHEDULE)(x_t, t)
    assert torch.allclose(pred.eps, eps, atol=1e-9)
    assert torch.equal(pred.x0, x0.clamp(-1, 1))
    unclipped = X0Denoiser(lambda x, tt: x0, SCHEDULE, clip_x0=False)(x_t, t)
    assert torch.equal(unclipped.x0, x0)


def test_learned_range_adapter_splits_eps_and_v():
    x0, eps = _data(2)
    v = torch.linspace(-1, 1, x0.numel(), dtype=torch.float64).view_as(x0)
    x_t = SCHEDULE.q_sample(x0, 400, eps)
    pred = LearnedRangeDenoiser(lambda x, tt: torch.cat([eps, v], 1), SCHEDULE)(x_t, 400)
    assert torch.allclose(pred.x0, x0, atol=1e-10)
    assert torch.allclose(pred.var_frac, (v + 1) / 2)
    with pytest.raises(UsageError, match="6 channels"):
        LearnedRangeDenoiser(lambda x, tt: eps, SCHEDULE)(x_t, 400)


def test_clipping_follows_guided_diffusion_clip_denoised():
    x_t = torch.full((1, 3, 2, 2), 5.0)
    eps = torch.zeros_like(x_t)
    clipped = EpsDenoiser(lambda x, t: eps, SCHEDULE)(x_t, 999)
    raw = EpsDenoiser(lambda x, t: eps, SCHEDULE, clip_x0=False)(x_t, 999)
    assert clipped.x0.max() == 1.0
    assert raw.x0.max().item() == pytest.approx(5.0 / math.sqrt(SCHEDULE.alpha_bar(999)), rel=1e-5)


def test_concat_condition_and_noise_level_inputs():
    cond = torch.full((1, 3, 4, 4), 0.25)
    seen = {}

    def idm_net(x, level):
        seen["x"], seen["level"] = x, level
        return x[:, :3] * 0

    net = ConcatCondition(NoiseLevelInput(idm_net, SCHEDULE), cond)
    x_t = torch.randn(2, 3, 4, 4)
    pred = X0Denoiser(net, SCHEDULE)(x_t, 474)
    assert seen["x"].shape == (2, 6, 4, 4)
    assert torch.equal(seen["x"][:, :3], x_t) and torch.all(seen["x"][:, 3:] == 0.25)
    assert seen["level"].dtype == torch.float32
    assert seen["level"].tolist() == pytest.approx([SCHEDULE.alpha_bar(474)] * 2, rel=1e-6)
    assert torch.equal(pred.x0, torch.zeros_like(x_t))
    NoiseLevelInput(idm_net, SCHEDULE, sqrt=True)(x_t, torch.tensor([474, 474]))
    assert seen["level"].tolist() == pytest.approx([0.31706262166030047] * 2, rel=1e-6)


def test_respaced_sampling_calls_the_net_with_original_timesteps():
    """DifFace's grid: ddim250 from index 99 -> the net sees 396, 392, ..., 0 (never 99..0)."""
    net = Recorder(lambda x, t: torch.cat([torch.zeros_like(x), torch.zeros_like(x)], 1))
    grid = space_timesteps(1000, "ddim250")
    sample(LearnedRangeDenoiser(net, SCHEDULE), torch.zeros(1, 3, 2, 2), grid, schedule=SCHEDULE,
           step=ddim_step, start=grid[99])  # fmt: skip
    seen = [int(t[0]) for _, t in net.calls]
    assert seen == list(range(396, -1, -4))


def test_timestep_out_of_range_is_rejected():
    with pytest.raises(UsageError):
        EpsDenoiser(lambda x, t: x, SCHEDULE)(torch.zeros(1, 3, 2, 2), 1000)
