"""The `facerestore` command: restoring photos is the default command, next to subcommands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from facerestore.errors import FaceRestoreError, UsageError

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class DefaultCommandGroup(TyperGroup):
    """`facerestore photo.jpg` means `facerestore restore photo.jpg`."""

    default_command = "restore"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Blind face restoration: detect, align, restore and paste back every face in a photo.\n\n"
    "Run `facerestore PHOTO_OR_FOLDER...` (the `restore` command) or one of the commands below.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def fail(error: FaceRestoreError, debug: bool = False) -> None:
    """One line on stderr, exit 2 for usage errors and 1 otherwise."""
    if debug:
        err.print_exception()
    err.print(f"[bold red]error:[/] {error.one_line()}", markup=True, soft_wrap=True)
    raise typer.Exit(2 if isinstance(error, UsageError) else 1)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA GPU", hint="use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but this machine has no Apple GPU", hint="use --device cpu or auto")
    return name


@app.command("restore", context_settings={"help_option_names": ["-h", "--help"]})
def restore_command(
    inputs: Annotated[list[Path], typer.Argument(help="Photos or folders of photos (folders are searched recursively).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder (restored_imgs/, restored_faces/, cropped_faces/, cmp/).")] = Path("results"),
    method: Annotated[str, typer.Option("-m", "--method", help="Restoration method; `facerestore methods` lists them.")] = "baseline",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampling steps for diffusion methods (method default when omitted).")] = None,
    fidelity: Annotated[float, typer.Option("-w", "--fidelity", help="CodeFormer fidelity weight w in [0,1]: higher keeps more of the input.")] = 0.5,
    upscale: Annotated[float, typer.Option("-s", "--upscale", help="Scale of the output photo (the background is resized; faces are restored at 512).")] = 2.0,
    aligned: Annotated[bool, typer.Option("--aligned", help="Inputs are already aligned face crops: no detection, no paste-back.")] = False,
    only_center_face: Annotated[bool, typer.Option("--only-center-face", help="Restore only the face nearest the image centre.")] = False,
    detector: Annotated[str, typer.Option("--detector", help="Face detector: auto, bundled, retinaface_resnet50 or retinaface_mobile0.25.")] = "auto",
    detection_threshold: Annotated[float, typer.Option("--detection-threshold", help="Minimum detector confidence for a face.")] = 0.8,
    min_face: Annotated[float, typer.Option("--min-face", help="Ignore faces whose eyes are closer than this many pixels.")] = 5.0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, mps or auto.")] = "auto",
    batch_size: Annotated[int, typer.Option("-b", "--batch-size", help="Faces restored together in one batch.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for stochastic methods (same seed, same result).")] = 0,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Checkpoint file for the method, instead of the catalogued one.")] = None,
    suffix: Annotated[Optional[str], typer.Option("--suffix", help="Suffix added to restored file names.")] = None,
    ext: Annotated[str, typer.Option("--ext", help="Output image format: auto (same as input), png, jpg, webp, tif, bmp.")] = "auto",
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Refuse images (input or output) larger than this many pixels.")] = 64_000_000,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights; a missing file is an error naming what to import.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar; only errors.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout at the end.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Restore every face in PHOTO_OR_FOLDER... and paste them back."""
    from facerestore.image_io import list_images
    from facerestore.methods.base import MethodOptions
    from facerestore.methods.registry import build_method
    from facerestore.pipeline import RestoreOptions, restore_paths

    try:
        options = RestoreOptions(
            output=output, upscale=upscale, aligned=aligned, only_center_face=only_center_face,
            detection_threshold=detection_threshold, min_face=min_face, batch_size=batch_size,
            seed=seed, suffix=suffix, ext=ext, max_pixels=max_pixels,
        )
        paths, missing = list_images(inputs)
        for path, reason in missing:
            err.print(f"error: {path}: {reason}", soft_wrap=True)
        if not paths:
            raise UsageError("no images found in the given inputs", hint="pass image files (jpg, png, webp, tif, bmp) or folders holding them")
        dev = resolve_device(device)
        method_impl = build_method(method, MethodOptions(device=dev, weights=weights, offline=offline or None, steps=steps, fidelity=fidelity))
        face_detector = None
        if not aligned:
            from facerestore.faces.detect import load_detector

            face_detector = load_detector(detector, dev, None, offline or None)
    except FaceRestoreError as exc:
        fail(exc, debug)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, disable=quiet or as_json, transient=False)
    with progress:
        task = progress.add_task("restoring", total=len(paths))

        def report(result) -> None:
            if result.error:
                progress.console.print(("warning: " if result.status == "no-face" else "error: ") + result.error, soft_wrap=True, markup=False)
            progress.update(task, advance=1, description=f"restoring ({result.faces} faces in {result.path.name})")

        results = restore_paths(paths, [p for p in inputs if p.is_dir()], method_impl, face_detector, options, on_image=report, debug=debug)
    failed = sum(r.status == "failed" for r in results) + len(missing)
    if as_json:
        summary = {
            "method": method, "output": str(output), "images": len(results) + len(missing), "failed": failed,
            "faces": sum(r.faces for r in results), "results": [r.to_json() for r in results],
            "missing": [{"path": str(p), "error": reason} for p, reason in missing],
        }
        out.print_json(json.dumps(summary))
    elif not quiet:
        err.print(f"{len(results) - failed + len(missing)} of {len(results) + len(missing)} images restored, {sum(r.faces for r in results)} faces -> {output}")
    raise typer.Exit(1 if failed else 0)


weights_app = typer.Typer(help="List, download, verify and import model weights.", context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("list")
def weights_list() -> None:
    """Every catalogued checkpoint, where it is, and its license."""
    from rich.table import Table

    from facerestore.weights.catalogue import load_catalogue
    from facerestore.weights.store import find_local

    table = Table("name", "file", "size", "license", "status")
    for name, entry in load_catalogue().items():
        local = find_local(name)
        size = f"{entry.size / 1e6:.0f} MB" if entry.size else "?"
        status = f"[green]{local}[/]" if local else ("not downloaded" if entry.urls else f"[yellow]manual: {entry.note}[/]")
        lic = entry.license + ("" if entry.commercial_use else " [red](non-commercial)[/]")
        table.add_row(name, entry.filename, size, lic, status)
    out.print(table)


@weights_app.command("pull")
def weights_pull(
    names: Annotated[list[str], typer.Argument(help="Catalogue names (see `facerestore weights list`).")],
) -> None:
    """Download checkpoints into the cache (resumable, sha256-checked)."""
    from facerestore.weights.store import resolve

    try:
        for name in names:
            out.print(f"{name}: {resolve(name)}")
    except FaceRestoreError as exc:
        fail(exc)


@weights_app.command("verify")
def weights_verify() -> None:
    """Check the sha256 of every checkpoint found locally."""
    from facerestore.weights.store import verify_all

    bad = 0
    for name, path, status in verify_all():
        bad += status == "mismatch"
        out.print(f"{name:32s} {status:12s} {path or ''}")
    raise typer.Exit(1 if bad else 0)


@weights_app.command("import")
def weights_import(
    file: Annotated[Path, typer.Argument(help="A checkpoint you downloaded by hand.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Register under this name (e.g. a fine-tuned model).")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Accept a file whose sha256 is not the catalogue's (your own weights).")] = False,
) -> None:
    """Copy a checkpoint into the cache after checking its sha256."""
    from facerestore.weights.store import import_file

    try:
        out.print(f"imported {file} -> {import_file(file, name, verify=not no_verify)}")
    except FaceRestoreError as exc:
        fail(exc)


@app.command("methods")
def methods_command() -> None:
    """The restoration methods, their papers and licenses."""
    from rich.table import Table

    from facerestore.methods.registry import method_info, method_names

    table = Table("method", "what", "license", "weights")
    for name in method_names():
        info = method_info(name)
        table.add_row(name, info.summary, info.license, ", ".join(info.weights) or "bundled")
    out.print(table)


def main() -> None:
    try:
        app()
    except FaceRestoreError as exc:  # a command that forgot to catch: still one line
        err.print(f"error: {exc.one_line()}", soft_wrap=True, markup=False)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
