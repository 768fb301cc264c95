"""`facerestore [restore] PHOTO_OR_FOLDER...`: the default command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from facerestore.cli.app import CONTEXT, PRECISION_HELP, app, err, fail
from facerestore.cli.method_options import Dr2Auto, Dr2N, Dr2Preset, Dr2Tau, Eta, Fidelity, NoEnhancer, Start, Steps, method_knobs
from facerestore.errors import FaceRestoreError, UsageError
from facerestore.image_io import DEFAULT_MAX_PIXELS, assert_output_folder
from facerestore.plural import counted, verb


@app.command("restore", context_settings=CONTEXT)
def restore_command(
    inputs: Annotated[list[Path], typer.Argument(metavar="PHOTO_OR_FOLDER", readable=False, help="Photos or folders of photos (folders are searched recursively).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", "--out", readable=False, help="Output folder: restored_imgs/, restored_faces/, cropped_faces/, cmp/.")] = Path("results"),
    method: Annotated[str, typer.Option("-m", "--method", help="Restoration method (`facerestore methods` lists them); default: the model bundled with facerestore.")] = "baseline",
    steps: Steps = None,
    fidelity: Fidelity = None,
    eta: Eta = None,
    start: Start = None,
    dr2_n: Dr2N = None,
    dr2_tau: Dr2Tau = None,
    dr2_preset: Dr2Preset = None,
    dr2_auto: Dr2Auto = False,
    no_enhancer: NoEnhancer = False,
    upscale: Annotated[Optional[float], typer.Option("-s", "--upscale", help="Scale of the output photo: the background is resized, faces are restored at 512 and pasted at this scale. Default: 2, or 1 for photos over 1500 px on their long side.", show_default=False)] = None,
    aligned: Annotated[bool, typer.Option("--aligned", help="Inputs are already aligned face crops (FFHQ alignment): no detection, no paste-back.")] = False,
    only_center_face: Annotated[bool, typer.Option("--only-center-face", help="Restore only the face nearest the image centre.")] = False,
    detector: Annotated[str, typer.Option("--detector", help="Face detector: auto (best whose weights are present, never downloads), bundled, retinaface_resnet50, retinaface_mobile0.25.")] = "auto",
    detection_threshold: Annotated[float, typer.Option("--detection-threshold", help="Minimum detector confidence for a face (0.8 as CodeFormer/DifFace; facexlib uses 0.97).")] = 0.8,
    min_face: Annotated[float, typer.Option("--min-face", help="Ignore faces whose eyes are closer than this many pixels.")] = 5.0,
    bg_upsampler: Annotated[str, typer.Option("--bg-upsampler", help="Enlarge the photo around the faces with Real-ESRGAN instead of Lanczos: none, realesrgan (RealESRGAN_x2plus), realesrgan-x4 (RealESRGAN_x4plus); the result is resized to the --upscale size. Slow on a CPU (GPU recommended).")] = "none",
    bg_tile: Annotated[int, typer.Option("--bg-tile", help="--bg-upsampler: tile size in pixels (bounds its memory); 0 = the whole photo at once.")] = 400,
    parse: Annotated[bool, typer.Option("--parse", help="Blend with a face-parsing mask (keeps the photo's neck, clothes and background; needs parsing_parsenet weights).")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, mps or auto.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "auto",
    batch_size: Annotated[int, typer.Option("-b", "--batch-size", help="Faces restored together in one batch (all faces of a photo, in chunks of this size).")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for stochastic methods (same seed, same result).")] = 0,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Checkpoint file, or a name registered with `facerestore weights import --name`, instead of the method's default weights; methods with several files take ROLE=FILE,... (difface: prior=,swinir=; dr2: ddpm=,enhancer=).")] = None,
    suffix: Annotated[Optional[str], typer.Option("--suffix", help="Suffix added to restored file names (name_SUFFIX.ext).")] = None,
    ext: Annotated[str, typer.Option("--ext", help="Output image format: auto (same as input), png, jpg, webp, tif, bmp (any case).")] = "auto",
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Refuse images (input or output) larger than this many pixels.")] = DEFAULT_MAX_PIXELS,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights; a missing file is an error naming what to import.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or summary; only warnings and errors.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout at the end (for scripts).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Restore every face in PHOTO_OR_FOLDER... and paste them back (outputs never overwrite inputs)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from facerestore.background_upsampler import check_background_options, load_background_upsampler
    from facerestore.devices import cpu_bf16_tip, resolve_device
    from facerestore.faces.detect import low_threshold_warning
    from facerestore.image_io import list_images, problem_line, problem_text
    from facerestore.methods.base import MethodOptions
    from facerestore.methods.registry import build_method
    from facerestore.out_of_memory import BatchLimit
    from facerestore.pipeline import (RestoreOptions, Tools, assert_inputs_apart, assert_output_layout, explain_own_results, output_folders,
                                      restore_paths)

    try:
        if aligned:  # these act on detection and paste-back, which --aligned skips
            ignored = [flag for flag, used in (("--parse", parse), ("--detector", detector != "auto"), ("--only-center-face", only_center_face),
                                               ("--bg-upsampler", bg_upsampler != "none")) if used]
            if ignored:
                raise UsageError(f"{', '.join(ignored)} {verb(len(ignored), 'does', 'do')} nothing with --aligned: there is no photo to detect faces in or paste them into",
                                 hint=f"drop {', '.join(ignored)}, or drop --aligned")
        check_background_options(bg_upsampler, bg_tile)
        assert_output_folder(output)
        options = RestoreOptions(
            output=output, upscale=upscale, aligned=aligned, only_center_face=only_center_face,
            detection_threshold=detection_threshold, min_face=min_face, batch_size=batch_size,
            seed=seed, suffix=suffix, ext=ext, max_pixels=max_pixels,
        )
        assert_inputs_apart(inputs, options)
        assert_output_layout(options)
        links: list[tuple[Path, str]] = []
        paths, missing = list_images(inputs, exclude=output_folders(output), links=links)
        missing, hints = explain_own_results(missing, output)
        for link, reason in links:  # not an input that failed: a folder link the walk does not follow (image_io._walk)
            err.print(f"warning: skipped {link}: {reason}", markup=False)
        hint = "pass image files (jpg, png, webp, tif, bmp) or folders holding them"
        last = None
        if not paths and missing:  # one line per bad input; the last one ends the run, with no extra summary line
            *missing, last = missing
        for path, reason in missing:
            err.print(f"error: {problem_line(path, reason, hints.get(path))}", markup=False)
        if not paths:
            raise UsageError(problem_text(*last) if last else "no images found in the given inputs", hint=hints.get(last[0], hint) if last else hint)
        dev = resolve_device(device)
        offline_flag = True if offline else None
        method_impl = build_method(method, MethodOptions(
            device=dev, weights=weights, offline=offline_flag, precision=precision,
            **method_knobs(steps=steps, fidelity=fidelity, eta=eta, start=start, dr2_n=dr2_n, dr2_tau=dr2_tau, dr2_preset=dr2_preset,
                    dr2_auto=dr2_auto, no_enhancer=no_enhancer),
        ))
        face_detector = parser = background = None
        if not aligned:
            from facerestore.faces.detect import load_detector

            face_detector = load_detector(detector, dev, None, offline_flag)
            if parse:
                from facerestore.faces.parsing import load_parser

                parser = load_parser(dev, offline_flag)
            background = load_background_upsampler(bg_upsampler, device=dev, half=precision != "fp32", tile=bg_tile, offline=offline_flag)
    except FaceRestoreError as exc:
        fail(exc, debug)
    except KeyboardInterrupt:  # Ctrl-C while the models load: one line and 130, as the other commands (not click's "Aborted!", exit 1)
        err.print("interrupted before any image was restored; nothing was written", markup=False)
        raise typer.Exit(130) from None

    low = None if aligned else low_threshold_warning(detection_threshold)
    if low:  # allowed, said once: it changes what counts as a face in every photo
        err.print(low, markup=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, disable=quiet or as_json)
    finished: list = []  # the result of each image handled so far, in order
    with progress:
        # the inputs that gave no image count as handled (and failed), as in the summary line and --json
        images = progress.add_task("images", total=len(paths) + len(missing), completed=len(missing))
        faces = progress.add_task("faces", total=None)

        def report(result) -> None:
            for warning in result.warnings:
                progress.console.print("warning: " + warning, markup=False)
            if result.error:
                prefix = "warning: " if result.status == "no-face" else "error: "
                progress.console.print(prefix + result.error, markup=False)
            progress.update(images, advance=1)
            finished.append(result)

        limit = BatchLimit(batch_size, on_lower=lambda text: progress.console.print(f"warning: {text}", markup=False))
        tools = Tools(method=method_impl, detector=face_detector, parser=parser, background=background, on_faces=lambda n: progress.update(faces, advance=n),
                      batch_limit=limit)
        try:
            results = restore_paths(paths, [p for p in inputs if p.is_dir()], tools, options, on_image=report, debug=debug)
        except KeyboardInterrupt:
            progress.stop()
            written = sum(r.status != "failed" for r in finished)
            err.print(f"interrupted; {written} of {counted(len(paths), 'image')} written to {output} (each file whole: none is half-written)", markup=False)
            if as_json:  # a script still learns which files were written
                typer.echo(_json_summary(method, output, finished, missing, interrupted=True))
            raise typer.Exit(130) from None
    failed = sum(r.status == "failed" for r in results) + len(missing)
    total_faces = sum(r.faces for r in results)
    if as_json:
        typer.echo(_json_summary(method, output, results, missing))
    elif not quiet:
        err.print(f"{len(results) + len(missing) - failed} of {counted(len(results) + len(missing), 'image')} restored, {counted(total_faces, 'face')} -> {output}", markup=False)
        tip = cpu_bf16_tip(dev, precision, method)
        if tip and total_faces:  # a speed tip after no face was restored says nothing
            err.print(tip, markup=False)
    raise typer.Exit(1 if failed else 0)


def _json_summary(method: str, output: Path, results: list, missing: list, *, interrupted: bool = False) -> str:
    """The --json summary (docs/usage.md, "For scripts"); after Ctrl-C, of the images handled so far."""
    summary = {
        "method": method, "output": str(output), "images": len(results) + len(missing),
        "failed": sum(r.status == "failed" for r in results) + len(missing), "faces": sum(r.faces for r in results),
        "interrupted": interrupted, "results": [r.to_json() for r in results],
        "missing": [{"path": str(p), "error": reason} for p, reason in missing],
    }
    return json.dumps(summary, indent=2)  # ASCII: names that are not UTF-8 stay valid JSON
