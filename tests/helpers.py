"""Helpers shared by several test files: small nets with known random weights, lock checks, and
2-process torchrun runs with the check of how their ranks stopped."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def seeded_state(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every float tensor random from one generator, in state-dict order: fan-in scaled matrices and
    kernels, norm weights near 1, small biases. Integer buffers and SwinIR's attention masks are kept;
    spectral-norm u, v (SPARNet) are set to their weight's leading singular vectors, so sigma > 0.

    Golden outputs recorded in the tests were produced with exactly this draw order: do not change it.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if not value.is_floating_point() or key.endswith("attn_mask"):
            state[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=g)
        if value.ndim >= 2:
            state[key] = noise / math.sqrt(value[0].numel())
        else:
            state[key] = 1 + 0.1 * noise if key.endswith("weight") else 0.1 * noise
    for key in [k for k in state if k.endswith("weight_orig")]:
        matrix = state[key].reshape(state[key].shape[0], -1)
        v = F.normalize(torch.randn(matrix.shape[1], generator=g), dim=0)
        for _ in range(3):
            u = F.normalize(matrix @ v, dim=0)
            v = F.normalize(matrix.T @ u, dim=0)
        stem = key[: -len("orig")]
        state[stem + "u"], state[stem + "v"] = u, v
    return state


def pin_catalogue_hashes(monkeypatch, paths: dict[str, Path], names: dict[str, str]) -> None:
    """Give the catalogue entries (role -> entry name) the tiny files' sha256 and size, so resolving them
    checks the hash (and `weights list`, which hashes nothing, does not take them for cut-short copies)."""
    from facerestore.weights import catalogue

    entries = dict(catalogue.official_catalogue())
    for role, name in names.items():
        if role in paths:
            entries[name] = dataclasses.replace(entries[name], sha256=hashlib.sha256(paths[role].read_bytes()).hexdigest(), size=paths[role].stat().st_size)
    monkeypatch.setattr(catalogue, "official_catalogue", lambda: entries)


class StandInLearnedRange(torch.nn.Module):
    """A stand-in diffusion prior: (x_t, t) -> 6 channels (eps, v in [-1, 1]) that depend on x_t and t;
    batch-independent; records the timesteps it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 1)
        self.seen: list[list[int]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t.tolist())
        return torch.tanh(self.conv(x) * (1 + t.view(-1, 1, 1, 1) / 1000))


class StandInResidual(torch.nn.Module):
    """A stand-in image-to-image net (estimator, enhancer): x + 0.1 conv(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.conv(x)


def lock_held(folder: Path) -> bool:
    """Whether a run holds `folder`'s output lock (training/out_lock) right now."""
    from facerestore.errors import UsageError
    from facerestore.training.out_lock import assert_free

    try:
        assert_free(folder)
    except UsageError:
        return True
    return False


def refuse_flock(monkeypatch, code: int = errno.EWOULDBLOCK) -> None:
    """Every flock of this process raises OSError(`code`): EWOULDBLOCK (a BlockingIOError) as while
    another process holds the lock, ENOLCK or EOPNOTSUPP as on a file system without locks."""
    import fcntl
    import os

    def refuse(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refuse)


REPO = Path(__file__).resolve().parents[1]


def torchrun(args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`facerestore ARGS` under torchrun with 2 CPU processes of one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "facerestore", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_all_ranks_stopped_with(done: subprocess.CompletedProcess, code: int, message: str) -> None:
    """One error line, no worker traceback, and every rank's exit code is `code`. torchrun itself exits 1
    whenever a worker fails, and stops the other ranks with SIGTERM (-15) at the first exit, so which
    rank is the "root cause" and which shows -15 is a race: only the set of codes is checked."""
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], output
    assert "[rank" not in done.stderr and "RuntimeError" not in done.stderr, output  # a worker's traceback (gloo's, at a barrier)
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", done.stderr)]
    root = int(re.search(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", done.stderr, re.S).group(1))
    assert done.returncode != 0 and root == code and set(codes) <= {code, -15}, done.stderr


def real_saved_bytes(forward, given) -> int:
    """What `forward()` really saves for backward on the CPU: each storage once, by its address, the
    storages of the tensors `given` (weights, inputs) not counted. The reference the meta-device
    traces of the memory checks are held to."""
    skip = {t.untyped_storage().data_ptr() for t in given}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    del loss
    return sum(seen.values())


def folders_without_usable_faces(root: Path) -> tuple[Path, Path]:
    """(a folder with no image at all, a folder whose images are all too small or undecodable): what
    `train` and `finetune` refuse with the reasons and what to do about each."""
    import numpy as np

    from facerestore.image_io import write_image

    empty, poor = root / "empty", root / "poor"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    write_image(poor / "a.png", np.full((8, 8, 3), 0.5, np.float32))
    write_image(poor / "b.png", np.full((12, 12, 3), 0.5, np.float32))
    (poor / "c.jpg").write_bytes(b"junk")
    return empty, poor
