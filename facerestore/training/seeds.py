"""Stateless randomness: every random draw of training, degradation and cleaning is keyed by a seed
derived from (run seed, what, counter), never by a generator's position in a stream.

That is what makes resume exact and results independent of scheduling: sample n of a run gets the
same image, flip, degradation, noise level and noise whether it is drawn by DataLoader worker 0 or 3,
on rank 0 of 1 or rank 1 of 2, before or after a restart. The only state to save is the counter.
"""

from __future__ import annotations

import hashlib

import numpy as np

from facerestore.errors import UsageError


def check_seed(seed: int) -> None:
    """Every command takes the same --seed range: torch's and numpy's generators take no more."""
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be between 0 and 2^63-1, got {seed}", hint="pass a whole number from 0 to 2^63-1 (default 0)")


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (ints, strings): BLAKE2b of their reprs, stable across runs and machines."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def numpy_rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(stable_seed(*parts))


def permutation(n: int, *parts: object) -> np.ndarray:
    """A permutation of range(n) keyed by `parts` (the data order of one epoch)."""
    return numpy_rng("permutation", *parts).permutation(n)
