"""The one interface every restoration backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch


@dataclass(frozen=True)
class MethodInfo:
    """What a user needs to know before choosing a method."""

    name: str
    summary: str
    paper: str
    license: str
    commercial_use: bool
    weights: tuple[str, ...] = ()
    knobs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodOptions:
    """Knobs shared by all methods; each method reads the ones it has."""

    device: str = "cpu"
    weights: Path | str | None = None  # a file or a registered name; None = the method's default
    offline: bool | None = None
    steps: int | None = None
    fidelity: float = 0.5
    eta: float | None = None


class RestorationMethod(Protocol):
    """crops [B,3,512,512] in [0,1] -> restored crops of the same shape, in [0,1]."""

    info: MethodInfo

    def restore(self, crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...
