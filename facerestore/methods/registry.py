"""Method names -> lazily imported backends, so `--help` and `weights list` stay fast.

Method-specific options (`--steps`, `--eta`, `--start`, `--dr2-*`, `--no-enhancer`) are REFUSED,
not ignored, by a method that does not use them: `check_method_options` compares the options a user
set with the knobs the method's `MethodInfo` lists, and raises a UsageError (exit 2) before any
weights are read. `check_options` adds the values' own rules (`--steps 0`, an unknown `--dr2-preset`,
a bad `--weights` ROLE= list) through each method's one hook, the staticmethod `planned_options(options)`:
the `run_options()` the method would have, or the UsageError its build raises before reading weights.
So a command building several methods can refuse a bad value of any of them before the first one
loads, and clean-dataset can compare what a method would run with without loading it
(`planned_run_options`). `build_method` runs the check for every method; the methods run their
rules themselves too, so library callers get the same answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from pathlib import Path
from typing import Any

from facerestore.devices import autocast_dtype
from facerestore.errors import UnknownMethod, UsageError
from facerestore.methods.base import MethodInfo, MethodOptions, RestorationMethod

DEFAULT_METHOD = "baseline"
_BACKENDS = {
    "baseline": ("facerestore.methods.baseline", "BaselineMethod"),
    "codeformer": ("facerestore.methods.codeformer", "CodeFormerMethod"),
    "difface": ("facerestore.methods.difface", "DifFaceMethod"),
    "dr2": ("facerestore.methods.dr2", "DR2Method"),
    "idm": ("facerestore.methods.idm", "IDMMethod"),
}

# MethodOptions field -> the CLI flag that sets it; "set" means different from the field's default.
METHOD_SPECIFIC = {
    "fidelity": "--fidelity",
    "steps": "--steps",
    "eta": "--eta",
    "start": "--start",
    "dr2_n": "--dr2-n",
    "dr2_tau": "--dr2-tau",
    "dr2_preset": "--dr2-preset",
    "dr2_auto": "--dr2-auto",
    "no_enhancer": "--no-enhancer",
}


def method_names() -> list[str]:
    return list(_BACKENDS)


def method_info(name: str) -> MethodInfo:
    module, _ = _lookup(name)
    return import_module(module).INFO


def check_method_options(info: MethodInfo, options: MethodOptions) -> None:
    """UsageError if a method-specific option is set that `info.knobs` does not list, or a weights
    option gives a ROLE= to a method of one file."""
    check_weights_roles(info, options)
    for option in set_method_options(options):
        if option not in info.knobs:
            flag, users = METHOD_SPECIFIC[option], methods_taking(option)
            where = f"it is an option of {', '.join(users)}" if users else "no method uses it"
            raise UsageError(f"{flag} is not used by method {info.name!r}; {where}", hint=_choose_hint(flag, users))


def _choose_hint(flag: str, users: list[str]) -> str:
    """`drop --steps, or choose --method idm (its model ships with facerestore) or difface`: a method
    that runs offline with no download first (--steps led to difface, whose weights most users lack)."""
    if not users:
        return ""
    first, others = users[0], users[1:]
    shipped = " (its model ships with facerestore)" if ships_weights(first) else ""
    return f"drop {flag}, or choose --method {first}{shipped}" + "".join(f" or {name}" for name in others)


def ships_weights(name: str) -> bool:
    """True for a method whose default weights are bundled inside the package (facerestore/models:
    its module has `bundled_weights()`), so it runs with no download."""
    module, _ = _lookup(name)
    try:
        return callable(getattr(import_module(module), "bundled_weights", None))
    except ImportError:
        return False


def set_method_options(options: MethodOptions) -> list[str]:
    """The method-specific fields of `options` that are set (differ from MethodOptions' defaults), in
    METHOD_SPECIFIC's order: what `check_method_options` and evaluate's routing act on."""
    defaults = MethodOptions()
    return [option for option in METHOD_SPECIFIC if getattr(options, option) != getattr(defaults, option)]


def planned_run_options(name: str, options: MethodOptions) -> dict[str, Any]:
    """The `run_options()` of the method `build_method(name, options)` would build, without building it
    (no weights are read): each backend's `planned_options`, {} for a method without options. A
    UsageError for a value or a --weights list that build would refuse."""
    module, cls = _lookup(name)
    planned = getattr(getattr(import_module(module), cls), "planned_options", None)
    return dict(planned(options)) if callable(planned) else {}


def methods_taking(option: str) -> list[str]:
    """Every method whose `MethodInfo.knobs` lists the MethodOptions field `option` (e.g. "eta" ->
    ["difface"]), those whose weights ship with the package first (`ships_weights`): "steps" -> ["idm", "difface"]."""
    users = [name for name in _BACKENDS if option in _knobs(name)]
    return sorted(users, key=lambda name: not ships_weights(name))


def check_weights_roles(info: MethodInfo, options: MethodOptions) -> None:
    """`-m codeformer --weights prior=x.pth` is a role of DifFace's, not a file named 'prior=x.pth':
    a method of one file refuses ROLE=FILE (methods of several files refuse unknown roles themselves,
    difface.parse_weights). A file of that name that exists is taken as a file."""
    value, option = options.weights, options.weights_option
    if info.weight_roles or not isinstance(value, str) or "=" not in value or Path(value).expanduser().exists():
        return
    role = value.partition("=")[0].strip()
    if not role or not all(c.isalnum() or c in "_-." for c in role):
        return  # a path holding '=' ("runs/lr=1e-4/idm.safetensors"): its own "no such file" line
    roles = "; ".join(f"{name}: {', '.join(r)}" for name in _BACKENDS if (r := _weight_roles(name)))
    raise UsageError(f"{option} {value}: method {info.name!r} has no weights role {role!r}; it takes one checkpoint and no ROLE= (roles are for {roles})",
                     hint=f"pass {option} FILE")


def _weight_roles(name: str) -> tuple[str, ...]:
    try:
        return method_info(name).weight_roles
    except ImportError:
        return ()


def _knobs(name: str) -> dict[str, str]:
    try:
        return method_info(name).knobs
    except ImportError:  # a backend whose dependencies are missing names no knobs
        return {}


def checkpoint_fits() -> dict[str, Callable[[Mapping[str, Any], str], None]]:
    """Catalogue name -> the checks its method's loader makes on a state dict (architecture, config,
    every key and shape; `FITS` in each method module), for `weights import` to run before it stores
    an official file or records its sha256."""
    fits: dict[str, Callable[[Mapping[str, Any], str], None]] = {}
    for module, _ in _BACKENDS.values():
        try:
            fits.update(getattr(import_module(module), "FITS", {}))
        except ImportError:  # a backend whose dependencies are missing checks nothing
            continue
    return fits


def check_options(name: str, options: MethodOptions) -> None:
    """UsageError if method `name` would refuse `options`: a knob it does not take, a value or
    --weights list its `planned_options` refuses, or a --precision its device cannot run (every method
    asks `devices.autocast_dtype`, whose `auto_on_cuda` changes what auto means, never what it refuses;
    `options.device` as the run resolved it). Reads no weights and builds no network."""
    check_method_options(method_info(name), options)
    planned_run_options(name, options)
    autocast_dtype(options.device, options.precision)


def build_method(name: str, options: MethodOptions) -> RestorationMethod:
    module, cls = _lookup(name)
    check_options(name, options)
    return getattr(import_module(module), cls)(options)


def _lookup(name: str) -> tuple[str, str]:
    if name not in _BACKENDS:
        raise UnknownMethod(f"unknown method {name!r}", hint=f"choose one of: {', '.join(_BACKENDS)}")
    return _BACKENDS[name]
