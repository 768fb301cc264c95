"""Fine-tuning data: (low-quality face, pseudo-target) pairs, and real faces for the discriminator.

Sample number n of a run (n = step * global batch + i) is a pure function of (seed, n), as in
`training.data` for `train`:

    epoch, k = divmod(n, P);   pair = permutation(P, seed, "pairs", epoch)[k]
    flip     = keyed (seed, "flip", n) < 0.5     the same horizontal flip for input and target
                                                 (DT-BFR: PairedImageDataset, use_flip, no crop)
    real     = the same rule over the --real folder, keyed (seed, "real", ...), its own flip

so resuming at step s starts at sample s * batch with nothing else to restore, and any number of
workers or torchrun processes draws the same samples. Images are centre-cropped to a square if
needed, resized to the working size and mapped to [-1, 1] (mean 0.5, std 0.5, as DT-BFR).

The folders were scanned by header only, so a truncated file shows up here: like `training.data`,
a pair (or real face) that fails to decode is replaced by the next one of the same epoch's order
(still a pure function of n) and the sample is flagged "substituted", so one bad file never stops a run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from facerestore.errors import UsageError
from facerestore.training.data import T, first_readable, load_face, to_tensor
from facerestore.training.seeds import permutation, stable_seed


@dataclass(frozen=True)
class Pair:
    lq: str  # the low-quality input
    target: str  # its pseudo-target


class PairDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by the run's sample number n: {"lq", "target"[, "real"]} in [-1, 1]."""

    def __init__(self, pairs: Sequence[Pair], *, size: int, seed: int, flip: bool = True, real: Sequence[str] = ()) -> None:
        if not pairs:
            raise UsageError("no (input, pseudo-target) pairs to fine-tune on", hint="check that stage 1 wrote pseudo-targets")
        self.pairs, self.real = list(pairs), list(real)
        self.size, self.seed, self.flip = size, seed, flip

    def __len__(self) -> int:  # samples are drawn by number; the length is that of one epoch
        return len(self.pairs)

    def _flip(self, n: int, what: str) -> bool:
        return self.flip and np.random.default_rng(stable_seed(self.seed, what, n)).random() < 0.5

    def _readable(self, order: np.ndarray, k: int, load: Callable[[int], T], what: str) -> tuple[T, int]:
        return first_readable(order, k, load, f"{len(order)} {what}", hint="re-copy or re-export them")

    def _load_pair(self, i: int, failed: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[i]
        return load_face(pair.lq, self.size, failed=failed), load_face(pair.target, self.size, failed=failed)

    def __getitem__(self, n: int) -> dict[str, torch.Tensor]:
        n = int(n)
        epoch, k = divmod(n, len(self.pairs))
        order = permutation(len(self.pairs), self.seed, "pairs", epoch)
        failed: list[str] = []  # the input or pseudo-target that could not be read: the warning names it
        (lq, target), passed = self._readable(order, k, lambda i: self._load_pair(i, failed), "(input, pseudo-target) pairs")
        unreadable = failed[0] if passed else ""
        if self._flip(n, "flip"):
            lq, target = lq[:, ::-1], target[:, ::-1]
        item = {"lq": to_tensor(np.ascontiguousarray(lq)), "target": to_tensor(np.ascontiguousarray(target)), "sample": torch.tensor(n)}
        if self.real:
            epoch, k = divmod(n, len(self.real))
            order = permutation(len(self.real), self.seed, "real", epoch)
            real, passed_real = self._readable(order, k, lambda i: load_face(self.real[i], self.size), "--real faces")
            passed += passed_real
            unreadable = unreadable or (self.real[int(order[k])] if passed_real else "")
            if self._flip(n, "real-flip"):
                real = real[:, ::-1]
            item["real"] = to_tensor(np.ascontiguousarray(real))
        item["substituted"] = torch.tensor(passed > 0)
        item["unreadable"] = str(unreadable)  # the file that could not be read, "" for none: named in the run's last warning
        return item
