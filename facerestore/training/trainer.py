"""`facerestore train`: IDM's intrinsic iteration (x0 regression of a conditional UNet) with the
machinery a long run needs: AMP, gradient clipping, EMA, checkpoints, exact resume, validation,
torchrun (DDP), and `--init-from` for the extrinsic iteration.

One step (IDM eq. 5 and 7, appendix A):

    (x, x_d)   B faces resized to --size; x_d = degradation(x) (IDM eq. 11 by default, `--degradation`)
    gamma, eps per sample (continuous noise levels, SR3; `diffusion.losses`)
    loss       = mean | f(cat(sqrt(gamma) x + sqrt(1 - gamma) eps, x_d), gamma) - x |      (L1, eq. 7)
    Adam (constant lr, 1e-4 in the paper), gradient norm clipped, EMA of the weights

Recipe. `--batch-size` is the GLOBAL batch (the paper's 32); under torchrun each of W processes takes
B / W samples of every step and DDP averages the gradients, so a run is the same recipe on 1 GPU or
8, and every sample (image, degradation, noise) is the same whatever W is (`training.data`).

Resume. `--resume` continues from the newest complete checkpoint with exactly the state an
uninterrupted run would have: weights, EMA, Adam moments and step, the AMP scaler, and the sample
counter from which the data order, degradations, diffusion noise and global RNGs are derived (they
are keyed by counters, `training.seeds`). The recipe must not change, neither on the command line
nor in config.json since the checkpoint was written (`training.run_config`); --steps may grow.
One run at a time writes into RUN_DIR: a run holds its lock (`training.out_lock`) from before it
looks at what the folder holds to its end, so a second run or a `--resume` of a live one is refused
with one line naming the folder and the pid of the run that holds it.

Time limit. `--time-limit` (a lease, a scheduler's wall time) ends the run at the first step end
after which one more step would overrun it, counted from the start of `train`; that step is
checkpointed and exported like a finished run's, and `--resume` continues it exactly. Every rank votes
in the per-step all-reduce, so under torchrun all stop at the same step.

Extrinsic iteration (IDM sec. 3.3): clean the training set with the first model
(`facerestore clean-dataset FACES --out FACES_CLEAN --weights RUN1`), then train again with
`--targets FACES_CLEAN --init-from RUN1`: inputs are still degraded from the originals, targets are
the cleaned copies, and the second model starts from the first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facerestore.devices import training_amp_dtype
from facerestore.diffusion.losses import x0_regression_loss
from facerestore.diffusion.schedule import NoiseSchedule
from facerestore.diffusion.denoiser import ConcatCondition
from facerestore.errors import BadWeightsOption, FaceRestoreError, UsageError
from facerestore.out_of_memory import is_out_of_memory, step_out_of_memory
from facerestore.image_io import assert_apart
from facerestore.nets.guided_unet import UNetConfig
from facerestore.nets.idm_unet import IDMUNet, idm_unet_config, preset_of
from facerestore.training import distributed
from facerestore.training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    read_checkpoint_state,
    record_target_steps,
    remove_checkpoint_temps,
    save_checkpoint,
    step_dir,
)
from facerestore.training.data import FaceDataset, StepBatches, check_decodable, check_global_batch, load_file_list, min_side_for, save_file_list, scan_faces
from facerestore.training.degradations import preset
from facerestore.training.loop import StopAtStepEnd, reseed, truncate_log
from facerestore.training.out_lock import output_lock
from facerestore.training.run_config import (
    RECIPE,
    TrainConfig,
    check_checkpoint_recipe,
    model_name,
    read_run_config,
    recipe,
    resolve_config,
    write_run_config,
)
from facerestore.training.seeds import stable_seed
from facerestore.training.step_memory import check_step_memory
from facerestore.training.validation import ValFace, describe, load_val_faces, training_overlap, validate
from facerestore.weights.checkpoint import load_strict
from facerestore.plural import counted


@dataclass(frozen=True)
class StepReport:
    step: int  # steps completed
    steps: int
    loss: float
    grad_norm: float
    seconds: float  # this step's wall time


@dataclass
class TrainResult:
    run: Path
    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    scan: str = ""
    substituted: int = 0
    unreadable: list[str] = field(default_factory=list)  # the files those samples should have come from
    model: Path | None = None
    metrics: dict | None = None
    seconds_per_step: float = 0.0
    stopped_at_time_limit: bool = False


def _size_hint(model: str, size: int) -> str:
    """The nearest --size the model takes, and a smaller model that takes this one."""
    from facerestore.nets.idm_unet import PRESETS, size_multiple

    if model not in PRESETS:
        return f"choose one of {', '.join(PRESETS)}"
    multiple = size_multiple(model)
    nearest = max(multiple, round(size / multiple) * multiple)
    others = [p for p in PRESETS if p != model and size >= size_multiple(p) and size % size_multiple(p) == 0]
    return f"use --size {nearest}" + (f", or --model {others[0]}, which takes {size}" if others else "")


def _unet_for(config: TrainConfig, unet: UNetConfig | None, message: Callable[[str], None]) -> tuple[UNetConfig, dict | None]:
    """(architecture, initial weights or None) for a new run."""
    init_state = None
    size_error: UsageError | None = None  # --model does not take --size: said after --init-from's architecture is compared
    if unet is None and config.model not in (None, "custom"):
        try:
            unet = idm_unet_config(config.model, config.size)
        except ValueError as exc:
            size_error = UsageError(str(exc), hint=_size_hint(config.model, config.size))
            if not config.init_from:
                raise size_error from None
    if config.init_from:
        from facerestore.methods.idm import load_model, model_path
        from facerestore.weights.catalogue import load_catalogue
        from facerestore.weights.store import loading_option, resolve_explicit

        if not Path(config.init_from).expanduser().exists() and config.init_from not in load_catalogue():
            raise BadWeightsOption(f"--init-from {config.init_from} does not exist",
                                   hint="pass a `facerestore train` run folder, the idm.safetensors it wrote, or a name registered with `facerestore weights import FILE --name NAME`")
        # a run folder means its model; a file must be readable; a name registered with `weights import`
        # comes from the weights store (sha256 checked); a published checkpoint's name is refused: exit 2
        path = resolve_explicit(model_path(config.init_from, "--init-from"), offline=True, catalogued=(), option="--init-from")
        with loading_option("--init-from"):  # a damaged file or another model: exit 2, as a missing one
            loaded = load_model(path)
        if size_error is not None and preset_of(loaded.net.config, loaded.image_size) == config.model:
            raise size_error  # the right model at a size it does not take: --size is what to change
        if size_error is not None or (unet is not None and unet != loaded.net.config):  # first: following a --size hint would not help
            raise UsageError(f"--init-from {config.init_from} has another architecture than --model {config.model}",
                             hint="drop --model: the architecture comes from the checkpoint")
        unet = loaded.net.config
        init_state = loaded.net.state_dict()
        message(f"initialised from {loaded.source} (trained at {loaded.image_size} px)")
    if unet is None:
        try:
            unet = idm_unet_config("base", config.size)
        except ValueError as exc:
            raise UsageError(str(exc), hint=_size_hint("base", config.size)) from None
    if config.size % unet.multiple:
        raise UsageError(f"--size {config.size} is not divisible by {unet.multiple}, which this model's {len(unet.channel_mult)} levels need")
    return unet, init_state


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    unet: UNetConfig | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_message: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    check_memory: bool = True,
) -> TrainResult:
    """Run (or resume) training as described in the module docstring; returns what happened.

    `unet` overrides the --model preset (tests and library users); `on_step` is called after every
    step on rank 0 and may raise to stop (a simulated crash); `on_message` gets one-line notes;
    `on_warning` gets lines the user should see even with -q, once every check has passed (a --val
    folder among the training data). `check_memory=False` skips the refusal of a step too large for the memory (`training.step_memory`).
    """
    # before anything is written: a run folder records its batch size, and a resume keeps it
    check_global_batch(config.batch_size, distributed.world_size(), resume=resume)
    with distributed.process_group(config.device) as d:
        _check_apart(config)
        # one run at a time in the run folder (training/out_lock), held by rank 0 from before the checks
        # of what the folder holds to the end, through the save a Ctrl-C asks for; the other ranks pass
        # the barrier only once rank 0 holds it, so a refused run's ranks write nothing
        with output_lock(Path(config.out), hold=d.main, on_message=on_message if d.main else None):
            distributed.barrier(d)
            return _train(config, d, resume=resume, unet=unet, on_step=on_step, on_message=on_message, on_warning=on_warning,
                          check_memory=check_memory)


def _check_apart(config: TrainConfig) -> None:
    """The run writes RUN/val/step_N.png, RUN/checkpoints/, logs: a run folder at, inside or above a data
    or --val folder could put them among the faces (RUN/val is --val: the grids become validation faces
    on the next --resume), and a new run would train on them. Checked before the lock, which is a file
    in the run folder."""
    run = Path(config.out)
    for folder in (*config.data, *config.targets):
        assert_apart(run, Path(folder), f"the training data {folder}", hint="write the run to a folder that neither is, lies inside nor holds the data")
    if config.val:
        assert_apart(run, Path(config.val), f"the validation faces {config.val}", hint="write the run to a folder that neither is, lies inside nor holds --val")


def _train(config: TrainConfig, d: distributed.Dist, *, resume: bool, unet: UNetConfig | None,
           on_step: Callable[[StepReport], None] | None, on_message: Callable[[str], None] | None,
           on_warning: Callable[[str], None] | None = None, check_memory: bool = True) -> TrainResult:
    def message(text: str) -> None:
        if on_message is not None and d.main:
            on_message(text)

    started = time.perf_counter()
    run = Path(config.out)
    existing = latest_checkpoint(run)
    if existing is not None and not resume:
        raise UsageError(f"{run} already holds a training run (checkpoint {existing.name})", hint="pass --resume to continue it, or choose another --out")
    if not resume and (run / "config.json").exists():  # a run stopped before its first checkpoint, or someone's own file
        raise UsageError(f"{run} already holds a config.json", hint="pass --resume to continue that run, or choose another --out")
    if resume and existing is None and not (run / "config.json").is_file():
        raise UsageError(f"nothing to resume in {run}: no checkpoint and no config.json", hint="start the run without --resume")

    # ---- validation first: a bad --val must stop the run before it writes anything, and on every rank
    # (a few images): on rank 0 alone, the others would wait for it at the first barrier
    val_faces: list[ValFace] = []
    val_skipped: list[tuple[Path, str]] = []  # said once every check has passed, below
    if config.val:
        val_faces = load_val_faces(Path(config.val), config.val_count, config.size, {name: preset(name) for name in config.val_presets}, config.seed,
                                   skipped=val_skipped)
    val_note = f"{counted(len(val_faces), 'validation face')} from {config.val} ({', '.join(config.val_presets)})" if config.val else ""
    if not d.main:  # rank 0 validates
        val_faces = []
    identity = val_identity(config)  # on every rank: a missing file stops them all, not rank 0 alone

    # ---- files and architecture
    fresh = not (resume and (run / "config.json").is_file())
    if not fresh:
        unet_config = read_run_config(run).unet
        config = dataclasses.replace(config, model=model_name(config, unet_config))  # a TrainConfig of a library caller names no model
        if existing is not None:  # config.json edited since the checkpoint was written: refused before the weights load
            check_checkpoint_recipe(config, existing, read_checkpoint_state(existing).get("recipe"))
        if unet is not None and unet != unet_config:
            raise UsageError("--resume: the run was started with another architecture", hint="drop the model options")
        init_state = None
        if existing is None and config.init_from:  # stopped before its first checkpoint: start again from the same weights
            _, init_state = _unet_for(config, unet_config, message)
        files = load_file_list(run / "files.json")
        scan_note = f"{counted(len(files), 'training image')} (file list of the run)"
    else:
        scan = scan_faces([Path(p) for p in config.data], [Path(p) for p in config.targets], min_side=min_side_for(config.size), exclude=[Path(config.out)])
        if not scan.files:
            raise scan.nothing_usable(config.data, config.size)
        files = scan.files
        check_decodable(files, config.size, config.data)
        scan_note = scan.summary()
        unet_config, init_state = _unet_for(config, unet, message)
        config = dataclasses.replace(config, model=model_name(config, unet_config))  # recorded, and in every checkpoint's recipe
    if check_memory:  # a step that cannot fit is one line now, not the OOM killer later; nothing is written yet
        check_step_memory(config, unet_config, d.device, d.world, main=d.main, resume=not fresh)
    # after every check: a warning before a refusal would be a second line about a run that never starts
    if val_note:  # said once every check has passed, as the warnings: a refused run prints its error line alone
        message(val_note)
    if on_warning is not None and d.main:
        for path, reason in val_skipped:
            on_warning(f"warning: --val: skipped {path}: {reason}")
        if config.val and (overlap := training_overlap(config.val, config.data, config.targets)):
            on_warning(overlap)
    if fresh:
        distributed.barrier(d)  # every rank has found no run here before rank 0 makes one (else: "already holds a config.json")
        if d.main:
            run.mkdir(parents=True, exist_ok=True)
            save_file_list(files, run / "files.json")
            write_run_config(run, config, unet_config)
        distributed.barrier(d)
    message(scan_note)

    # ---- model, EMA, optimizer
    torch.manual_seed(stable_seed(config.seed, "init"))
    model = IDMUNet(unet_config).to(d.device)
    if init_state is not None:
        load_strict(model, init_state, config.init_from or "init")
    ema = IDMUNet(unet_config).to(d.device).eval().requires_grad_(False) if d.main else None
    if ema is not None:
        ema.load_state_dict(model.state_dict())
    names = [n for n, _ in model.named_parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    amp_dtype, amp_off = training_amp_dtype(d.device, config.amp)
    if amp_off:
        message(amp_off)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start = 0
    if existing is not None:
        ckpt = load_checkpoint(existing)
        load_strict(model, ckpt.model, existing / "model.safetensors")
        if ema is not None:
            load_strict(ema, ckpt.ema, existing / "ema.safetensors")
        optimizer_from_tensors(optimizer, names, ckpt.optimizer, ckpt.state["optimizer"], str(existing))
        if ckpt.state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt.state["scaler"])
        start = ckpt.step
        if start > config.steps:
            raise UsageError(f"the run is already at step {start}, beyond --steps {config.steps}", hint=f"pass --steps {start} or more to train on")
        message(f"resumed from {existing} (step {start})")
    if resume and d.main and (run / "config.json").is_file():
        record_target_steps(run, config.steps, section="train")
    if d.main:  # lines beyond the checkpoint (a crashed run's last steps, or an earlier unsaved start) are redone
        truncate_log(run / "log.jsonl", start)
        truncate_log(run / "metrics.jsonl", start)
        if resume and (removed := remove_checkpoint_temps(run)):
            message(f"removed {counted(removed, 'unfinished checkpoint folder')} of a save cut short")
    distributed.barrier(d)

    net: torch.nn.Module = model
    if d.active:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda" else None)

    # ---- data
    schedule = NoiseSchedule.named("linear", 1000)
    dataset = FaceDataset(files, size=config.size, seed=config.seed, degradation=preset(config.degradation), schedule=schedule,
                          noise_levels=config.noise_levels, input_perturbation=config.input_perturbation, flip=config.flip)
    sampler = StepBatches(start_step=start, steps=config.steps, global_batch=config.batch_size, rank=d.rank, world=d.world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=config.workers, pin_memory=d.device.type == "cuda",
                                         prefetch_factor=2 if config.workers else None)

    result = TrainResult(run=run, step=start, scan=scan_note)
    log = open(run / "log.jsonl", "a") if d.main else None  # noqa: SIM115 - closed in finally
    last_saved = start
    clock = time.perf_counter()
    step_times: list[float] = []

    def checkpoint(step: int) -> None:
        nonlocal last_saved
        if d.main:
            _save(run, step, config, unet_config, model, ema, optimizer, names, scaler, result)
        last_saved = step
        distributed.barrier(d)
        message(f"checkpoint at step {step}: {step_dir(run, step)}")

    step = start
    stop = StopAtStepEnd(enabled=not d.active)
    unreadable: set[str] = set()  # files whose samples came from the next readable one, on this rank
    try:
        for batch in loader:
            reseed(config.seed, step, d.rank)
            lq = batch["lq"].to(d.device, non_blocking=True)
            hq = batch["hq"].to(d.device, non_blocking=True)
            noise = batch["noise"].to(d.device, non_blocking=True)
            gamma = batch["gamma"]
            with torch.autocast(d.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, _ = x0_regression_loss(ConcatCondition(net, lq), hq, gamma, noise, p=1)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip if config.grad_clip > 0 else math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                decay = min(config.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    for e, p in zip(ema.parameters(), model.parameters()):
                        e.lerp_(p.detach(), 1.0 - decay)
            step += 1
            now = time.perf_counter()
            seconds, clock = now - clock, now
            # every rank votes on the limit in the all-reduce it does anyway, so all stop at the same step
            out_of_time = config.time_limit is not None and step < config.steps and now - started + seconds > config.time_limit
            loss_sum, substituted, out_of_time = distributed.total(d, [loss.item(), float(batch["substituted"].sum()), float(out_of_time)])
            loss_value, substituted = loss_sum / d.world, int(substituted)
            result.substituted += substituted
            unreadable.update(path for path in batch["unreadable"] if path)
            step_times.append(seconds)
            result.step = step
            result.losses.append((step, loss_value))
            if log is not None:
                log.write(json.dumps({"step": step, "loss": loss_value, "grad_norm": float(grad_norm), "seconds": round(seconds, 4),
                                      **({"substituted": substituted} if substituted else {})}) + "\n")
                log.flush()
            if d.main and on_step is not None:
                on_step(StepReport(step=step, steps=config.steps, loss=loss_value, grad_norm=float(grad_norm), seconds=seconds))
            if step % config.save_every == 0 or step == config.steps:
                checkpoint(step)
            if config.val and (step % config.val_every == 0 or step == config.steps):
                if d.main:
                    result.metrics = _validate(run, step, ema, val_faces, config, message, identity)
                distributed.barrier(d)
            stop.honour(step, last_saved, checkpoint, message)
            if out_of_time:
                result.stopped_at_time_limit = True
                message(f"time limit of {format_duration(config.time_limit)} reached after step {step}")  # the command says how to go on
                break
            clock = time.perf_counter()
    except Exception as exc:
        if is_out_of_memory(exc):  # torch's traceback and its allocator advice, as one line with what to change
            raise step_out_of_memory(exc, step + 1, config.batch_size, config.size, d.world) from None
        raise
    finally:
        stop.restore()
        if log is not None:
            log.close()
    if step > last_saved:
        checkpoint(step)
    result.unreadable = sorted(set(distributed.gather(d, sorted(unreadable))))  # every rank's, for rank 0's warning
    result.model = run / "idm.safetensors"
    result.seconds_per_step = float(np.median(step_times)) if step_times else 0.0
    return result


def parse_duration(text: str) -> float:
    """'90s', '45m', '2h', '1h30m' -> seconds (a unit is required: a bare 8 could be minutes or hours)."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text.lower())
    if not text.strip() or parts is None or not any(parts.groups()):
        raise UsageError(f"--time-limit {text!r} is not a duration", hint="give it with units, e.g. 90s, 45m, 2h or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def format_duration(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 and seconds % 3600 == 0 else f"{seconds / 60:g}m" if seconds % 60 == 0 else f"{seconds:g}s"


def _save(run: Path, step: int, config: TrainConfig, unet_config: UNetConfig, model: torch.nn.Module, ema: torch.nn.Module,
          optimizer: torch.optim.Optimizer, names: list[str], scaler: torch.amp.GradScaler, result: TrainResult) -> None:
    from facerestore.methods.idm import model_metadata, save_model

    state = {
        "samples": step * config.batch_size,
        "seed": config.seed,
        "recipe": recipe(config),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": {"scheme": "keyed by (seed, sample) and (seed, step, rank); see facerestore/training/seeds.py", "next_sample": step * config.batch_size},
        "torch": torch.__version__,
    }
    meta = model_metadata(unet_config, config.size, {"step": step})
    save_checkpoint(run, step, model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer, names=names, state=state,
                    metadata=meta, keep=config.keep)
    card = {
        "name": "idm",
        "preset": model_name(config, unet_config),
        "params": sum(p.numel() for p in ema.parameters()),
        "step": step,
        "samples": step * config.batch_size,
        "recipe": state["recipe"],
        "objective": "x0 regression, L1 (IDM eq. 7), continuous noise levels" if config.noise_levels == "continuous" else "x0 regression, L1 (IDM eq. 7)",
        "init_from": config.init_from,
        "validation": result.metrics,
    }
    save_model(ema, run / "idm.safetensors", config.size, card=card)


def val_identity(config: TrainConfig) -> Callable[[np.ndarray, np.ndarray], float] | None:
    """The identity metric of `--val-identity`, loaded before the first step so a missing file or
    onnxruntime is a one-line error now, not after the first validation interval."""
    if config.val_identity is None:  # TrainConfig refuses it without --val
        return None
    from facerestore.metrics.identity import ReferenceIdentity, load_arcface

    if not Path(config.val_identity).exists() and "." in Path(config.val_identity).name:  # a file name, not a catalogue name
        raise UsageError(f"--val-identity {config.val_identity} does not exist", hint="pass an ArcFace ONNX file, or the catalogue name arcface_w600k_mbf")
    from facerestore.weights.store import check_weights_option, loading_option

    check_weights_option(config.val_identity, option="--val-identity")  # a folder, an unreadable file, an unknown name: exit 2
    try:
        with loading_option("--val-identity"):  # no ONNX model: exit 2, as a missing one
            load_arcface(config.val_identity)
    except BadWeightsOption:
        raise
    except FaceRestoreError as exc:  # onnxruntime missing, the catalogue's file offline
        raise type(exc)(f"--val-identity: {exc}", hint=exc.hint) from None
    return ReferenceIdentity(config.val_identity)


def _validate(run: Path, step: int, ema: torch.nn.Module | None, faces: list[ValFace], config: TrainConfig,
              message: Callable[[str], None], identity: Callable[[np.ndarray, np.ndarray], float] | None = None) -> dict | None:
    if ema is None:
        return None
    from facerestore.image_io import write_image

    metrics, grid = validate(ema, faces, steps=config.val_steps, seed=config.seed, identity=identity)
    write_image(run / "val" / f"step_{step:07d}.png", grid)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": step, **metrics}) + "\n")
    message(describe(metrics, step, config.val_presets))
    return metrics


__all__ = ["RECIPE", "StepReport", "TrainConfig", "TrainResult", "format_duration", "parse_duration", "read_run_config", "resolve_config", "train"]
