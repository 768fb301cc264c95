"""The shared diffusion engine: schedule, respacing, denoiser adapters, samplers, guidance.

It knows no network classes and does no I/O: networks come in as callables, images as tensors.
Timesteps are always ORIGINAL schedule integers (0..T-1, -1 = clean data).

Typical use (DifFace: ddim250, start at t=400, 100 calls, eta 0.5, raw eps)::

    schedule = NoiseSchedule.named("linear", 1000)
    grid = space_timesteps(1000, "ddim250")
    denoiser = LearnedRangeDenoiser(unet, schedule)
    x = schedule.q_sample(2 * estimate - 1, grid[100], randn_like(estimate, gen))
    out = sample(denoiser, x, grid, schedule=schedule, start=grid[99],
                 step=partial(ddim_step, eta=0.5, eps_source="raw"), generator=gen)
"""

from .denoiser import (
    ConcatCondition,
    Denoiser,
    EpsDenoiser,
    LearnedRangeDenoiser,
    Net,
    NoiseLevelInput,
    Prediction,
    X0Denoiser,
    eps_from_x0,
    timestep_batch,
    x0_from_eps,
)
from .guidance import LowFrequencyGuidance, low_frequency_guidance, replace_low_frequencies
from .lowpass import cubic, low_pass, resize_matrix
from .noise import randn_like
from .respacing import space_timesteps, timestep_pairs
from .samplers import (
    EpsSource,
    Progress,
    Step,
    StepOutput,
    VarianceKind,
    ddim_step,
    ddpm_step,
    learned_range_log_variance,
    sample,
)
from .schedule import NoiseSchedule, StepConstants, cosine_betas, linear_betas

__all__ = [
    "ConcatCondition",
    "Denoiser",
    "EpsDenoiser",
    "EpsSource",
    "LearnedRangeDenoiser",
    "LowFrequencyGuidance",
    "Net",
    "NoiseLevelInput",
    "NoiseSchedule",
    "Prediction",
    "Progress",
    "Step",
    "StepConstants",
    "StepOutput",
    "VarianceKind",
    "X0Denoiser",
    "cosine_betas",
    "cubic",
    "ddim_step",
    "ddpm_step",
    "eps_from_x0",
    "learned_range_log_variance",
    "linear_betas",
    "low_frequency_guidance",
    "low_pass",
    "randn_like",
    "replace_low_frequencies",
    "resize_matrix",
    "sample",
    "space_timesteps",
    "timestep_batch",
    "timestep_pairs",
    "x0_from_eps",
]
