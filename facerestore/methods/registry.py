"""Method names -> lazily imported backends, so `--help` and `weights list` stay fast."""

from __future__ import annotations

from importlib import import_module

from facerestore.errors import UnknownMethod
from facerestore.methods.base import MethodInfo, MethodOptions, RestorationMethod

DEFAULT_METHOD = "baseline"
_BACKENDS = {
    "baseline": ("facerestore.methods.baseline", "BaselineMethod"),
    "codeformer": ("facerestore.methods.codeformer", "CodeFormerMethod"),
}


def method_names() -> list[str]:
    return list(_BACKENDS)


def method_info(name: str) -> MethodInfo:
    module, _ = _lookup(name)
    return import_module(module).INFO


def build_method(name: str, options: MethodOptions) -> RestorationMethod:
    module, cls = _lookup(name)
    return getattr(import_module(module), cls)(options)


def _lookup(name: str) -> tuple[str, str]:
    if name not in _BACKENDS:
        raise UnknownMethod(f"unknown method {name!r}", hint=f"choose one of: {', '.join(_BACKENDS)}")
    return _BACKENDS[name]
