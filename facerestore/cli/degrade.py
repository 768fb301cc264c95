"""`facerestore degrade SRC --out DST`: synthetic degradations with every parameter written down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facerestore.cli.app import CONTEXT, app, err, fail
from facerestore.errors import FaceRestoreError
from facerestore.plural import counted


@app.command("degrade", context_settings=CONTEXT)
def degrade_command(
    src: Annotated[Path, typer.Argument(metavar="SRC", readable=False, help="An image or a folder of images (searched recursively). Never modified.", show_default=False)],
    dst: Annotated[Path, typer.Option("--out", "-o", readable=False, help="Folder for the degraded copies (same relative paths) and degradations.json / degradations.csv.", show_default=False)],
    preset: Annotated[str, typer.Option("--preset", "-p", help="eq11 (IDM/GFPGAN training ranges, drawn per image); mild, medium, severe (eq. 11 at the fixed severities of `facerestore evaluate`); dr2-mild, dr2-medium, dr2-severe (DR2's test splits: blur, r = 4/8/16, Gaussian/Laplace/Poisson noise, JPEG; docs/training.md has the ranges); motion; camera; gray; mixed; none.")] = "eq11",
    seed: Annotated[int, typer.Option("--seed", help="Seed; each image's parameters are keyed by (seed, its relative path), so reruns and subsets agree.")] = 0,
    ext: Annotated[str, typer.Option("--ext", help="Output format: auto (the input's) or png, jpg, webp, tif, bmp. PNG keeps the degradation exactly; JPEG re-encodes it.")] = "auto",
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors (and the final line when some failed).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Degrade images with a named preset; every image's parameters go to DST/degradations.json and .csv (resumable: a rerun does only what is missing)."""
    from facerestore.training.degrade_files import MANIFEST, STATE_DIR, degrade_tree

    try:
        report = degrade_tree(src, dst, preset=preset, seed=seed, ext=ext,
                              on_error=lambda line: err.print(f"error: {line}", markup=False),
                              on_warning=lambda line: err.print(f"warning: {line}", markup=False),
                              on_message=lambda line: None if quiet else err.print(line, markup=False))
    except KeyboardInterrupt:  # Ctrl-C: say what was kept and how to go on, as the other long commands do
        if (dst / STATE_DIR).is_dir():
            err.print(f"interrupted; the copies written so far are kept, their parameters in {dst / STATE_DIR / MANIFEST}: "
                      "rerun the same command to degrade the rest and write degradations.json", markup=False)
        else:
            err.print("interrupted before any copy was written; run the same command again", markup=False)
        raise typer.Exit(130) from None
    except FaceRestoreError as exc:
        fail(exc, debug)
    if not quiet or report.failed:
        earlier = f", {report.skipped} already done" if report.skipped else ""
        earlier += f", {counted(report.changed, 'changed file')} redone" if report.changed else ""
        err.print(f"{report.written} degraded with preset {preset}{earlier}, {report.failed} failed -> {dst} (parameters: {report.json_path.name}, {report.csv_path.name})",
                  markup=False)
        for kept, why in ((report.no_source, ("has", "have", "no source any more")), (report.other_format, ("was", "were", "made with another --ext"))):
            if kept:  # never deleted on a rerun with the same settings (as clean-dataset's), but a later train or evaluate would read them
                one = len(kept) == 1
                err.print(f"{counted(len(kept), 'copy', 'copies')} in {dst} {why[0] if one else why[1]} {why[2]} ({'' if one else 'e.g. '}{dst / kept[0]}); "
                          f"{'it is' if one else 'they are'} kept, but not in degradations.json: delete {'it' if one else 'them'} "
                          f"if train or evaluate should not read {'it' if one else 'them'}", markup=False)
    raise typer.Exit(1 if report.failed else 0)
