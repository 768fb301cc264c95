"""torch.distributed for `train`, `finetune` and `clean-dataset` under `torchrun`: one process per device.

`torchrun --nproc_per_node N -m facerestore train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them everything runs as a single process and no process group is created. GPUs use NCCL (one GPU
per process, cuda:LOCAL_RANK), CPUs use gloo. Only rank 0 writes shared files.

Failures. Inputs are checked on every rank before the first collective call, so a bad option stops
all ranks alike. An error on one rank only (a full disk when rank 0 saves) breaks the others' next
barrier or all-reduce; `process_group` has the failing rank leave its exit code and line in the
group's store (torchrun's agent holds it, so it outlives the process), and turns the others' broken
collective into `PeerFailed`: they exit quietly with that code instead of a gloo traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from facerestore.devices import resolve_device
from facerestore.errors import FaceRestoreError, PeerFailed, UsageError

FAILED = "facerestore/failed"  # store key prefix: /<torchrun restart>/<rank> -> {"code", "message"}


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def world_size() -> int:
    """The number of processes torchrun starts (1 without it), known before the process group is joined."""
    return _env_int("WORLD_SIZE", 1)


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world = world_size()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    name = resolve_device(device)
    if name == "cuda" or name.startswith("cuda:"):
        if world > 1:
            if name != "cuda":
                raise UsageError(f"--device {name} pins one GPU; under torchrun each process takes cuda:LOCAL_RANK", hint="use --device auto or cuda")
            name = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(name))
    elif name == "mps" and world > 1:
        raise UsageError("torchrun with several processes is not supported on Apple GPUs", hint="run a single process, or --device cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if name.startswith("cuda") else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=torch.device(name))


@contextmanager
def process_group(device: str = "auto") -> Iterator[Dist]:
    """`setup` ... `teardown`, with one rank's failure told to the others (module docstring).

    A rank that fails records its exit code and line before it leaves the group; a rank whose
    collective call then breaks (a RuntimeError) raises the lowest failed peer's `PeerFailed` in its
    place. Without a record (a peer killed with -9, no store) the original error stands.
    """
    d = setup(device)
    try:
        yield d
    except BaseException as exc:
        if not d.active:
            raise
        store = _store()
        peer = peer_failure(store, d) if isinstance(exc, RuntimeError) else None  # gloo/NCCL errors are RuntimeErrors
        if peer is not None:
            raise peer from None
        record_failure(store, d, exc)
        raise
    finally:
        teardown(d)


def _store() -> dist.Store | None:
    try:  # the default group's store; private in torch, so its absence only loses the peer's code
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def _failed_key(rank: int) -> str:
    return f"{FAILED}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{rank}"


def record_failure(store: dist.Store | None, d: Dist, exc: BaseException) -> None:
    """Leave this rank's exit code and one-line message where its peers can read them."""
    if store is None:
        return
    if isinstance(exc, FaceRestoreError):
        code, message = exc.exit_code, exc.one_line()
    else:
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        store.set(_failed_key(d.rank), json.dumps({"code": code, "message": message}))
    except Exception:  # the store is gone too: the peers fall back to their own error
        pass


def peer_failure(store: dist.Store | None, d: Dist) -> PeerFailed | None:
    """The failure the lowest other rank recorded, if any (it never waits: `check` before `get`)."""
    if store is None:
        return None
    for rank in range(d.world):
        if rank == d.rank:
            continue
        try:
            key = _failed_key(rank)
            if store.check([key]):
                data = json.loads(store.get(key))
                return PeerFailed(rank, int(data["code"]), str(data["message"]))
        except Exception:
            return None
    return None


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def mean(d: Dist, value: float) -> float:
    """The mean of a float over all processes (the float itself in a single process)."""
    if not d.active:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / d.world


def total(d: Dist, values: list[float]) -> list[float]:
    """Element-wise sums over all processes."""
    if not d.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def gather(d: Dist, items: list) -> list:
    """Every process's list (picklable items), concatenated in rank order (the list itself in a single process)."""
    if not d.active:
        return list(items)
    parts: list[list | None] = [None] * d.world
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part or []]


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
