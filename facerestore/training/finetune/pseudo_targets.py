"""Stage 1 of unpaired fine-tuning: pseudo-targets from a diffusion prior (Kuai et al. 2025, Sec. 3.3).

Algorithm 1 as the released code runs it (SamsungLabs/DT-BFR `generate_pseudo_targets.py` with
`scripts/generate_targets_general.sh`, `models/gaussian_diffusion.py:p_sample_loop_progressive`):

    y0   = R(y)                        the base model's output on the low-quality face, 8-bit as the
                                       code reads it back from disk, at the working size S (512)
    ref  = 2 y0 - 1                    in [-1, 1]
    x    = q_sample(ref, grid[K/4], z)                                          (paper eq. 4)
    for i = K/4 - 1 ... 0 on the "250" grid (t = grid[i], t_prev = grid[i-1], -1 at the end):
        x^_0, x = DDPM ancestral step at t (learned-range variance, x^_0 clipped)   (eq. 2-3)
        if i >= L/4:  x <- x - Phi_N(x) + Phi_N(q_sample(ref, t_prev, z'))         (Alg. 1, eq. 5)
    target = clamp((x + 1) / 2, 0, 1)

Notation (paper -> code -> here):

    K = 600   --started_timesteps 150    `--k`: q_sample at grid index K/4 = 150 (t = 602); the
                                         first UNet call is at index 149 (t = 598), the same
                                         off-by-one as DifFace's sampler; K/4 = 150 UNet calls
    L = 360   --reg_end_timesteps 90     `--l`: guided after the steps from indices >= L/4, i.e. down
                                         to t_prev = grid[L/4 - 1] = grid[89] = 357 (the engine's
                                         `until_t`; NOT 361 = grid[90]); K/4 - L/4 = 60 guided steps,
                                         the paper's "240 timesteps"
    N = 16    --down_N 16                `--n`: Phi_N = cubic antialiased down/up-sampling by N
                                         (`diffusion.lowpass`, Shocher's Resizer as in the code)

K and L are on the 0..1000 scale of the paper, and must be multiples of 4 because the "250" grid
has one step per 4 timesteps (grid index = K / 4; grid[150] = 602, not 600: the fractional
stride 999/249 of guided-diffusion's respacing).

Where we differ from the code, on purpose:
- L = 0. The code then also guides after the very last step, with `q_sample(ref, t - 1)` at t = 0,
  i.e. index -1, which numpy reads as the LAST (noisiest) timestep: the final image gets the low band
  of an almost pure-noise reference. We stop guiding at t_prev = 0 (149 guided steps from K = 600).
- Noise. The code draws from CUDA's global generator in one stream over the folder; here each face
  has its own generator keyed by (seed, relative path), so a face's target does not depend on its
  batch neighbours, on the number of GPUs, or on being redone after an interruption (up to the float
  rounding of batched convolutions, which may flip a rare 8-bit level).

Files (`OUT` is the `--out` folder, or `RUN/pseudo` for `facerestore finetune --unpaired`):

    OUT/targets/<rel>.png       the pseudo-targets, 8-bit PNG at S, under the inputs' relative paths
    OUT/base/<rel>.png          the base model's outputs y0 (8-bit PNG at S), reused on resume while
                                their input is unchanged
    OUT/contact_sheet.png       input | base output | pseudo-target, one row per face (first rows)
    OUT/.facerestore-pseudo/    settings.json (a rerun with other settings, or other weights files by
                                sha256, is refused),
                                done-rank<R>.jsonl (one line per finished target with its size, fsynced)
                                and base-rank<R>.jsonl (one line per base output with its size)

One run at a time writes into OUT: a run holds OUT/.facerestore.lock (`training.out_lock`) from before
its temp cleanup to its end, so a second one is refused and never takes the first one's live temp
files for stale ones. Every image is written atomically; a rerun skips every target listed as done whose file is still
there with the size listed (a deleted or replaced target is made again). Each line also keeps the
size, mtime and sha256 of its input (`training.loop.source_fingerprint`, taken before the input is
read): an input replaced by another image at the same path since is done again, base output and
target, both removed first (lines written before inputs were recorded are trusted); a base output
is reused only while its own line describes the input as it is now. An input that
passed the header-only scan but fails to decode (a truncated file) is skipped and counted, never
listed as done, so a rerun tries it again (after the user re-copied it, say).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from facerestore.diffusion import (
    LearnedRangeDenoiser,
    NoiseSchedule,
    Progress,
    ddpm_step,
    low_frequency_guidance,
    sample,
    space_timesteps,
)
from facerestore.errors import BadImage, UsageError, WeightsError
from facerestore.image_io import assert_apart, assert_output_folder, remove_stale_temps, resize
from facerestore.training import distributed
from facerestore.training.config_file import InvalidSetting
from facerestore.training.loop import SOURCE_KEYS, check_settings, manifest_records, open_manifest, read_settings, source_changed, source_fingerprint, source_stat
from facerestore.training.out_lock import output_lock
from facerestore.training.seeds import check_seed, stable_seed
from facerestore.plural import counted, verb

T = 1000
RESPACING = "250"
STRIDE = 4  # timesteps per step of the "250" grid, in the paper's round numbers (K = 4 * index)
DEFAULT_K, DEFAULT_L, DEFAULT_N = 600, 360, 16
STATE_DIR = ".facerestore-pseudo"
SHEET_ROWS = 8
SHEET_THUMB = 256


# ------------------------------------------------------------------ the plan: K, L, N on the grid


@dataclass(frozen=True)
class PseudoTargetPlan:
    """Where Algorithm 1 starts, where its constraint stops, and its filter (module docstring)."""

    k: int = DEFAULT_K
    l: int = DEFAULT_L
    n: int = DEFAULT_N

    @cached_property
    def grid(self) -> tuple[int, ...]:
        return space_timesteps(T, RESPACING)

    @property
    def start_index(self) -> int:
        return self.k // STRIDE

    @property
    def stop_index(self) -> int:
        """The code's `reg_end_timesteps`: guide after steps taken FROM indices >= this."""
        return self.l // STRIDE

    @property
    def noise_t(self) -> int:
        """The timestep y0 is diffused to (q_sample): grid[K/4], 602 for K = 600."""
        return self.grid[self.start_index]

    @property
    def first_t(self) -> int:
        """The first timestep the UNet sees: grid[K/4 - 1], 598 for K = 600."""
        return self.grid[self.start_index - 1]

    @property
    def until_t(self) -> int:
        """The engine's `until_t`: the last guided step lands here (grid[L/4 - 1] = 357 for L = 360)."""
        return self.grid[self.stop_index - 1] if self.stop_index > 0 else 0

    @property
    def calls(self) -> int:
        """UNet calls: K/4 (150)."""
        return self.start_index

    @property
    def constrained(self) -> int:
        """Steps followed by the low-frequency replacement: K/4 - L/4 (60); K/4 - 1 for L = 0."""
        return self.start_index - max(self.stop_index, 1) if self.stop_index < self.start_index else 0

    def describe(self) -> str:
        # until_t is only where guidance WOULD stop: with no constrained step (L = K, or K = 4) nothing is guided
        guided = f"guided down to t={self.until_t}" if self.constrained else "no step guided"
        return (f"K={self.k} (q_sample at index {self.start_index}, t={self.noise_t}), L={self.l} ({guided}), "
                f"N={self.n}: {self.calls} UNet calls, {self.constrained} constrained")

    @classmethod
    def from_options(cls, k: int | None = None, l: int | None = None, n: int | None = None, size: int = 512) -> PseudoTargetPlan:
        """Validate `--k`, `--l`, `--n` (one-line UsageError naming the bad value; InvalidSetting, whose key
        says which of k, l, n a config file holds wrong) and build the plan."""
        k = DEFAULT_K if k is None else int(k)
        l = DEFAULT_L if l is None else int(l)
        n = DEFAULT_N if n is None else int(n)
        top = STRIDE * (len(space_timesteps(T, RESPACING)) - 1)
        for name, value, lowest, highest in (("--k", k, STRIDE, top), ("--l", l, 0, min(max(k, 0), top))):
            if value % STRIDE:
                low = value - value % STRIDE
                near = sorted({min(max(v, lowest), highest) for v in (low, low + STRIDE)})  # only values the range checks accept
                raise InvalidSetting(name[2:], f"{name} {value} is not on the '250' grid: it must be a multiple of {STRIDE} (grid index = value / {STRIDE})",
                                 hint=f"use {' or '.join(map(str, near))}; the paper's K=600, L=360 are indices 150 and 90")
        if not STRIDE <= k <= top:
            raise InvalidSetting("k", f"--k {k} is out of range: the start must be in {STRIDE}..{top} (grid index 1..{top // STRIDE})", hint="the paper uses K=600")
        if not 0 <= l <= k:
            raise InvalidSetting("l", f"--l {l} must be in 0..K={k}: the constraint runs from K down to L (L=K: no constraint, the paper's Fig. 6c)",
                             hint="the paper uses L=360 with K=600")
        if n < 1:
            raise InvalidSetting("n", f"--n {n}: the low-pass factor N must be a positive integer", hint="the paper uses N=16 (8 for CodeFormer on 4x data)")
        if size % n:
            near = sorted(sorted((d for d in range(2, 33) if size % d == 0), key=lambda d: (abs(d - n), d))[:2])
            hint = (f"use --n {' or '.join(map(str, near))} ({verb(len(near), 'it divides', 'they divide')} {size})" if near
                    else f"use a --size divisible by {n}, such as {n * max(1, round(size / n))}")
            raise InvalidSetting("n", f"--n {n} does not divide the working size {size} px", hint=hint)
        return cls(k=k, l=l, n=n)


# ------------------------------------------------------------------ the sampler (Algorithm 1)


def constrained_denoise(
    denoiser: Callable,
    reference: torch.Tensor,
    plan: PseudoTargetPlan,
    generators: Sequence[torch.Generator],
    *,
    schedule: NoiseSchedule | None = None,
    callback: Callable[[Progress], None] | None = None,
) -> torch.Tensor:
    """Algorithm 1 on a batch: reference y0 [B,3,S,S] in [-1,1] -> the final x^_0 [B,3,S,S] in [-1,1].

    `denoiser` is a `LearnedRangeDenoiser` (or any denoiser predicting var_frac) called once per step
    on the whole batch; each face then takes its own DDPM step and low-frequency replacement with its
    own generator (`methods.difface.PerFaceSteps`), so faces never share noise. The first draw of
    each generator is the q_sample noise, then per step the DDPM noise and (when guided) the fresh
    reference noise, in that order.
    """
    from facerestore.methods.difface import PerFaceSteps, per_face_noise

    if reference.ndim != 4 or reference.shape[0] != len(generators):
        raise UsageError(f"need one generator per face: reference {tuple(reference.shape)}, {len(generators)} generators")
    schedule = schedule or NoiseSchedule.named("linear", T)
    x = schedule.q_sample(reference, plan.noise_t, per_face_noise(reference, generators))
    steps = tuple(low_frequency_guidance(ddpm_step, reference[i : i + 1], plan.n, plan.until_t) for i in range(reference.shape[0]))
    per_face = PerFaceSteps(steps=steps, generators=tuple(generators))
    return sample(denoiser, x, plan.grid, schedule=schedule, step=per_face, start=plan.first_t, callback=callback)


def face_seed(seed: int, rel: str) -> int:
    return stable_seed(seed, "pseudo-target", rel)


def base_seed(seed: int, rel: str) -> int:
    return stable_seed(seed, "base-output", rel)


def target_name(rel: str) -> str:
    """Targets and base outputs are PNG under the input's relative path: a/b.jpg -> a/b.png."""
    return Path(rel).with_suffix(".png").as_posix()


# ------------------------------------------------------------------ models: base restorer and prior


@dataclass(frozen=True)
class BaseSpec:
    """The pre-trained restorer R whose outputs are cleaned (and which `finetune` then fine-tunes)."""

    name: str = "codeformer"
    weights: str | None = None  # a file or a registered name; None = the method's default weights
    fidelity: float | None = None  # codeformer's w; None = 0.5, as the official scripts

    def effective_fidelity(self) -> float:
        return 0.5 if self.fidelity is None else float(self.fidelity)

    def check(self) -> None:
        from facerestore.methods.registry import method_names

        if self.name not in method_names():
            from facerestore.errors import UnknownMethod

            raise UnknownMethod(f"unknown --base {self.name!r}", hint=f"choose one of: {', '.join(method_names())}")
        if self.fidelity is not None and self.name != "codeformer":
            raise UsageError(f"--base-fidelity is CodeFormer's w; --base {self.name} has no such knob", hint="drop --base-fidelity")
        if self.fidelity is not None and not 0.0 <= self.fidelity <= 1.0:
            raise UsageError(f"--base-fidelity must be in [0,1], got {self.fidelity}", hint="the official scripts use 0.5")

    def build(self, device: str, offline: bool | None, size: int):
        """The method, with its weights resolved and loaded (a missing file is a WeightsError line)."""
        from facerestore.methods.base import MethodOptions
        from facerestore.methods.registry import build_method

        self.check()
        options = MethodOptions(device=device, weights=self.weights, weights_option="--base-weights", offline=offline, fidelity=self.fidelity)
        method = build_method(self.name, options)
        net = getattr(method, "net", None)
        native = getattr(getattr(net, "config", None), "img_size", None)
        if self.name == "codeformer" and native != size:
            raise UsageError(f"the CodeFormer checkpoint works on {native} px faces, the working size is {size}", hint=f"pass --size {native}")
        multiple = getattr(method, "multiple", 1)
        if size % multiple:
            raise UsageError(f"--size {size} is not a multiple of {multiple}, which --base {self.name} needs")
        return method

    def describe(self) -> dict:
        return {"method": self.name, "weights": describe_file(self.weights), "fidelity": self.effective_fidelity() if self.name == "codeformer" else None}


def describe_file(value: str | Path | None) -> dict | None:
    """What a settings file records about a weights option: the file (path, size and sha256, so a
    file replaced by another of the same size is not mixed into a resumed set) or the name (with the
    sha256 of its local file, where the store has one)."""
    from facerestore.weights.store import sha256_file

    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    from facerestore.errors import FaceRestoreError
    from facerestore.weights.store import find_local

    try:  # a registered name (`weights import --name`) can be imported again with another file
        found = find_local(str(value))
    except FaceRestoreError:  # not a name the store knows: the method's own check says so
        found = None
    return {"name": str(value)} | ({"sha256": sha256_file(found)} if found else {})


def resolve_prior(weights: str | Path | None, offline: bool | None) -> Path:
    """The DifFace 512 prior file (`difface_prior`; `--prior-weights` FILE or registered name)."""
    from facerestore.weights.store import resolve

    return resolve("difface_prior", explicit=weights, offline=offline, option="--prior-weights")


@contextmanager
def naming_a_missing_prior(base: str, base_weights: str | Path | None, prior_weights: str | Path | None) -> Iterator[None]:
    """Around the base model's loading: the line of a missing catalogued base checkpoint also names the
    DifFace prior when that is missing too, so one run says everything to fetch (docs/weights.md), as
    restore's dr2 and difface do (`weights.store.also_missing`)."""
    from facerestore.weights.store import also_missing, local_copies

    base_missing = base == "codeformer" and base_weights is None and not local_copies("codeformer")
    try:
        yield
    except WeightsError as exc:
        if base_missing and prior_weights is None and not local_copies("difface_prior"):
            tail = also_missing("codeformer", ["difface_prior"])
            exc.hint = f"{exc.hint}; {tail}" if exc.hint else tail
        raise


def check_prior_option(weights: str | Path | None) -> None:
    """--prior-weights names a readable file or a usable name (BadWeightsOption, exit 2): checked with
    the other options, so a typo is not found only after the base model's weights download."""
    if weights is not None:
        from facerestore.weights.store import check_weights_option

        check_weights_option(weights, catalogued=("difface_prior",), option="--prior-weights")


def load_prior(path: Path, device: torch.device) -> LearnedRangeDenoiser:
    from facerestore.devices import Autocast, autocast_dtype
    from facerestore.methods.difface import PRIOR_HINT, load_difface_prior

    prior = load_difface_prior(path, hint=PRIOR_HINT).to(device).eval().requires_grad_(False)
    return LearnedRangeDenoiser(Autocast(prior, autocast_dtype(device)), NoiseSchedule.named("linear", T), clip_x0=True)


@torch.inference_mode()
def restore_with_seeds(method, crops: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """crops [B,3,S,S] in [0,1] -> [B,3,S,S]; each face keyed by its own seed (stochastic methods)."""
    if hasattr(method, "restore_seeded"):
        out = method.restore_seeded(crops, list(seeds))
    elif len(seeds) > 1 and getattr(method, "info", None) is not None and method.info.name in ("codeformer", "baseline"):
        out = method.restore(crops)  # deterministic one-pass methods: the whole batch at once
    else:
        out = torch.cat([method.restore(crops[i : i + 1], generator=torch.Generator().manual_seed(int(s))) for i, s in enumerate(seeds)])
    return out.float().clamp(0, 1).cpu()


# ------------------------------------------------------------------ images


def load_input(path: str | Path, size: int) -> np.ndarray:
    """An aligned face as HxWx3 float32 [0,1] at size x size (centre-cropped to a square first)."""
    from facerestore.training.data import load_face

    return load_face(str(path), size)


def quantize8(rgb: np.ndarray) -> np.ndarray:
    return (np.round(np.clip(rgb, 0, 1) * 255) / 255).astype(np.float32)


def to_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images).astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def to_images(batch: torch.Tensor) -> list[np.ndarray]:
    return list(batch.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], thumb: int = SHEET_THUMB) -> np.ndarray:
    """Rows of equally many images -> one HxWx3 image, each cell resized to thumb x thumb."""

    def cell(img: np.ndarray) -> np.ndarray:
        return resize(img, thumb, thumb)

    gap = np.ones((thumb, 4, 3), np.float32)
    lines = []
    for row in rows:
        cells = []
        for i, img in enumerate(row):
            if i:
                cells.append(gap)
            cells.append(cell(img))
        lines.append(np.concatenate(cells, axis=1))
        lines.append(np.ones((4, lines[-1].shape[1], 3), np.float32))
    return np.concatenate(lines[:-1], axis=0)


# ------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class PseudoTargetOptions:
    lq: Path
    out: Path
    base: BaseSpec = field(default_factory=BaseSpec)
    prior_weights: str | None = None
    k: int | None = None
    l: int | None = None
    n: int | None = None
    size: int = 512
    batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    offline: bool | None = None
    limit: int | None = None
    files: tuple[str, ...] | None = None  # only these relative paths (the run's training split)

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        if self.size < 16:
            raise UsageError(f"--size must be at least 16, got {self.size}")


@dataclass
class PseudoTargetSummary:
    total: int  # faces to make targets for
    skipped: int  # already done before this run (all ranks)
    done: int  # made by this run (all ranks)
    seconds: float
    seconds_per_face: float  # prior time per face (this rank's batches / faces)
    plan: str
    out: Path
    sheet: Path | None = None
    scan: str = ""
    unreadable: int = 0  # inputs that failed to decode: skipped (all ranks), tried again on a rerun
    unreadable_first: str = ""  # why the first of them on this rank failed
    changed: int = 0  # done before, redone by this run because their input changed since (all ranks; counted in done or unreadable)


@dataclass
class Reporter:
    """Callbacks a front end passes in; every one optional."""

    on_stage: Callable[[str, float], None] | None = None  # (stage name, total units)
    on_advance: Callable[[float], None] | None = None  # units done since the last call
    on_message: Callable[[str], None] | None = None
    on_detail: Callable[[str], None] | None = None  # a short status for the current unit (e.g. the UNet call)

    def stage(self, name: str, total: float) -> None:
        if self.on_stage is not None:
            self.on_stage(name, total)

    def advance(self, amount: float) -> None:
        if self.on_advance is not None and amount:
            self.on_advance(amount)

    def message(self, text: str) -> None:
        if self.on_message is not None:
            self.on_message(text)

    def detail(self, text: str) -> None:
        if self.on_detail is not None:
            self.on_detail(text)


@dataclass(frozen=True)
class InputFace:
    rel: str  # relative to LQ_DIR, posix
    path: Path


def scan_inputs(lq: Path, size: int, *, limit: int | None = None, exclude: Sequence[Path] = ()) -> tuple[list[InputFace], str]:
    """Every usable image under LQ_DIR (readable header, short side >= max(16, size/8)), sorted.

    No usable face is a UsageError, raised before any work, saying what was skipped and why
    (`ScanResult.nothing_usable`, as for `train`); two inputs that would write the same target
    (a/x.jpg and a/x.png) too.
    """
    from facerestore.training.data import min_side_for, scan_faces

    lq = Path(lq)
    if not lq.is_dir():
        raise UsageError(f"{lq} does not exist" if not lq.exists() else f"{lq} is not a folder", hint="pass the folder of low-quality aligned faces")
    scan = scan_faces([lq], min_side=min_side_for(size), exclude=exclude)  # the output folder, never walked
    faces = [InputFace(rel=Path(f.source).relative_to(lq).as_posix(), path=Path(f.source)) for f in scan.files]
    summary = scan.summary("face")
    if limit is not None and len(faces) > limit:
        faces = faces[:limit]
        summary = f"the first {limit} of {summary}"
    if not faces:
        raise scan.nothing_usable([str(lq)], size, what="faces", hint="pass the folder of low-quality aligned faces")
    seen: dict[str, str] = {}
    for face in faces:
        name = target_name(face.rel)
        if name in seen:
            raise UsageError(f"{seen[name]} and {face.rel} would both write the target {name}", hint="rename one of them")
        seen[name] = face.rel
    return faces, summary


def _settings(options: PseudoTargetOptions, plan: PseudoTargetPlan, prior: Path) -> dict:
    """What settings.json records; weights files by sha256 (`weights.store.sha256_file`, remembered
    per path, size and mtime, so a rerun does not hash hundreds of MB again)."""
    return {
        "base": options.base.describe(),
        "prior": describe_file(prior),
        "k": plan.k, "l": plan.l, "n": plan.n, "respacing": RESPACING, "size": options.size, "seed": options.seed,
    }


def as_recorded(settings: dict, state: Path) -> dict:
    """The settings to compare with the recorded settings.json (`check_settings`). A weights file whose
    sha256 changed is a one-line error of its own; a settings.json written before weights files were
    hashed has no sha256, and is compared on path and size as then (such a run stays resumable)."""
    recorded = read_settings(state)
    if recorded is None:
        return settings
    for what, mine, theirs in (("base weights", (settings.get("base") or {}).get("weights"), (recorded.get("base") or {}).get("weights")),
                               ("prior", settings.get("prior"), recorded.get("prior"))):
        if isinstance(mine, dict) and isinstance(theirs, dict) and mine.get("path") == theirs.get("path") \
                and theirs.get("sha256") and theirs.get("sha256") != mine.get("sha256"):
            raise UsageError(f"the {what} file {mine.get('path') or mine.get('name')} changed since the pseudo-targets in {state.parent} were made "
                             f"(sha256 {theirs['sha256'][:16]}... then, {str(mine.get('sha256'))[:16]}... now)",
                             hint=f"put the original file back, choose another --out, or delete {state} to start over")

    def strip(mine, theirs):
        if not isinstance(mine, dict) or not isinstance(theirs, dict):
            return mine
        return {k: strip(v, theirs.get(k)) for k, v in mine.items() if k != "sha256" or k in theirs}

    return strip(settings, recorded)


def read_done(state: Path, faces: Sequence[InputFace] | None = None) -> set[str]:
    """Relative input paths listed as done, over every rank's manifest (lines cut by a kill ignored),
    whose target file is still in OUT/targets with the size the line records (manifests written
    before sizes were recorded: present is enough). The manifest alone is not trusted: a target
    deleted or replaced since would otherwise never be remade, and the contact sheet would fail on it.
    With `faces`, the line must also describe the face's input as it is now: an input replaced at the
    same path since its target was made is not done (`training.loop.source_changed`)."""
    inputs = {f.rel: f.path for f in faces} if faces is not None else {}
    targets = state.parent / "targets"
    done: set[str] = set()
    for rel, entries in _listed(state, "done-rank*.jsonl").items():
        for entry in entries:  # a face redone after a deletion has two lines; either may match
            try:
                path, size = targets / str(entry.get("target") or target_name(rel)), entry.get("bytes")
                if path.is_file() and (size is None or path.stat().st_size == int(size)) and not _input_changed(entry, inputs.get(rel)):
                    done.add(rel)
                    break
            except (TypeError, ValueError):
                continue
    return done


def read_bases(state: Path, faces: Sequence[InputFace]) -> dict[str, dict]:
    """rel -> the input fields of its base output's line, for each face whose base output is in OUT/base
    with the size its line records and whose input is unchanged since: the base outputs that may be
    reused. One without a line (a kill between the image and its line, or a run from before base outputs
    were listed) is made again: it costs one base restore, where a stale one would cost a wrong target."""
    listed = _listed(state, "base-rank*.jsonl")
    reusable: dict[str, dict] = {}
    for face in faces:
        path = state.parent / "base" / target_name(face.rel)
        for entry in listed.get(face.rel, []):
            try:
                if path.is_file() and path.stat().st_size == int(entry["bytes"]) and not _input_changed(entry, face.path):
                    reusable[face.rel] = {k: entry[k] for k in SOURCE_KEYS if k in entry}
                    break
            except (KeyError, TypeError, ValueError):
                continue
    return reusable


def _listed(state: Path, pattern: str) -> dict[str, list[dict]]:
    """rel -> its lines, over every rank's manifest matching `pattern`."""
    listed: dict[str, list[dict]] = {}
    for manifest in sorted(state.glob(pattern)):
        for entry in manifest_records(manifest):
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                listed.setdefault(entry["path"], []).append(entry)
    return listed


def _input_changed(entry: dict, path: Path | None) -> bool:
    """Whether the input at `path` differs from the one `entry` was made from (no path: not asked)."""
    if path is None or "source_size" not in entry or "source_mtime_ns" not in entry:
        return False
    return _changed(str(path), entry["source_size"], entry["source_mtime_ns"], entry.get("source_sha256"), source_stat(path))


@functools.lru_cache(maxsize=None)
def _changed(path: str, size, mtime_ns, sha256, now: tuple[int, int] | None) -> bool:
    """`source_changed`, remembered per (line, file as it is now): `finetune` asks up to four times per
    run, and an input whose mtime alone changed (a copied tree) is hashed once, not four times."""
    record = {"source_size": size, "source_mtime_ns": mtime_ns, **({"source_sha256": sha256} if sha256 is not None else {})}
    return source_changed(record, Path(path), now)


@dataclass
class PreparedStage:
    """Everything checked and loaded before any work: what `run.py` also needs up front."""

    options: PseudoTargetOptions
    plan: PseudoTargetPlan
    faces: list[InputFace]
    scan: str
    prior_path: Path
    base_method: object | None = None
    prior: LearnedRangeDenoiser | None = None


def prepare(options: PseudoTargetOptions, device: str, *, load: bool = True, faces: list[InputFace] | None = None, scan: str = "",
            base_method: object | None = None) -> PreparedStage:
    """Validate options, scan the inputs, resolve (and load) the base model and the prior.

    Order: option values, then the inputs, then the base weights, then the prior, so each kind of
    bad input is reported in one line before anything is computed or written. `faces` and
    `base_method` skip the scan and the base loading when the caller has done them.
    """
    plan = PseudoTargetPlan.from_options(options.k, options.l, options.n, options.size)
    options.base.check()
    check_prior_option(options.prior_weights)
    if faces is None:
        faces, scan = scan_inputs(options.lq, options.size, limit=options.limit, exclude=[Path(options.out)])
        if options.files is not None:
            wanted = set(options.files)
            faces = [f for f in faces if f.rel in wanted]
    if base_method is None and load:
        with naming_a_missing_prior(options.base.name, options.base.weights, options.prior_weights):
            base_method = options.base.build(device, options.offline, options.size)
    prior_path = resolve_prior(options.prior_weights, options.offline)
    prior = None
    if load:
        from facerestore.weights.store import loading_option

        with loading_option("--prior-weights", named=options.prior_weights is not None):  # a bad file it names: exit 2
            prior = load_prior(prior_path, torch.device(device))
    return PreparedStage(options=options, plan=plan, faces=faces, scan=scan, prior_path=prior_path, base_method=base_method, prior=prior)


def generate_pseudo_targets(options: PseudoTargetOptions, *, reporter: Reporter | None = None, dist: distributed.Dist | None = None,
                            prepared: PreparedStage | None = None) -> PseudoTargetSummary:
    """Run (or continue) stage 1 as the module docstring describes; returns the summary.

    Under torchrun (or with `dist` given) face i of the sorted list belongs to rank i % WORLD_SIZE.
    """
    assert_output_folder(Path(options.out))
    assert_apart(Path(options.out), Path(options.lq), f"the input folder {options.lq}",
                 hint="write the pseudo-targets to a folder that neither is, lies inside nor holds LQ_DIR")
    if dist is not None:  # the caller's group (`finetune` runs this stage inside its own)
        return _generate(options, dist, reporter or Reporter(), prepared)
    with distributed.process_group(options.device) as d:  # one rank's error stops the others quietly with its code
        return _generate(options, d, reporter or Reporter(), prepared)


def _generate(options: PseudoTargetOptions, d: distributed.Dist, reporter: Reporter, prepared: PreparedStage | None) -> PseudoTargetSummary:
    clock = time.perf_counter()
    device = d.device if d.active else torch.device(_device_name(options.device))
    # one run at a time into out (training/out_lock), held by rank 0 for the whole stage: another run's
    # live temp files are not stale ones. The other ranks write nothing before the barrier after check_settings
    with output_lock(Path(options.out), hold=d.main, on_message=reporter.message if d.main else None):
        return _generate_locked(options, d, reporter, prepared, device, clock)


def _generate_locked(options: PseudoTargetOptions, d: distributed.Dist, reporter: Reporter, prepared: PreparedStage | None,
                     device: torch.device, clock: float) -> PseudoTargetSummary:
    """The stage, under out's lock: settings, cleanup, base outputs, targets, the contact sheet."""
    from facerestore.methods.difface import face_generators

    if prepared is None:
        prepared = prepare(options, str(device))
    plan, faces = prepared.plan, prepared.faces
    out = Path(options.out)
    state = out / STATE_DIR
    check_settings(state, as_recorded(_settings(options, plan, prepared.prior_path), state), d.main, "pseudo-targets")
    distributed.barrier(d)
    state.mkdir(parents=True, exist_ok=True)
    reporter.message(f"pseudo-targets: {plan.describe()}")

    mine = [f for i, f in enumerate(faces) if i % d.world == d.rank]
    done_before = read_done(state, mine)
    listed = read_done(state)  # done whatever the inputs are now: the difference changed since
    todo = [f for f in mine if f.rel not in done_before]
    changed = [f for f in todo if f.rel in listed]
    for f in changed:  # stale: a redo that fails leaves no target of the old image
        (out / "targets" / target_name(f.rel)).unlink(missing_ok=True)
    skipped_here = len(mine) - len(todo)
    remove_stale_temps(out / sub / target_name(f.rel) for sub in ("base", "targets") for f in todo)
    bases = read_bases(state, todo)  # rel -> the input fields of a base output that may be reused
    for f in todo:
        if f.rel not in bases:  # stale or unlisted: made again, and gone if that fails
            (out / "base" / target_name(f.rel)).unlink(missing_ok=True)

    # phase A: base outputs y0 (8-bit PNG, reused on resume). The scan read only headers: an input
    # that fails to decode here is skipped and counted, not a crash of the whole stage
    unreadable: dict[str, str] = {}  # relative path -> why it failed to decode
    missing_base = [f for f in todo if f.rel not in bases]
    if missing_base:
        reporter.stage(f"base outputs ({options.base.name})", len(missing_base))
        listing = open_manifest(state / f"base-rank{d.rank}.jsonl")
        try:
            for start in range(0, len(missing_base), options.batch_size):
                batch = missing_base[start : start + options.batch_size]
                chunk, crops, sources = [], [], []
                for f in batch:
                    source = source_fingerprint(f.path, source_stat(f.path))  # before the input is read
                    try:
                        crops.append(load_input(f.path, options.size))
                        chunk.append(f)
                        sources.append(source)
                    except BadImage as exc:
                        unreadable[f.rel] = str(exc)
                if chunk:
                    restored = restore_with_seeds(prepared.base_method, to_batch(crops), [base_seed(options.seed, f.rel) for f in chunk])
                    for f, img, source in zip(chunk, to_images(restored), sources):
                        path = out / "base" / target_name(f.rel)
                        _write_png(path, img)
                        listing.write(json.dumps({"path": f.rel, "base": target_name(f.rel), "bytes": path.stat().st_size, **source}) + "\n")
                        bases[f.rel] = source
                    listing.flush()
                    os.fsync(listing.fileno())
                reporter.advance(len(batch))
        finally:
            listing.close()
    if unreadable:
        todo = [f for f in todo if f.rel not in unreadable]
        reporter.message(f"warning: {counted(len(unreadable), 'face')} could not be decoded and {verb(len(unreadable), 'gets', 'get')} no pseudo-target (first: {next(iter(unreadable.values()))}); "
                         "re-copy or re-export them and rerun to make theirs")

    # phase B: the prior with the low-frequency constraint
    from facerestore.image_io import read_image

    busy = 0.0
    done = 0
    if todo:
        reporter.stage("pseudo-targets (diffusion prior)", len(todo))
        manifest = open_manifest(state / f"done-rank{d.rank}.jsonl")
        try:
            for start in range(0, len(todo), options.batch_size):
                chunk = todo[start : start + options.batch_size]
                tick = time.perf_counter()
                y0 = to_batch([read_image(out / "base" / target_name(f.rel)).rgb for f in chunk]).to(device)
                generators = face_generators([face_seed(options.seed, f.rel) for f in chunk], y0.device)

                def progress(p: Progress) -> None:
                    reporter.detail(f"UNet call {p.index + 1}/{p.total}, t={p.t}")

                with torch.inference_mode():
                    x0 = constrained_denoise(prepared.prior, 2.0 * y0 - 1.0, plan, generators, callback=progress)
                targets = to_images((x0 + 1.0) / 2.0)
                seconds = time.perf_counter() - tick
                busy += seconds
                for f, img in zip(chunk, targets):
                    path = out / "targets" / target_name(f.rel)
                    _write_png(path, img)
                    # the input the base output was made from, which the target was made from in turn
                    manifest.write(json.dumps({"path": f.rel, "target": target_name(f.rel), "bytes": path.stat().st_size,
                                               "seconds": round(seconds / len(chunk), 3), **bases.get(f.rel, {})}) + "\n")
                manifest.flush()
                os.fsync(manifest.fileno())
                done += len(chunk)
                reporter.advance(len(chunk))
        finally:
            manifest.close()

    counts = distributed.total(d, [done, skipped_here, busy, len(unreadable), len(changed)])
    distributed.barrier(d)
    sheet = None
    if d.main:
        sheet = write_contact_sheet(out, faces, options.size, read_done(state, faces))
    return PseudoTargetSummary(
        total=len(faces), skipped=int(counts[1]), done=int(counts[0]), seconds=time.perf_counter() - clock,
        seconds_per_face=counts[2] / counts[0] if counts[0] else 0.0, plan=plan.describe(), out=out, sheet=sheet, scan=prepared.scan,
        unreadable=int(counts[3]), unreadable_first=next(iter(unreadable.values()), ""), changed=int(counts[4]),
    )


def _device_name(device: str) -> str:
    from facerestore.devices import resolve_device

    return resolve_device(device)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from facerestore.image_io import write_image

    write_image(path, quantize8(rgb))


def write_contact_sheet(out: Path, faces: Sequence[InputFace], size: int, done: set[str], rows: int = SHEET_ROWS) -> Path | None:
    """OUT/contact_sheet.png: input | base output | pseudo-target for the first `rows` finished faces
    (a face whose input no longer decodes is left out: the sheet is for looking, not a reason to fail)."""
    from facerestore.image_io import read_image, write_image

    lines = []
    for f in faces:
        if len(lines) == rows:
            break
        if f.rel in done:
            try:
                lines.append([load_input(f.path, size), read_image(out / "base" / target_name(f.rel)).rgb,
                              read_image(out / "targets" / target_name(f.rel)).rgb])
            except BadImage:
                continue
    if not lines:
        return None
    path = out / "contact_sheet.png"
    write_image(path, contact_sheet(lines, thumb=min(size, SHEET_THUMB)))
    return path
