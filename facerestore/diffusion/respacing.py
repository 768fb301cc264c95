"""Which ORIGINAL timesteps a shortened sampler visits, reproducing guided-diffusion exactly.

guided-diffusion `respace.py:space_timesteps` (openai/guided-diffusion @22e0df8) defines the grids
the DifFace, DR2 and DT-BFR checkpoints were sampled with:

- "ddimN": the first integer stride i >= 1 with len(range(0, T, i)) == N, then range(0, T, i)
  ("ddim250" at T=1000: 0, 4, ..., 996).
- "N" or "a,b,c": T is cut into len(counts) sections (the first T % len sections one step longer);
  a section of `size` steps keeps `count` of them at a fractional stride (size-1)/(count-1),
  accumulated in floating point and rounded with Python's round() (half to even), exactly as
  upstream does ("250": 0, 4, 8, ..., 995, 999; "100": 0, 10, ..., 50, 61, ..., 989, 999).
  A count of 0 skips its section, as upstream.

Upstream returns a set and `SpacedDiffusion` maps the i-th kept step back to its original t
behind the network's back. Here the kept ORIGINAL timesteps are returned in increasing order and
passed to samplers as they are: a network always sees the original integer t.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError


def _parse_counts(spec: str) -> list[int]:
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise UsageError(
            f"cannot read timestep respacing {spec!r}: use 'ddimN', 'N' or comma-separated counts like '10,15,20'"
        ) from None
    return counts


def space_timesteps(num_timesteps: int, spec: str | Sequence[int]) -> tuple[int, ...]:
    """The kept original timesteps, increasing, for a respacing spec ("ddim250", "250", "10,15,20").

    A sequence of ints is read as per-section counts, like a comma-separated string.
    """
    if num_timesteps < 1:
        raise UsageError(f"the number of diffusion steps must be positive, got {num_timesteps}")
    if isinstance(spec, str):
        spec = spec.strip()
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim") :])
            except ValueError:
                raise UsageError(f"cannot read {spec!r}: expected 'ddim' followed by a step count") from None
            # Same search as upstream, which starts at stride 1 and stops before T.
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return tuple(range(0, num_timesteps, stride))
            raise UsageError(f"{spec!r}: no integer stride gives exactly {desired} of {num_timesteps} steps")
        counts = _parse_counts(spec)
    else:
        counts = [int(c) for c in spec]
    if not counts:
        raise UsageError("timestep respacing needs at least one section count")
    if len(counts) > num_timesteps:
        raise UsageError(f"cannot cut {num_timesteps} steps into {len(counts)} sections")

    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 0:
            raise UsageError(f"section {i} of the respacing asks for {count} steps")
        if size < count:
            raise UsageError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    if not kept:
        raise UsageError(f"respacing {counts} keeps no timesteps")
    return tuple(sorted(set(kept)))


def timestep_pairs(
    timesteps: Sequence[int], *, start: int | None = None, stop_at: int | None = None
) -> list[tuple[int, int]]:
    """The (t, t_prev) pairs a sampler walks, from `start` down to `stop_at` (both included as t).

    `timesteps` are increasing original timesteps (`space_timesteps`). `start` defaults to the top
    of the grid, `stop_at` to the bottom, where t_prev = -1 ("return x0"). The number of pairs is
    the number of network calls: DR2 with grid indices omega..tau makes omega - tau + 1 of them.
    """
    grid = [int(t) for t in timesteps]
    if not grid:
        raise UsageError("the timestep grid is empty")
    if grid[0] < 0 or any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        raise UsageError("timesteps must be non-negative and strictly increasing (as space_timesteps returns them)")
    top = len(grid) - 1 if start is None else _index_of(grid, start, "start")
    bottom = 0 if stop_at is None else _index_of(grid, stop_at, "stop_at")
    if bottom > top:
        raise UsageError(f"stop_at={stop_at} lies above start={grid[top]}")
    return [(grid[k], grid[k - 1] if k > 0 else -1) for k in range(top, bottom - 1, -1)]


def _index_of(grid: list[int], t: int, what: str) -> int:
    try:
        return grid.index(int(t))
    except ValueError:
        raise UsageError(
            f"{what}={t} is not one of the grid's timesteps ({grid[0]}..{grid[-1]}, {len(grid)} steps)"
        ) from None
