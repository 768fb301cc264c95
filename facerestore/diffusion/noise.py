"""Gaussian noise from an explicit generator: the only source of randomness in the engine."""

from __future__ import annotations

import torch


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like `x`, in x's dtype and on x's device.

    Drawn in float32 on the generator's device and then cast/moved, so one seed gives the same
    noise for fp32, fp16 and bf16 runs. The methods keep their generators on x's device
    (`methods.difface.face_generators`), which costs no copy; a CPU generator with a GPU `x` would
    cost a host-to-device copy per draw.
    """
    device = x.device if generator is None else generator.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)
