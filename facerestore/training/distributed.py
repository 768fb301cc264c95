"""torch.distributed for `train` and `clean-dataset` under `torchrun`: one process per device.

`torchrun --nproc_per_node N -m facerestore train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them everything runs as a single process and no process group is created. GPUs use NCCL (one GPU
per process, cuda:LOCAL_RANK), CPUs use gloo. Only rank 0 writes shared files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from facerestore.devices import resolve_device
from facerestore.errors import UsageError


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
