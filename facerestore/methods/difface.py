"""`difface`: DifFace (Yue & Loy, TPAMI 2024) on the shared diffusion engine (ANCHORS.md 5).

Pipeline, per batch of aligned 512 crops (all faces of a photo go through every stage together):

    y0  [B,3,512,512] in [0,1]                  the crops (other sizes: resized to 512 and back, as upstream)
    e   = clamp(SwinIR(y0), 0, 1)               the "diffused estimator" f(y0) (paper eq. 13)
    x_N = q_sample(2 e - 1, t = start, z)       DDPM eq. 4 at t = 400 (upstream: index 100 of ddim250)
    x   = DDIM(eta) from t = start - stride down to 0 on range(0, 1000, stride), raw eps (paper eq. 6)
    out = clamp((x + 1) / 2, 0, 1)

Notation (paper -> code):

    N (= 400)       start          the timestep the estimate is diffused to (`--start`)
    S (= N/4 = 100) steps          UNet calls (`--steps`); stride = N / S, grid = range(0, T, stride); default
                                   stride 4 (upstream's hard-coded ddim250; its start index moves on that grid), so N/4 calls
    eta (= 0.5)     eta            DDIM randomness (paper eq. 6, DDIM eq. 16): 0 faithful, 1 ancestral
    f(.)            SwinIR         DifFace's `swinir_restoration512_L1.pth`, [0,1] RGB in and out
    eps_theta       UNet           DifFace's `iddpm_ffhq512_ema500000.pth`, 6 channels (eps, v)

Where we follow the code rather than the paper:

- The off-by-one start (`DifFaceSampler.sample_func_ir_aligned` + `ddim_sample_loop(start_timesteps=100)`):
  the estimate is diffused to index 100 of ddim250 (t = 400) but the first DDIM step is taken from
  index 99 (t = 396), as if x were already at t = 396 (signal 0.440 vs 0.447, noise 0.898 vs 0.894).
  The paper's Algorithm 1 takes its first reverse step at t = N itself. We do what the released
  code does: q_sample at `start`, first UNet call at `start - stride`, `steps` calls in all (default
  100: t = 396, 392, ..., 0). On coarse grids the gap grows (--steps 8: noised to 400, first call at 350).
- DDIM uses the network's RAW eps (DifFace's `ddim_sample` uses `pred_noise`), while x^_0 is clipped to
  [-1, 1] (`clip_denoised=True`); stock guided-diffusion re-derives eps from the clipped x^_0 instead.
- Fewer steps (the paper's Table VIII: 500/200, 250/100, 100/40, 50/20, 20/8, i.e. respaced steps /
  start index) keep t = 400 and take a coarser uniform grid: `--steps S` gives stride 400 / S. For
  those five settings the grid is exactly guided-diffusion's "ddim500/250/100/50/20" (tests check this).

Noise and batching: every face gets its own generator on the compute device, seeded by one draw per
face from the caller's (CPU) generator (`face_generators`). The UNet runs once per step on the whole
batch; the step arithmetic and its noise then run face by face (`PerFaceSteps`). A face's result
therefore does not depend on which faces share its batch: restoring [A, B] equals restoring [A] then
[B] with the same generator. The noise is drawn where it is used (no host-to-device copy per step),
so a seed reproduces a result on the same kind of device; CPU and CUDA draw different noise.

Precision (`--precision`, `devices.autocast_dtype`): by default fp32 on CPU and MPS, and on CUDA the
networks run under `torch.autocast` (bf16 where the GPU supports it, else fp16, as DifFace's
`--use_fp16`); `--precision bf16` gives the CPU the same. The sampler state, q_sample, the DDIM
arithmetic and the clamps stay fp32, and GroupNorm and the timestep embedding run in fp32 inside the UNet.

Weights: `--weights` takes `prior=FILE,swinir=FILE` (a bare FILE means the prior); each value may
also be a name registered with `facerestore weights import --name`. Without it the catalogue entries
`difface_prior` and `difface_swinir` are resolved (FACERESTORE_WEIGHTS folders, the cache, download).

This module also holds what the diffusion methods share (dr2.py imports it): per-face generators
and steps, `--weights ROLE=FILE` parsing, the guided-diffusion UNet's `NetSpec` parts (strict loading
with one-line errors is `weights.checkpoint.NetSpec.load`), the autocast policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from facerestore.devices import Autocast, autocast_dtype, for_inference
from facerestore.diffusion import (
    LearnedRangeDenoiser,
    NoiseSchedule,
    Prediction,
    Progress,
    Step,
    StepOutput,
    ddim_step,
    randn_like,
    sample,
)
from facerestore.errors import UsageError, WeightsError
from facerestore.methods.base import MethodInfo, MethodOptions
from facerestore.methods.registry import check_method_options
from facerestore.plural import counted
from facerestore.weights.checkpoint import NetSpec, Parts

T = 1000  # both priors: linear schedule, T = 1000
FACE = 512
WEIGHT_ROLES = {"prior": "difface_prior", "swinir": "difface_swinir"}

INFO = MethodInfo(
    name="difface",
    summary="DifFace (Yue & Loy 2024): SwinIR estimate diffused to t=400 (--start), then start/4 DDIM steps (100; eta 0.5) of a 512 FFHQ diffusion prior",
    paper="DifFace: Blind Face Restoration with Diffused Error Contraction, IEEE TPAMI 2024 (arXiv 2212.06512)",
    license="NTU S-Lab License 1.0: NON-COMMERCIAL use only (code and both checkpoints)",
    commercial_use=False,
    weights=("difface_prior", "difface_swinir"),
    weight_roles=tuple(WEIGHT_ROLES),
    knobs={
        "steps": "UNet calls, default start/4 steps: 100 at the default --start 400 (DifFace's ddim250 grid, stride 4); else must divide --start (Table VIII: 200, 100, 40, 20, 8); stride = start / steps",
        "eta": "DDIM eta in [0,1], default 0.5: 0 = most faithful (PSNR, identity), 1 = most realistic (FID)",
        "start": "timestep t the SwinIR estimate is diffused to, default 400 (1..999; higher = more prior, less fidelity)",
        "weights": "prior=FILE,swinir=FILE (a bare FILE is the prior); default: the catalogue's difface_prior, difface_swinir",
    },
)

DEFAULT_START = 400
DEFAULT_STRIDE = 4  # ddim250
DEFAULT_ETA = 0.5


# ------------------------------------------------------------------ the plan: which timesteps


@dataclass(frozen=True)
class DifFacePlan:
    """The timesteps one DifFace run visits (original schedule integers).

    grid:     range(0, T, stride), increasing (what the sampler walks)
    noise_t:  the estimate is diffused to this t (`--start`)
    first_t:  the first timestep the UNet sees, noise_t - stride (upstream's off-by-one)
    calls:    UNet calls = steps = noise_t / stride
    """

    stride: int
    noise_t: int
    eta: float

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(range(0, T, self.stride))

    @property
    def first_t(self) -> int:
        return self.noise_t - self.stride

    @property
    def calls(self) -> int:
        return self.noise_t // self.stride

    @property
    def timesteps(self) -> list[int]:
        """What the UNet sees, in order: first_t, first_t - stride, ..., 0."""
        return list(range(self.first_t, -1, -self.stride))

    @classmethod
    def from_options(cls, steps: int | None = None, start: int | None = None, eta: float | None = None) -> DifFacePlan:
        """Validate `--steps`, `--start`, `--eta` (a UsageError names the bad value) and build the plan."""
        eta = DEFAULT_ETA if eta is None else float(eta)
        if not 0.0 <= eta <= 1.0 or math.isnan(eta):
            raise UsageError(f"--eta must be in [0, 1] (0 = deterministic DDIM, 1 = ancestral), got {eta}")
        start = DEFAULT_START if start is None else int(start)
        if not 1 <= start <= T - 1:
            raise UsageError(f"--start {start} is out of range: the start timestep must be in 1..{T - 1} (DifFace uses 400)")
        if steps is None:
            if start % DEFAULT_STRIDE:
                raise UsageError(
                    f"--start {start} is not on the default ddim250 grid (multiples of {DEFAULT_STRIDE})",
                    hint=f"pass --steps S with S dividing {start} ({_divisors_hint(start)})",
                )
            return cls(stride=DEFAULT_STRIDE, noise_t=start, eta=eta)
        steps = int(steps)
        if steps < 1:
            raise UsageError(f"--steps must be at least 1, got {steps}")
        if steps > start:
            raise UsageError(f"--steps {steps} is larger than the grid: from t={start} there are at most {start} steps (stride 1)")
        if start % steps:
            raise UsageError(
                f"--steps {steps} does not divide --start {start}: the grid stride start/steps must be an integer",
                hint=f"choose one of {_divisors_hint(start)}",
            )
        return cls(stride=start // steps, noise_t=start, eta=eta)


def _divisors_hint(n: int) -> str:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    shown = divisors if len(divisors) <= 16 else divisors[:8] + ["..."] + divisors[-4:]
    return ", ".join(str(d) for d in shown)


# ------------------------------------------------------------------ shared by the diffusion methods


def face_seeds(batch: int, generator: torch.Generator | None) -> list[int]:
    """One 63-bit seed per face, drawn in order from the caller's generator (global RNG if None)."""
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, 2**63 - 1, (batch,), generator=generator, device=device).tolist()


def face_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per face, on the compute device: each step's noise is drawn where it is used.

    A CPU generator would make a seed's noise the same on every device, but costs every step a CPU
    draw (7 ms per 512 face on 2 cores) and a host-to-device copy per face, as much as a GPU's
    whole UNet call. So a seed reproduces its result on the same kind of device; CPU and CUDA draw
    different noise (MT19937 vs Philox).
    """
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def per_face_noise(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Gaussian noise like x [B,...], row i drawn from generators[i]."""
    return torch.cat([randn_like(x[i : i + 1], g) for i, g in enumerate(generators)])


@dataclass(frozen=True, eq=False)
class _OneFace:
    """A denoiser that answers with face i of a prediction already computed for the whole batch."""

    prediction: Prediction
    index: int
    t: int

    def __call__(self, x_t: torch.Tensor, t: int) -> Prediction:
        if t != self.t:  # a step may only ask about the timestep the batch was denoised at
            raise RuntimeError(f"per-face step asked for t={t}, the batch was denoised at t={self.t}")
        i, p = self.index, self.prediction
        return Prediction(x0=p.x0[i : i + 1], eps=p.eps[i : i + 1], var_frac=None if p.var_frac is None else p.var_frac[i : i + 1])


@dataclass(frozen=True, eq=False)
class PerFaceSteps:
    """A `Step` for a batch whose faces each have their own step and generator.

    The denoiser (the network) is called ONCE on the whole batch; each face's step then runs on its
    own row with its own generator, reading its row of that prediction. Noise is thus drawn per face,
    in the same order as a batch of one, and batching never changes a face's result. The `generator`
    argument the sampling loop passes is ignored (pass None).
    """

    steps: tuple[Step, ...]
    generators: tuple[torch.Generator, ...]

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.generators):
            raise ValueError(f"{len(self.steps)} steps for {len(self.generators)} generators")

    def __call__(self, denoiser, x: torch.Tensor, t: int, t_prev: int, *, schedule: NoiseSchedule, generator: torch.Generator | None = None) -> StepOutput:
        if x.shape[0] != len(self.steps):
            raise ValueError(f"batch of {x.shape[0]} for {len(self.steps)} per-face steps")
        prediction = denoiser(x, t)
        outs = [
            step(_OneFace(prediction, i, t), x[i : i + 1], t, t_prev, schedule=schedule, generator=g)
            for i, (step, g) in enumerate(zip(self.steps, self.generators))
        ]
        if len(outs) == 1:
            return outs[0]
        return StepOutput(x_prev=torch.cat([o.x_prev for o in outs]), x0=torch.cat([o.x0 for o in outs]))


def resize(x: torch.Tensor, size: int, *, antialias: bool = True) -> torch.Tensor:
    """Bicubic resize of [B,C,H,W] to size x size; a no-op when it already has that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)


def parse_weights(value: Path | str | None, roles: Mapping[str, str], primary: str, option: str = "--weights") -> dict[str, Path | str]:
    """`--weights` (or `option`, the flag named in errors) for a method with several files -> {role: file or registered name}.

    value:   "FILE" (the primary role), or comma-separated "ROLE=FILE" items; the role may also be
             written as its catalogue name (e.g. difface_prior=FILE). An existing file path is
             taken whole even if it contains ',' or '='.
    roles:   role -> catalogue name (e.g. {"prior": "difface_prior", "swinir": "difface_swinir"}).
    """
    if value is None:
        return {}
    if not str(value).strip(" ,"):
        raise UsageError(f"{option} is empty", hint=f"pass FILE or {','.join(f'{r}=FILE' for r in roles)}, or leave it out for the default weights")
    if isinstance(value, Path) or Path(str(value)).expanduser().is_file():
        return {primary: value}
    aliases = {**{r: r for r in roles}, **{name: r for r, name in roles.items()}}
    items: list[str] = []
    for part in str(value).split(","):  # a piece that does not start ROLE= continues a path holding a comma
        head = part.partition("=")[0].strip()
        if items and not ("=" in part and head and all(c.isalnum() or c in "_-." for c in head)):
            items[-1] += "," + part
        else:
            items.append(part)
    chosen: dict[str, Path | str] = {}
    for item in (part.strip() for part in items):
        if not item:
            continue
        if "=" in item:
            role, _, target = item.partition("=")
            role = role.strip()
            if role not in aliases:
                raise UsageError(f"{option} {item!r}: unknown role {role!r}", hint=f"use {', '.join(f'{r}=FILE' for r in roles)}")
            role = aliases[role]
        else:
            role, target = primary, item
        if role in chosen:
            bare = f" (a FILE without ROLE= is the {primary})" if role == primary and any(c.strip() and "=" not in c for c in items) else ""
            raise UsageError(f"{option} names the {role} twice{bare}", hint=f"give one {role} file: {role}=FILE once")
        if not target.strip():
            raise UsageError(f"{option} {item!r}: no file after '='")
        chosen[role] = target.strip()
    return chosen


def resolve_weights(roles: Mapping[str, str], chosen: Mapping[str, Path | str], offline: bool | None,
                    option: str = "--weights", *, spare: Mapping[str, str] | None = None) -> dict[str, Path]:
    """role -> a loadable file: the explicit one when given (its errors name `option`), else the catalogue entry.
    Every explicit one is checked first: a typo in `swinir=FILE` is found before the prior downloads.
    When a catalogue file is missing, its line also names the method's other missing files: DR2's two
    Baidu files (or DifFace's two downloads) are then fetched in one go, not one per rerun.
    `spare`: role -> how to run without that file (DR2's --no-enhancer), added where it is missing."""
    spare = spare or {}
    from facerestore.weights.store import also_missing, check_weights_option, local_copies, resolve

    for role, value in chosen.items():
        check_weights_option(value, catalogued=(roles[role],), option=option)

    def missing(role: str) -> bool:
        return chosen.get(role) is None and not local_copies(roles[role])

    paths: dict[str, Path] = {}
    for role, name in roles.items():
        was_missing = missing(role)
        try:
            paths[role] = resolve(name, explicit=chosen.get(role), offline=offline, option=option)
        except WeightsError as exc:
            others = [r for r in roles if r != role and r not in paths and missing(r)]
            if was_missing and others:
                exc.hint = "; ".join(filter(None, (exc.hint, also_missing(name, [roles[r] for r in others]))))
            if was_missing:
                exc.hint = "; ".join(filter(None, (exc.hint, *(spare[r] for r in (role, *others) if r in spare))))
            raise
    return paths


# ------------------------------------------------------------------ the method


@dataclass(frozen=True, eq=False)
class DifFaceNets:
    """The two networks: prior(x [B,3,S,S] in [-1,1], t [B]) -> [B,6,S,S]; estimator(y [B,3,S,S] in [0,1]) -> same.

    size S: the side the prior was trained at (512 for DifFace's FFHQ prior); other crops are
    resized to it and back, as upstream's `im_size`.
    """

    prior: torch.nn.Module
    estimator: torch.nn.Module
    size: int = FACE
    files: Mapping[str, Path] = field(default_factory=dict)  # role -> the file each net was read from


HINT = "pass DifFace's iddpm_ffhq512_ema500000.pth (prior=) and swinir_restoration512_L1.pth (swinir=)"  # --weights ROLE=FILE
PRIOR_HINT = "pass DifFace's iddpm_ffhq512_ema500000.pth"  # an option that takes the prior alone (finetune --prior-weights)


def guided_unet_parts() -> Parts:
    """(infer_config, build) of a guided-diffusion UNet (DifFace's prior, DR2's DDPM), imported when a file is read."""
    from facerestore.nets.guided_unet import GuidedUNet, infer_config

    return infer_config, GuidedUNet


def _swinir_parts() -> Parts:
    from facerestore.nets.swinir import build_swinir, infer_config

    return infer_config, build_swinir


def prior_check(c) -> str:
    """Why a guided-diffusion UNet config is not the DifFace prior's ('' if it is)."""
    if c.in_channels != 3 or c.out_channels != 6:
        return f"its UNet maps {c.in_channels} -> {c.out_channels} channels; the DifFace prior maps an RGB x_t to eps and v (3 -> 6)"
    if c.resblock_updown:  # the one trace that tells the two official diffusion UNets apart at any size
        return "its UNet resamples inside residual blocks, as DR2's DDPM does (is it dr2_ddpm's file?); the DifFace prior does not"
    return ""


def swinir_check(c) -> str:
    if c.in_channels != 3 or c.upscale != c.unshuffle:
        return f"this SwinIR maps RGB x{c.upscale}/{c.unshuffle} with {c.in_channels} channels; DifFace's estimator keeps the size of an RGB face"
    return ""


PRIOR = NetSpec("DifFace prior (guided-diffusion UNet)", guided_unet_parts, prior_check, hint=HINT)
SWINIR = NetSpec("DifFace SwinIR estimator", _swinir_parts, swinir_check, meta=False, hint=HINT)  # spandrel's SwinIR reads values while it is built

# catalogue name -> the checks this method's loader makes on that file's state dict (`weights import`)
FITS = {WEIGHT_ROLES["prior"]: PRIOR.fit, WEIGHT_ROLES["swinir"]: SWINIR.fit}


def load_difface_prior(path: Path, *, hint: str = HINT) -> torch.nn.Module:
    """The DifFace 512 prior (guided-diffusion UNet, RGB x_t -> eps and v) from a resolved file, strictly.

    Shared with the unpaired fine-tuning's pseudo-target stage (Kuai et al. 2025 use the same prior),
    which passes PRIOR_HINT: its --prior-weights takes one file, with no roles and no SwinIR.
    """
    return replace(PRIOR, hint=hint).load(Path(path))


def load_difface_nets(options: MethodOptions) -> DifFaceNets:
    chosen = parse_weights(options.weights, WEIGHT_ROLES, "prior", options.weights_option)
    paths = resolve_weights(WEIGHT_ROLES, chosen, options.offline, options.weights_option)

    from facerestore.weights.store import loading_option, wrong_copy_hint

    with loading_option(options.weights_option, named="prior" in chosen, otherwise=wrong_copy_hint(WEIGHT_ROLES["prior"])):  # a bad --weights file: exit 2
        prior = load_difface_prior(paths["prior"])
    with loading_option(options.weights_option, named="swinir" in chosen, otherwise=wrong_copy_hint(WEIGHT_ROLES["swinir"])):
        estimator = SWINIR.load(paths["swinir"])
    return DifFaceNets(prior=prior, estimator=estimator, files=dict(paths))


def _run_options(plan: DifFacePlan) -> dict[str, Any]:
    return {"steps": plan.calls, "eta": plan.eta, "start": plan.noise_t}


class DifFaceMethod:
    """DifFace on aligned 512 crops; see the module docstring for the pipeline and its choices."""

    info = INFO

    def __init__(self, options: MethodOptions, *, nets: DifFaceNets | None = None) -> None:
        check_method_options(INFO, options)
        self.plan = DifFacePlan.from_options(options.steps, options.start, options.eta)  # usage errors first
        self.device = torch.device(options.device)
        self.autocast = autocast_dtype(self.device, options.precision)
        self.nets = nets if nets is not None else load_difface_nets(options)
        self.weights_files = dict(self.nets.files)
        for_inference(self.nets.prior, self.device)
        for_inference(self.nets.estimator, self.device)
        self.schedule = NoiseSchedule.named("linear", T)
        self.callback: Callable[[Progress], None] | None = None  # per-UNet-call progress, if wanted

    def run_options(self) -> dict[str, Any]:
        """--steps (UNet calls), --eta, --start as this run uses them."""
        return _run_options(self.plan)

    @staticmethod
    def planned_options(options: MethodOptions) -> dict[str, Any]:
        """`run_options` of the method `options` build, or the UsageError its build raises before reading
        weights (a bad --steps / --start / --eta or --weights list): the registry's one hook, for
        clean-dataset's plan and for the check a command building several methods runs before any loads."""
        plan = DifFacePlan.from_options(options.steps, options.start, options.eta)
        parse_weights(options.weights, WEIGHT_ROLES, "prior", options.weights_option)
        return _run_options(plan)

    def describe(self) -> str:
        """INFO.summary with this run's numbers, not the defaults."""
        p = self.plan
        return (f"DifFace (Yue & Loy 2024): SwinIR estimate diffused to t={p.noise_t}, then {counted(p.calls, 'DDIM step')} "
                f"(eta {p.eta:g}) of a 512 FFHQ diffusion prior")

    @torch.inference_mode()
    def estimate(self, crops: torch.Tensor) -> torch.Tensor:
        """The SwinIR estimate f(y0), clamped to [0,1] (upstream `im_hq.clamp(0, 1)`)."""
        return Autocast(self.nets.estimator, self.autocast)(crops).clamp(0.0, 1.0)

    @torch.inference_mode()
    def restore(self, crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """crops [B,3,H,W] in [0,1] -> restored [B,3,H,W] in [0,1] (computed at 512)."""
        if crops.ndim != 4 or crops.shape[1] != 3:
            raise UsageError(f"difface restores RGB crops [B,3,H,W], got shape {tuple(crops.shape)}")
        if crops.shape[0] == 0:
            return crops.clone()
        plan, schedule = self.plan, self.schedule
        size = crops.shape[-2:]
        y0 = resize(crops.to(self.device, torch.float32), self.nets.size)
        generators = face_generators(face_seeds(y0.shape[0], generator), y0.device)

        # 1. the diffused estimator: x_N = sqrt(a_N) (2 f(y0) - 1) + sqrt(1 - a_N) z      (paper eq. 13)
        x0_hat = 2.0 * self.estimate(y0) - 1.0
        x = schedule.q_sample(x0_hat, plan.noise_t, per_face_noise(x0_hat, generators))

        # 2. DDIM with raw eps and clipped x^_0, from first_t = N - stride down to 0      (paper eq. 6)
        denoiser = LearnedRangeDenoiser(Autocast(self.nets.prior, self.autocast), schedule, clip_x0=True)
        step = partial(ddim_step, eta=plan.eta, eps_source="raw")
        steps = PerFaceSteps(steps=(step,) * len(generators), generators=tuple(generators))
        x = sample(denoiser, x, plan.grid, schedule=schedule, step=steps, start=plan.first_t, callback=self.callback)

        # 3. back to [0,1] (and to the input size, as upstream, when it was not the prior's)
        out = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
        if tuple(size) != tuple(out.shape[-2:]):
            out = F.interpolate(out, size=tuple(size), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        return out.to(crops.device)
