"""The one interface every restoration backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
    weight_roles: tuple[str, ...] = ()  # the ROLE= of `--weights ROLE=FILE,...` for a method of several files


@dataclass(frozen=True)
class MethodOptions:
    """Knobs shared by all methods; each method reads the ones it has."""

    device: str = "cpu"
    weights: Path | str | None = None  # a file or a registered name; None = the method's default
    # the option `weights` came from, named in its errors (finetune: --base-weights); None: no option
    # named it (finetune's report loads the run's own export), so a damaged file is left for the caller to word
    weights_option: str | None = "--weights"
    offline: bool | None = None
    steps: int | None = None  # difface: UNet calls (None = the method's default)
    precision: str = "auto"  # every method: the networks' autocast dtype (devices.autocast_dtype)
    fidelity: float | None = None  # codeformer's w (None: its default 0.5)
    # Method-specific knobs: None / False means "not given". A method refuses those it does not use
    # (registry.check_method_options), so a knob is never silently ignored.
    eta: float | None = None  # difface: DDIM eta
    start: int | None = None  # difface: the timestep the estimate is diffused to
    dr2_n: int | None = None  # dr2: low-pass factor N
    dr2_tau: int | None = None  # dr2: output index tau on the 100-step grid
    dr2_preset: str | None = None  # dr2: mild | medium | severe
    dr2_auto: bool = False  # dr2: choose (N, tau) per face
    no_enhancer: bool = False  # dr2: skip SPARNetHD, return the DR2 output at 512


class RestorationMethod(Protocol):
    """crops [B,3,512,512] in [0,1] -> restored crops of the same shape, in [0,1].

    Every built-in method also keeps `weights_files` (role -> the file each network was read from,
    the bundled one included) and `autocast` (the dtype its networks run in, None = float32): what
    `clean-dataset` records so a tree never mixes two models (see `loaded_weights`, `precision_name`).
    """

    info: MethodInfo

    def restore(self, crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


def run_options(method: object) -> dict[str, Any]:
    """The method-specific options `method` runs with, defaults filled in (steps, eta, fidelity...; {}
    for a method without any): what a report records beside the summary, so it states what ran."""
    options = getattr(method, "run_options", None)
    return dict(options()) if callable(options) else {}


def run_summary(method: object) -> str:
    """One line on what `method` does, with the numbers it runs with (its `describe()`), else its
    `info.summary`: a static text that names default values would contradict a run with others."""
    describe = getattr(method, "describe", None)
    return describe() if callable(describe) else getattr(getattr(method, "info", None), "summary", "")


def loaded_weights(method: object) -> dict[str, Path]:
    """role -> the file `method` read each of its networks from ({} for one built from networks in memory)."""
    return dict(getattr(method, "weights_files", None) or {})


def precision_name(method: object) -> str:
    """The precision `method`'s networks run in, as `--precision` names it (what `auto` resolved to)."""
    dtype = getattr(method, "autocast", None)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
