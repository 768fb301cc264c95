"""--device auto|cpu|cuda|mps -> a torch device name, with one clear error when it is not there;
and how a network is placed on that device for inference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from facerestore.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> str:
    """auto picks cuda, then mps, then cpu; an explicit device that is missing is a usage error."""
    import torch

    if name not in DEVICES and not name.startswith("cuda:"):
        raise UsageError(f"--device {name!r} is not a device", hint=f"use one of: {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but torch sees no CUDA GPU", hint="use --device cpu or auto (or install a CUDA build of torch)")
    if name == "mps" and not _mps_available():
        raise UsageError("--device mps was asked for but this machine has no Apple GPU", hint="use --device cpu or auto")
    return name


def for_inference(net: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """`net` in eval mode on `device`; on the CPU with channels-last convolution weights.

    oneDNN convolves channels-last weights 10-15% faster on the CPU (2 threads, bench/bench_diffusion.py:
    DifFace's UNet 7.2 -> 6.5 s a call, SwinIR 4.3 -> 3.9 s, the idm UNet 1.06 -> 0.94 s for 4 faces,
    the baseline 3.3 -> 2.8 s for 4 faces), with results equal to 1e-6. Not for SPARNetHD, which
    it makes slower (26.5 -> 29.3 s). GPUs keep the default layout until it is measured there.
    """
    import torch

    net = net.to(device).eval()
    if torch.device(device).type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return net
