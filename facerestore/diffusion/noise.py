"""Gaussian noise from an explicit generator: the only source of randomness in the engine."""

from __future__ import annotations

import torch


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like `x`, in x's dtype and on x's device.

    Drawn in float32 on the generator's device and then cast/moved, so one seed gives the same
    noise for fp32, fp16 and bf16 runs. A generator on x's device (the usual case) costs no copy;
    a CPU generator with a GPU `x` trades one copy per draw for identical results across devices.
    """
    device = x.device if generator is None else generator.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)
