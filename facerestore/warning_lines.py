"""Warning lines of the lower layers (a damaged weights copy passed over, `--detector auto` falling
back to another detector): one line each on stderr, unless a command that keeps its own list of
warnings routes them to itself for a while (`evaluate` records them in its report), so that each
line is said once, where that command says its own, and none is missing from its record.

    with routed(evaluator_says):      # lines go to evaluator_says instead of stderr
        build_the_methods()
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_sinks: list[Callable[[str], None]] = []  # innermost last


def warn(line: str) -> None:
    """Say `line` ("warning: ...") to the innermost `routed` sink, else on stderr."""
    if _sinks:
        _sinks[-1](line)
    else:
        print(line, file=sys.stderr, flush=True)


@contextmanager
def routed(sink: Callable[[str], None]) -> Iterator[None]:
    """Within the block `warn` hands its lines to `sink` (which prints them where they are to be
    seen) instead of printing them on stderr."""
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.remove(sink)


__all__ = ["routed", "warn"]
