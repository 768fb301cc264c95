"""`facerestore finetune --unpaired LQ_DIR --out RUN`: the three stages, resumable as a whole.

    RUN/config.json                the recipe (FinetuneConfig), written once; --resume refuses to change it
    RUN/steps.json                 the run's current --steps, once `--resume --steps N` has changed it
                                   (a plain --resume goes on to it; absent: config.json's steps)
    RUN/files.json                 the faces, split once into "train" and "holdout" (frozen)
    RUN/pseudo/                    stage 1 (`pseudo_targets.py`): targets/, base/, contact_sheet.png
    RUN/checkpoints/, log.jsonl    stage 2 (`trainer.py`)
    RUN/<base>-finetuned.safetensors   the fine-tuned EMA weights (`--method <base> --weights FILE`)
    RUN/report/                    stage 3 (`report.py`): held-out faces, base vs fine-tuned

Every check that can fail on bad input runs before anything is computed: option values and their
combinations, the input folder (usable faces), the base model's weights, the prior's weights.
An interrupted run continues with `--resume`: finished pseudo-targets are skipped (per-face
manifest; an input replaced at the same path since gets a new one, and training goes on with it),
training continues from its newest checkpoint exactly, and the report is redone. The recipe (`RECIPE`)
cannot change on resume, neither on the command line nor in config.json since the newest checkpoint
recorded it (`training.resume_recipe`).
A face that passed the header-only scan but fails to decode (a truncated file) is skipped and
counted in every stage: it gets no pseudo-target and no pair, and the report leaves it out.

One run at a time writes into RUN: a run holds RUN/.facerestore.lock (`training.out_lock`) from before
it looks at what RUN holds to its end, so a second run or a `--resume` of a live one is refused with
one line naming the folder and the pid of the run that holds it.

The held-out faces are chosen by a keyed hash of their relative paths (`--seed`), so the split does
not depend on file order, and they never reach stage 1 or 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from facerestore.errors import UnsupportedCheckpoint, UsageError, WeightsError
from facerestore.image_io import assert_apart
from facerestore.training import distributed
from facerestore.training.checkpoints import PREFIX, latest_checkpoint, read_checkpoint_state, read_target_steps, record_target_steps, write_json
from facerestore.training.config_file import CONFIG_FILE, InvalidSetting, checked_setting, config_from_record, fix, read_config_json, read_run_json, shown
from facerestore.training.data import check_global_batch, substitution_warning
from facerestore.training.finetune.data import Pair
from facerestore.training.finetune.objectives import adapter_for, resolve_base_weights
from facerestore.training.finetune.pseudo_targets import (
    STATE_DIR,
    BaseSpec,
    InputFace,
    PseudoTargetOptions,
    PseudoTargetPlan,
    PseudoTargetSummary,
    Reporter,
    check_prior_option,
    generate_pseudo_targets,
    naming_a_missing_prior,
    prepare,
    read_done,
    scan_inputs,
    target_name,
)
from facerestore.training.finetune.report import ReportResult, write_report
from facerestore.training.finetune.step_memory import check_finetune_memory
from facerestore.training.finetune.trainer import StepReport, TrainSettings, milestones_for, train_pairs
from facerestore.training.out_lock import checked_run_folder, output_lock
from facerestore.training.resume_recipe import recipe_record, refuse_checkpoint_changes, refuse_given_changes
from facerestore.training.seeds import check_seed, stable_seed
from facerestore.plural import counted, verb

CONFIG_VERSION = 1
DEFAULT_LR = {"code": 1e-4, "image": 2e-5}  # DT-BFR: CodeFormer Adam 1e-4; SwinIR AdamW 2e-5


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a run is; written to RUN/config.json. RECIPE fields must not change on resume."""

    lq: str
    out: str
    base: str = "codeformer"
    base_weights: str | None = None
    base_fidelity: float | None = None  # None: CodeFormer's default, filled in; stays None for a base without the knob
    prior_weights: str | None = None
    k: int = 600
    l: int = 360
    n: int = 16
    size: int = 512
    holdout: float = 0.1  # < 1: a fraction of the faces; >= 1: a count; 0: none (no report)
    real: str | None = None
    steps: int = 40_000
    batch_size: int = 8
    lr: float | None = None  # None: that of --base, filled in (1e-4 for CodeFormer, 2e-5 for image-level fine-tuning)
    ema: float = 0.995
    feat_weight: float = 1.0
    ce_weight: float = 0.5
    lpips_weight: float = 0.1
    gan_weight: float = 0.1
    disc_width: int = 64
    amp: bool = False
    seed: int = 0
    save_every: int = 2000
    keep: int = 2
    device: str = "auto"
    workers: int = 2
    pseudo_batch: int = 4
    offline: bool | None = None
    lr_milestones: tuple[int, ...] | None = None  # None: those of --steps; kept when --resume raises --steps

    def __post_init__(self) -> None:
        # --base first: --lr and --base-fidelity default by it (stored resolved, so --resume compares values,
        # an explicit default is no change, and a run never follows a later change of the defaults)
        objective = checked_setting("base", lambda: adapter_for(self.base)).objective
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[objective])
        if self.base_fidelity is None and self.base == "codeformer":
            object.__setattr__(self, "base_fidelity", BaseSpec(name=self.base).effective_fidelity())
        # the LR schedule is fixed when the run starts: extending it must not move decays already taken (or skipped)
        milestones = milestones_for(self.steps) if self.lr_milestones is None else tuple(int(m) for m in self.lr_milestones)
        object.__setattr__(self, "lr_milestones", milestones)
        checked_setting("seed", lambda: check_seed(self.seed))
        for name in ("lpips_weight", "gan_weight", "feat_weight", "ce_weight"):  # the last two are config fields, not options
            weight = getattr(self, name)
            if not (weight >= 0 and math.isfinite(weight)):
                shown = f"--{name.replace('_', '-')}" if name in ("lpips_weight", "gan_weight") else name
                raise InvalidSetting(name, f"{shown} must be a finite number >= 0 (0 turns the term off), got {weight}")
        checks = [
            ("steps", self.steps >= 1, f"--steps must be at least 1, got {self.steps}"),
            ("batch_size", self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive, got {self.lr}"),
            ("ema", 0.0 <= self.ema < 1.0, f"--ema must be in [0, 1), got {self.ema}"),
            ("holdout", self.holdout >= 0 and (self.holdout < 1 or float(self.holdout).is_integer()),
             f"--holdout {self.holdout}: give a fraction below 1 (e.g. 0.1) or a whole number of faces (e.g. 4)"),
            ("size", self.size >= 16, f"--size must be at least 16, got {self.size}"),
            ("save_every", self.save_every >= 1, f"--save-every must be at least 1, got {self.save_every}"),
            ("keep", self.keep >= 0, f"--keep must be >= 0 (0 keeps every checkpoint), got {self.keep}"),
            ("workers", self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            ("pseudo_batch", self.pseudo_batch >= 1, f"--pseudo-batch must be at least 1, got {self.pseudo_batch}"),
            ("disc_width", self.disc_width >= 1, f"--disc-width must be at least 1, got {self.disc_width}"),
            ("lr_milestones", all(m >= 1 for m in milestones), f"LR milestones must be steps >= 1, got {list(milestones)}"),
        ]
        for key, ok, text in checks:
            if not ok:
                raise InvalidSetting(key, text)
        checked_setting("base_fidelity", BaseSpec(name=self.base, fidelity=self.base_fidelity).check)
        PseudoTargetPlan.from_options(self.k, self.l, self.n, self.size)  # names the one of k, l, n that is wrong

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPE = ("lq", "base", "base_weights", "base_fidelity", "prior_weights", "k", "l", "n", "size", "holdout", "real", "batch_size", "lr", "ema",
          "feat_weight", "ce_weight", "lpips_weight", "gan_weight", "disc_width", "amp", "seed", "lr_milestones")  # lr_milestones: no option
STAGE2_NAMES = {"disc_channels": "disc_width", "milestones": "lr_milestones"}  # checkpoints that recorded the stage-2 settings as the recipe
ADDED_LATER = ("lr_milestones",)  # absent from the first runs' config.json: those of their steps
NOT_KEPT = ("out",)  # the folder the run is in now (it may have moved)


def _weights_value(value: str | Path | None) -> str | None:
    """A file path is stored absolute (the run may be resumed from another folder); a name as it is."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.is_file() else str(value)


def resolve_config(out: Path | str, *, resume: bool, **given) -> FinetuneConfig:
    """The run's config from the options given (None = not given); `--resume` starts from RUN/config.json."""
    out = checked_run_folder(out)
    given = {k: v for k, v in given.items() if v is not None}
    for key in ("lq", "real"):
        if key in given:
            given[key] = str(Path(given[key]).expanduser().resolve())
    for key in ("base_weights", "prior_weights"):
        if key in given:
            given[key] = _weights_value(given[key])
    if "holdout" in given:
        given["holdout"] = parse_holdout(given["holdout"])
    if not resume:
        if (out / CONFIG_FILE).is_file():
            raise UsageError(f"{out} already holds a fine-tuning run", hint="pass --resume to continue it, or choose another --out")
        if not given.get("lq"):
            raise UsageError("no input folder given", hint="pass --unpaired LQ_DIR, the folder of your low-quality aligned faces")
        return FinetuneConfig(out=str(out), **given)
    stored = read_run_config(out)
    target = read_target_steps(out)  # extended (or shortened) by an earlier --resume --steps: a plain --resume goes on to it
    steps = stored.steps if target is None else target
    refuse_given_changes(out, stored, given, RECIPE, options={"lq": "--unpaired"})
    _check_steps_reached(out, given.get("steps"), steps)
    return dataclasses.replace(stored, **{"steps": steps, **{k: v for k, v in given.items() if k not in RECIPE}, "out": str(out)})


def read_run_config(run: Path | str) -> FinetuneConfig:
    """RUN/config.json, checked key by key (`training.config_file`): a file edited by hand or damaged is
    one line naming the file and the key. Written before the defaults of --lr and --base-fidelity were
    stored, it holds null for them (filled in as then); before the LR milestones were, it has none
    (those of its steps, which config.json keeps as the run started)."""
    data = read_config_json(run, CONFIG_VERSION, ("finetune",))
    return config_from_record(FinetuneConfig, Path(run) / CONFIG_FILE, "finetune", data["finetune"], may_miss=ADDED_LATER, not_kept=NOT_KEPT,
                              out=str(run))


def check_checkpoint_recipe(config: FinetuneConfig, checkpoint: Path, recorded: object) -> None:
    """Refuse to continue `checkpoint` (recorded: its state.json's recipe) with another recipe
    (`training.resume_recipe`): config.json edited after the checkpoint was written. Checkpoints of
    older runs recorded the stage-2 settings (`TrainSettings`): compared on the keys they share."""
    if isinstance(recorded, dict):
        recorded = {STAGE2_NAMES.get(k, k): v for k, v in recorded.items()}
    refuse_checkpoint_changes(config.out, checkpoint, recorded, recipe_record(config, RECIPE))


def _check_steps_reached(run: Path, given: int | None, target: int) -> None:
    """A --steps below the step the newest checkpoint holds is refused before any work."""
    latest = latest_checkpoint(run)
    reached = None if latest is None else int(latest.name[len(PREFIX):])
    if reached is None or (given if given is not None else target) >= reached:
        return
    if given is not None:
        keep = f", or leave --steps out to continue to {target}" if target >= reached else ""
        raise UsageError(f"the run is already at step {reached}, beyond --steps {given}", hint=f"pass --steps {reached} or more{keep}")
    # a run extended before RUN/steps.json existed: config.json has only its first --steps
    raise UsageError(f"the run is already at step {reached}, beyond its recorded --steps {target}", hint=f"pass --steps {reached} or more")


def parse_holdout(value: str | float) -> float:
    """'0.1' -> a fraction, '4' -> four faces, '0' -> none."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--holdout {value!r} is not a number", hint="give a fraction such as 0.1 or a count such as 4") from None
    if not math.isfinite(number) or number < 0 or (number >= 1 and not number.is_integer()):
        raise UsageError(f"--holdout {value}: give a fraction below 1 (e.g. 0.1) or a whole number of faces (e.g. 4)")
    return number


def split_holdout(faces: list[InputFace], holdout: float, seed: int) -> tuple[list[InputFace], list[InputFace]]:
    """(train, held out): the held-out faces are the first by a keyed hash of their paths."""
    count = int(holdout) if holdout >= 1 else round(holdout * len(faces))
    if 0 < holdout < 1 and len(faces) >= 2:
        count = max(1, count)
    if count >= len(faces):
        raise UsageError(f"--holdout {holdout:g} would hold out {min(count, len(faces))} of {counted(len(faces), 'face')} and leave none to fine-tune on",  # 1e300: not 301 digits
                         hint="hold out fewer faces (or --holdout 0 to skip the report)")
    ranked = sorted(faces, key=lambda f: stable_seed(seed, "holdout", f.rel))
    held = {f.rel for f in ranked[:count]}
    return [f for f in faces if f.rel not in held], [f for f in faces if f.rel in held]


def read_split(path: Path) -> dict[str, list[str]]:
    """RUN/files.json read back strictly: --resume goes on with exactly the faces the run split at its
    start, so a file damaged or edited by hand is one line naming it, never a traceback or a guess."""
    split = read_run_json(path)
    if not isinstance(split, dict):
        raise UsageError(f'{path} holds {shown(split)}, not the run\'s split of the faces ({{"train": [...], "holdout": [...]}})', hint=fix())
    for key in ("train", "holdout"):
        if key not in split:
            raise UsageError(f"{path} has no key {key}", hint=fix())
        if not isinstance(split[key], list) or not all(isinstance(rel, str) for rel in split[key]):
            raise UsageError(f"{path}: {key} is {shown(split[key])}, not a list of paths relative to the --unpaired folder", hint=fix())
    return split


def suggested_name(base: str, run: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", run.resolve().name).strip("-.") or "run"
    return f"{base}-ft-{slug}"


@dataclass
class FinetuneResult:
    run: Path
    model: Path
    step: int
    losses: list[tuple[int, float]]
    pseudo: PseudoTargetSummary | None
    report: ReportResult | None
    train_faces: int
    holdout_faces: int
    name: str
    seconds_per_step: float = 0.0

    @property
    def import_command(self) -> str:
        return f"facerestore weights import {shlex.quote(str(self.model))} --name {shlex.quote(self.name)}"  # pasteable with spaces


def finetune_unpaired(config: FinetuneConfig, *, resume: bool = False, reporter: Reporter | None = None,
                      on_step: Callable[[StepReport], None] | None = None, check_memory: bool = True) -> FinetuneResult:
    """Run (or continue) the three stages as the module docstring describes.

    Under torchrun one rank's error stops the others quietly with its code (`distributed.process_group`).
    `check_memory=False` skips the refusal of a step too large for the memory (`finetune.step_memory`).
    """
    # before anything is written: the run folder records its batch size, and a resume keeps it
    check_global_batch(config.batch_size, distributed.world_size(), resume=resume)
    with distributed.process_group(config.device) as d:
        return _run(config, d, resume, reporter or Reporter(), on_step, check_memory)


def _check_options(config: FinetuneConfig) -> tuple[PseudoTargetPlan, BaseSpec, list[str], str]:
    """Option values and combinations, the --real folder: usage errors before anything else.
    Returns the plan, the base, the --real faces and the summary of their scan ("" without --real)."""
    adapter = adapter_for(config.base)
    plan = PseudoTargetPlan.from_options(config.k, config.l, config.n, config.size)
    base = BaseSpec(name=config.base, weights=config.base_weights, fidelity=config.base_fidelity)
    base.check()
    check_prior_option(config.prior_weights)
    real: list[str] = []
    real_note = ""
    if adapter.objective == "image" and config.gan_weight > 0:
        if not config.real:
            raise UsageError("fine-tuning a restorer without a codebook uses a GAN against real faces", hint="pass --real DIR (high-quality aligned faces, e.g. FFHQ), or --gan-weight 0")
        from facerestore.training.data import min_side_for, scan_faces

        folder = Path(config.real)
        if not folder.is_dir():
            raise UsageError(f"--real {folder} is not a folder", hint="pass a folder of high-quality aligned faces")
        scan = scan_faces([folder], min_side=min_side_for(config.size), exclude=[Path(config.out)])
        real, real_note = [f.source for f in scan.files], scan.summary("real face")
        if not real:
            raise scan.nothing_usable([str(folder)], config.size, what="--real faces", hint="pass a folder of high-quality aligned faces")
        if config.size % 8:
            raise UsageError(f"--size {config.size} must be divisible by 8 for the discriminator")
    elif config.real and adapter.objective == "code":
        raise UsageError("--real is used by the GAN of image-level fine-tuning; CodeFormer is fine-tuned with code-level losses only (DT-BFR)",
                         hint="drop --real")
    return plan, base, real, real_note


def _run(config: FinetuneConfig, d: distributed.Dist, resume: bool, reporter: Reporter, on_step, check_memory: bool = True) -> FinetuneResult:
    run = Path(config.out)
    # before the lock, whose file goes in RUN
    assert_apart(run, Path(config.lq), f"the input folder {config.lq}", hint="write the run to a folder that neither is, lies inside nor holds the --unpaired folder")
    if config.real:
        assert_apart(run, Path(config.real), f"the --real folder {config.real}", hint="write the run to a folder that neither is, lies inside nor holds --real")
    # one run at a time in RUN (training/out_lock), held by rank 0 from before the checks of what RUN
    # holds to the end of stage 3, through the save a Ctrl-C asks for; the other ranks pass the
    # barrier only once rank 0 holds it, so a refused run's ranks write nothing
    with output_lock(run, hold=d.main, on_message=reporter.message if d.main else None):
        distributed.barrier(d)
        return _run_locked(config, d, resume, reporter, on_step, check_memory)


def _run_locked(config: FinetuneConfig, d: distributed.Dist, resume: bool, reporter: Reporter, on_step, check_memory: bool = True) -> FinetuneResult:
    """The three stages, under RUN's lock."""
    def message(text: str) -> None:
        if d.main:
            reporter.message(text)

    run = Path(config.out)
    if resume and (existing := latest_checkpoint(run)) is not None:  # config.json edited since: refused before any work
        check_checkpoint_recipe(config, existing, read_checkpoint_state(existing).get("recipe"))
    plan, base, real, real_note = _check_options(config)
    files_path = run / "files.json"
    if resume and files_path.is_file():
        split = read_split(files_path)
        lq = Path(config.lq)
        train = [InputFace(rel, lq / rel) for rel in split["train"]]
        held = [InputFace(rel, lq / rel) for rel in split["holdout"]]
        missing = [f.rel for f in train + held if not f.path.is_file()]
        if missing:
            raise UsageError(f"{counted(len(missing), 'input face')} of the run {verb(len(missing), 'is', 'are')} gone from {lq} (first: {missing[0]})", hint="restore them, or start a new run")
        scan_note = f"{counted(len(train) + len(held), 'face')} (file list of the run)"
    else:
        faces, scan_note = scan_inputs(Path(config.lq), config.size, exclude=[run])
        train, held = split_holdout(faces, config.holdout, config.seed)
    pseudo_dir = run / "pseudo"
    # done: listed with its target, made from the input as it is now (one replaced at the same path is redone)
    done = read_done(pseudo_dir / STATE_DIR, train) if (pseudo_dir / STATE_DIR).is_dir() else set()
    stage1_left = any(f.rel not in done for f in train)
    # a missing base checkpoint's line also names the prior, when stage 1 needs it and it is missing too
    with naming_a_missing_prior(config.base, config.base_weights, config.prior_weights) if stage1_left else contextlib.nullcontext():
        base_path = resolve_base_weights(config.base, config.base_weights, config.offline)

    pseudo_options = PseudoTargetOptions(lq=Path(config.lq), out=pseudo_dir, base=base, prior_weights=config.prior_weights, k=config.k, l=config.l,
                                         n=config.n, size=config.size, batch_size=config.pseudo_batch, seed=config.seed, device=config.device,
                                         offline=config.offline, files=tuple(f.rel for f in train))
    # load what stage 1 needs now: a base checkpoint that does not fit (another size, another
    # architecture) or a prior missing offline is one line before anything is written
    base_method = base.build(str(d.device), config.offline, config.size)
    if check_memory:  # stage 2's step, before hours of stage 1 (on every rank: each its device)
        check_finetune_memory(config.base, base_method.net.config, size=config.size, batch_size=config.batch_size, amp=config.amp,
                              workers=config.workers, device=d.device, world=d.world, main=d.main, resume=resume and latest_checkpoint(run) is not None,
                              lpips=config.lpips_weight > 0, gan=config.gan_weight > 0, disc_width=config.disc_width)
    prepared = prepare(pseudo_options, str(d.device), faces=train, scan=scan_note, base_method=base_method) if stage1_left else None
    del base_method

    distributed.barrier(d)  # every rank has checked the folder (resolve_config) before rank 0 writes the run into it
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        if not (run / CONFIG_FILE).is_file():
            write_json(run / CONFIG_FILE, {"version": CONFIG_VERSION, "finetune": config.to_dict()})
        elif resume:
            record_target_steps(run, config.steps, section="finetune")
        if not files_path.is_file():
            write_json(files_path, {"train": [f.rel for f in train], "holdout": [f.rel for f in held]})
    distributed.barrier(d)
    message(f"{scan_note}; {len(train)} to fine-tune on, {len(held)} held out for the report")
    if real_note:
        message(f"--real {config.real}: {real_note}")

    # ---- stage 1: pseudo-targets
    pseudo = None
    if prepared is not None:
        pseudo = generate_pseudo_targets(pseudo_options, reporter=reporter if d.main else Reporter(), dist=d, prepared=prepared)
        del prepared
        _free(d.device)
        unreadable = f", {pseudo.unreadable} could not be decoded (skipped)" if pseudo.unreadable else ""
        redone = f" ({counted(pseudo.changed, 'changed input')} redone)" if pseudo.changed else ""
        message(f"pseudo-targets: {pseudo.done} made{redone}, {pseudo.skipped} already done{unreadable}; {pseudo.seconds_per_face:.2f} s per face; "
                f"contact sheet {pseudo.sheet}")
    else:
        message(f"pseudo-targets: all {len(train)} done already ({pseudo_dir})")

    # ---- stage 2: fine-tuning, on the faces that have a pseudo-target (stage 1 skips an input that
    # fails to decode; it is counted above and tried again on the next --resume)
    if pseudo is not None:
        done = read_done(pseudo_dir / STATE_DIR, train)
    usable = [f for f in train if f.rel in done]
    if not usable:
        raise UsageError(f"none of the {counted(len(train), 'face')} to fine-tune on could be decoded, so there are no pseudo-targets",
                         hint=f"re-copy or re-export the faces in {config.lq}, then continue with --resume")
    pairs = [Pair(lq=str(f.path), target=str(pseudo_dir / "targets" / target_name(f.rel))) for f in usable]
    absent = [p.target for p in pairs if not Path(p.target).is_file()]
    if absent:
        raise UsageError(f"{len(absent)} pseudo-targets are missing (first: {absent[0]})", hint=f"delete {pseudo_dir} and rerun with --resume to make them again")
    settings = TrainSettings(base=config.base, steps=config.steps, batch_size=config.batch_size, lr=config.lr, ema=config.ema,
                             size=config.size, seed=config.seed, feat_weight=config.feat_weight, ce_weight=config.ce_weight,
                             lpips_weight=config.lpips_weight, gan_weight=config.gan_weight, disc_channels=config.disc_width, amp=config.amp, save_every=config.save_every,
                             keep=config.keep, workers=config.workers, milestones=config.lr_milestones)
    if d.main:
        reporter.stage("fine-tune", config.steps)
    metadata = {"pseudo_targets": plan.describe(), "base_weights": str(base_path)}
    outcome = train_pairs(run, settings, pairs, base_path, d, real=real, offline=config.offline, metadata=metadata, on_step=on_step,
                          on_message=reporter.message if d.main else None, recipe=recipe_record(config, RECIPE))
    _free(d.device)
    if outcome.substituted:
        message(substitution_warning(outcome.substituted, run / "log.jsonl", "fine-tuning sample", files=outcome.unreadable))

    # ---- stage 3: report on the held-out faces
    report = None
    if d.main and held:
        device = str(d.device)
        base_method = base.build(device, config.offline, config.size)
        tuned = _load_finetuned(config, base, outcome.model, device)
        settings_note = {"base": config.base, "base_fidelity": base.effective_fidelity() if config.base == "codeformer" else None,
                         "pseudo_targets": plan.describe(), "steps": outcome.step, "train_faces": len(train), "size": config.size}
        report = write_report(run / "report", held, base_method, tuned, size=config.size, seed=config.seed, batch_size=config.pseudo_batch,
                              settings=settings_note, reporter=reporter)
    elif d.main:
        message("no held-out faces (--holdout 0): no report")
    distributed.barrier(d)
    return FinetuneResult(run=run, model=outcome.model, step=outcome.step, losses=outcome.losses, pseudo=pseudo, report=report,
                          train_faces=len(train), holdout_faces=len(held), name=suggested_name(config.base, run),
                          seconds_per_step=outcome.seconds_per_step)


def _load_finetuned(config: FinetuneConfig, base: BaseSpec, model: Path, device: str):
    """Stage 3's fine-tuned model, the file stage 2 exported: no option named it, so a damaged one (a
    full disk, a copy cut off) is one line naming the stage, the file and how to export it again."""
    from facerestore.methods.base import MethodOptions
    from facerestore.methods.registry import build_method

    try:
        return build_method(config.base, MethodOptions(device=device, weights=model, weights_option=None, offline=config.offline, fidelity=base.fidelity))
    except WeightsError as exc:
        said = str(exc)
        what = said[len(str(model)):].lstrip() if said.startswith(str(model)) else f"cannot be loaded ({said})"
        kind = UnsupportedCheckpoint if isinstance(exc, UnsupportedCheckpoint) else WeightsError
        raise kind(f"finetune stage 3 (report): the fine-tuned model {model} {what}",
                   hint=f"delete {model} and continue with: facerestore finetune --out {shlex.quote(config.out)} --resume, "
                        "which exports it again from the newest checkpoint") from None


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
