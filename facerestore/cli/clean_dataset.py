"""`facerestore clean-dataset SRC --out DST`: restore a whole dataset into the same tree (IDM's extrinsic iteration)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from facerestore.cli.app import CONTEXT, PRECISION_HELP, app, err, fail, main_rank, write_failed
from facerestore.cli.method_options import Dr2Auto, Dr2N, Dr2Preset, Dr2Tau, Eta, Fidelity, NoEnhancer, Start, Steps, method_knobs
from facerestore.errors import FaceRestoreError
from facerestore.plural import counted


@app.command("clean-dataset", context_settings=CONTEXT)
def clean_dataset_command(
    src: Annotated[Path, typer.Argument(metavar="SRC", readable=False, help="Dataset folder (searched recursively). Never modified.", show_default=False)],
    dst: Annotated[Path, typer.Option("--out", "-o", readable=False, help="Folder for the cleaned copy: same relative paths, formats and sizes (must neither be, lie inside nor hold SRC).", show_default=False)],
    method: Annotated[str, typer.Option("-m", "--method", help="Restoration method (`facerestore methods`); IDM's extrinsic iteration uses idm.")] = "idm",
    weights: Annotated[Optional[str], typer.Option("--weights", help="Model file (idm: a .safetensors or a `facerestore train` run folder), or a registered name.", show_default=False)] = None,
    steps: Steps = None,
    fidelity: Fidelity = None,
    eta: Eta = None,
    start: Start = None,
    dr2_n: Dr2N = None,
    dr2_tau: Dr2Tau = None,
    dr2_preset: Dr2Preset = None,
    dr2_auto: Dr2Auto = False,
    no_enhancer: NoEnhancer = False,
    detect: Annotated[bool, typer.Option("--detect", help="Images are whole photos: detect, align, restore and paste faces back (default: every image is one aligned face).")] = False,
    check: Annotated[bool, typer.Option("--check", help="Measure IDM's authenticity criterion: PSNR of each output against its input (mean and worst in the summary).")] = False,
    batch_size: Annotated[int, typer.Option("-b", "--batch-size", help="Faces restored together.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed; each file's noise is keyed by (seed, its relative path).")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N images of SRC (sorted), e.g. for a quick --check.", show_default=False)] = None,
    jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", help="Quality of JPEG/WebP outputs.")] = 95,
    detector: Annotated[str, typer.Option("--detector", help="With --detect: auto, bundled, retinaface_resnet50, retinaface_mobile0.25.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, mps or auto (under torchrun each process takes cuda:LOCAL_RANK).")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar; errors and the summary only.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Restore every image of SRC into DST (resumable: a rerun does only what is missing; shards over torchrun ranks).

    The method options (--steps, -w/--fidelity, --eta, --start, --dr2-*, --no-enhancer) are those of
    `restore`; what the method ran with is recorded in DST, and a rerun with other values is refused."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from facerestore.devices import cpu_bf16_tip, resolve_device
    from facerestore.training.clean_dataset import CleanOptions, clean_dataset

    main = main_rank()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=err, disable=quiet or as_json or not main)
    task = progress.add_task("clean", total=None)

    def on_start(count: int) -> None:  # the bar appears once setup went through, so setup errors print alone
        progress.update(task, total=count)
        progress.start()

    def on_file(result) -> None:
        if result.status == "failed":
            progress.console.print(f"error: {result.error}", markup=False)
        for warning in result.warnings:
            progress.console.print(f"warning: {warning}", markup=False)
        progress.update(task, advance=1)

    def on_message(text: str) -> None:
        if not quiet and not as_json:
            progress.console.print(text, markup=False)

    try:
        options = CleanOptions(src=src, out=dst, method=method, weights=weights, detect=detect, check=check,
                               batch_size=batch_size, seed=seed, device=device, precision=precision, offline=True if offline else None,
                               detector=detector, jpeg_quality=jpeg_quality, limit=limit,
                               **method_knobs(steps=steps, fidelity=fidelity, eta=eta, start=start, dr2_n=dr2_n, dr2_tau=dr2_tau,
                                              dr2_preset=dr2_preset, dr2_auto=dr2_auto, no_enhancer=no_enhancer))
        summary = clean_dataset(options, on_file=on_file, on_message=on_message, on_start=on_start,
                                on_warning=lambda line: progress.console.print(f"warning: {line}", markup=False))  # also with -q and --json, as restore's
    except KeyboardInterrupt:
        _stop(progress)
        if main:
            err.print("interrupted; the files finished so far are kept: rerun the same command to do the rest", markup=False)
        raise typer.Exit(130) from None
    except FaceRestoreError as exc:
        _stop(progress)
        fail(exc, debug)
    except OSError as exc:  # a full disk or a lost mount while writing the manifest or the summary
        _stop(progress)
        fail(write_failed(exc, "rerun the same command to do the rest"), debug)
    _stop(progress)
    if not main:
        raise typer.Exit(1 if summary.failed else 0)
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))  # ASCII: names that are not UTF-8 stay valid JSON
    elif not quiet or summary.failed:
        changed = f", {counted(summary.changed, 'changed file')} redone" if summary.changed else ""
        line = (f"{summary.done - summary.no_face} restored, {summary.failed} failed, {summary.skipped} already done{changed}; "
                f"{summary.complete} of {summary.total} complete in {dst}; {summary.seconds_per_image:.2f} s per image")
        if summary.no_face:
            line += f"; {counted(summary.no_face, 'photo')} without a face copied through"
        err.print(line, markup=False)
        if summary.no_source:
            many = len(summary.no_source) > 1
            err.print(f"{counted(len(summary.no_source), 'output')} in {dst} {'have' if many else 'has'} no source any more "
                      f"({'e.g. ' if many else ''}{dst / summary.no_source[0]}); {'they are' if many else 'it is'} kept", markup=False)
        if summary.check:
            c = summary.check
            err.print(f"authenticity (PSNR of f(x) vs x over {counted(c['count'], 'image')}): mean {c['mean_psnr']:.2f} dB, worst {c['worst_psnr']:.2f} dB ({c['worst_path']})", markup=False)
        elif check and summary.complete:
            err.print(f"no authenticity score: the images of {dst} were cleaned without --check, or hold no face; "
                      "clean into a new folder with --check to measure it", markup=False)
        tip = cpu_bf16_tip(resolve_device(device), precision, method) if summary.done else None
        if tip:
            err.print(tip, markup=False)
    raise typer.Exit(1 if summary.failed else 0)


def _stop(progress) -> None:
    if progress.live.is_started:
        progress.stop()
