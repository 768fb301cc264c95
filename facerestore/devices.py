"""--device auto|cpu|cuda|mps -> a torch device name, with one clear error when it is not there."""

from __future__ import annotations

from facerestore.errors import UsageError

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
