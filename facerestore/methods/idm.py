"""`idm`: IDM (Zhao et al., ICCV 2023), a conditional diffusion restorer, on the shared engine.

Per batch of aligned crops:

    x_d  = 2 * resize(crops, S) - 1                 the degraded input, [-1, 1], at the model's size S
    x_T  ~ N(0, I), one generator per face          the chain starts from pure noise at t = 999
    for (t, t_prev) on the grid (default 10 steps: t = 999, 888, ..., 111, 0):
        x0^   = clip(f(cat(x_t, x_d), gamma_t))      the x0 regression (eq. 7); NoiseLevelInput gives
                                                     gamma_t = alpha_bar_t, ConcatCondition adds x_d
        x_t'  = mu~(x_t, x0^) + sigma z              DDPM ancestral step (eq. 8)
    out  = resize((x0 + 1) / 2, 512), clamped to [0, 1]

Notation (paper -> code):

    gamma_t            alpha_bar_t of the linear T = 1000 schedule (`NoiseSchedule.named("linear")`)
    f_theta            `IDMUNet` (nets/idm_unet.py); it embeds log-SNR(gamma), see its docstring
    steps (= 10)       `--steps`: UNet calls; the grid is guided-diffusion's respacing "N"
                       (`space_timesteps(1000, "10")` = 0, 111, ..., 999). The paper's Table 6: 10 steps
                       are as good as 15 or 20, and 5 are much worse.

Eq. 8 written for a respaced grid. The paper gives the one-step form
x_{t-1} = (x_t - (1 - alpha_t) / sqrt(1 - gamma_t) f) / sqrt(alpha_t) + sqrt(1 - alpha_t) z, with f
the noise. For an x0 net the same mean is DDPM's posterior mean mu~(x_t, x0^) (Ho et al. eq. 7, the
engine's `ddpm_step`), with x0^ clipped to [-1, 1]. For the variance we take the posterior variance
beta~ of each (t, t_prev) pair ("fixed_small") instead of the eq.-8 value 1 - alpha_t: the two agree
when the chain has all 1000 steps, but on a 10-step grid 1 - alpha_t = 1 - gamma_t / gamma_{t_prev}
would leave x_{t_prev} far noisier than the gamma_{t_prev} the net is told at the next step (std
0.35 instead of 0.01 at t_prev = 0). With beta~ the marginals match q(x_{t_prev} | x0) exactly.

Noise and batching: every face gets its own generator on the compute device (`face_generators`),
seeded by one draw per face from the caller's generator (or explicitly, `restore_seeded`, which
`clean-dataset` uses with one seed per file). The UNet runs once per step on the whole batch; the
step's noise is drawn face by face, where it is used. A face's result therefore does not depend on
its batch neighbours, and one seed gives the same result again on the same kind of device (CPU and
CUDA draw different noise). On CUDA the UNet runs under autocast (bf16 where supported,
else fp16), on the CPU in float32 unless `--precision bf16`; the chain itself stays float32.

Weights: `--weights FILE` (a `.safetensors` written by `facerestore train`, or its run folder). The
architecture is read from the file's metadata, else from `FILE.json` beside it, else from the
tensor shapes. Without `--weights` the model bundled inside the package runs: the `compact` net
(nets/idm_unet.py) trained on CPU by `facerestore.training.train_bundled_idm`; docs/idm-model.md
says how and how well.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from facerestore.devices import Autocast, autocast_dtype, for_inference
from facerestore.diffusion import (
    ConcatCondition,
    NoiseLevelInput,
    NoiseSchedule,
    Progress,
    StepOutput,
    X0Denoiser,
    ddpm_step,
    sample,
    space_timesteps,
)
from facerestore.errors import BadWeightsOption, UnsupportedCheckpoint, UsageError, WeightsError
from facerestore.methods.base import MethodInfo, MethodOptions
from facerestore.methods.difface import PerFaceSteps, face_generators, face_seeds, per_face_noise  # shared per-face noise
from facerestore.methods.registry import check_method_options
from facerestore.plural import counted
from facerestore.nets.guided_unet import UNetConfig
from facerestore.nets.idm_unet import IDMUNet, config_from_dict, config_to_dict, infer_idm_config
from facerestore.weights.checkpoint import BUNDLED_DAMAGED, load_strict, read_state_dict, safetensors_metadata, save_safetensors

T = 1000
SCHEDULE_NAME = "linear"
DEFAULT_STEPS = 10
FACE = 512
FORMAT = "facerestore-idm"
FORMAT_VERSION = "1"
MODEL_FILE = "idm.safetensors"  # the model a run folder exports (`facerestore train`)

INFO = MethodInfo(
    name="idm",
    summary="IDM (Zhao et al. 2023): conditional diffusion, x_t concatenated with the degraded face, x0 regression, 10 DDPM steps",
    paper="Towards Authentic Face Restoration with Iterative Diffusion Models and Beyond, ICCV 2023 (arXiv 2307.08996)",
    license="MIT code (no official code or weights exist); bundled weights trained on FFHQ (CC BY-NC-SA 4.0 data); a model you train carries your data's license",
    commercial_use=False,  # as used by default: the bundled FFHQ-trained weights
    weights=("bundled: facerestore's compact IDM (4.5M params, docs/idm-model.md)", "--weights FILE: a model from `facerestore train`"),
    knobs={
        "steps": "DDPM steps, default 10 (the paper's choice; 5 is much worse, 15-20 no better); 1..1000",
        "weights": "a .safetensors written by `facerestore train` (or its run folder)",
    },
)


# ------------------------------------------------------------------ the model file


@dataclass(frozen=True, eq=False)
class IDMModel:
    """A loaded IDM denoiser and what sampling needs to know about it."""

    net: IDMUNet
    image_size: int  # the side it was trained at; crops are resized to it
    source: str


def model_metadata(config: UNetConfig, image_size: int, extra: dict | None = None) -> dict[str, str]:
    """The safetensors metadata that makes a model file self-describing (string values only)."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "unet": json.dumps(config_to_dict(config)),
        "image_size": str(int(image_size)),
        "schedule": SCHEDULE_NAME,
        "timesteps": str(T),
        "objective": "x0",
        "noise_level": "50*(10-logit(gamma))",
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def save_model(net: torch.nn.Module, path: Path | str, image_size: int, *, dtype: torch.dtype = torch.float32,
               card: dict | None = None) -> Path:
    """Write `path` (.safetensors with the config in its metadata) and `path.json` (config + card)."""
    path = Path(path)
    config: UNetConfig = net.config
    state = {k: v.detach().to(dtype) if v.is_floating_point() else v.detach() for k, v in net.state_dict().items()}
    save_safetensors(state, path, model_metadata(config, image_size))
    side = {"format": FORMAT, "format_version": FORMAT_VERSION, "unet": config_to_dict(config), "image_size": int(image_size),
            "schedule": SCHEDULE_NAME, "timesteps": T, "objective": "x0", **(card or {})}
    tmp = path.with_name(f".{path.stem}.json.tmp")
    tmp.write_text(json.dumps(side, indent=1, allow_nan=False) + "\n")  # a card with Infinity would not be JSON
    tmp.replace(path.with_suffix(".json"))
    return path


def read_model_config(path: Path, state: dict[str, torch.Tensor]) -> tuple[UNetConfig, int]:
    """(UNet config, image size) from the file's metadata, its JSON sidecar, or the tensor shapes."""
    from facerestore.weights.store import display_name

    name = display_name(path)  # the cache's conversion of a registered .pth: the file the user knows
    meta: dict = {}
    if path.suffix == ".safetensors":
        meta = safetensors_metadata(path)
        if meta.get("format") not in (None, FORMAT):
            raise UnsupportedCheckpoint(f"{name} is a {meta['format']!r} file, not an IDM model", hint="pass a model written by `facerestore train`")
    if "unet" in meta:
        try:
            data = json.loads(meta["unet"])
        except json.JSONDecodeError:
            raise UnsupportedCheckpoint(f"{name}: its config metadata is not JSON", hint="the file is damaged; export it again") from None
        return config_from_dict(data, name), int(meta.get("image_size", FACE))
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            card = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UnsupportedCheckpoint(f"{side} cannot be read as JSON ({exc})", hint="fix or delete it") from None
        if isinstance(card, dict) and "unet" in card:
            return config_from_dict(card["unet"], str(side)), int(card.get("image_size", FACE))
    return infer_idm_config(state, name), FACE


def model_path(value: Path | str, option: str = "--weights") -> Path:
    """A run folder means its exported model; anything else is left to the weights store. A folder
    without one is a usage error (exit 2) naming `option`, the flag it came from."""
    path = Path(value).expanduser()
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            return path / MODEL_FILE
        ema = path / "ema.safetensors"
        if ema.is_file():  # a checkpoint folder (RUN/checkpoints/step_N): its EMA is the model of that step
            hint = f"pass {ema}, the model of that checkpoint"
        else:
            hint = "pass the .safetensors file, or a `facerestore train` run folder that has saved a checkpoint"
        raise BadWeightsOption(f"{option} {path} holds no {MODEL_FILE}", hint=hint)
    return path


def load_model(path: Path | str, device: torch.device | str = "cpu") -> IDMModel:
    """Read and strictly load an IDM model file; one-line errors for another architecture."""
    from facerestore.weights.store import display_name

    path = Path(path)
    state = read_state_dict(path)
    config, image_size = read_model_config(path, state)
    net = IDMUNet(config)
    name = display_name(path)  # the cache's conversion of a registered .pth: the file the user knows
    load_strict(net, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, name)
    if image_size % config.multiple:
        raise UnsupportedCheckpoint(f"{name}: image size {image_size} is not divisible by {config.multiple}", hint="the file's metadata is inconsistent")
    return IDMModel(net=net.to(device).eval(), image_size=image_size, source=str(path))


def bundled_weights() -> Path:
    """The IDM model shipped inside the package (facerestore/models/idm.safetensors)."""
    return Path(str(resources.files("facerestore") / "models" / MODEL_FILE))


# ------------------------------------------------------------------ sampling


def grid_for(steps: int) -> tuple[int, ...]:
    """The original timesteps a chain of `steps` DDPM calls visits (guided-diffusion respacing "N")."""
    if not 1 <= int(steps) <= T:
        raise UsageError(f"--steps must be between 1 and {T} for idm (the paper uses 10), got {steps}")
    return space_timesteps(T, str(int(steps)))


def per_face_ddpm_step(denoiser, x: torch.Tensor, t: int, t_prev: int, *, schedule: NoiseSchedule,
                       generator: torch.Generator | None = None, generators: Sequence[torch.Generator],
                       variance: str = "fixed_small") -> StepOutput:
    """`ddpm_step` with the network called once for the batch and each face's noise from its own generator."""
    if len(generators) != x.shape[0]:
        raise UsageError(f"{len(generators)} generators for a batch of {x.shape[0]}")
    step = partial(ddpm_step, variance=variance)
    return PerFaceSteps(steps=(step,) * len(generators), generators=tuple(generators))(denoiser, x, t, t_prev, schedule=schedule)


@torch.no_grad()
def idm_sample(
    net: torch.nn.Module,
    degraded: torch.Tensor,
    seeds: Sequence[int],
    *,
    steps: int = DEFAULT_STEPS,
    schedule: NoiseSchedule | None = None,
    callback: Callable[[Progress], None] | None = None,
    precision: str = "auto",
) -> torch.Tensor:
    """x_d [B,3,S,S] in [-1,1] (on the net's device) -> the restored x0 [B,3,S,S] in [-1,1].

    Steps (module docstring): x_T from each face's generator; `steps` DDPM calls down the grid.
    `precision`: the UNet's autocast (`devices.autocast_dtype`; auto = bf16/fp16 on CUDA only).
    """
    schedule = schedule or NoiseSchedule.named(SCHEDULE_NAME, T)
    generators = face_generators(seeds, degraded.device)
    if len(generators) != degraded.shape[0]:
        raise UsageError(f"{len(generators)} seeds for a batch of {degraded.shape[0]}")
    degraded = degraded.float()
    x = per_face_noise(degraded, generators)
    model = NoiseLevelInput(ConcatCondition(Autocast(net, autocast_dtype(degraded.device, precision)), degraded), schedule)
    denoiser = X0Denoiser(model, schedule, clip_x0=True)
    step = partial(per_face_ddpm_step, generators=generators)
    return sample(denoiser, x, grid_for(steps), schedule=schedule, step=step, callback=callback)


def _steps(options: MethodOptions) -> int:
    """--steps, checked against the sampling grids (a UsageError before any weights are read)."""
    steps = DEFAULT_STEPS if options.steps is None else int(options.steps)
    grid_for(steps)
    return steps


class IDMMethod:
    info = INFO

    def __init__(self, options: MethodOptions) -> None:
        check_method_options(INFO, options)
        self.steps = _steps(options)  # validated before reading weights
        self.precision = options.precision
        self.autocast = autocast_dtype(options.device, self.precision)  # likewise
        if options.weights is not None:
            from facerestore.weights.store import resolve_explicit

            path = resolve_explicit(model_path(options.weights, options.weights_option), offline=options.offline, catalogued=(), option=options.weights_option)
        else:
            path = bundled_weights()
            if not path.is_file():
                raise WeightsError(
                    f"idm's bundled model {path} is missing from this installation",
                    hint=f"reinstall facerestore, or train one with `facerestore train FACES_DIR --out runs/idm` and pass `{options.weights_option} runs/idm` (docs/training.md)",
                )
        self.device = torch.device(options.device)
        from facerestore.weights.store import loading_option

        with loading_option(options.weights_option, named=options.weights is not None, otherwise=BUNDLED_DAMAGED):  # a bad --weights file: exit 2
            self.model = load_model(path, self.device)
        self.weights_files = {"weights": path}
        for_inference(self.model.net, self.device)
        self.schedule = NoiseSchedule.named(SCHEDULE_NAME, T)

    def run_options(self) -> dict[str, int]:
        return {"steps": self.steps}

    @staticmethod
    def planned_options(options: MethodOptions) -> dict[str, int]:
        """`run_options` of the method `options` build, or the UsageError for a bad --steps its build raises
        before reading weights: the registry's one hook (clean-dataset's plan, the check before any loads)."""
        return {"steps": _steps(options)}

    def describe(self) -> str:
        """INFO.summary with this run's number of steps."""
        return f"IDM (Zhao et al. 2023): conditional diffusion, x_t concatenated with the degraded face, x0 regression, {counted(self.steps, 'DDPM step')}"

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def restore(self, crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """crops [B,3,H,W] in [0,1] -> restored [B,3,H,W] in [0,1] (one seed per face from `generator`)."""
        return self.restore_seeded(crops, face_seeds(crops.shape[0], generator))

    def restore_seeded(self, crops: torch.Tensor, seeds: Sequence[int], callback: Callable[[Progress], None] | None = None) -> torch.Tensor:
        """Like `restore`, with each face's seed given: a face's result depends only on its seed."""
        height, width = crops.shape[-2:]
        size = self.model.image_size
        x = crops.to(self.device, torch.float32)
        if (height, width) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        out = idm_sample(self.model.net, x * 2 - 1, seeds, steps=self.steps, schedule=self.schedule, callback=callback,
                         precision=self.precision)
        out = (out + 1) / 2
        if (height, width) != (size, size):
            out = F.interpolate(out, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        return out.clamp(0, 1).to(crops.device)
