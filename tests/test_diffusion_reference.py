"""End-to-end golden values from the reference implementations.

The numbers below were produced by running openai/guided-diffusion @22e0df8
(`SpacedDiffusion.p_sample`, `.ddim_sample`, learned-range EPSILON model, linear T=1000) and a
transcription of DR2's `dr2_sample_loop` with Shocher's `Resizer` (Kaldwin0106/DR2_Drgradation_Remover
@09c97ed), on the toy network below, with their `randn_like` replaced by the exact noise sequence
our seeded generator draws (step noise first, then the guidance reference's). Our results agreed to
float32 rounding (DDPM 0.0, DDIM 7.7e-7, DR2 3.6e-7 max abs difference). A change in the step
arithmetic, the respaced constants, the timestep the net sees, the noise order or Phi_N breaks them.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from facerestore.diffusion import (
    LearnedRangeDenoiser,
    NoiseSchedule,
    ddim_step,
    ddpm_step,
    low_frequency_guidance,
    randn_like,
    sample,
    space_timesteps,
)

SCHEDULE = NoiseSchedule.named("linear", 1000)


def toy_net(x, t):
    """6 channels like the DifFace/DR2 priors: eps and v in [-1, 1], depending on the original t."""
    tt = t.view(-1, 1, 1, 1).to(x.dtype)
    return torch.cat([torch.tanh(0.5 * x + tt / 1000), 0.9 * torch.sin(x + tt / 500)], 1)


DENOISER = LearnedRangeDenoiser(toy_net, SCHEDULE)


def _x():
    return torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def _check(out, head, total):
    assert out.flatten()[:6].tolist() == pytest.approx(head, abs=1e-5)
    assert float(out.sum()) == pytest.approx(total, abs=1e-4)


def test_ddpm_learned_range_matches_guided_diffusion():
    grid = space_timesteps(1000, "100")
    out = sample(DENOISER, _x(), grid, schedule=SCHEDULE, start=grid[10], generator=torch.Generator().manual_seed(1))
    _check(
        out,
        [-0.987030565738678, -0.8785766363143921, 0.3238963484764099,
         -0.7328258752822876, 0.8178409934043884, 0.069215327501297],
        0.7321650981903076,
    )  # fmt: skip


def test_ddim_eta_half_matches_guided_diffusion():
    grid = space_timesteps(1000, "ddim250")
    out = sample(DENOISER, _x(), grid, schedule=SCHEDULE, start=grid[9], step=partial(ddim_step, eta=0.5),
                 generator=torch.Generator().manual_seed(1))  # fmt: skip
    _check(
        out,
        [-1.0, -1.0, -0.14598004519939423, -0.4805907905101776, 0.8357639312744141, 0.5649946331977844],
        1.814295768737793,
    )  # fmt: skip


def test_dr2_loop_matches_dr2_sample_loop():
    """omega = 30, tau = 22 on respacing "100", N = 2, 16x16: 9 calls, guidance after the first 8."""
    grid = space_timesteps(1000, "100")
    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    gen = torch.Generator().manual_seed(3)
    x = SCHEDULE.q_sample(y, grid[30], randn_like(y, gen))
    step = low_frequency_guidance(ddpm_step, y, 2, until_t=grid[22])
    out = sample(DENOISER, x, grid, schedule=SCHEDULE, step=step, start=grid[30], stop_at=grid[22], generator=gen)
    _check(
        out,
        [-0.7514982223510742, 0.35887157917022705, -1.0, 0.5512901544570923, 0.397168904542923, -0.7846527695655823],
        -107.31271362304688,
    )  # fmt: skip
