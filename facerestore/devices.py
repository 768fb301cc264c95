"""--device auto|cpu|cuda|mps -> a torch device name, with one clear error when it is not there;
how a network is placed on that device for inference; and --precision, the dtype it runs in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facerestore.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> str:
    """auto picks cuda, then mps, then cpu; an explicit device that is missing is a usage error."""
    import torch

    if name not in DEVICES and not name.startswith("cuda:"):
        raise UsageError(f"--device {name!r} is not a device", hint=f"use one of: {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but torch sees no CUDA GPU", hint="use --device cpu or auto (or install a CUDA build of torch)")
    if name == "mps" and not _mps_available():
        raise UsageError("--device mps was asked for but this machine has no Apple GPU", hint="use --device cpu or auto")
    return name


def for_inference(net: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """`net` in eval mode on `device`; on the CPU with channels-last convolution weights.

    oneDNN convolves channels-last weights 10-15% faster on the CPU (2 threads, bench/bench_diffusion.py:
    DifFace's UNet 7.2 -> 6.5 s a call, SwinIR 4.3 -> 3.9 s, the idm UNet 1.06 -> 0.94 s for 4 faces,
    the baseline 3.3 -> 2.8 s for 4 faces), with results equal to 1e-6. Not for SPARNetHD, which
    it makes slower (26.5 -> 29.3 s). GPUs keep the default layout until it is measured there.
    """
    import torch

    net = net.to(device).eval()
    if torch.device(device).type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return net


def fold_batch_norms(net: torch.nn.Module) -> int:
    """Fold each BatchNorm2d that follows a Conv2d in an nn.Sequential into that convolution (the
    BatchNorm becomes an Identity); returns how many. For eval-only copies of checkpoints loaded
    strictly: the state dict no longer has the BatchNorm keys afterwards. A BatchNorm is a separate
    pass over the whole activation on the CPU (14% of RetinaFace mobile0.25's time)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for module in net.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d) and norm.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv.eval(), norm.eval())
                module._modules[second] = torch.nn.Identity()
                folded += 1
    return folded


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(device: torch.device | str, precision: str = "auto", *, auto_on_cuda: bool = True) -> torch.dtype | None:
    """--precision -> the dtype networks run in under `torch.autocast` on `device`; None = float32.

    auto: bf16 (fp16 where the GPU has no bf16) on CUDA for the methods measured there
    (`auto_on_cuda`), float32 everywhere else. bf16 on the CPU is opt-in: oneDNN runs it natively on
    CPUs with AMX or AVX512-BF16 (the idm UNet 1.7x faster, results within 0.1 of an 8-bit level on
    average; docs/usage.md) and emulates it, slower than float32, on the others. Samplers and
    colour arithmetic stay float32 whatever the choice: only the networks' layers change.
    """
    import torch

    kind = torch.device(device).type
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} is not a precision", hint=f"use one of: {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and not (kind == "cuda" and auto_on_cuda)):
        return None
    if kind == "mps":
        raise UsageError(f"--precision {precision} is not supported on mps yet", hint="use --precision fp32 (or auto) on Apple GPUs")
    if kind == "cpu" and precision == "fp16":
        # bf16 only where this CPU runs it natively: elsewhere it is emulated, slower than fp32
        hint = ("use --precision fp32 or auto, or bf16 (this CPU runs it natively: faster)" if cpu_has_native_bf16() else
                "use --precision fp32 or auto (bf16 would be slower: this CPU has no AMX or AVX512-BF16)")
        raise UsageError("--precision fp16 needs a CUDA GPU; the CPU has no fast fp16 convolutions", hint=hint)
    if kind == "cuda" and precision != "fp16" and not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            raise UsageError("--precision bf16 was asked for but this GPU has no bf16", hint="use --precision fp16 or auto")
        return torch.float16
    return torch.float16 if precision == "fp16" else torch.bfloat16


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 matrix work natively (AMX or AVX512-BF16), so bf16 is faster than
    float32; elsewhere it is emulated and slower, and mixed precision on the CPU is not worth it."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    try:
        return any(probe() for probe in probes if probe is not None)
    except RuntimeError:  # a torch built without the CPU capability probes
        return False


# --precision bf16 over fp32 on a CPU with AMX, same quality on 61 faces (docs/usage.md, "Speed")
CPU_BF16_SPEEDUP = {"idm": 1.6, "baseline": 3.4}


def cpu_bf16_tip(device: torch.device | str, precision: str, method: str) -> str | None:
    """The one-line hint that --precision bf16 would be faster, or None.

    Only where it holds: `auto` on a CPU that runs bf16 natively, for a method whose bf16 quality
    was measured. `auto` itself stays float32 on the CPU so that a result does not depend on which
    CPU made it.
    """
    import torch

    speedup = CPU_BF16_SPEEDUP.get(method)
    if precision != "auto" or speedup is None or torch.device(device).type != "cpu" or not cpu_has_native_bf16():
        return None
    # measured on the bundled model: a user's own --weights was not, so the line says which it was
    return (f"tip: this CPU runs bf16 natively; --precision bf16 made the bundled {method} model {speedup:g}x faster "
            "with the same measured quality (docs/usage.md, Speed)")


def training_amp_dtype(device: torch.device | str, amp: bool, *, fp16: bool = True, cpu: bool = True) -> tuple[torch.dtype | None, str | None]:
    """--amp -> (the autocast dtype of a training step, None) or (None, why it is off).

    CUDA: bf16 where the GPU has it, else fp16 (only with `fp16`: the caller scales the loss).
    CPU (with `cpu`, for the trainers where it was measured): bf16 where the CPU runs it natively
    (`cpu_has_native_bf16`), measured faster with the same losses (docs/training.md); float32
    elsewhere. Parameters, gradients, the optimizer and the EMA stay float32 in every case: autocast
    only changes the dtype the layers compute in.
    """
    import torch

    if not amp:
        return None, None
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, None
        return (torch.float16, None) if fp16 else (None, "--amp needs a GPU with bfloat16 here; training in float32")
    if kind == "cpu" and not cpu:
        return None, "--amp has no effect on the CPU for this command; training in float32"
    if kind == "cpu":
        if cpu_has_native_bf16():
            return torch.bfloat16, None
        return None, "--amp has no effect on this CPU (no AMX or AVX512-BF16, bf16 would be emulated and slower); training in float32"
    return None, f"--amp is not supported on {kind}; training in float32"


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """A `torch.autocast` context for `dtype` on `device`'s kind, or a no-op when dtype is None."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@dataclass(frozen=True, eq=False)
class Autocast:
    """`module(*args)` under `autocast(dtype)` on the first argument's device, returned in float32
    so that the samplers' arithmetic around the network stays float32."""

    module: Callable[..., torch.Tensor]
    dtype: torch.dtype | None = None

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        with autocast(args[0].device, self.dtype):
            return self.module(*args).float()
