"""`facerestore finetune --unpaired LQ_DIR --out RUN` and `facerestore finetune pseudo-targets LQ_DIR --out DIR`
(Kuai et al. 2025; docs/finetune.md)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import click
import typer

from facerestore.cli.app import CONTEXT, DefaultCommandGroup, app, err, fail, main_rank, out, write_failed
from facerestore.errors import FaceRestoreError, UsageError
from facerestore.plural import counted


class FinetuneGroup(DefaultCommandGroup):
    """`facerestore finetune --unpaired ...` means `facerestore finetune run --unpaired ...`."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `run` takes no arguments: a first word that is no stage is a typo or a folder without --unpaired,
        # which click would only report as an "unexpected extra argument" of `run`
        if args and not args[0].startswith("-") and args[0] not in self.commands and not ctx.resilient_parsing:
            import difflib

            word = args[0]
            close = difflib.get_close_matches(word, list(self.commands), n=1)
            advice = f"did you mean {close[0]}?" if close else f"a folder of faces is passed as --unpaired {shlex.quote(word)}"
            fail(UsageError(f"finetune has no stage {word!r}", hint=f"the stages are {', '.join(self.commands)} (run is the default); {advice}"))
        return super().parse_args(ctx, args)


finetune_app = typer.Typer(
    cls=FinetuneGroup,
    help="Adapt a pre-trained restorer to your own low-quality faces without ground truth (Kuai et al. 2025): "
    "diffusion-prior pseudo-targets, then fine-tuning. `facerestore finetune --unpaired LQ_DIR --out RUN` runs everything.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(finetune_app, name="finetune")

K_HELP = "Start timestep K of the prior, 4..996, a multiple of 4 (grid index K/4 of the '250' grid): y0 is diffused to grid[K/4] (600 -> t=602) and denoised with K/4 UNet calls. Default 600 (the paper's). Alias --prior-start."
L_HELP = "The low-frequency constraint applies while t > L, i.e. after steps from grid indices >= L/4 (360 -> down to t=357): K/4 - L/4 constrained steps. 0 <= L <= K, a multiple of 4. Default 360. Under torchrun write --prior-until (torchrun reads --l as its own --log-dir...)."
N_HELP = "Low-pass factor N of Phi_N (cubic down/up-sampling by N); must divide --size. Default 16 (the paper's best balance; 8 keeps more of the base output). Under torchrun write --prior-lowpass (torchrun reads --n as its own --nnodes...)."
BASE_HELP = "Pre-trained restorer R to improve (`facerestore methods`): codeformer (default; fine-tuned with code-level losses like DT-BFR) or baseline (L1 + LPIPS + GAN); any method can make pseudo-targets."
BASE_WEIGHTS_HELP = "Base model weights: a file or a registered name, or for difface and dr2 ROLE=FILE items as their --weights (default: the method's catalogue weights, e.g. codeformer.pth)."
FIDELITY_HELP = "CodeFormer's w for the base outputs and the report (default 0.5, as the official scripts)."
PRIOR_HELP = "DifFace 512 prior (iddpm_ffhq512_ema500000.pth): a file or a registered name (default: the catalogue's difface_prior)."
SIZE_HELP = "Working size in pixels: faces are resized to it; the prior, the base and the targets run at it (default 512, the prior's)."


def _progress(quiet: bool, main: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class Bars:
        def __init__(self) -> None:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, disable=quiet or not main)
            self.task = None

        def stage(self, name: str, total: float) -> None:
            if not self.progress.live.is_started:
                self.progress.start()
            if self.task is not None:
                self.progress.stop_task(self.task)
            self.task = self.progress.add_task(name, total=total, info="")

        def advance(self, amount: float) -> None:
            if self.task is not None:
                self.progress.advance(self.task, amount)

        def detail(self, text: str) -> None:
            if self.task is not None:
                self.progress.update(self.task, info=text)

        def step(self, report) -> None:
            if self.task is not None:
                info = f"loss {report.loss:.4f}  lr {report.lr:.2g}  {report.seconds:.2f} s/step"
                self.progress.update(self.task, completed=report.step, info=info)

        def message(self, text: str) -> None:
            # warnings (e.g. LPIPS unavailable) are printed even with --quiet: never a silent fallback
            if main and (not quiet or text.startswith("warning:")):
                self.progress.console.print(text, markup=False)

        def stop(self) -> None:
            if self.progress.live.is_started:
                self.progress.stop()

    return Bars()


@finetune_app.command("run", context_settings=CONTEXT)
def run_command(
    unpaired: Annotated[Path | None, typer.Option("--unpaired", metavar="LQ_DIR", readable=False, help="Folder of YOUR low-quality aligned faces (no ground truth; searched recursively). Not needed with --resume.", show_default=False)] = None,
    run_dir: Annotated[Path, typer.Option("--out", "-o", readable=False, help="Run folder: pseudo/ (targets, base outputs, contact sheet), checkpoints/, log.jsonl, the fine-tuned weights, report/.", show_default=False)] = ...,
    base: Annotated[str | None, typer.Option("--base", help=BASE_HELP, show_default=False)] = None,
    base_weights: Annotated[str | None, typer.Option("--base-weights", help=BASE_WEIGHTS_HELP, show_default=False)] = None,
    base_fidelity: Annotated[float | None, typer.Option("--base-fidelity", help=FIDELITY_HELP, show_default=False)] = None,
    prior_weights: Annotated[str | None, typer.Option("--prior-weights", help=PRIOR_HELP, show_default=False)] = None,
    k: Annotated[int | None, typer.Option("--k", "--prior-start", help=K_HELP, show_default=False)] = None,
    l: Annotated[int | None, typer.Option("--l", "--prior-until", help=L_HELP, show_default=False)] = None,
    n: Annotated[int | None, typer.Option("--n", "--prior-lowpass", help=N_HELP, show_default=False)] = None,
    size: Annotated[int | None, typer.Option("--size", help=SIZE_HELP, show_default=False)] = None,
    holdout: Annotated[str | None, typer.Option("--holdout", help="Faces kept out of pseudo-targets and training for the final report: a fraction (0.1, default) or a count (4); 0 = no report.", show_default=False)] = None,
    real: Annotated[Path | None, typer.Option("--real", readable=False, help="Folder of real high-quality aligned faces (e.g. FFHQ) for the discriminator of image-level fine-tuning (--base baseline).", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Fine-tuning steps (default 40000, DT-BFR's); may be raised when resuming, and a later --resume goes on to the new count.", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="GLOBAL batch per step, split across torchrun processes (default 8, DT-BFR's).", show_default=False)] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate (default 1e-4 for CodeFormer, 2e-5 for image-level); halved at 87.5% and 95% of --steps (MultiStepLR; of the first --steps when --resume raises it).", show_default=False)] = None,
    ema: Annotated[float | None, typer.Option("--ema", help="EMA decay of the exported weights, from the pre-trained weights, no warm-up (default 0.995, DT-BFR's).", show_default=False)] = None,
    lpips_weight: Annotated[float | None, typer.Option("--lpips-weight", help="Image-level fine-tuning: weight of LPIPS (default 0.1, the paper's lambda).", show_default=False)] = None,
    gan_weight: Annotated[float | None, typer.Option("--gan-weight", help="Image-level fine-tuning: weight of the GAN term (default 0.1, the paper's lambda; 0 = no discriminator).", show_default=False)] = None,
    disc_width: Annotated[int | None, typer.Option("--disc-width", help="Image-level fine-tuning: first width of the U-Net discriminator with spectral norm (default 64, as Real-ESRGAN's).", show_default=False)] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA GPUs that support it; no effect on CPU.", show_default=False)] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", help="Checkpoint (and export the weights) every this many steps (default 2000).", show_default=False)] = None,
    keep: Annotated[int | None, typer.Option("--keep", help="Checkpoints kept (default 2; 0 keeps all).", show_default=False)] = None,
    pseudo_batch: Annotated[int | None, typer.Option("--pseudo-batch", help="Faces per batch in the pseudo-target and report stages (default 4).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out: finished pseudo-targets are kept, training resumes exactly (same recipe).")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the hold-out split, the prior's noise, the data order and flips (default 0).", show_default=False)] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, mps or auto (default; under torchrun each process takes cuda:LOCAL_RANK).", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Data-loading processes per training process (default 2; 0 loads in the training process).", show_default=False)] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights; a missing file is one error line naming what to import.")] = False,
    skip_memory_check: Annotated[bool, typer.Option("--skip-memory-check", help="Fine-tune even where the check before stage 1 finds that a fine-tuning step needs more memory than is free (it errs on the safe side; e.g. with swap, or GPU memory about to be freed).")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bars; only errors and the final lines.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Pseudo-targets from the DifFace prior, fine-tuning, and a held-out report, in one resumable run (runs under torchrun)."""
    from facerestore.training.finetune.pseudo_targets import Reporter
    from facerestore.training.finetune.run import finetune_unpaired, resolve_config

    main = main_rank()
    try:
        config = resolve_config(
            run_dir, resume=resume, lq=unpaired, base=base, base_weights=base_weights, base_fidelity=base_fidelity, prior_weights=prior_weights,
            k=k, l=l, n=n, size=size, holdout=holdout, real=real, steps=steps, batch_size=batch_size, lr=lr, ema=ema, lpips_weight=lpips_weight,
            gan_weight=gan_weight, disc_width=disc_width, amp=amp, save_every=save_every, keep=keep, pseudo_batch=pseudo_batch, seed=seed, device=device,
            workers=workers, offline=True if offline else None,
        )
    except FaceRestoreError as exc:
        fail(exc, debug)

    bars = _progress(quiet, main)
    reporter = Reporter(on_stage=bars.stage, on_advance=bars.advance, on_message=bars.message, on_detail=bars.detail)
    try:
        result = finetune_unpaired(config, resume=resume, reporter=reporter, on_step=bars.step, check_memory=not skip_memory_check)
    except KeyboardInterrupt:
        bars.stop()
        if (run_dir / "config.json").is_file():  # written once the checks pass and the models load: --resume needs it
            err.print(f"interrupted; continue with: facerestore finetune --out {shlex.quote(str(run_dir))} --resume", markup=False)
        else:
            err.print("interrupted before the run started (nothing to resume); run the same command again to start it", markup=False)
        raise typer.Exit(130) from None
    except FaceRestoreError as exc:
        bars.stop()
        fail(exc, debug)
    except OSError as exc:  # a full disk or a lost mount while writing the run's files
        bars.stop()
        then = (f"continue with: facerestore finetune --out {shlex.quote(str(run_dir))} --resume" if (run_dir / "config.json").is_file()
                else "run the same command again")
        fail(write_failed(exc, then), debug)
    bars.stop()
    if not main:
        return
    last = f", last loss {result.losses[-1][1]:.4f}" if result.losses else ""
    out.print(f"fine-tuned {config.base}: step {result.step} of {config.steps}{last}; weights: {result.model}", markup=False)
    if result.report is not None:
        niqe = result.report.niqe
        shown = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in niqe.items())
        out.print(f"report: {result.report.path} ({counted(result.report.faces, 'held-out face')}; NIQE {shown}; lower is better)", markup=False)
    out.print(f"register it: {result.import_command}", markup=False)
    out.print(f"then:        facerestore PHOTO --method {config.base} --weights {shlex.quote(result.name)}", markup=False)


@finetune_app.command("pseudo-targets", context_settings=CONTEXT)
def pseudo_targets_command(
    lq: Annotated[Path, typer.Argument(metavar="LQ_DIR", readable=False, help="Folder of low-quality aligned faces (searched recursively). Never modified.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", readable=False, help="Output folder: targets/ (the pseudo-targets, same relative paths, PNG), base/ (the base outputs), contact_sheet.png.", show_default=False)],
    base: Annotated[str, typer.Option("--base", help=BASE_HELP, show_default=False)] = "codeformer",
    base_weights: Annotated[str | None, typer.Option("--base-weights", help=BASE_WEIGHTS_HELP, show_default=False)] = None,
    base_fidelity: Annotated[float | None, typer.Option("--base-fidelity", help=FIDELITY_HELP, show_default=False)] = None,
    prior_weights: Annotated[str | None, typer.Option("--prior-weights", help=PRIOR_HELP, show_default=False)] = None,
    k: Annotated[int | None, typer.Option("--k", "--prior-start", help=K_HELP, show_default=False)] = None,
    l: Annotated[int | None, typer.Option("--l", "--prior-until", help=L_HELP, show_default=False)] = None,
    n: Annotated[int | None, typer.Option("--n", "--prior-lowpass", help=N_HELP, show_default=False)] = None,
    size: Annotated[int, typer.Option("--size", help=SIZE_HELP, show_default=False)] = 512,
    batch_size: Annotated[int, typer.Option("-b", "--batch-size", help="Faces denoised together (one UNet call per step for the batch; each face keeps its own noise).")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed; each face's noise is keyed by (seed, its relative path).")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N faces of LQ_DIR (sorted), e.g. to look at the contact sheet first.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, mps or auto (under torchrun each process takes cuda:LOCAL_RANK).")] = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights; a missing file is one error line naming what to import.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bars; errors and the summary only.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Only stage 1: clean the base model's outputs with the prior (resumable: a rerun makes only the missing targets)."""
    from facerestore.training.finetune.pseudo_targets import (
        BaseSpec,
        PseudoTargetOptions,
        Reporter,
        generate_pseudo_targets,
    )

    main = main_rank()
    bars = _progress(quiet, main)
    reporter = Reporter(on_stage=bars.stage, on_advance=bars.advance, on_message=bars.message, on_detail=bars.detail)
    try:
        options = PseudoTargetOptions(lq=lq, out=out_dir, base=BaseSpec(name=base, weights=base_weights, fidelity=base_fidelity), prior_weights=prior_weights,
                                      k=k, l=l, n=n, size=size, batch_size=batch_size, seed=seed, device=device, offline=True if offline else None,
                                      limit=limit)
        summary = generate_pseudo_targets(options, reporter=reporter)
    except KeyboardInterrupt:
        bars.stop()
        err.print("interrupted; rerun the same command to make the remaining pseudo-targets", markup=False)
        raise typer.Exit(130) from None
    except FaceRestoreError as exc:
        bars.stop()
        fail(exc, debug)
    except OSError as exc:  # a full disk or a lost mount while writing targets, the manifest or the sheet
        bars.stop()
        fail(write_failed(exc, "rerun the same command to make the remaining pseudo-targets"), debug)
    bars.stop()
    if main:
        unreadable = f", {summary.unreadable} could not be decoded (skipped)" if summary.unreadable else ""
        redone = f" ({counted(summary.changed, 'changed input')} redone)" if summary.changed else ""
        err.print(f"{summary.done} pseudo-targets made{redone}, {summary.skipped} already done{unreadable}, {summary.total} in all ({summary.scan}); "
                  f"{summary.seconds_per_face:.2f} s per face in the prior; {summary.plan}", markup=False)
        out.print(f"targets: {out_dir / 'targets'}; contact sheet: {summary.sheet}", markup=False)
