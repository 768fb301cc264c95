"""Cost of a sampling step of difface and dr2 next to a bare call of the same network, at full size.

    python bench/bench_diffusion.py [--device cpu|cuda] [--threads 2] [--repeat 2] [--batch 1] [--full]

Full-size networks with random weights (no official weights are needed): DifFace's 512 UNet
(159.8M parameters) and SwinIR estimator, DR2's 256 UNet (93.6M) and SPARNetHD (85.8M).

For each method and precision it measures, in milliseconds:
- bare:        `unet(x, t)` alone, fp32 eager, inference mode, default (contiguous) memory layout
               (the baseline; on GPU also under the method's autocast dtype);
- step:        one step INSIDE the method's sampling loop (denoiser adapter, DDIM / DDPM step, DR2's
               low-frequency replacement, per-face noise), timed between consecutive progress
               callbacks of a real `restore()`, with the net as the method places it
               (`devices.for_inference`: channels-last weights on the CPU); `step / bare` is the
               measured ratio;
- overhead:    the same loop with the UNet replaced by a stub that returns a stored output at no
               cost: what a step adds to the network call, measured over 20 steps. On a busy machine
               the two big numbers above swing with the load; `(bare + overhead) / bare` is the same
               ratio from a measurement that the load barely affects;
- stages:      the rest of a face: SwinIR for difface; the enhancer input resize and SPARNetHD for dr2;
- per face:    default settings (difface: 100 calls; dr2 medium: 26 calls) = calls x step + stages,
               estimated from the measurements unless --full runs one whole face and reports that.

Times are the MINIMUM of --repeat timings after one warm-up (the least disturbed run), the loop
overhead the median of 19 intervals. CPU rows here are fp32 only (`--precision auto` keeps fp32 on a
CPU; bench/bench_methods.py --precision fp32,bf16 times bf16 autocast there); with CUDA, fp32 and
bf16 rows are printed. The load average is printed: other processes on the
machine inflate every absolute number. Nothing is written.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from facerestore.devices import for_inference
from facerestore.methods.base import MethodOptions
from facerestore.methods.difface import DifFaceMethod, DifFaceNets, DifFacePlan
from facerestore.methods.dr2 import DR2Method, DR2Nets, DR2Setting, to_dr2_input
from facerestore.nets.guided_unet import GuidedUNet, UNetConfig
from facerestore.nets.sparnet import SPARNetConfig, SPARNetHD
from facerestore.nets.swinir import SwinIRConfig, build_swinir


def seeded_(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every tensor with fan-in scaled noise (norm weights near 1); spectral-norm u, v converged."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("attn_mask"):
                continue
            noise = torch.randn(tensor.shape, generator=g)
            if tensor.ndim >= 2:
                tensor.copy_(noise / math.sqrt(tensor[0].numel()))
            else:
                tensor.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
        for module in net.modules():
            if hasattr(module, "weight_orig"):
                matrix = module.weight_orig.reshape(module.weight_orig.shape[0], -1)
                v = F.normalize(torch.randn(matrix.shape[1], generator=g), dim=0)
                for _ in range(3):
                    u = F.normalize(matrix @ v, dim=0)
                    v = F.normalize(matrix.T @ u, dim=0)
                module.weight_u.copy_(u)
                module.weight_v.copy_(v)
    return net.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def min_ms(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Minimum wall time of fn() in ms over `repeat` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def bare_ms(net: torch.nn.Module, shape: tuple[int, ...], t: int, device: torch.device, dtype: torch.dtype | None, repeat: int) -> float:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    ts = torch.full((shape[0],), t, device=device, dtype=torch.long)

    @torch.inference_mode()
    def call():
        if dtype is None:
            return net(x, ts)
        with torch.autocast(device_type=device.type, dtype=dtype):
            return net(x, ts)

    return min_ms(call, device, repeat)


def step_intervals_ms(method, run: Callable[[], object], device: torch.device) -> list[float]:
    """Intervals between consecutive progress callbacks (= one loop step each) of one real restore()."""
    stamps: list[float] = []

    def callback(progress) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    method.callback = callback
    run()  # warm-up (first calls allocate)
    stamps.clear()
    run()
    method.callback = None
    return [1000 * (b - a) for a, b in zip(stamps, stamps[1:])]


class StubNet(torch.nn.Module):
    """Returns a stored output (shape of the real net's) at no cost: isolates the loop's own work."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls per measurement (after one warm-up)")
    parser.add_argument("--batch", type=int, default=1, help="faces per batch")
    parser.add_argument("--methods", default="difface,dr2")
    parser.add_argument("--full", action="store_true", help="also time one whole face at default settings (slow on CPU)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes: list[torch.dtype | None] = [None]
    if device.type == "cuda":
        dtypes.append(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    calls = args.repeat + 1  # `repeat` intervals between consecutive calls
    crops = torch.rand(args.batch, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    rows = []

    for name in args.methods.split(","):
        if name == "difface":
            nets = DifFaceNets(seeded_(GuidedUNet(UNetConfig.difface_512()), 0), seeded_(build_swinir(SwinIRConfig.difface_512()), 1))
            steps = next(s for s in range(calls, 401) if 400 % s == 0)
            method = DifFaceMethod(MethodOptions(device=str(device), steps=steps), nets=nets)
            stub_nets = DifFaceNets(StubNet(0.1 * torch.randn(args.batch, 6, 512, 512, generator=g).to(device)), StubNet(crops.to(device)))
            stub = DifFaceMethod(MethodOptions(device=str(device), steps=20), nets=stub_nets)
            unet, shape, t, default_calls = nets.prior, (args.batch, 3, 512, 512), 396, DifFacePlan.from_options().calls
            stage_name = "SwinIR"
            stages = partial(method.estimate, crops.to(device))
            default = partial(DifFaceMethod, MethodOptions(device=str(device)), nets=nets)
        elif name == "dr2":
            nets = DR2Nets(seeded_(GuidedUNet(UNetConfig.dr2_256()), 2), seeded_(SPARNetHD(SPARNetConfig.hd2d_512()), 3))
            # omega is capped at 99: tau = 100 - k gives k steps of N = 8 guidance, as in the medium preset
            method = DR2Method(MethodOptions(device=str(device), dr2_n=8, dr2_tau=100 - calls), nets=nets)
            stub_nets = DR2Nets(StubNet(0.1 * torch.randn(args.batch, 6, 256, 256, generator=g).to(device)), StubNet(crops.to(device) * 2 - 1))
            stub = DR2Method(MethodOptions(device=str(device), dr2_n=8, dr2_tau=80), nets=stub_nets)
            unet, shape, t, default_calls = nets.ddpm, (args.batch, 3, 256, 256), 605, DR2Setting(8, 35).calls
            stage_name = "resize+SPARNetHD"
            stages = partial(method.enhance, to_dr2_input(crops.to(device)))
            default = partial(DR2Method, MethodOptions(device=str(device)), nets=nets)
        else:
            raise SystemExit(f"unknown method {name!r}")
        print(f"{name}: bare UNet calls ...", file=sys.stderr, flush=True)
        unet.to(device, memory_format=torch.contiguous_format)  # the plain eager baseline: default layout
        bare32 = bare_ms(unet, shape, t, device, None, args.repeat)
        barelow = {dtype: bare_ms(unet, shape, t, device, dtype, args.repeat) for dtype in dtypes if dtype is not None}
        for_inference(unet, device)  # back to the layout the method runs it in
        for dtype in dtypes:
            method.autocast = stub.autocast = dtype
            bare = bare32 if dtype is None else barelow[dtype]
            print(f"{name}: steps inside restore(), loop overhead, other stages ({dtype or 'fp32'}) ...", file=sys.stderr, flush=True)
            step = min(step_intervals_ms(method, partial(method.restore, crops, torch.Generator().manual_seed(0)), device))
            overhead = statistics.median(step_intervals_ms(stub, partial(stub.restore, crops, torch.Generator().manual_seed(0)), device))
            stage = min_ms(stages, device, args.repeat)
            per_face = (default_calls * step + stage) / args.batch
            measured = "-"
            if args.full:
                whole = default()
                whole.autocast = dtype
                measured = f"{min_ms(partial(whole.restore, crops, torch.Generator().manual_seed(0)), device, 1) / args.batch:.0f}"
            label = "fp32" if dtype is None else str(dtype).replace("torch.", "")
            rows.append((name, label, args.batch, bare, step, step / bare, overhead, (bare + overhead) / bare, stage_name, stage, default_calls, per_face, measured))
        del method, stub, nets, stub_nets, unet
        if device.type == "cuda":
            torch.cuda.empty_cache()

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = f"{args.threads} threads, load average {load_before:.1f} -> {load_after:.1f}" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"\nms per UNet call and per face; full-size nets, random weights; {device.type} ({where}); bare calls and stages: min of {args.repeat} after a warm-up; "
          f"loop step: min of the step intervals of one restore after a warm-up restore\n")
    print("| method | dtype | batch | bare UNet call | step in loop | step / bare | loop overhead (stub net) | (bare + overhead) / bare | other stages | ms | calls | per face (est.) | per face (measured) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.3f} | {r[6]:.1f} | {r[7]:.3f} | {r[8]} | {r[9]:.0f} | {r[10]} | {r[11]:.0f} | {r[12]} |")


if __name__ == "__main__":
    main()
