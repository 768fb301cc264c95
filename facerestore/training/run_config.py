"""What a `facerestore train` run is (`TrainConfig`), and its RUN/config.json.

    config.json = {"version": 1, "train": the TrainConfig fields, "unet": the architecture}

A new run takes the options given and defaults for the rest (`resolve_config`); the trainer writes
the file once (`write_run_config`). `--resume` reads it back (`read_run_config`) and continues the run
exactly, so the file must still be what the run was made with: a file edited by hand or damaged (not
JSON, a section or key missing, a value of the wrong type such as "size": "big", an unknown preset)
is refused with one line naming the file and the key, never a traceback and never a value silently
defaulted or converted (`training.config_file`, which `finetune` shares). Only the fields added after
the first runs were written may be missing (`ADDED_LATER`): those runs used their defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.nets.guided_unet import UNetConfig
from facerestore.nets.idm_unet import PRESETS as MODEL_PRESETS, config_from_dict, config_to_dict, preset_of
from facerestore.training.checkpoints import read_target_steps, write_json
from facerestore.training.config_file import CONFIG_FILE, InvalidSetting, checked_setting, config_from_record, fix, read_config_json
from facerestore.training.degradations import PRESETS as DEGRADATIONS
from facerestore.training.out_lock import checked_run_folder
from facerestore.training.resume_recipe import recipe_record, refuse_checkpoint_changes, refuse_given_changes
from facerestore.training.seeds import check_seed

CONFIG_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run is; written to RUN_DIR/config.json. Recipe fields must not change on resume."""

    data: tuple[str, ...]
    out: str
    targets: tuple[str, ...] = ()
    size: int = 512
    model: str | None = None  # a preset; None = the --init-from model's architecture, else "base" (config.json names it: `model_name`)
    steps: int = 100_000
    batch_size: int = 32
    lr: float = 1e-4
    ema: float = 0.9999
    amp: bool = False
    grad_clip: float = 1.0
    degradation: str = "eq11"
    noise_levels: str = "continuous"
    input_perturbation: float = 0.0
    flip: bool = True
    seed: int = 0
    init_from: str | None = None
    val: str | None = None
    val_every: int = 1000
    val_degrade: tuple[str, ...] = ()  # validation presets; empty = the training --degradation
    val_count: int = 8
    val_steps: int = 10
    val_identity: str | None = None  # ArcFace ONNX (catalogue name or path): validation also reports identity
    save_every: int = 1000
    keep: int = 2
    device: str = "auto"
    workers: int = 2
    time_limit: float | None = None  # seconds; this invocation only (not kept for --resume)

    def __post_init__(self) -> None:
        checked_setting("seed", lambda: check_seed(self.seed))
        checks = [
            ("size", self.size >= 8, f"--size must be at least 8, got {self.size}"),
            ("steps", self.steps >= 1, f"--steps must be at least 1, got {self.steps}"),
            ("batch_size", self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive, got {self.lr}"),
            ("ema", 0.0 <= self.ema < 1.0, f"--ema must be in [0, 1), got {self.ema}"),
            ("grad_clip", self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 = off), got {self.grad_clip}"),
            ("val_every", self.val_every >= 1, f"--val-every must be at least 1, got {self.val_every}"),
            ("save_every", self.save_every >= 1, f"--save-every must be at least 1, got {self.save_every}"),
            ("val_count", self.val_count >= 1, f"--val-count must be at least 1, got {self.val_count}"),
            ("val_steps", self.val_steps >= 1, f"the validation's sampling steps (val_steps) must be at least 1, got {self.val_steps}"),
            ("keep", self.keep >= 0, f"--keep must be >= 0 (0 keeps every checkpoint), got {self.keep}"),
            ("workers", self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            ("time_limit", self.time_limit is None or (self.time_limit > 0 and math.isfinite(self.time_limit)), f"--time-limit must be positive, got {self.time_limit} s"),
            ("input_perturbation", self.input_perturbation >= 0 and math.isfinite(self.input_perturbation),
             f"--input-perturbation must be >= 0, got {self.input_perturbation}"),
            ("val_identity", self.val_identity is None or self.val is not None, "--val-identity needs --val (the faces it scores)"),
            ("noise_levels", self.noise_levels in ("continuous", "discrete"), f"noise levels must be continuous or discrete, got {self.noise_levels!r}"),
        ]
        for key, ok, message in checks:
            if not ok:
                raise InvalidSetting(key, message)
        if self.model is not None and self.model not in (*MODEL_PRESETS, "custom"):
            raise InvalidSetting("model", f"unknown --model {self.model!r}", hint=f"choose one of: {', '.join(MODEL_PRESETS)}")
        for key, name, option in (("degradation", self.degradation, "--degradation"), *(("val_degrade", n, "--val-degrade") for n in self.val_degrade)):
            if name not in DEGRADATIONS:
                raise InvalidSetting(key, f"unknown {option} {name!r}", hint=f"choose one of: {', '.join(DEGRADATIONS)}")
        if len(set(self.val_degrade)) != len(self.val_degrade):
            raise InvalidSetting("val_degrade", f"--val-degrade names a preset twice: {','.join(self.val_degrade)}")

    @property
    def val_presets(self) -> tuple[str, ...]:
        return self.val_degrade or (self.degradation,)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


RECIPE = ("data", "targets", "size", "model", "batch_size", "lr", "ema", "amp", "grad_clip", "degradation", "noise_levels", "input_perturbation", "flip",
          "seed", "init_from")
ADDED_LATER = ("input_perturbation", "val_degrade", "val_identity", "time_limit")  # absent from the first runs' files: their defaults
NOT_KEPT = ("out", "time_limit")  # the folder the run is in now (it may have moved); a limit bounds one invocation, not the run


@dataclass(frozen=True)
class RunConfig:
    """A run folder's config.json, checked: the run (`out` = the folder it was read from) and its net."""

    train: TrainConfig
    unet: UNetConfig


def write_run_config(run: Path, config: TrainConfig, unet: UNetConfig) -> None:
    """config.json of a new run (atomic write)."""
    write_json(Path(run) / CONFIG_FILE, {"version": CONFIG_VERSION, "train": config.to_dict(), "unet": config_to_dict(unet)})


def read_run_config(run: Path | str) -> RunConfig:
    """RUN/config.json, checked key by key (`training.config_file`); a UsageError names the file and the key that is wrong."""
    data = read_config_json(run, CONFIG_VERSION, ("train", "unet"))
    path = Path(run) / CONFIG_FILE
    train = config_from_record(TrainConfig, path, "train", data["train"], may_miss=ADDED_LATER, not_kept=NOT_KEPT, out=str(path.parent))
    unet = _unet_config(path, data["unet"])
    if train.model is None:  # written before runs recorded their preset: null meant the --init-from model's net, else base
        train = dataclasses.replace(train, model=model_name(train, unet) if train.init_from else "base")
    return RunConfig(train=train, unet=unet)


def model_name(config: TrainConfig, unet: UNetConfig) -> str:
    """The "model" config.json records: the --model given, else the preset whose net the run has (an
    --init-from model's, found from its architecture), else "custom" (a net of no preset)."""
    return config.model or preset_of(unet, config.size) or "custom"


def _unet_config(path: Path, record: dict) -> UNetConfig:
    try:
        return config_from_dict(record, "unet")
    except FaceRestoreError as exc:
        raise UsageError(f"{path}: {exc}", hint=fix("unet")) from None


def _absolute(paths) -> tuple[str, ...]:
    return tuple(str(Path(p).expanduser().resolve()) for p in paths)


def resolve_config(out: Path | str, *, resume: bool, **given) -> TrainConfig:
    """The run's config from the options a user gave (None = not given).

    A new run fills the rest with defaults. `resume=True` starts from RUN_DIR/config.json and refuses
    a given recipe option that differs from the stored one (exact resume keeps the recipe); --steps,
    validation, saving, device and worker options may change.
    """
    out = checked_run_folder(out)
    given = {k: v for k, v in given.items() if v is not None}
    for key in ("data", "targets"):
        if key in given:
            given[key] = _absolute(given[key])
    if "init_from" in given:  # a path is stored absolute, so --resume works from any folder; a registered name stays a name
        init = Path(given["init_from"]).expanduser()
        given["init_from"] = str(init.resolve() if init.exists() else init)
    if "val" in given:
        given["val"] = str(Path(given["val"]).expanduser().resolve())
    if "val_identity" in given:
        given["val_identity"] = str(given["val_identity"])
    if not resume:
        if not given.get("data"):
            raise UsageError("no DATA_DIR given", hint="pass one or more folders of aligned face images")
        return TrainConfig(out=str(out), **given)
    stored = read_run_config(out).train
    refuse_given_changes(out, stored, {k: v for k, v in given.items() if v or k not in ("data", "targets")}, RECIPE, options={"data": "DATA_DIR"})
    merged = {k: v for k, v in given.items() if k not in RECIPE}
    if "steps" not in given and (target := read_target_steps(out)) is not None:
        merged["steps"] = target  # an earlier --resume --steps N moved the end: a plain --resume goes on to N
    return dataclasses.replace(stored, out=str(out), **merged)


def recipe(config: TrainConfig) -> dict:
    """The RECIPE fields as JSON data: what each checkpoint records, and resume compares."""
    return recipe_record(config, RECIPE)


def check_checkpoint_recipe(config: TrainConfig, checkpoint: Path, recorded: object) -> None:
    """Refuse to continue `checkpoint` (recorded: its state.json's recipe) with another recipe
    (`training.resume_recipe`): config.json edited after the checkpoint was written. Nor is its model
    compared when it recorded none (null: the run's preset was not written down then)."""
    if isinstance(recorded, dict) and recorded.get("model", "") is None:
        recorded = {k: v for k, v in recorded.items() if k != "model"}
    refuse_checkpoint_changes(config.out, checkpoint, recorded, recipe(config))


__all__ = ["ADDED_LATER", "CONFIG_FILE", "CONFIG_VERSION", "InvalidSetting", "RECIPE", "RunConfig", "TrainConfig", "check_checkpoint_recipe", "model_name", "read_run_config", "recipe", "resolve_config",
           "write_run_config"]
