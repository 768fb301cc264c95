"""`facerestore train DATA_DIR... --out RUN_DIR`: train an IDM restorer (docs/training.md)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from facerestore.cli.app import CONTEXT, app, err, fail, main_rank, out, write_failed
from facerestore.errors import FaceRestoreError, UsageError


@app.command("train", context_settings=CONTEXT)
def train_command(
    data: Annotated[Optional[list[Path]], typer.Argument(metavar="DATA_DIR", readable=False, help="Folders of aligned face images (searched recursively; any size, resized to --size). Not needed with --resume.", show_default=False)] = None,
    run_dir: Annotated[Path, typer.Option("--out", "-o", readable=False, help="Run folder: config, checkpoints, logs, validation grids, and the exported model idm.safetensors.", show_default=False)] = ...,
    targets: Annotated[Optional[list[Path]], typer.Option("--targets", readable=False, help="Extrinsic iteration: a folder of cleaned targets (from `facerestore clean-dataset`) per DATA_DIR, same relative paths; inputs are still degraded from DATA_DIR.", show_default=False)] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Training resolution in pixels (default 512, the paper's).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Architecture: tiny (1.2M params), small (8.6M), base (30M, default), paper (121M, the paper's ~120M), compact (4.5M, the bundled CPU model's net).", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Total optimizer steps (default 100000, the paper's x0 schedule); may be raised when resuming.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="GLOBAL batch per step, split across torchrun processes (default 32, the paper's).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam learning rate, constant (default 1e-4, the paper's).", show_default=False)] = None,
    ema: Annotated[Optional[float], typer.Option("--ema", help="EMA decay of the exported weights (default 0.9999; warmed up as min(decay, (1+n)/(10+n))).", show_default=False)] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision: bf16 on GPUs that have it (else fp16 with loss scaling) and on CPUs with AMX or AVX512-BF16; float32 elsewhere.", show_default=False)] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", help="Clip the gradient norm to this (default 1.0; 0 = off).", show_default=False)] = None,
    degradation: Annotated[Optional[str], typer.Option("--degradation", help="Degradation preset for the inputs (see `facerestore degrade -h`): eq11 (the paper's, default), mixed (adds motion blur, Laplace/Poisson/camera noise, gray), or any other preset.", show_default=False)] = None,
    input_perturbation: Annotated[Optional[float], typer.Option("--input-perturbation", help="DDPM-IP: build x_t from eps + s*xi (a second normal xi) so the net expects its own slightly wrong x_t when sampling; 0 = off (default); docs/idm-model.md has its measured effect.", show_default=False)] = None,
    val: Annotated[Optional[Path], typer.Option("--val", readable=False, help="Folder of held-out aligned faces: PSNR and an image grid every --val-every steps.", show_default=False)] = None,
    val_every: Annotated[Optional[int], typer.Option("--val-every", help="Validate every this many steps (default 1000).", show_default=False)] = None,
    val_degrade: Annotated[Optional[str], typer.Option("--val-degrade", help="Comma-separated degradation presets to validate on (e.g. mild,medium,severe, the fixed severities of `facerestore evaluate`); default: the training --degradation.", show_default=False)] = None,
    val_count: Annotated[Optional[int], typer.Option("--val-count", help="Validation faces used (default 8).", show_default=False)] = None,
    val_identity: Annotated[Optional[str], typer.Option("--val-identity", help="ArcFace ONNX for validation (catalogue name arcface_w600k_mbf or a path; needs onnxruntime): also report identity similarity of input, restored and clean-kept faces.", show_default=False)] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Write a checkpoint every this many steps (default 1000).", show_default=False)] = None,
    keep: Annotated[Optional[int], typer.Option("--keep", help="Checkpoints kept (default 2; 0 keeps all).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its newest checkpoint, exactly (same recipe).")] = False,
    init_from: Annotated[Optional[Path], typer.Option("--init-from", readable=False, help="Start from an earlier IDM model (a .safetensors, a run folder, or a name registered with `facerestore weights import FILE --name NAME`): the extrinsic iteration; the architecture comes from it.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the data order, degradations, noise and initial weights (default 0).", show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, mps or auto (default; under torchrun each process takes cuda:LOCAL_RANK).", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data-loading processes per training process (default 2; 0 loads in the training process).", show_default=False)] = None,
    time_limit: Annotated[Optional[str], typer.Option("--time-limit", help="Stop cleanly before this much wall time has passed (e.g. 90s, 45m, 2h, 1h30m): the last step is checkpointed and the model exported; continue with --resume. For leases and job schedulers; not kept for --resume.", show_default=False)] = None,
    skip_memory_check: Annotated[bool, typer.Option("--skip-memory-check", help="Train even where the check before the first step finds that a step needs more memory than is free (it errs on the safe side; e.g. with swap, or GPU memory about to be freed).")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar; only errors and the final line.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Train IDM (x0 regression of a conditional UNet on degraded faces); resumable; runs under torchrun."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from facerestore.training.data import substitution_warning
    from facerestore.training.trainer import parse_duration, resolve_config, train

    main = main_rank()
    try:
        config = resolve_config(
            run_dir, resume=resume, data=data or None, targets=targets or None, size=size, model=model, steps=steps,
            batch_size=batch_size, lr=lr, ema=ema, amp=amp, grad_clip=grad_clip, degradation=degradation,
            input_perturbation=input_perturbation, val=val,
            val_every=val_every, val_degrade=_presets(val_degrade), val_count=val_count, val_identity=val_identity, save_every=save_every, keep=keep, init_from=init_from, seed=seed,
            device=device, workers=workers, time_limit=None if time_limit is None else parse_duration(time_limit),
        )
    except FaceRestoreError as exc:
        fail(exc, debug)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=quiet or not main)
    task = progress.add_task("train", total=config.steps, info="")

    def on_step(report) -> None:
        if not progress.live.is_started:  # started at the first step, so setup errors print alone
            progress.start()
        progress.update(task, completed=report.step, info=f"loss {report.loss:.4f}  {report.seconds:.2f} s/step")

    def on_message(text: str) -> None:
        if not quiet:
            progress.console.print(text, markup=False)

    try:
        result = train(config, resume=resume, on_step=on_step, on_message=on_message, on_warning=lambda line: progress.console.print(line, markup=False), check_memory=not skip_memory_check)
    except KeyboardInterrupt:  # Ctrl-C reaches every process torchrun started: one says so
        _stop(progress)
        if main:
            err.print(f"interrupted; continue with: facerestore train --out {shlex.quote(str(run_dir))} --resume", markup=False)
        raise typer.Exit(130) from None
    except FaceRestoreError as exc:
        _stop(progress)
        fail(exc, debug)
    except OSError as exc:  # a full disk or a lost mount while writing the log, the model or a grid
        _stop(progress)
        fail(write_failed(exc, f"continue with: facerestore train --out {shlex.quote(str(run_dir))} --resume"), debug)
    _stop(progress)
    if main:
        last = f", last loss {result.losses[-1][1]:.4f}" if result.losses else ""
        out.print(f"step {result.step} of {config.steps}{last}; model: {result.model} (use --weights {shlex.quote(str(run_dir))} --method idm)", markup=False)
        if result.stopped_at_time_limit:
            err.print(f"stopped at the time limit; continue with: facerestore train --out {shlex.quote(str(run_dir))} --resume", markup=False)
        if result.substituted:
            err.print(substitution_warning(result.substituted, run_dir / "log.jsonl", files=result.unreadable), markup=False)


def _stop(progress) -> None:
    if progress.live.is_started:
        progress.stop()


def _presets(value: str | None) -> tuple[str, ...] | None:
    """--val-degrade mild,severe -> ("mild", "severe"); a value that names no preset is an error, not the default."""
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise UsageError(f"--val-degrade {value!r} names no preset", hint="e.g. --val-degrade mild,medium,severe, or leave it out for the default")
    return names
