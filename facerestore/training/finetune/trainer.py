"""Stage 2 loop: fine-tune the base restorer on (input, pseudo-target) pairs, with exact resume.

One step (global batch B, split over torchrun processes; `objectives.py` computes the losses):

    lr       = lr0 * gamma ** #{m in milestones : m <= step}      MultiStepLR, gamma 0.5; the
               milestones default to 87.5% and 95% of --steps (DT-BFR: 35k and 38k of 40k); a run
               extended with a larger --steps keeps those of its first --steps (`milestones`)
    batch    = samples step*B .. step*B + B - 1 (`finetune.data`: pair order, flips, real faces)
    losses   -> Adam(betas 0.9, 0.99) step (and the discriminator's, for the image objective)
    EMA      e <- decay e + (1 - decay) p, decay 0.995, starting from the PRE-TRAINED weights and
               without warm-up (basicsr `model_ema`, called after every step in DT-BFR)

Checkpoints use `training.checkpoints` (safetensors + JSON, renamed into place when complete):
model, EMA, Adam tensors, and for the image objective the discriminator and its optimizer. The step
counter is the only other state: data, flips and the global generators are keyed by it
(`training.seeds`, `training.loop.reseed`), so a resumed run repeats the uninterrupted one exactly.
At every checkpoint the EMA weights are also exported to RUN/<base>-finetuned.safetensors.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facerestore.devices import training_amp_dtype
from facerestore.errors import UnsupportedCheckpoint, UsageError
from facerestore.training import distributed
from facerestore.training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    save_checkpoint,
)
from facerestore.out_of_memory import is_out_of_memory, step_out_of_memory
from facerestore.training.data import StepBatches
from facerestore.training.finetune.data import Pair, PairDataset
from facerestore.training.finetune.objectives import (
    CodeObjective,
    ImageObjective,
    adapter_for,
    export_model,
    load_base_net,
    load_lpips_for_training,
)
from facerestore.training.loop import StopAtStepEnd, reseed, truncate_log
from facerestore.training.seeds import stable_seed
from facerestore.weights.checkpoint import load_strict

MILESTONES = (0.875, 0.95)  # DT-BFR: MultiStepLR milestones [35000, 38000] of 40000 iterations
GAMMA = 0.5


def milestones_for(steps: int) -> tuple[int, ...]:
    return tuple(max(1, round(f * steps)) for f in MILESTONES)


def lr_at(step: int, lr: float, milestones: Sequence[int], gamma: float = GAMMA) -> float:
    """torch's MultiStepLR after `step` scheduler steps (one per optimizer step)."""
    return lr * gamma ** bisect_right(sorted(milestones), step)


@dataclass(frozen=True)
class TrainSettings:
    """The fine-tuning recipe (a part of the run's config)."""

    base: str
    steps: int
    batch_size: int
    lr: float
    ema: float
    size: int
    seed: int = 0
    feat_weight: float = 1.0
    ce_weight: float = 0.5
    lpips_weight: float = 0.1
    gan_weight: float = 0.1
    disc_channels: int = 64
    grad_clip: float = 0.0
    amp: bool = False
    flip: bool = True
    save_every: int = 2000
    keep: int = 2
    workers: int = 2
    milestones: tuple[int, ...] | None = None  # None: milestones_for(steps); a run extended on resume passes its original ones


@dataclass(frozen=True)
class StepReport:
    step: int  # steps completed
    steps: int
    loss: float
    parts: dict
    lr: float
    seconds: float


@dataclass
class TrainOutcome:
    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    model: Path | None = None
    seconds_per_step: float = 0.0
    lpips_used: bool = False
    substituted: int = 0  # samples whose file could not be read and was replaced (`finetune.data`)
    unreadable: list[str] = field(default_factory=list)  # those files


def _autocast(device: torch.device, amp: bool, message: Callable[[str], None]) -> Callable:
    """bf16 autocast where --amp asks for it on a GPU with bf16 (no loss scaler here, so no fp16; not
    measured on the CPU, where CodeFormer-sized nets do not train in useful time anyway)."""
    dtype, off = training_amp_dtype(device, amp, fp16=False, cpu=False)
    if off:
        message(off)
    return contextlib.nullcontext if dtype is None else (lambda: torch.autocast(device.type, dtype=dtype))


def build_objective(settings: TrainSettings, base_path: Path, device: torch.device, active: bool, offline: bool | None,
                    message: Callable[[str], None]):
    """The objective for this base, with its trainable net loaded from the base weights."""
    adapter = adapter_for(settings.base)
    torch.manual_seed(stable_seed(settings.seed, "init"))
    net = load_base_net(settings.base, base_path)
    if adapter.objective == "code":
        reference = copy.deepcopy(net)  # the frozen pre-trained encoder + quantizer for target codes
        return CodeObjective(net, reference, device=device, distributed=active, lr=settings.lr, feat_weight=settings.feat_weight,
                             ce_weight=settings.ce_weight, grad_clip=settings.grad_clip)
    lpips_net = load_lpips_for_training(device, offline, message) if settings.lpips_weight > 0 else None
    return ImageObjective(net, device=device, distributed=active, lr=settings.lr, lpips_weight=settings.lpips_weight,
                          gan_weight=settings.gan_weight, lpips_net=lpips_net, disc_channels=settings.disc_channels,
                          grad_clip=settings.grad_clip, init_seed=stable_seed(settings.seed, "discriminator"))


def train_pairs(
    run: Path,
    settings: TrainSettings,
    pairs: Sequence[Pair],
    base_path: Path,
    d: distributed.Dist,
    *,
    real: Sequence[str] = (),
    offline: bool | None = None,
    metadata: dict[str, str] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_message: Callable[[str], None] | None = None,
    recipe: dict | None = None,
) -> TrainOutcome:
    """Fine-tune from the base weights (or the newest checkpoint in RUN/checkpoints) up to settings.steps.

    `recipe`: what each checkpoint records as the run's recipe, which a resume compares with the run's
    (`finetune.run` passes its config's); default: these settings."""

    def message(text: str) -> None:
        if on_message is not None and d.main:
            on_message(text)

    adapter = adapter_for(settings.base)
    if adapter.objective == "image" and settings.gan_weight > 0 and not real:
        raise UsageError("the GAN term needs real high-quality faces for its discriminator", hint="pass --real DIR (e.g. FFHQ faces), or --gan-weight 0")
    if adapter.objective == "image" and settings.gan_weight > 0 and settings.size % 8:
        raise UsageError(f"--size {settings.size} must be divisible by 8 for the discriminator")
    objective = build_objective(settings, base_path, d.device, d.active, offline, message)
    model = objective.model
    ema = copy.deepcopy(model).eval().requires_grad_(False) if d.main else None  # starts at the pre-trained weights

    start = 0
    existing = latest_checkpoint(run)
    if existing is not None:
        ckpt = load_checkpoint(existing)
        if adapter.objective == "code":
            _check_frozen_parts(model, ckpt.model, existing)
        load_strict(model, ckpt.model, existing / "model.safetensors")
        if ema is not None:
            load_strict(ema, ckpt.ema, existing / "ema.safetensors")
        optimizer_from_tensors(objective.optimizer, objective.names, ckpt.optimizer, ckpt.state["optimizer"], str(existing))
        objective.load_extra_state(ckpt.extra, ckpt.state, str(existing))
        start = ckpt.step
        if start > settings.steps:
            raise UsageError(f"the run is already at step {start}, beyond --steps {settings.steps}", hint=f"pass --steps above {start} to train longer")
        message(f"resumed fine-tuning from {existing} (step {start})")
    if d.main:
        truncate_log(run / "log.jsonl", start)
    distributed.barrier(d)

    milestones = tuple(settings.milestones) if settings.milestones is not None else milestones_for(settings.steps)
    dataset = PairDataset(pairs, size=settings.size, seed=settings.seed, flip=settings.flip, real=real if adapter.objective == "image" and settings.gan_weight > 0 else ())
    sampler = StepBatches(start_step=start, steps=settings.steps, global_batch=settings.batch_size, rank=d.rank, world=d.world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=settings.workers, pin_memory=d.device.type == "cuda",
                                         prefetch_factor=2 if settings.workers else None)
    autocast = _autocast(d.device, settings.amp, message)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ema_params = dict(ema.named_parameters()) if ema is not None else {}

    outcome = TrainOutcome(step=start, lpips_used=getattr(objective, "lpips_weight", 0) > 0)
    export_path = run / adapter.export_name
    log = open(run / "log.jsonl", "a") if d.main else None  # noqa: SIM115 - closed in finally
    last_saved = start
    step_times: list[float] = []

    def checkpoint(step: int) -> None:
        nonlocal last_saved
        if d.main:
            extra, extra_data = objective.extra_state()
            state = {"recipe": settings.__dict__ if recipe is None else recipe, "milestones": list(milestones), "samples": step * settings.batch_size,
                     "rng": {"scheme": "keyed by (seed, sample) and (seed, step, rank); see facerestore/training/seeds.py"},
                     "torch": torch.__version__, **extra_data}
            meta = {"base": settings.base, "step": str(step), **(metadata or {})}
            save_checkpoint(run, step, model=model.state_dict(), ema=ema.state_dict(), optimizer=objective.optimizer, names=objective.names,
                            state=state, metadata=meta, keep=settings.keep, extra=extra)
            export_model(settings.base, ema.state_dict(), export_path, meta)
        last_saved = step
        distributed.barrier(d)

    step = start
    stop = StopAtStepEnd(enabled=not d.active)
    unreadable: set[str] = set()  # files whose samples came from the next readable one, on this rank
    clock = time.perf_counter()
    try:
        for batch in loader:
            reseed(settings.seed, step, d.rank)
            lr = lr_at(step, settings.lr, milestones)
            for optimizer in objective.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            substituted = float(batch["substituted"].sum())
            unreadable.update(path for path in batch["unreadable"] if path)
            batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items() if k not in ("sample", "substituted", "unreadable")}
            parts = objective.step(batch, autocast)
            if ema is not None:
                with torch.no_grad():
                    for name, p in trained:
                        ema_params[name].lerp_(p.detach(), 1.0 - settings.ema)
            step += 1
            names = sorted(parts)
            *sums, substituted = distributed.total(d, [parts[k] for k in names] + [substituted])
            averaged = dict(zip(names, (v / d.world for v in sums)))
            outcome.substituted += int(substituted)
            now = time.perf_counter()
            seconds, clock = now - clock, now
            step_times.append(seconds)
            outcome.step = step
            outcome.losses.append((step, averaged["loss"]))
            if log is not None:
                log.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in averaged.items()}, "lr": lr, "seconds": round(seconds, 4),
                                      **({"substituted": int(substituted)} if substituted else {})}) + "\n")
                log.flush()
            if d.main and on_step is not None:
                on_step(StepReport(step=step, steps=settings.steps, loss=averaged["loss"], parts=averaged, lr=lr, seconds=seconds))
            if step % settings.save_every == 0 or step == settings.steps:
                checkpoint(step)
            stop.honour(step, last_saved, checkpoint, message)
            clock = time.perf_counter()
    except Exception as exc:
        if is_out_of_memory(exc):  # torch's traceback and its allocator advice, as one line with what to change
            raise step_out_of_memory(exc, step + 1, settings.batch_size, settings.size, d.world) from None
        raise
    finally:
        stop.restore()
        if log is not None:
            log.close()
    if step > last_saved or not export_path.is_file():
        checkpoint(step)
    outcome.unreadable = sorted(set(distributed.gather(d, sorted(unreadable))))  # every rank's, for rank 0's warning
    outcome.model = export_path
    outcome.seconds_per_step = float(np.median(step_times)) if step_times else 0.0
    return outcome


def _check_frozen_parts(model: torch.nn.Module, saved: dict[str, torch.Tensor], source: Path) -> None:
    """On resume, the frozen modules reloaded from the base weights must equal the checkpoint's."""
    from facerestore.training.finetune.objectives import CODEFORMER_FROZEN

    current = model.state_dict()
    for key, value in saved.items():
        if key.startswith(CODEFORMER_FROZEN) and key in current and not torch.equal(current[key].cpu(), value):
            raise UnsupportedCheckpoint(f"{source}: the base weights changed since the run started ({key} differs)",
                                        hint="resume with the same --base-weights file the run started from")


def median_seconds(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else math.nan
