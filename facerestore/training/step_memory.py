"""Does one training step fit in memory? `train` asks before it writes anything, so a batch too large
for the machine stops with one line (exit 2) instead of the kernel's OOM killer (exit 137, no word)
or a CUDA out-of-memory traceback an hour into data loading.

What a step holds at its peak (bytes, B = the batch of one process, P = parameters):

    B * activations   the tensors autograd saves for backward, traced without computing anything
                      (`saved_bytes`); on the CPU times (1 + TRANSIENT): the gradients of the
                      activations, the kernels' work copies and the heap's slack during backward
    B * inputs        lq, hq and the noise of the batch; on the CPU also the batches the data-loading
                      workers hold ready (prefetch 2 each) and the one each is making
    4 P * 4           weights, gradients and Adam's two moments, float32 whatever --amp says
    (+ P * 4)         the EMA copy, on the main process only
    (+ BASE)          on the CPU, what the first step adds besides (library state)

Saved activations grow linearly in B (the tests check it), so the largest batch that fits is found
in closed form. The CPU's figure is set from the peak RSS of real steps (docs/training.md, "Memory")
and errs on the safe side. On a GPU it is the least a step needs, nothing added: not measured
there yet, and a refusal of a batch that would have fitted costs more than a CUDA out-of-memory
error, which a run that passes may still meet. `--skip-memory-check` overrides a refusal where it is
wrong (swap, or memory another process is about to free).

Available memory: `torch.cuda.mem_get_info` on CUDA; on Linux CPUs MemAvailable of /proc/meminfo,
or less where a cgroup (a container, a job scheduler) limits the process: its limit minus what it
uses beyond reclaimable page cache. Other platforms are not checked.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from facerestore.devices import training_amp_dtype
from facerestore.diffusion.denoiser import ConcatCondition
from facerestore.diffusion.losses import x0_regression_loss
from facerestore.errors import UsageError
from facerestore.nets.guided_unet import UNetConfig
from facerestore.nets.idm_unet import OUT_CHANNELS, PRESETS, IDMUNet, idm_unet_config, size_multiple
from facerestore.nets.idm_unet import parameter_count as _parameter_count
from facerestore.training.run_config import TrainConfig

# What a step adds to its saved activations on the CPU: a share of them (backward's activation
# gradients, oneDNN's reordered copies, the heap's slack) and a fixed part (first-step library state).
# Measured: peak RSS grew by 1.35 to 1.68 times the saved activations per sample (docs/training.md,
# "Memory"). On a GPU nothing is added (module docstring).
TRANSIENT = 0.75
BASE = 256 * 2**20
PREFETCH = 2  # batches each data-loading worker keeps ready (the DataLoader's prefetch_factor)
_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class StepMemory:
    """Bytes a training step needs in one process: `per_sample * batch + fixed`."""

    per_sample: int
    fixed: int

    def needs(self, batch: int) -> int:
        return self.per_sample * batch + self.fixed

    def largest_batch(self, available: int) -> int:
        """The largest batch whose step fits in `available` bytes (0: not even one sample)."""
        return max(0, (available - self.fixed) // self.per_sample) if self.per_sample else sys.maxsize


@functools.lru_cache(maxsize=64)  # a refusal weighs other sizes and models; each trace takes about a second
def saved_bytes(unet: UNetConfig, size: int, batch: int, amp_dtype: torch.dtype | None = None) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward (the L1 loss of
    x0 regression, IDM eq. 7) of `batch` faces of `size` pixels; each storage counted once, the
    weights and the inputs not counted (they are accounted for apart).

    Traced on the meta device (shapes and dtypes, no data, no compute). Under --amp on fake CPU
    tensors instead, whose autocast decides which activations are saved in 16 bits as a real step's
    does (meta tensors are not autocast); should that private torch API fail, the float32 trace
    stands in, which only overestimates.
    """
    def step(device: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.device(device):  # only to build: under the device mode every op pays a Python call
            net = IDMUNet(unet)
        hq = torch.zeros(batch, OUT_CHANNELS, size, size, device=device)
        lq, noise = torch.zeros_like(hq), torch.zeros_like(hq)
        gamma = torch.full((batch,), 0.5, device=device)
        return (lambda: x0_regression_loss(ConcatCondition(net, lq), hq, gamma, noise, p=1)[0]), [*net.parameters(), hq, lq, noise, gamma]

    return traced_saved_bytes(step, amp_dtype)


def traced_saved_bytes(step: Callable[[str], tuple[Callable[[], object], list[torch.Tensor]]], amp_dtype: torch.dtype | None = None) -> int:
    """Bytes of the tensors autograd saves for backward while a training forward runs, each storage
    counted once. `step(device)` builds the nets and inputs on `device` and returns (the forward, the
    tensors not to count: weights, inputs). Run on the meta device, or under --amp on fake CPU tensors
    whose autocast keeps 16-bit activations as a real step does (meta tensors are not autocast);
    should that private torch API fail, the float32 trace stands in, which only overestimates."""
    if amp_dtype is not None:
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode

            return _trace(step, FakeTensorMode(), "cpu", amp_dtype)
        except Exception:  # noqa: BLE001 - a torch without FakeTensorMode, or an op it cannot fake
            pass
    return _trace(step, contextlib.nullcontext(), "meta", None)


def _trace(step, mode: contextlib.AbstractContextManager, device: str, amp_dtype: torch.dtype | None) -> int:
    kept: dict[int, torch.UntypedStorage] = {}  # references keep each id unique while the trace runs
    skip: set[int] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if id(storage) not in skip:
            kept.setdefault(id(storage), storage)
        return tensor

    with mode:
        forward, given = step(device)
        given = [t.untyped_storage() for t in given]
        skip.update(id(s) for s in given)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                loss = forward()
        total = sum(storage.nbytes() for storage in kept.values())
        del loss, given
    return total


def step_memory(unet: UNetConfig, size: int, amp_dtype: torch.dtype | None, *, ema: bool, workers: int = 0, device: str = "cpu") -> StepMemory:
    """What one process's training step needs on a `device` kind (module docstring). The saved
    activations are linear in the batch: float32 ones exactly proportional to it (one trace), under
    autocast plus the 16-bit copies of the weights, once per step (two traces tell them apart).
    `workers`: on the CPU the batches of the data-loading workers live in the same memory as the step."""
    one = saved_bytes(unet, size, 1, amp_dtype)
    activations = one if amp_dtype is None else saved_bytes(unet, size, 2, amp_dtype) - one
    cpu = device == "cpu"
    inputs = 3 * OUT_CHANNELS * size * size * 4 * (1 + (workers * (PREFETCH + 1) if cpu else 0))
    fixed = (one - activations) + parameter_count(unet) * 4 * (4 + int(ema)) + (BASE if cpu else 0)
    return StepMemory(per_sample=math.ceil(activations * (1 + (TRANSIENT if cpu else 0))) + inputs, fixed=fixed)


parameter_count = functools.lru_cache(maxsize=64)(_parameter_count)


def available_bytes(device: torch.device) -> int | None:
    """Memory a step on `device` may use now; None where it is not known (mps, other systems)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return None
    sources = [v for v in (_mem_available(), _cgroup_headroom()) if v is not None]
    return min(sources) if sources else None


def _mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom(proc: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The least room left under the memory limits of this process's cgroup and its parents
    (v2 or v1): limit - (usage - inactive page cache, which the kernel reclaims before it kills)."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            base, files = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        parts = [p for p in path.strip().split("/") if p]
        for depth in range(len(parts), -1, -1):  # the process's own group, then each parent up to the root
            room = _room(base.joinpath(*parts[:depth]), *files)
            if room is not None:
                rooms.append(room)
    return min(rooms) if rooms else None


def _room(folder: Path, limit_file: str, usage_file: str, cache_key: str) -> int | None:
    try:
        limit_text = (folder / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= _NO_LIMIT:
            return None
        usage = int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None
    cache = 0
    with contextlib.suppress(OSError, ValueError):
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == cache_key:
                cache = int(value)
    return max(0, int(limit_text) - max(0, usage - cache))


def check_step_memory(config: TrainConfig, unet: UNetConfig, device: torch.device, world: int = 1, *, main: bool = True, resume: bool = False) -> None:
    """A UsageError (exit 2, one line) when a step of this run will not fit in the memory `device`
    has free now: what it needs, what there is, and the largest --batch-size that fits (or a smaller
    --size or --model at this batch). Under torchrun each process takes batch / world samples; on the
    CPU the processes of one machine share its memory. Nothing happens where memory is not known."""
    available = available_bytes(device)
    if available is None:
        return
    amp_dtype, _ = training_amp_dtype(device, config.amp)
    cpu = device.type == "cpu"
    sharing = local_processes() if cpu else 1
    batch = config.batch_size // world

    def fits(net: UNetConfig, size: int, dtype: torch.dtype | None = amp_dtype) -> StepMemory:
        return step_memory(net, size, dtype, ema=main, workers=config.workers, device=device.type)

    need = fits(unet, config.size)
    if need.needs(batch) * sharing <= available:
        return
    model = f"the {config.model} model" if config.model and config.model != "custom" else "the model"
    message = refusal(f"a step of {model} at --size {config.size} with --batch-size {config.batch_size}", batch, need.needs(batch), available,
                      device, world, sharing)
    elsewhere = "train on a GPU or a machine with more memory" if cpu else "train on a GPU with more memory (or on more GPUs with torchrun)"
    if resume:
        raise UsageError(message, hint=f"a resumed run keeps its --batch-size, --size and --model: {elsewhere.replace('train', 'resume it', 1)}")
    room = available // sharing
    others = [f"--{name} {value}" for name, value in _alternatives(config, unet, lambda net, size: fits(net, size).needs(batch) <= room)]
    if not cpu and amp_dtype is None and not config.amp and fits(unet, config.size, torch.bfloat16).needs(batch) <= room:
        others.append("--amp")
    largest = need.largest_batch(room) * world
    if largest:
        hint = f"use --batch-size {largest} or less" + (f" (or {', or '.join(others)})" if others else "") + f", or {elsewhere}"
    elif others:
        hint = f"use {' or '.join(others)}, or {elsewhere}"
    else:
        hint = elsewhere
    raise UsageError(message, hint=hint)


def refusal(step: str, batch: int, need: int, available: int, device: torch.device, world: int, sharing: int) -> str:
    """The line of a step that does not fit (train's and finetune's): `step` names it with its global
    --batch-size ("a step of the base model at --size 512 with --batch-size 32"), `batch` is one
    process's share, `need` what that process needs, `sharing` the processes on this machine's memory."""
    cpu = device.type == "cpu"
    split = f" ({batch} in each of {world} processes)" if world > 1 else ""
    shared = f" for the {sharing} processes on this machine" if sharing > 1 else ""
    gpu = "the GPU" if device.index is None else f"GPU {device.index}"
    where = f"this machine has {gigabytes(available)} available" if cpu else f"{gpu} has {gigabytes(available)} free"
    return f"{step}{split} needs {'about' if cpu else 'at least'} {gigabytes(need * sharing)}{shared}, but {where}"


def _alternatives(config: TrainConfig, unet: UNetConfig, fits) -> list[tuple[str, object]]:
    """The largest smaller --size, and the largest smaller --model preset, at which a step fits."""
    found: list[tuple[str, object]] = []
    preset = config.model if config.model in PRESETS and not config.init_from else None
    size = config.size // 2
    while size >= unet.multiple and size % unet.multiple == 0:
        if fits(idm_unet_config(preset, size) if preset else unet, size):
            found.append(("size", size))
            break
        size //= 2
    if preset:
        smaller = sorted((parameter_count(idm_unet_config(p, config.size)), p) for p in PRESETS
                         if p != preset and config.size % size_multiple(p) == 0 and config.size >= size_multiple(p))
        own = parameter_count(unet)
        for _, name in reversed([item for item in smaller if item[0] < own]):
            if fits(idm_unet_config(name, config.size), config.size):
                found.append(("model", name))
                break
    return found


def gigabytes(n: int) -> str:
    """Bytes as the refusal says them: '61 GB', '2.4 GB', '0.3 GB' (GiB, as free and nvidia-smi count)."""
    value = n / 2**30
    return f"{value:.0f} GB" if value >= 10 else f"{value:.1f} GB"


def local_processes() -> int:
    """Training processes torchrun starts on this machine (they share its memory on the CPU)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


__all__ = ["BASE", "StepMemory", "TRANSIENT", "available_bytes", "check_step_memory", "gigabytes", "local_processes", "refusal", "saved_bytes", "step_memory",
           "traced_saved_bytes"]
