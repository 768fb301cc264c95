"""`dr2`: DR2 + SPARNetHD (Wang et al., CVPR 2023) on the shared diffusion engine (ANCHORS.md 6).

Pipeline, per batch of aligned 512 crops (all faces of a photo together):

    y     = 2 PIL_bicubic(crops, 256) - 1                    DR2 runs at 256 in [-1,1] (8-bit, as PIL)
    x_w   = q_sample(y, grid[omega], z)                       paper eq. 9 (omega from the code's table)
    for i = omega .. tau:   (grid = respacing "100" = 0, 10, ..., 50, 61, ..., 989, 999)
        x^_0, x_{i-1} = DDPM ancestral step at grid[i] (learned-range variance, x^_0 clipped)  eq. 3
        i == tau:  return x^_0                                                                 eq. 11
        x_{i-1}  <- x_{i-1} - Phi_N(x_{i-1}) + Phi_N(q_sample(y, grid[i-1], z'))               eq. 10
    lqp   = bicubic(clamp(x^_0, -1, 1), 512)                  no re-clamp, as the reference
    out   = SPARNetHD(lqp)   (or lqp itself with --no-enhancer), then (out + 1) / 2 clamped

UNet calls = omega - tau + 1: mild (4, 22) -> 21 calls from t = 424; medium (8, 35) -> 26 calls
from t = 605 down to t = 353; severe (16, 35) -> 31 calls from t = 656.

Notation (paper -> code):

    N         n        low-pass factor of Phi_N (down- and up-sampling by N, `diffusion.lowpass`)
    tau       tau      output index on the 100-step grid (the paper's Fig. 9 tau is on the 1000 scale)
    omega     omega    start index; the code's "variant" table below
    y         y        the degraded face at 256 in [-1, 1]
    x^_0      x0       the clean estimate at tau, clipped to [-1, 1]

Where we follow the code rather than the paper (Kaldwin0106/DR2_Drgradation_Remover @09c97ed):

- omega. The paper fixes omega = tau + 0.25T (Sec. 3.2, "empirically"); `dr2e.py` has that rule
  commented out and uses a "variant omega" by N instead. We use the variant table:

      N = 1: tau + 5     N <= 2: tau + 10     N <= 4: tau + 20     N <= 8: tau + 25     N > 8: tau + 30

  capped at the top of the grid. The reference caps at 100, which is one past the last index (99) of
  its 100-step process and would fail with an IndexError; we cap at 99, so tau may go up to 98.
- The reference noise for the replacement is drawn fresh at every step at the step's landing
  timestep grid[i-1] (`q_sample(ref_img, t - 1)` on the respaced process), N = 1 replaces the whole
  sample; the engine's `low_frequency_guidance` does exactly this (checked against a transcription
  of `dr2_sample_loop` in tests/test_diffusion_reference.py).
- Input resize. The reference reads the file with PIL and resizes to 256 with PIL's BICUBIC (Keys
  a = -0.5, antialiased support, uint8 in and out, a horizontal then a vertical pass with an 8-bit
  image in between). `to_dr2_input` does the same with torch's antialiased bicubic (the same kernel
  and support): quantise to 8 bits, horizontal pass, round and clip, vertical pass, round and clip.
  On the 15 DR2 demo faces this is bit-identical to PIL (every value equal); a single float pass
  would differ by up to 1/255 in 18% of the values. What remains possible is a rounding flip from
  PIL's 22-bit fixed-point weights. Crops warped by our aligner are not 8-bit; quantising them
  costs at most half a level, far below the noise DR2 adds at t >= 353.
- Enhancer input. The reference upsamples with torchvision `Resize((512, 512), BICUBIC)` applied to a
  TENSOR; torchvision before 0.17 (DR2 was released with 0.15) did that without antialiasing, i.e.
  `F.interpolate(bicubic)` with Keys a = -0.75; torchvision >= 0.17 switched tensors to antialias=True
  (a = -0.5). We use the 2023 behaviour (a = -0.75). Measured on the demo faces (PIL 256 versions
  upsampled both ways): mean difference 0.56/255, 99th percentile 2.8/255, max 9.9/255 at edges.

(N, tau) are chosen by hand in the paper (a stated limitation; the per-dataset grid search is in a
supplement we do not have). `--dr2-auto` (ours, beyond the paper, which names NIQE-based search as
future work) runs a small grid of settings per face and keeps the one with the lowest

    score = NIQE(output) + AUTO_WEIGHT * lowband_rmse(output, input)

NIQE (Mittal et al. 2013; `facerestore.metrics.niqe`, i.e. basicsr's `calculate_niqe` on the 8-bit
Y channel; lower = more natural)
rewards removing degradation; `lowband_rmse` is the RMS difference, in 8-bit levels, of Phi_8 of
the output (resized to 256) and of the input at 256: a fixed 32x32 band that every candidate is
judged on, which grows as a setting drifts from the input (bigger N and tau, the paper's Fig. 8-9).
AUTO_WEIGHT = 0.1 (10 levels of low-band drift cost one NIQE point) is a choice, NOT calibrated on
real DR2 outputs: the official weights are not available to us. Candidates share each face's noise
(the same per-face seed for every candidate), so they differ by the setting, not by the draw.

Noise, batching and precision: as difface (per-face generators on the compute device, one UNet call per step for the
whole batch, bf16/fp16 autocast for the networks on CUDA by default, on the CPU with `--precision bf16`).
See `facerestore.methods.difface`.

Weights: `--weights ddpm=FILE,enhancer=FILE` (a bare FILE is the DDPM); by default the catalogue's
`dr2_ddpm` (DR2_FFHQ.pkl) and `dr2_sparnethd` (SPARNetHD_FFHQ_DR2aug.pth), both Baidu-only: download
them by hand and `facerestore weights import FILE`. With `--no-enhancer` the SPARNet file is not needed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from facerestore.devices import Autocast, autocast_dtype, for_inference
from facerestore.diffusion import (
    LearnedRangeDenoiser,
    NoiseSchedule,
    Progress,
    ddpm_step,
    low_frequency_guidance,
    low_pass,
    sample,
    space_timesteps,
)
from facerestore.errors import UsageError
from facerestore.methods.base import MethodInfo, MethodOptions
from facerestore.methods.difface import (
    PerFaceSteps,
    face_generators,
    face_seeds,
    guided_unet_parts,
    parse_weights,
    per_face_noise,
    resize,
    resolve_weights,
)
from facerestore.methods.registry import check_method_options
from facerestore.plural import counted
from facerestore.weights.catalogue import get_entry
from facerestore.weights.checkpoint import NetSpec, Parts

T = 1000
RESPACING = "100"
SIZE = 256  # DR2 works at 256
FACE = 512  # the enhancer's (and the pipeline's) size
PRESETS = {"mild": (4, 22), "medium": (8, 35), "severe": (16, 35)}  # DR2 demo.py: folders 01, 02, 03
DEFAULT_PRESET = "medium"
AUTO_CANDIDATES = tuple(PRESETS.values())
AUTO_BAND = 8  # Phi_8 at 256: the 32x32 band the fidelity term compares
AUTO_WEIGHT = 0.1  # NIQE points per 8-bit level of low-band RMS drift (uncalibrated, see above)
WEIGHT_ROLES = {"ddpm": "dr2_ddpm", "enhancer": "dr2_sparnethd"}

INFO = MethodInfo(
    name="dr2",
    summary="DR2 (Wang et al. 2023): a 256 DDPM removes degradation (low-frequency guided, stopped early at tau), then SPARNetHD enhances to 512",
    paper="DR2: Diffusion-based Robust Degradation Remover for Blind Face Restoration, CVPR 2023 (arXiv 2303.06885)",
    license="DDPM (ILVR FFHQ-256): license unstated; SPARNetHD: CC BY-NC-SA 4.0, NON-COMMERCIAL; DR2 code MIT",
    commercial_use=False,
    weights=("dr2_ddpm", "dr2_sparnethd"),
    weight_roles=tuple(WEIGHT_ROLES),
    knobs={
        "dr2_n": "low-pass factor N dividing 256 (bigger removes more degradation, keeps less of the input)",
        "dr2_tau": "output index tau on the 100-step grid, 0..98 (bigger removes more, keeps less)",
        "dr2_preset": "mild (4,22) | medium (8,35, default) | severe (16,35); --dr2-n/--dr2-tau override its values",
        "dr2_auto": "choose (N, tau) per face among the presets by NIQE + low-band drift (ours, not in the paper)",
        "no_enhancer": "skip SPARNetHD: return DR2's x^_0 upsampled to 512",
        "weights": "ddpm=FILE,enhancer=FILE (a bare FILE is the DDPM); default: the catalogue's dr2_ddpm, dr2_sparnethd",
    },
)


GRID = space_timesteps(T, RESPACING)  # 100 original timesteps: 0, 10, ..., 50, 61, ..., 989, 999


def variant_omega(n: int, tau: int) -> int:
    """The reference code's start index for (N, tau), capped at the grid's last index 99."""
    if n <= 1:
        gap = 5
    elif n <= 2:
        gap = 10
    elif n <= 4:
        gap = 20
    elif n <= 8:
        gap = 25
    else:
        gap = 30
    return min(tau + gap, len(GRID) - 1)


@dataclass(frozen=True)
class DR2Setting:
    """One (N, tau) and what follows from it on the 100-step grid."""

    n: int
    tau: int

    @property
    def omega(self) -> int:
        return variant_omega(self.n, self.tau)

    @property
    def start_t(self) -> int:
        """The original timestep x is noised to and first denoised at (grid[omega])."""
        return GRID[self.omega]

    @property
    def stop_t(self) -> int:
        """The original timestep whose x^_0 is returned (grid[tau])."""
        return GRID[self.tau]

    @property
    def calls(self) -> int:
        return self.omega - self.tau + 1

    @property
    def timesteps(self) -> list[int]:
        """What the UNet sees, in order: grid[omega], ..., grid[tau]."""
        return [GRID[i] for i in range(self.omega, self.tau - 1, -1)]

    @classmethod
    def checked(cls, n: int, tau: int) -> DR2Setting:
        if int(n) != n or n < 1 or SIZE % int(n):
            raise UsageError(f"--dr2-n {n} must be a positive integer dividing {SIZE} (1, 2, 4, 8, 16, ...): DR2 filters its 256 image by N")
        if int(tau) != tau or not 0 <= tau <= len(GRID) - 2:  # tau < omega <= 99, the grid's last index
            raise UsageError(
                f"--dr2-tau {tau} is outside 0..{len(GRID) - 2}: tau is an index on the 100-step grid and DR2 must stop below its start omega (at most {len(GRID) - 1})",
                hint=f"pass --dr2-tau 0..{len(GRID) - 2} (bigger removes more degradation; the presets use {', '.join(sorted({str(t) for _, t in PRESETS.values()}))}), or leave it out",
            )
        setting = cls(int(n), int(tau))
        if setting.tau >= setting.omega:
            raise UsageError(
                f"--dr2-tau {tau} >= omega {setting.omega}: DR2 starts at omega = min(tau + gap(N), {len(GRID) - 1}) and must stop below it",
                hint=f"use --dr2-tau {len(GRID) - 2} or less",
            )
        return setting


def settings_from_options(options: MethodOptions) -> tuple[DR2Setting, ...]:
    """The setting to run, or the auto candidates; UsageError for invalid values or combinations."""
    if options.dr2_preset is not None and options.dr2_preset not in PRESETS:
        raise UsageError(f"--dr2-preset {options.dr2_preset!r} is not a preset", hint=f"use one of {', '.join(PRESETS)}")
    if options.dr2_auto:
        given = [flag for flag, v in (("--dr2-n", options.dr2_n), ("--dr2-tau", options.dr2_tau), ("--dr2-preset", options.dr2_preset)) if v is not None]
        if given:
            raise UsageError(f"--dr2-auto chooses (N, tau) itself; it cannot be combined with {', '.join(given)}")
        return tuple(DR2Setting.checked(n, tau) for n, tau in AUTO_CANDIDATES)
    n, tau = PRESETS[options.dr2_preset or DEFAULT_PRESET]
    n = n if options.dr2_n is None else options.dr2_n
    tau = tau if options.dr2_tau is None else options.dr2_tau
    return (DR2Setting.checked(n, tau),)


def _run_options(settings: tuple[DR2Setting, ...], auto: bool, enhancer: bool) -> dict:
    """DR2Method.run_options from what it is made of."""
    if auto:
        return {"auto": True, "candidates": [[s.n, s.tau] for s in settings], "enhancer": enhancer}
    s = settings[0]
    preset = next((name for name, values in PRESETS.items() if values == (s.n, s.tau)), None)
    return {"preset": preset, "n": s.n, "tau": s.tau, "enhancer": enhancer}


# ------------------------------------------------------------------ resizing as the reference


def to_dr2_input(crops: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> [B,3,256,256] in [-1,1], as PIL's `resize((256, 256), BICUBIC)` on uint8.

    8-bit quantisation, then torch's antialiased bicubic (PIL's kernel and support) one axis at a
    time, horizontal first, rounding half up and clipping to 0..255 after each pass, as PIL does.
    """
    dtype = torch.float32 if crops.device.type == "mps" else torch.float64
    x = torch.floor(crops.to(dtype).clamp(0.0, 1.0) * 255.0 + 0.5)
    for shape in ((x.shape[-2], size), (size, size)):
        if tuple(x.shape[-2:]) != shape:
            x = F.interpolate(x, size=shape, mode="bicubic", align_corners=False, antialias=True)
            x = torch.floor(x + 0.5).clamp(0.0, 255.0)
    return (x / 127.5 - 1.0).float()


def to_enhancer_input(x0: torch.Tensor, size: int = FACE) -> torch.Tensor:
    """clamp(x^_0) at 256 -> 512 by bicubic (Keys a = -0.75, torchvision < 0.17 on tensors); not re-clamped."""
    return F.interpolate(x0.clamp(-1.0, 1.0), size=(size, size), mode="bicubic", align_corners=False, antialias=False)


# ------------------------------------------------------------------ the auto score


def niqe_scores(images: torch.Tensor) -> list[float]:
    """NIQE of each image [B,3,H,W] in [0,1]: the project's metric (basicsr's `calculate_niqe` on the
    8-bit Y channel, as the papers report it; lower is more natural). basicsr is imported on first use."""
    from facerestore.metrics.niqe import niqe

    return [niqe(image) for image in images.detach().float().cpu().clamp(0.0, 1.0)]


def lowband_rmse(output: torch.Tensor, y: torch.Tensor, band: int = AUTO_BAND) -> list[float]:
    """RMS difference, in 8-bit levels, of Phi_band(output at y's size) and Phi_band(y); output in [0,1], y in [-1,1] (256)."""
    small = resize(output.float(), y.shape[-1], antialias=True)
    diff = low_pass(small - (y.float() + 1.0) / 2.0, band)
    return (255.0 * diff.pow(2).mean(dim=(1, 2, 3)).sqrt()).tolist()


@dataclass(frozen=True)
class AutoChoice:
    """What --dr2-auto measured for one face: every candidate's (n, tau, niqe, lowband, score) and the pick."""

    candidates: tuple[tuple[int, int, float, float, float], ...]
    chosen: int

    @property
    def setting(self) -> tuple[int, int]:
        n, tau, *_ = self.candidates[self.chosen]
        return n, tau


# ------------------------------------------------------------------ the method


@dataclass(frozen=True, eq=False)
class DR2Nets:
    """ddpm(x [B,3,S,S] in [-1,1], t [B]) -> [B,6,S,S]; enhancer([B,3,E,E] in [-1,1]) -> same, or None.

    size S = 256 and enhancer_size E = 512 for the official checkpoints (the sizes they were trained at).
    """

    ddpm: torch.nn.Module
    enhancer: torch.nn.Module | None
    size: int = SIZE
    enhancer_size: int = FACE
    files: Mapping[str, Path] = field(default_factory=dict)  # role -> the file each net was read from


HINT = "pass DR2's DR2_FFHQ.pkl (ddpm=) and SPARNetHD_FFHQ_DR2aug.pth (enhancer=), imported from the Baidu share"


def _sparnet_parts() -> Parts:
    from facerestore.nets.sparnet import SPARNetHD, infer_config

    return infer_config, SPARNetHD


def ddpm_check(c) -> str:
    """Why a guided-diffusion UNet config is not DR2's DDPM ('' if it is)."""
    if c.in_channels != 3 or c.out_channels != 6:
        return f"its UNet maps {c.in_channels} -> {c.out_channels} channels; DR2's DDPM maps an RGB x_t to eps and v (3 -> 6)"
    if not c.resblock_updown:  # the one trace that tells the two official diffusion UNets apart at any size
        return "its UNet resamples outside residual blocks, as DifFace's prior does (is it difface_prior's file?); DR2's DDPM resamples inside them"
    return ""


def sparnet_check(c) -> str:
    if c.in_channels != 3 or c.out_channels != 3:
        return f"this SPARNet maps {c.in_channels} -> {c.out_channels} channels; the enhancer maps RGB to RGB"
    return ""


DDPM = NetSpec("DR2 DDPM (guided-diffusion UNet)", guided_unet_parts, ddpm_check, hint=HINT)
ENHANCER = NetSpec("SPARNetHD enhancer", _sparnet_parts, sparnet_check, hint=HINT)

# catalogue name -> the checks this method's loader makes on that file's state dict (`weights import`)
FITS = {WEIGHT_ROLES["ddpm"]: DDPM.fit, WEIGHT_ROLES["enhancer"]: ENHANCER.fit}


def chosen_weights(options: MethodOptions) -> dict[str, Path | str]:
    """--weights as role -> file, reading none; a UsageError for a bad list or for an enhancer= file
    beside --no-enhancer, which skips the enhancer (`planned_options` says it before any method loads)."""
    chosen = parse_weights(options.weights, WEIGHT_ROLES, "ddpm", options.weights_option)
    if options.no_enhancer and "enhancer" in chosen:
        raise UsageError(f"{options.weights_option} names an enhancer= file, but --no-enhancer skips the enhancer",
                         hint=f"drop enhancer=FILE from {options.weights_option} to run without the enhancer, or drop --no-enhancer to use it")
    return chosen


def load_dr2_nets(options: MethodOptions) -> DR2Nets:
    roles = dict(WEIGHT_ROLES)
    chosen = chosen_weights(options)
    if options.no_enhancer:
        del roles["enhancer"]
    spare = {"enhancer": f"or pass --no-enhancer, which needs no {get_entry(WEIGHT_ROLES['enhancer']).filename}"}
    paths = resolve_weights(roles, chosen, options.offline, options.weights_option, spare=spare)

    from facerestore.weights.store import loading_option, wrong_copy_hint

    # a bad file named by --weights: exit 2; a wrong copy among the catalogue's: how to replace it
    with loading_option(options.weights_option, named="ddpm" in chosen, otherwise=wrong_copy_hint(WEIGHT_ROLES["ddpm"])):
        ddpm = DDPM.load(paths["ddpm"])
    enhancer = None
    if "enhancer" in paths:
        with loading_option(options.weights_option, named="enhancer" in chosen, otherwise=wrong_copy_hint(WEIGHT_ROLES["enhancer"])):
            enhancer = ENHANCER.load(paths["enhancer"])
    return DR2Nets(ddpm=ddpm, enhancer=enhancer, files=dict(paths))


class DR2Method:
    """DR2 + SPARNetHD on aligned crops; see the module docstring for the pipeline and its choices."""

    info = INFO

    def __init__(
        self,
        options: MethodOptions,
        *,
        nets: DR2Nets | None = None,
        quality: Callable[[torch.Tensor], Sequence[float]] | None = None,
    ) -> None:
        check_method_options(INFO, options)
        self.settings = settings_from_options(options)  # usage errors before any weights are read
        self.auto = options.dr2_auto
        self.device = torch.device(options.device)
        self.autocast = autocast_dtype(self.device, options.precision)
        self.nets = nets if nets is not None else load_dr2_nets(options)
        if any(self.nets.size % s.n for s in self.settings):
            raise UsageError(f"--dr2-n must divide the DDPM's image size {self.nets.size}")
        if options.no_enhancer:
            self.nets = dataclasses.replace(self.nets, enhancer=None)
        elif self.nets.enhancer is None:
            raise UsageError("dr2 needs its enhancer unless --no-enhancer is given")
        self.weights_files = {role: path for role, path in self.nets.files.items() if role != "enhancer" or self.nets.enhancer is not None}
        for_inference(self.nets.ddpm, self.device)
        if self.nets.enhancer is not None:
            self.nets.enhancer.to(self.device).eval()
        self.quality = quality or niqe_scores
        self.schedule = NoiseSchedule.named("linear", T)
        self.callback: Callable[[Progress], None] | None = None  # per-UNet-call progress, if wanted
        self.last_choices: list[AutoChoice] = []  # filled by --dr2-auto: one per face of the last batch

    def run_options(self) -> dict:
        """The (N, tau) this run uses, or the candidates --dr2-auto chooses among, and whether SPARNetHD enhances.
        `preset`: the preset whose values they are (None where --dr2-n / --dr2-tau made others)."""
        return _run_options(self.settings, self.auto, self.nets.enhancer is not None)

    @staticmethod
    def planned_options(options: MethodOptions) -> dict:
        """`run_options` of the method `options` build, or the UsageError its build raises before reading
        weights (bad --dr2-* values or combinations, a bad --weights list, an enhancer= file with
        --no-enhancer): the registry's one hook, for clean-dataset's plan (compared with a run that
        recorded none) and for the check a command building several methods runs before any loads."""
        settings = settings_from_options(options)
        chosen_weights(options)
        return _run_options(settings, options.dr2_auto, not options.no_enhancer)

    def describe(self) -> str:
        """INFO.summary with this run's (N, tau) or --dr2-auto's candidates, and what makes the 512 face
        (SPARNetHD, or the upsampled estimate with --no-enhancer): INFO.summary's fixed text said
        SPARNetHD enhanced a --no-enhancer run."""
        size, face = self.nets.size, self.nets.enhancer_size
        if self.auto:
            candidates = ", ".join(f"({s.n}, {s.tau})" for s in self.settings)
            removal = f"with (N, tau) chosen per face among {candidates} by NIQE + low-band drift (--dr2-auto)"
        else:
            s = self.settings[0]
            removal = f"(low-pass N={s.n}, {counted(s.calls, 'DDPM step')} from t={s.start_t}, stopped early at tau={s.tau}, t={s.stop_t})"
        then = f"then SPARNetHD enhances to {face}" if self.nets.enhancer is not None else f"then upsampled to {face} without the SPARNetHD enhancer"
        return f"DR2 (Wang et al. 2023): a {size} DDPM removes degradation {removal}, {then}"

    @torch.inference_mode()
    def remove_degradation(self, y: torch.Tensor, setting: DR2Setting, seeds: Sequence[int]) -> torch.Tensor:
        """DR2 proper: y [B,3,256,256] in [-1,1] -> x^_0 at tau, [-1,1]. One generator per face from `seeds`."""
        generators = face_generators(seeds, y.device)
        schedule = self.schedule
        x = schedule.q_sample(y, setting.start_t, per_face_noise(y, generators))  # eq. 9
        step = partial(ddpm_step, variance="learned_range")  # eq. 3 with N&D eq. 15 variance
        steps = tuple(low_frequency_guidance(step, y[i : i + 1], setting.n, until_t=setting.stop_t) for i in range(y.shape[0]))  # eq. 10
        denoiser = LearnedRangeDenoiser(Autocast(self.nets.ddpm, self.autocast), schedule, clip_x0=True)
        return sample(
            denoiser, x, GRID, schedule=schedule, step=PerFaceSteps(steps, tuple(generators)),
            start=setting.start_t, stop_at=setting.stop_t, callback=self.callback,
        )  # fmt: skip

    @torch.inference_mode()
    def enhance(self, x0: torch.Tensor) -> torch.Tensor:
        """x^_0 at 256 in [-1,1] -> the face at 512 in [0,1] (SPARNetHD, or the upsampled x^_0 without it)."""
        lqp = to_enhancer_input(x0, self.nets.enhancer_size)
        out = lqp if self.nets.enhancer is None else Autocast(self.nets.enhancer, self.autocast)(lqp)
        return ((out + 1.0) / 2.0).clamp(0.0, 1.0)

    @torch.inference_mode()
    def restore(self, crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """crops [B,3,H,W] in [0,1] -> restored [B,3,H,W] in [0,1] (DR2 at 256, enhancer at 512)."""
        if crops.ndim != 4 or crops.shape[1] != 3:
            raise UsageError(f"dr2 restores RGB crops [B,3,H,W], got shape {tuple(crops.shape)}")
        if crops.shape[0] == 0:
            return crops.clone()
        size = tuple(crops.shape[-2:])
        y = to_dr2_input(crops.to(self.device, torch.float32), self.nets.size)
        seeds = face_seeds(y.shape[0], generator)
        if not self.auto:
            out = self.enhance(self.remove_degradation(y, self.settings[0], seeds))
        else:
            out = self._auto(y, seeds)
        if size != tuple(out.shape[-2:]):
            out = F.interpolate(out, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        return out.to(crops.device)

    def _auto(self, y: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Run every candidate on the batch (same per-face seeds), keep each face's lowest score."""
        outputs, niqe, drift = [], [], []
        for setting in self.settings:
            out = self.enhance(self.remove_degradation(y, setting, seeds))
            outputs.append(out)
            niqe.append([float(v) for v in self.quality(out)])
            drift.append(lowband_rmse(out, y))
        self.last_choices = []
        picked = []
        for face in range(y.shape[0]):
            rows = tuple(
                (s.n, s.tau, niqe[k][face], drift[k][face], niqe[k][face] + AUTO_WEIGHT * drift[k][face])
                for k, s in enumerate(self.settings)
            )  # fmt: skip
            finite = [k for k in range(len(rows)) if math.isfinite(rows[k][4])]
            # lowest score; ties go to the milder (earlier) candidate; no finite score: the default preset
            best = min(finite, key=lambda k: (rows[k][4], k)) if finite else AUTO_CANDIDATES.index(PRESETS[DEFAULT_PRESET])
            self.last_choices.append(AutoChoice(candidates=rows, chosen=best))
            picked.append(outputs[best][face : face + 1])
        return torch.cat(picked)
