"""Low-frequency guidance: a wrapper around any reverse step (DR2 eq. 10; Kuai et al. 2025 Alg. 1).

Notation (DR2, Wang et al. 2023, eq. 9-10; Kuai et al. 2025, Algorithm 1):
    y            the reference in [-1, 1]: DR2's degraded input, or Kuai's pre-trained model output
    x_{t_prev}   the sample the wrapped step just produced
    y_{t_prev}   q_sample(y, t_prev, z') with FRESH noise z' at every guided step
    Phi_N        low_pass(., N): cubic antialiased down- then up-sampling by N (`lowpass.py`)
    update       x_{t_prev} <- x_{t_prev} - Phi_N(x_{t_prev}) + Phi_N(y_{t_prev})          (eq. 10)

Which timestep the reference is noised to, read in the reference code: both
`DRDR/diffusion.py:dr2_sample_loop` and DT-BFR `models/gaussian_diffusion.py:
p_sample_loop_progressive` call `q_sample(ref_img, t - 1)` right after the step from respaced
index t, on the respaced process, i.e. at the ORIGINAL timestep of the next grid point: the same
t_prev the step landed on, with new noise drawn by `q_sample` each time. N = 1 means no filter:
DR2 then replaces the whole sample by y_{t_prev}, which is what the update gives with Phi_1 = I.

When it applies: after a step t -> t_prev whenever t_prev >= until_t (and t_prev >= 0).
- DR2 (indices omega..tau on respacing "100", return x^_0 at tau): until_t = timesteps[tau]. The
  step at tau itself is followed by no update (the loop returns its x^_0, as `dr2_sample_loop` does).
- DT-BFR (`--reg_end_timesteps 90` on "250"): the code guides after steps from indices >= 90 (the
  paper's "t > L", L = 360), so the last guided step lands on index 89: until_t = timesteps[89] (357).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import UsageError
from .denoiser import Denoiser
from .lowpass import low_pass
from .noise import randn_like
from .samplers import Step, StepOutput
from .schedule import NoiseSchedule


def replace_low_frequencies(x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """x - Phi_N(x) + Phi_N(y): x's high band with y's low band (DR2 eq. 10). N = 1 returns y."""
    if n == 1:
        return y.expand_as(x).clone() if y.shape != x.shape else y
    return x + low_pass(y - x, n)


@dataclass(frozen=True, eq=False)
class LowFrequencyGuidance:
    """A `Step` that runs `step`, then pulls the low band of x_{t_prev} to the noisy reference's."""

    step: Step
    reference: torch.Tensor
    n: int
    until_t: int

    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        t: int,
        t_prev: int,
        *,
        schedule: NoiseSchedule,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        out = self.step(denoiser, x, t, t_prev, schedule=schedule, generator=generator)
        if t_prev < 0 or t_prev < self.until_t:
            return out
        reference = self.reference.to(device=x.device, dtype=x.dtype).expand_as(out.x_prev)
        noisy_reference = schedule.q_sample(reference, t_prev, randn_like(out.x_prev, generator))
        return replace(out, x_prev=replace_low_frequencies(out.x_prev, noisy_reference, self.n))


def low_frequency_guidance(step: Step, reference: torch.Tensor, n: int, until_t: int) -> LowFrequencyGuidance:
    """Wrap `step` with DR2/Kuai low-frequency replacement down to (and including) t_prev = until_t.

    reference: [B, C, H, W] or [1, C, H, W] in [-1, 1], same spatial size as the samples.
    n:         the filter factor N (DR2 presets 4, 8, 16; Kuai 8 or 16); 1 replaces the whole image.
    """
    if int(n) != n or n < 1:
        raise UsageError(f"the low-pass factor N must be a positive integer, got {n}")
    if reference.ndim != 4:
        raise UsageError(f"the guidance reference must be [B, C, H, W], got shape {tuple(reference.shape)}")
    return LowFrequencyGuidance(step=step, reference=reference, n=int(n), until_t=int(until_t))
