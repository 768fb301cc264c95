"""Stage 3: the base and the fine-tuned model side by side on held-out faces (no ground truth).

For each held-out face y (never used for pseudo-targets or training):

    base       = R(y)         the pre-trained model, with the run's --base-fidelity
    fine-tuned = R'(y)        the exported EMA weights, same method and fidelity

Both see the face as stage 1 does (`load_input`: its centred square, resized to the working
size) and are resized back to that square's own size; the input is shown and scored on the same
square, so a non-square face is compared on the part the models saw, never stretched. Scores are no-reference: NIQE (Mittal et al. 2013, basicsr's
implementation with the MATLAB pristine model, lower is better) of the input, the base output and
the fine-tuned output; plus PSNR(fine-tuned, base), how far fine-tuning moved the outputs. NIQE on
a handful of faces is noisy and is not the paper's MANIQA / MUSIQ / FID: look at the contact sheet.

    RUN/report/report.md, report.json      the table (mean and per face)
    RUN/report/contact_sheet.png           input | base | fine-tuned, one row per face (first 8)
    RUN/report/base/<rel>.png, finetuned/<rel>.png

A held-out face that fails to decode (a truncated file passes the header-only scan) is skipped and
listed under "skipped" in report.json and report.md; the other faces are still reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerestore.errors import BadImage
from facerestore.image_io import resize
from facerestore.metrics.json_numbers import json_number
from facerestore.training.finetune.pseudo_targets import (
    InputFace,
    Reporter,
    base_seed,
    contact_sheet,
    restore_with_seeds,
    target_name,
    to_batch,
    to_images,
)
from facerestore.training.data import centre_square, to_square
from facerestore.plural import counted, verb

SHEET_ROWS = 8


@dataclass
class ReportResult:
    path: Path
    faces: int
    niqe: dict  # {"input": mean or None, "base": ..., "finetuned": ...}
    sheet: Path | None
    skipped: int = 0  # held-out faces that failed to decode


def _native(img: np.ndarray, side: int) -> np.ndarray:
    """An output at the working size back at the size of the square of the input it was made from."""
    return resize(img, side, side)


def _niqe(img: np.ndarray) -> tuple[float | None, str]:
    from facerestore.metrics import compute

    result = compute("niqe", img)
    return (result.value, "") if result.ok else (None, result.reason)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.mean(kept)), 4) if kept else None


def write_report(out: Path, faces: Sequence[InputFace], base_method, tuned_method, *, size: int, seed: int, batch_size: int = 4,
                 settings: dict | None = None, reporter: Reporter | None = None) -> ReportResult:
    """Restore the held-out faces with both models, score them, and write the report files."""
    from facerestore.image_io import read_image, write_image
    from facerestore.metrics.psnr import psnr

    reporter = reporter or Reporter()
    out.mkdir(parents=True, exist_ok=True)
    rows, per_face, reasons, skipped = [], [], set(), []
    reporter.stage("report (held-out faces)", len(faces))
    for start in range(0, len(faces), batch_size):
        batch = faces[start : start + batch_size]
        chunk, originals, inputs = [], [], []
        for f in batch:
            try:
                original = centre_square(read_image(f.path).rgb)  # what load_input crops before resizing
                inputs.append(to_square(original, size))
            except BadImage as exc:
                skipped.append({"path": f.rel, "reason": str(exc)})
                continue
            chunk.append(f)
            originals.append(original)
        if not chunk:
            reporter.advance(len(batch))
            continue
        crops = to_batch(inputs)
        seeds = [base_seed(seed, f.rel) for f in chunk]
        base = to_images(restore_with_seeds(base_method, crops, seeds))
        tuned = to_images(restore_with_seeds(tuned_method, crops, seeds))
        for f, original, b, t in zip(chunk, originals, base, tuned):
            b, t = _native(b, original.shape[0]), _native(t, original.shape[0])
            write_image(out / "base" / target_name(f.rel), b)
            write_image(out / "finetuned" / target_name(f.rel), t)
            scores = {}
            for name, img in (("input", original), ("base", b), ("finetuned", t)):
                scores[name], reason = _niqe(img)
                if reason:
                    reasons.add(reason)
            change = psnr(t, b)
            per_face.append({"path": f.rel, "niqe": scores, "psnr_finetuned_vs_base": json_number(change, 3)})
            if len(rows) < SHEET_ROWS:
                rows.append([original, b, t])
        reporter.advance(len(batch))
    if skipped:
        reporter.message(f"warning: {counted(len(skipped), 'held-out face')} could not be decoded and {verb(len(skipped), 'is', 'are')} left out of the report (first: {skipped[0]['reason']}); re-copy or re-export them")
    niqe = {k: _mean([p["niqe"][k] for p in per_face]) for k in ("input", "base", "finetuned")}
    changes = [p["psnr_finetuned_vs_base"] for p in per_face if not isinstance(p["psnr_finetuned_vs_base"], str)]  # "inf" (identical faces) stays out of the mean
    summary = {
        "faces": len(per_face),
        "niqe_mean": niqe,
        "niqe_note": "NIQE, lower is better (basicsr / MATLAB pristine model); no-reference",
        "niqe_unavailable": sorted(reasons),
        "psnr_finetuned_vs_base_mean": round(float(np.mean(changes)), 3) if changes else None,
        "settings": settings or {},
        "per_face": per_face,
        "skipped": skipped,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    sheet = None
    if rows:
        sheet = out / "contact_sheet.png"
        thumb = min(256, max(r[0].shape[0] for r in rows))
        write_image(sheet, contact_sheet(rows, thumb=thumb))
    (out / "report.md").write_text(_markdown(summary, sheet))
    return ReportResult(path=out / "report.md", faces=len(per_face), niqe=niqe, sheet=sheet, skipped=len(skipped))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _markdown(summary: dict, sheet: Path | None) -> str:
    s = summary["settings"]
    lines = [
        "# Unpaired fine-tuning: base vs fine-tuned on held-out faces",
        "",
        f"Base: `{s.get('base', '?')}`; {counted(summary['faces'], 'held-out face')} (never used for pseudo-targets or training).",
        "Scores are no-reference; NIQE: lower is better. PSNR(fine-tuned, base) shows how much fine-tuning changed the outputs.",
        "",
        "| | input | base | fine-tuned |",
        "|---|---|---|---|",
        f"| NIQE (mean) | {_fmt(summary['niqe_mean']['input'])} | {_fmt(summary['niqe_mean']['base'])} | {_fmt(summary['niqe_mean']['finetuned'])} |",
        "",
        f"PSNR(fine-tuned, base), mean: {_fmt(summary['psnr_finetuned_vs_base_mean'])} dB",
        "",
    ]
    if summary["niqe_unavailable"]:
        lines += [f"NIQE unavailable: {r}" for r in summary["niqe_unavailable"]] + [""]
    if summary["skipped"]:
        lines += [f"Skipped (could not be decoded): {s['path']}: {s['reason']}" for s in summary["skipped"]] + [""]
    if sheet is not None:
        lines += [f"Contact sheet (input | base | fine-tuned): `{sheet.name}`", "", f"![contact sheet]({sheet.name})", ""]
    lines += ["| face | NIQE input | NIQE base | NIQE fine-tuned | PSNR ft vs base |", "|---|---|---|---|---|"]
    for p in summary["per_face"]:
        n = p["niqe"]
        lines.append(f"| {p['path']} | {_fmt(n['input'])} | {_fmt(n['base'])} | {_fmt(n['finetuned'])} | {_fmt(p['psnr_finetuned_vs_base'])} |")
    return "\n".join(lines) + "\n"
