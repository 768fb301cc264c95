"""Helpers shared by the tests that build small nets with known random weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def seeded_state(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every float tensor random from one generator, in state-dict order: fan-in scaled matrices and
    kernels, norm weights near 1, small biases. Integer buffers and SwinIR's attention masks are kept;
    spectral-norm u, v (SPARNet) are set to their weight's leading singular vectors, so sigma > 0.

    Golden outputs recorded in the tests were produced with exactly this draw order: do not change it.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if not value.is_floating_point() or key.endswith("attn_mask"):
            state[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=g)
        if value.ndim >= 2:
            state[key] = noise / math.sqrt(value[0].numel())
        else:
            state[key] = 1 + 0.1 * noise if key.endswith("weight") else 0.1 * noise
    for key in [k for k in state if k.endswith("weight_orig")]:
        matrix = state[key].reshape(state[key].shape[0], -1)
        v = F.normalize(torch.randn(matrix.shape[1], generator=g), dim=0)
        for _ in range(3):
            u = F.normalize(matrix @ v, dim=0)
            v = F.normalize(matrix.T @ u, dim=0)
        stem = key[: -len("orig")]
        state[stem + "u"], state[stem + "v"] = u, v
    return state
