"""Speed and memory of each restoration method per setting (steps), faces per photo and precision.

    python bench/bench_methods.py                      # CPU: --quick (1 face, the fewest steps)
    python bench/bench_methods.py --full --faces 1,4   # CPU: the methods' real settings (slow: DifFace ~11 min/face on 2 CPU cores, docs/methods.md)
    python bench/bench_methods.py --device cuda        # GPU: --full, faces 1,4,16,64, fp32 and bf16

What is timed: `pipeline.restore_crops` on aligned 512 crops, i.e. exactly what `facerestore` runs
per photo (all faces of the photo in chunks of --batch-size). Detection, alignment and paste-back
are in bench/bench_pipeline.py. Each row is the median of --repeats runs after one warm-up run.

Settings ("steps"): baseline and codeformer are one pass; difface takes --steps S (UNet calls,
Table VIII of the paper: 200/100/40/20/8; default start/4 = 100 at --start 400) plus one SwinIR pass; dr2 runs its presets
(mild 21, medium 26, severe 31 UNet calls at 256, then SPARNetHD at 512). --quick uses difface
--steps 1 and 2, and dr2 (N=16, tau=98 and 97), 2 and 3 calls; a least-squares fit over the
settings of a method gives its cost per call and its fixed cost (SwinIR, SPARNetHD, resizing), and
an estimate for its default setting, printed below the main table (labelled as an estimate).

Weights (the table's column): "official" is a method's published checkpoint, "bundled" the model
shipped inside the package (baseline, idm). A method whose weights are missing here runs with
RANDOMLY INITIALISED nets of the official size (the table says "random init"): timings are about
computation, not quality. Pass real files with --weights METHOD:FILE (as in `facerestore evaluate`)
or FACERESTORE_WEIGHTS.

Memory: CPU: peak resident memory above the level before the call (Linux: the kernel's high-water
mark VmHWM, reset through /proc/self/clear_refs; elsewhere psutil sampling if installed, else the
process's lifetime peak, said in the table). CUDA: torch.cuda.max_memory_allocated (weights
included) and its rise during the call.

Plots (PNG, matplotlib when installed; otherwise said and skipped): seconds per face against faces
per photo, and against UNet calls for the diffusion methods, in --plots (default results/bench_methods).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from facerestore.devices import resolve_device
from facerestore.errors import UnsupportedCheckpoint, WeightsError
from facerestore.methods import registry
from facerestore.methods.base import MethodOptions
from facerestore.pipeline import restore_crops

MB = 1024 * 1024


# ------------------------------------------------------------------ memory


class PeakMemory:
    """Peak memory of one call: `with meter: ...` then `meter.peak_mb` (and `meter.rise_mb`)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cuda = device.startswith("cuda")
        self.peak_mb = self.rise_mb = float("nan")
        self._sampler: threading.Thread | None = None
        self.hwm = not self.cuda and _can_reset_hwm()
        if self.cuda:
            self.how = "CUDA max_memory_allocated (weights included); rise = above the level before the call"
        elif self.hwm:
            self.how = "peak RSS above the level before the call (Linux VmHWM, reset per call)"
        elif _psutil() is not None:
            self.how = "peak RSS above the level before the call (psutil, sampled every 5 ms)"
        else:
            self.how = "process peak RSS since start (no VmHWM reset, no psutil: only an upper bound)"

    def __enter__(self) -> PeakMemory:
        gc.collect()
        _trim_heap()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        elif self.hwm:
            Path("/proc/self/clear_refs").write_text("5")
            self._base = _status_kb("VmRSS") * 1024
        elif (psutil := _psutil()) is not None:
            process = psutil.Process()
            self._base = process.memory_info().rss
            self._max = self._base
            self._stop = threading.Event()

            def sample() -> None:
                while not self._stop.wait(0.005):
                    self._max = max(self._max, process.memory_info().rss)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
        else:
            self._base = 0
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            self.peak_mb, self.rise_mb = peak / MB, (peak - self._base) / MB
        elif self.hwm:
            peak = _status_kb("VmHWM") * 1024
            self.peak_mb = self.rise_mb = (peak - self._base) / MB
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak_mb = self.rise_mb = (self._max - self._base) / MB
        else:
            import resource

            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            self.peak_mb = self.rise_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def _trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc), so that memory a previous call freed but
    the allocator kept does not hide this call's peak from an RSS measurement."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kb("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def _psutil():
    try:
        import psutil

        return psutil
    except ImportError:
        return None


# ------------------------------------------------------------------ methods (real or random weights)


@dataclass(frozen=True)
class Setting:
    """One way to run a method: its options and how many network calls it makes per face."""

    label: str
    options: dict = field(default_factory=dict)
    calls: int | None = None  # UNet (or single-pass net) calls per face


def settings_for(name: str, quick: bool, difface_steps: list[int]) -> list[Setting]:
    """The settings to time. --quick takes two short ones per diffusion method (1 and 2 UNet calls;
    DR2: 2 and 3), so that the cost per call and the fixed cost can be told apart."""
    if name == "difface":
        steps = [1, 2] if quick else difface_steps
        return [Setting(f"{s} steps", {"steps": s}, s) for s in steps]
    if name == "dr2":
        from facerestore.methods.dr2 import PRESETS, DR2Setting

        if quick:  # N=16: omega = min(tau + 30, 99), so tau 98 and 97 give 2 and 3 calls
            return [Setting(f"N=16, tau={t} (quick)", {"dr2_n": 16, "dr2_tau": t}, DR2Setting(16, t).calls) for t in (98, 97)]
        return [Setting(f"{p} (N={n}, tau={t})", {"dr2_preset": p}, DR2Setting(n, t).calls) for p, (n, t) in PRESETS.items()]
    info = registry.method_info(name)
    if "steps" in info.knobs:  # another diffusion method (idm): its default, or two short runs
        return [Setting("default steps", {}, default_calls(name))] if not quick else [Setting(f"{s} steps", {"steps": s}, s) for s in (1, 2)]
    return [Setting("1 pass", {}, 1)]


def default_calls(name: str) -> int | None:
    """UNet calls per face of a method's default setting (for the extrapolation in --quick)."""
    if name == "difface":
        from facerestore.methods.difface import DifFacePlan

        return DifFacePlan.from_options().calls
    if name == "dr2":
        from facerestore.methods.dr2 import DEFAULT_PRESET, PRESETS, DR2Setting

        return DR2Setting(*PRESETS[DEFAULT_PRESET]).calls
    if name == "idm":
        from facerestore.methods.idm import DEFAULT_STEPS

        return DEFAULT_STEPS
    return None


class RandomNets:
    """Official-size nets with random weights for methods whose checkpoints are missing (built once)."""

    def __init__(self, device: str, workdir: Path) -> None:
        self.device = device
        self.workdir = workdir
        self.cache: dict[str, object] = {}

    def _file(self, name: str, net: torch.nn.Module) -> Path:
        from facerestore.weights.checkpoint import save_safetensors

        path = self.workdir / f"{name}_random.safetensors"
        if not path.exists():
            save_safetensors(net.state_dict(), path)
        return path

    def build(self, name: str, options: MethodOptions):
        """The method with random official-size nets, or None when we do not know its nets."""
        torch.manual_seed(0)
        if name == "baseline":
            from facerestore.nets.baseline_unet import BaselineUNet, BaselineUNetConfig

            return registry.build_method(name, replace(options, weights=self._file(name, BaselineUNet(BaselineUNetConfig()))))
        if name == "codeformer":
            from facerestore.nets.codeformer import CodeFormer, CodeFormerConfig

            return registry.build_method(name, replace(options, weights=self._file(name, CodeFormer(CodeFormerConfig.official()))))
        if name == "difface":
            from facerestore.methods.difface import DifFaceMethod, DifFaceNets
            from facerestore.nets.guided_unet import GuidedUNet, UNetConfig
            from facerestore.nets.swinir import SwinIRConfig, build_swinir

            if name not in self.cache:
                self.cache[name] = DifFaceNets(prior=GuidedUNet(UNetConfig.difface_512()), estimator=build_swinir(SwinIRConfig.difface_512()))
            return DifFaceMethod(options, nets=self.cache[name])
        if name == "dr2":
            from facerestore.methods.dr2 import DR2Method, DR2Nets
            from facerestore.nets.guided_unet import GuidedUNet, UNetConfig
            from facerestore.nets.sparnet import SPARNetConfig, SPARNetHD

            if name not in self.cache:
                self.cache[name] = DR2Nets(ddpm=GuidedUNet(UNetConfig.dr2_256()), enhancer=SPARNetHD(SPARNetConfig.hd2d_512()))
            return DR2Method(options, nets=self.cache[name])
        return None


WHY_RANDOM: dict[str, str] = {}  # method -> the missing weights that made it run on random nets


def build(name: str, setting: Setting, device: str, precision: str, weights: str | None, random_nets: RandomNets) -> tuple[object | None, str]:
    """(method, where its weights come from) — real weights when they resolve offline, else random."""
    options = MethodOptions(device=device, weights=weights, offline=True, precision=precision, **setting.options)
    try:
        method = registry.build_method(name, options)
    except UnsupportedCheckpoint:
        raise
    except WeightsError as exc:
        method = random_nets.build(name, options)
        reason = str(exc).split(";")[0]
        if method is None:
            return None, f"skipped: {reason}"
        WHY_RANDOM[name] = reason
        return method, "random init"
    if weights is not None:
        return method, f"--weights {weights}"
    # baseline and idm ship their own trained model inside the package: not an official checkpoint
    return method, "bundled" if hasattr(sys.modules[type(method).__module__], "bundled_weights") else "official"


# ------------------------------------------------------------------ timing


@dataclass
class Row:
    method: str
    setting: str
    calls: int | None
    weights: str
    device: str
    precision: str
    threads: int | None
    faces: int
    batch: int
    seconds: float  # per photo (all its faces)
    peak_mb: float
    rise_mb: float

    @property
    def per_face(self) -> float:
        return self.seconds / self.faces


def sample_crops(n: int) -> list[np.ndarray]:
    """n distinct smooth 512 crops (content does not change the cost of these nets)."""
    import cv2

    rng = np.random.default_rng(0)
    return [np.clip(cv2.resize(rng.uniform(0.1, 0.9, (16, 16, 3)).astype(np.float32), (512, 512), interpolation=cv2.INTER_CUBIC), 0, 1) for _ in range(n)]


def time_call(fn: Callable[[], object], device: str, repeats: int, meter: PeakMemory) -> float:
    times = []
    for i in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        with meter if i == 0 else nullcontext():
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------ output


def markdown(rows: list[Row], memory_how: str) -> str:
    lines = [
        f"memory: {memory_how}",
        "",
        "| method | setting | calls/face | weights | device | precision | threads | faces/photo | batch | s/photo | s/face | peak MB | rise MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.setting} | {r.calls or '?'} | {r.weights} | {r.device} | {r.precision} | {r.threads or ''} | {r.faces} | {r.batch} | "
            f"{r.seconds:.3f} | {r.per_face:.3f} | {r.peak_mb:.0f} | {r.rise_mb:.0f} |"
        )
    return "\n".join(lines)


def per_call_table(rows: list[Row]) -> str:
    """Least-squares s/face = fixed + per_call * calls over the settings of each method (same device,
    precision, threads, faces), and what that predicts for the method's default setting."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.calls:
            groups.setdefault((r.method, r.device, r.precision, r.threads, r.faces), []).append(r)
    lines = []
    for (method, device, precision, threads, faces), group in groups.items():
        calls = np.array([r.calls for r in group], dtype=np.float64)
        if len(set(calls)) < 2:
            continue
        per_call, fixed = np.polyfit(calls, [r.per_face for r in group], 1)
        default = default_calls(method)
        estimate = f"{fixed + per_call * default:.1f} s ({default} calls)" if default else ""
        if per_call <= 0:  # more calls took no longer: the timings swung with the load
            estimate = "none: the fit is not a cost (timings too noisy; rerun on an idle machine or with --repeats 3)"
        lines.append(f"| {method} | {device} | {precision} | {threads or ''} | {faces} | {per_call:.3f} | {fixed:.3f} | {estimate} |")
    if not lines:
        return ""
    head = [
        "",
        "Cost per network call and fixed cost per face (least squares over the settings above); the last column",
        "extrapolates to the method's default setting (an estimate, not a measurement):",
        "",
        "| method | device | precision | threads | faces/photo | s per call | fixed s per face | default setting, estimated s/face |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines)


def plots(rows: list[Row], folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\nplots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.method, r.setting, r.device, r.precision, r.threads), []).append(r)
    if any(len(g) > 1 for g in groups.values()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (method, setting, device, precision, threads), group in groups.items():
            group = sorted(group, key=lambda r: r.faces)
            ax.plot([r.faces for r in group], [r.per_face for r in group], marker="o", label=f"{method} {setting} {device} {precision}" + (f" {threads}t" if threads else ""))
        ax.set(xscale="log", yscale="log", xlabel="faces per photo", ylabel="seconds per face", title="Batching: restore time per face")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        path = folder / "seconds_per_face_vs_faces.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    fewest = min(r.faces for r in rows)
    stepped = {m for m in {r.method for r in rows} if len({r.calls for r in rows if r.method == m and r.calls}) > 1}
    diffusion = [r for r in rows if r.faces == fewest and r.method in stepped]
    if diffusion:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        by_method: dict[tuple, list[Row]] = {}
        for r in diffusion:
            by_method.setdefault((r.method, r.device, r.precision), []).append(r)
        for (method, device, precision), group in by_method.items():
            group = sorted(group, key=lambda r: r.calls)
            ax.plot([r.calls for r in group], [r.per_face for r in group], marker="o", label=f"{method} {device} {precision}")
        ax.set(xlabel="network calls per face (steps)", ylabel="seconds per face", title=f"Steps: {diffusion[0].faces} face(s) per photo")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
        path = folder / "seconds_per_face_vs_steps.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    if not written:
        print("\nno plot: vary --faces or the steps to get one")
    return written


# ------------------------------------------------------------------ main


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(registry.method_names()), help="comma list (default: every registered method)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    parser.add_argument("--precision", default=None, help="comma list of fp32, bf16 (default: fp32 on CPU, fp32,bf16 on CUDA)")
    parser.add_argument("--threads", default=None, help="CPU only: comma list of torch thread counts (default: torch's current)")
    parser.add_argument("--faces", default=None, help="faces per photo, comma list (default: 1 with --quick, else 1,4,16,64)")
    parser.add_argument("--difface-steps", default="8,20,100", help="difface --steps values without --quick (Table VIII uses 200,100,40,20,8)")
    parser.add_argument("--batch-size", type=int, default=8, help="faces per restore call, as `facerestore -b` (default 8)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (median); one warm-up run is always made")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewest steps, 1 face (the default on CPU)")
    mode.add_argument("--full", action="store_true", help="the methods' real settings (the default on CUDA)")
    parser.add_argument("--weights", action="append", default=[], help="METHOD:FILE (repeat): real weights for a method")
    parser.add_argument("--plots", type=Path, default=Path("results/bench_methods"), help="folder for the PNG plots")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    quick = args.quick or (not args.full and not cuda)
    faces = int_list(args.faces) if args.faces else ([1] if quick else [1, 4, 16, 64])
    precisions = args.precision.split(",") if args.precision else (["fp32", "bf16"] if cuda else ["fp32"])
    threads = int_list(args.threads) if args.threads and not cuda else [None]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in registry.method_names()]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(registry.method_names())}")
    weights = {}
    for value in args.weights:
        name, _, file = value.partition(":")
        weights[name] = file
    crops_all = sample_crops(max(faces))
    meter = PeakMemory(device)
    title = "quick (fewest steps)" if quick else "full settings"
    print(f"# bench_methods: {device}{' ' + torch.cuda.get_device_name(device) if cuda else ''}, torch {torch.__version__}, {title}\n")
    if quick and not cuda:
        print("CPU --quick: 1 face, the two shortest settings of each diffusion method (their cost per call is fitted below). --full for the real settings.\n")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_methods_") as tmp:
        random_nets = RandomNets(device, Path(tmp))
        for name in methods:
            for setting in settings_for(name, quick, int_list(args.difface_steps)):
                for precision in precisions:  # the method's own --precision: fp32 means fp32, also on CUDA
                    method, source = build(name, setting, device, precision, weights.get(name), random_nets)
                    if method is None:
                        print(f"- {name} ({setting.label}): {source}")
                        break
                    for nthreads in threads:
                        if nthreads:
                            torch.set_num_threads(nthreads)

                        def run(n: int) -> None:
                            restore_crops(method, crops_all[:n], batch_size=min(n, args.batch_size), seed=0)

                        run(1)  # warm-up: lazy initialisation, cuDNN autotuning
                        for n in faces:
                            seconds = time_call(lambda: run(n), device, args.repeats, meter)
                            row = Row(name, setting.label, setting.calls, source, device, precision, nthreads or (None if cuda else torch.get_num_threads()), n, min(n, args.batch_size), seconds, meter.peak_mb, meter.rise_mb)
                            rows.append(row)
                            print(f"  {name} {setting.label} {precision} faces={n}: {row.per_face:.3f} s/face", file=sys.stderr, flush=True)
                    method = None  # free the nets before the next one is built
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
    print(markdown(rows, meter.how))
    print(per_call_table(rows))
    for name, reason in WHY_RANDOM.items():
        print(f"\n{name}: random init of the official-size nets, because {reason}")
    for path in plots(rows, args.plots):
        print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
