"""The evaluation report: index.md, index.html, results.json and labelled comparison grids.

Layout of a report folder (every image path is relative, so the folder can be moved or zipped):

    index.md, index.html     tables per set (mean ± std per row and metric, seconds per face),
                             grids, per-image scores, why any value is missing, failures
    results.json             everything above for machines (also printed by --json)
    grids/SET_N.png          input | each method | reference, a few labelled rows per PNG
    inputs/SET/KEY.png       the degraded inputs every method saw (--hq)
    restored/METHOD/[SET/]KEY.png      each method's output
    authenticity/METHOD/{once,twice}/KEY.png   f(x) and f(f(x)) (--authenticity)

A run writes into a hidden staging folder beside the report (`prepare_output`), and `publish`
swaps it in at the end, so a rerun replaces the old report whole and an interrupted run leaves the
old one as it was. `prepare_output` refuses a folder that overlaps an input and a non-empty folder
that is not an earlier report (so `--out ~/Pictures` cannot delete anything).
"""

from __future__ import annotations

import glob
import html
import json
import math
import os
import shlex
import shutil
import tempfile
import urllib.parse
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facerestore import __version__
from facerestore.errors import FaceRestoreError, UsageError
from facerestore.file_modes import new_file_mode, new_folder_mode
from facerestore.evaluation.runner import INPUT, EvalResult, SetResult, Summary
from facerestore.image_io import assert_output_folder, write_image
from facerestore.plural import counted
from facerestore.metrics import METRICS, MetricResult
from facerestore.metrics.json_numbers import json_number

GENERATOR = "facerestore evaluate"
TITLES = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "identity": "identity (cos)", "identity_deg": "identity (deg)", "lmd": "LMD", "niqe": "NIQE", "fid": "FID"}
DECIMALS = {"psnr": 2, "ssim": 4, "lpips": 4, "identity": 4, "identity_deg": 2, "lmd": 2, "niqe": 3, "fid": 2}
LABEL_BAND = 22  # pixels of text above each grid row and column header


# ------------------------------------------------------------------ the output folder


def _is_report(folder: Path) -> bool:
    try:
        return json.loads((folder / "results.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def prepare_output(out: Path, inputs: Sequence[Path | None] = ()) -> Path:
    """Check that `out` may be (re)written and return a fresh staging folder beside it."""
    out = Path(out)
    target = out.resolve()
    for source in inputs:
        if source is None:
            continue
        resolved = Path(source).resolve()
        if target == resolved or resolved in target.parents or target in resolved.parents:
            raise UsageError(f"--out {out} overlaps the input {source}", hint="write the report to a folder outside the inputs (e.g. --out report)")
    assert_output_folder(out)
    if out.exists():
        if any(out.iterdir()) and not _is_report(out):
            raise UsageError(f"--out {out} exists and is not a facerestore evaluation report; refusing to replace it", hint="choose a new or empty folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
        staging.chmod(new_folder_mode())  # mkdtemp makes 0700 folders; a report is an ordinary folder
        return staging
    except OSError as exc:
        raise UsageError(f"cannot write the report beside {out} ({exc.strerror or exc})", hint="check the folder's permissions") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_staging(out: Path) -> int:
    """Delete what killed runs left beside `out`: staging folders of processes that no longer exist
    (their pid is in the name) and old reports a crash left between the swap and the delete."""
    removed = 0
    for folder in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if not folder.is_dir():
            continue
        # ours are exactly .NAME.PID.RANDOM.partial and .NAME.RANDOM.old (mkdtemp's RANDOM has no dot):
        # .report.2024.PID.RANDOM.partial is a live run of --out report.2024, not a dead one of pid 2024
        parts = folder.name[len(out.name) + 2 :].split(".")
        partial = len(parts) == 3 and parts[2] == "partial" and parts[0].isdigit()
        stale = (partial and not _alive(int(parts[0]))) or (len(parts) == 2 and parts[1] == "old" and _is_report(folder))
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def publish(staging: Path, out: Path) -> Path:
    """Replace `out` by the finished staging folder (the old report is removed only after the swap).

    If the swap fails (the folder's permissions changed during the run, `out` is a mount point, a
    lost mount), the earlier report goes back where it was and the new one is kept beside it under a
    visible name (the next run deletes hidden staging folders): a FaceRestoreError naming `out` and
    where the new report is, not the staging folder's name.
    """
    out = Path(out)
    old = None
    earlier = out.exists()
    try:
        if earlier:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(staging, out)
    except BaseException as exc:  # the old report goes back where it was (else the next run deletes it as debris)
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)
        if not isinstance(exc, OSError):
            raise
        raise not_published(staging, out, exc, earlier=earlier) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def not_published(staging: Path, out: Path, exc: OSError, *, earlier: bool) -> FaceRestoreError:
    """The one line for a report that could not be moved into `out`: the new report is moved to a
    visible folder beside it when possible (else the caller discards the staging folder)."""
    kept = None
    try:
        kept = Path(tempfile.mkdtemp(prefix=f"{out.name}.new-", dir=out.parent))
        os.rmdir(kept)
        os.replace(staging, kept)
    except OSError:
        kept = None
    before = f"{out} holds the earlier report, unchanged" if earlier else f"{out} was not made"
    if kept is None:
        return FaceRestoreError(f"cannot move the new report into {out} ({exc.strerror or exc}); it could not be kept either; {before}",
                                hint="fix the folder (permissions, free space), then rerun the same command")
    return FaceRestoreError(f"cannot move the new report into {out} ({exc.strerror or exc}); it is in {kept}; {before}",
                            hint=f"fix the folder, then replace {out} by {kept} (or rerun the same command)")


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def _write_text(path: Path, text: str) -> None:
    """Write atomically: temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, prefix=f".{path.name}.", suffix=".tmp") as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, new_file_mode())
    os.replace(tmp.name, path)


# ------------------------------------------------------------------ numbers


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return json_number(value)  # the same "inf" / "-inf" / "nan" as results.json
    return f"{value:.{DECIMALS.get(metric, 4)}f}"


def header(metric: str) -> str:
    spec = METRICS[metric]
    return f"{TITLES.get(metric, metric)} {'↑' if spec.better == 'higher' else '↓'}"


class Footnotes:
    """Numbered reasons for missing values, per table."""

    def __init__(self) -> None:
        self.notes: dict[str, int] = {}

    def ref(self, metric: str, reason: str) -> int:
        key = f"{metric}: {reason}"
        return self.notes.setdefault(key, len(self.notes) + 1)

    def lines(self) -> list[str]:
        return [f"[{n}] {text}" for text, n in self.notes.items()]


def summary_cell(metric: str, s: Summary, notes: Footnotes) -> str:
    if s.status == "none":
        return "—"
    if s.count == 0:
        return f"{s.status} [{notes.ref(metric, s.reason)}]"
    text = fmt(metric, s.mean) + (f" ± {fmt(metric, s.std)}" if s.std is not None else "")
    if s.status == "partial":
        marks = ",".join(str(notes.ref(metric, f"{reason} ({n} image{'s' if n > 1 else ''})")) for reason, n in s.reasons)
        text += f" ({s.count}/{s.total}) [{marks}]"
    return text


def set_cell(metric: str, r: MetricResult | None, notes: Footnotes) -> str:
    if r is None:
        return "—"
    if not r.ok:
        return f"{r.status} [{notes.ref(metric, r.reason)}]"
    return fmt(metric, r.value)


def image_cell(metric: str, r: MetricResult | None) -> str:
    if r is None:
        return "—"
    return fmt(metric, r.value) if r.ok else r.status


def _params_text(params: dict | None) -> str:
    if not params:
        return ""
    return f"σ {params['sigma']:.2f}, r {params['scale']:.2f}, noise {params['noise']:.2f}, q {params['jpeg']}"


def summary_table(s: SetResult) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, footnotes) of a set's summary table."""
    notes = Footnotes()
    set_metrics = sorted({m for scores in s.set_scores.values() for m in scores}, key=list(METRICS).index)
    head = ["", *(header(m) for m in s.metrics), *(header(m) for m in set_metrics), "s/face"]
    rows = []
    for row in s.rows:
        cells = [row.label]
        cells += [summary_cell(m, s.summary(row.label, m), notes) for m in s.metrics]
        cells += [set_cell(m, s.set_scores.get(row.label, {}).get(m), notes) for m in set_metrics]
        seconds = s.seconds_per_face(row.method) if row.kind == "method" else None
        cells.append("" if seconds is None else f"{seconds:.3f}")
        rows.append(cells)
    if s.kind == "authenticity":  # one method's restore time covers its three rows: show it once
        for cells in rows:
            cells[-1] = ""
        for i, row in enumerate(s.rows):
            if row.comparison.startswith("f(x)"):
                seconds = s.seconds_per_face(row.method)
                rows[i][-1] = "" if seconds is None else f"{seconds:.3f}"
    return head, rows, notes.lines()


def image_table(s: SetResult) -> tuple[list[str], list[list[str]]]:
    drawn = s.kind == "degraded" and s.params is None  # eq11: parameters differ per image
    head = ["image", "row", *(header(m) for m in s.metrics), *(["eq. 11 parameters"] if drawn else []), "notes"]
    rows = []
    for image in s.images:
        if image.status == "failed":
            rows.append([image.key, "—", *("—" for _ in s.metrics), *([""] if drawn else []), f"failed: {image.error}"])
            continue
        for row in s.rows:
            scores = image.scores.get(row.label)
            cells = [image.key, row.label]
            cells += [image_cell(m, scores.get(m)) if scores is not None else "—" for m in s.metrics]
            if drawn:
                cells.append(_params_text(image.params) if row.label == INPUT else "")
            note = image.row_errors.get(row.label, "")
            if not note and row.label == INPUT and image.notes:
                note = "; ".join(image.notes)
            cells.append(note)
            rows.append(cells)
    return head, rows


# ------------------------------------------------------------------ grids


def _text(canvas: np.ndarray, text: str, x: int, y: int, width: int) -> None:
    """Black text on the white band, shortened with … until it fits `width` pixels."""
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    while text and cv2.getTextSize(text, font, scale, thick)[0][0] > width - 6:
        text = text[:-2] + "…" if len(text) > 2 else ""
    # Hershey fonts have no "…": draw three dots instead
    cv2.putText(canvas, text.replace("…", "..."), (x + 3, y + LABEL_BAND - 7), font, scale, (0, 0, 0), thick, cv2.LINE_AA)


def make_grid(columns: Sequence[str], rows: Sequence[tuple[str, Sequence[np.ndarray]]]) -> np.ndarray:
    """uint8 RGB grid: a header band with the column names, then per image a band with its name
    above its tiles (all tiles the same size)."""
    tile = rows[0][1][0].shape[0]
    gap = 2
    width = len(columns) * tile + (len(columns) - 1) * gap
    height = LABEL_BAND + len(rows) * (LABEL_BAND + tile)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for c, name in enumerate(columns):
        _text(canvas, name, c * (tile + gap), 0, tile)
    for r, (key, tiles) in enumerate(rows):
        top = LABEL_BAND + r * (LABEL_BAND + tile)
        _text(canvas, key, 0, top, width)
        for c, image in enumerate(tiles):
            left = c * (tile + gap)
            canvas[top + LABEL_BAND : top + LABEL_BAND + tile, left : left + tile] = image
    return canvas


def write_grids(result: EvalResult, folder: Path) -> None:
    rows_per_grid = max(1, result.spec.grid_rows)
    for s in result.sets:
        s.grids = []
        for n, start in enumerate(range(0, len(s.grid_tiles), rows_per_grid), 1):
            relative = f"grids/{s.name}_{n}.png"
            write_image(folder / relative, make_grid(s.grid_columns, s.grid_tiles[start : start + rows_per_grid]))
            s.grids.append(relative)


# ------------------------------------------------------------------ results.json


def _result_json(r: MetricResult | None) -> dict[str, Any]:
    if r is None:
        return {"value": None, "status": "missing", "reason": "not computed"}
    return {"value": json_number(r.value), "status": r.status, "reason": r.reason}


def _summary_json(s: Summary) -> dict[str, Any]:
    return {
        "mean": json_number(s.mean),
        "std": json_number(s.std),
        "count": s.count,
        "total": s.total,
        "status": s.status,
        "reason": s.reason,
        "reasons": [{"reason": reason, "images": n} for reason, n in s.reasons],
    }


def to_json(result: EvalResult, command: Sequence[str] = ()) -> dict[str, Any]:
    spec = result.spec
    sets = []
    for s in result.sets:
        rows = []
        set_metrics = sorted({m for scores in s.set_scores.values() for m in scores}, key=list(METRICS).index)
        for row in s.rows:
            metrics: dict[str, Any] = {m: _summary_json(s.summary(row.label, m)) for m in s.metrics}
            for m in set_metrics:
                metrics[m] = {**_result_json(s.set_scores.get(row.label, {}).get(m)), "set": True}
            seconds = s.seconds_per_face(row.method)
            rows.append({"label": row.label, "kind": row.kind, "method": row.method, "comparison": row.comparison, "seconds_per_face": seconds, "metrics": metrics})
        images = [
            {
                "key": i.key,
                "source": i.source,
                "status": i.status,
                "error": i.error,
                "notes": i.notes,
                "params": i.params,
                "files": i.files,
                "scores": {row: {m: _result_json(r) for m, r in scores.items()} for row, scores in i.scores.items()},
                "row_errors": i.row_errors,
            }
            for i in s.images
        ]
        sets.append(
            {
                "name": s.name,
                "kind": s.kind,
                "description": s.description,
                "params": s.params,
                "metrics": s.metrics + set_metrics,
                "images_total": len(s.images),
                "images_failed": sum(i.status == "failed" for i in s.images),
                "rows": rows,
                "images": images,
                "grids": s.grids,
            }
        )
    return {
        "generator": GENERATOR,
        "version": __version__,
        "created": datetime.fromtimestamp(result.started, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(result.seconds, 3),
        "command": list(command),
        "mode": spec.mode,
        "hq": None if spec.hq is None else str(spec.hq),
        "lq": None if spec.lq is None else str(spec.lq),
        "ref_set": None if spec.ref_set is None else str(spec.ref_set),
        "seed": spec.seed,
        "limit": spec.limit,
        "device": spec.device,
        "batch_size": spec.batch_size,
        "authenticity": spec.authenticity,
        "metrics": {m: {"summary": METRICS[m].summary, "better": METRICS[m].better, "needs_reference": METRICS[m].needs_reference, "on_sets": METRICS[m].on_sets} for m in spec.metrics or ()},
        "methods": result.methods,
        "notes": result.notes,
        "warnings": [warning_text(line) for line in result.warnings],
        "failures": [{"what": what, "error": why} for what, why in result.all_failures()],
        "sets": sets,
    }


# ------------------------------------------------------------------ index.md and index.html


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def esc(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def _preamble(result: EvalResult, command: Sequence[str]) -> list[tuple[str, str]]:
    spec = result.spec
    items = []
    if command:
        items.append(("command", shlex.join(command)))
    source = f"--hq {spec.hq} (references; inputs synthesized)" if spec.hq is not None else f"--lq {spec.lq} (real inputs, no references)"
    items.append(("inputs", source + (f", first {spec.limit}" if spec.limit else "")))
    if spec.ref_set is not None:
        items.append(("FID reference set", str(spec.ref_set)))
    items.append(("run", f"facerestore {__version__}, device {spec.device}, seed {spec.seed}, batch {spec.batch_size}, {result.seconds:.1f} s"))
    for label, info in result.methods.items():
        weights = f"; weights {info['weights']}" if info.get("weights") else ""
        weights += f" ({info['weights_name']})" if weights and info.get("weights_name") else ""
        options = ", ".join(f"{k} {_option_text(v)}" for k, v in (info.get("options") or {}).items())
        options = f"; options: {options}" if options else ""
        items.append((label, info.get("summary", "") + options + weights + (f" — {info['license']}" if info.get("license") else "")))
    for m in spec.metrics or ():
        items.append((TITLES.get(m, m), f"{METRICS[m].summary} ({METRICS[m].better} is better)"))
    return items


def _option_text(value: Any) -> str:
    """A method option as index.md shows it: 0.5, true, none, [[4, 22], [8, 35]]."""
    if value is None or isinstance(value, bool):
        return json.dumps(value).replace("null", "none")
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


MISSING_NOTE = "Values that could not be computed say why (unavailable: missing weights or no face found; failed: an error) in the notes under each table."


def markdown_summary(result: EvalResult, *, grids: bool = False) -> list[str]:
    """One section per set: title, description, summary table, footnotes (and grid links)."""
    lines: list[str] = []
    for s in result.sets:
        lines += [f"## {s.name}", "", s.description + f" — {counted(len(s.images), 'image')}.", ""]
        head, rows, notes = summary_table(s)
        lines += _md_table(head, rows) + [""]
        lines += [f"{n}  " for n in notes] + ([""] if notes else [])
        if grids:
            lines += [f"![{s.name} grid {i}]({g})" for i, g in enumerate(s.grids, 1)] + ([""] if s.grids else [])
    return lines


def write_markdown(result: EvalResult, folder: Path, command: Sequence[str] = ()) -> None:
    lines = ["# facerestore evaluation", ""]
    lines += [f"- **{k}**: {v}" for k, v in _preamble(result, command)]
    lines += [f"- **note**: {n}" for n in result.notes]
    lines += [f"- **warning**: {warning_text(w)}" for w in result.warnings]
    lines += ["", "Tables show mean ± standard deviation over the images (n/N when a metric ran on only n of N). " + MISSING_NOTE, ""]
    lines += markdown_summary(result, grids=True)
    lines += ["## Per-image scores", ""]
    for s in result.sets:
        head, rows = image_table(s)
        lines += [f"### {s.name}", ""] + _md_table(head, rows) + [""]
    failures = result.all_failures()
    lines += ["## Failures", ""] + ([f"- {failure_line(what, why)}" for what, why in failures] or ["none"]) + [""]
    _write_text(folder / "index.md", "\n".join(lines))


def warning_text(line: str) -> str:
    """A warning line as the report lists it, under the heading "warning" (without "warning: ")."""
    return line.removeprefix("warning: ")


def failure_line(what: str, why: str) -> str:
    """A failure as the report lists it: the error line alone when it names the file already (an
    unreadable input's one-line error starts with its path), else "what: why"."""
    return why if why.startswith(str(what)) else f"{what}: {why}"


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child,td.l{text-align:left}th{background:#f3f3f3}
img.grid{max-width:100%;border:1px solid #ccc;margin:4px 0}.note{color:#555;font-size:0.9em}
details{margin:0.5em 0 1.5em}code{background:#f3f3f3;padding:1px 4px}
"""


def _href(relative: str) -> str:
    """A report path as a link: percent-encoded, or a name with '#', '?' or '%' would link elsewhere."""
    return html.escape(urllib.parse.quote(relative))


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, links: Sequence[Sequence[str | None]] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r, row in enumerate(rows):
        cells = []
        for c, cell in enumerate(row):
            text = html.escape(str(cell))
            link = links[r][c] if links and c < len(links[r]) else None
            if link:
                text = f'<a href="{_href(link)}">{text}</a>'
            cls = ' class="l"' if c < left or c == len(row) - 1 and head[-1] == "notes" else ""
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def write_html(result: EvalResult, folder: Path, command: Sequence[str] = ()) -> None:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>facerestore evaluation</title>', f"<style>{CSS}</style></head><body>", "<h1>facerestore evaluation</h1><ul>"]
    for k, v in _preamble(result, command):
        value = f"<code>{html.escape(v)}</code>" if k == "command" else html.escape(v)
        parts.append(f"<li><b>{html.escape(k)}</b>: {value}</li>")
    parts += [f"<li><b>note</b>: {html.escape(n)}</li>" for n in result.notes]
    parts += [f"<li><b>warning</b>: {html.escape(warning_text(w))}</li>" for w in result.warnings]
    parts.append("</ul><p class='note'>Tables show mean ± standard deviation over the images (n/N when a metric ran on only n of N). " + html.escape(MISSING_NOTE) + "</p>")
    for s in result.sets:
        parts.append(f"<h2>{html.escape(s.name)}</h2><p>{html.escape(s.description)} — {counted(len(s.images), 'image')}.</p>")
        head, rows, notes = summary_table(s)
        parts.append(_html_table(head, rows))
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
        parts += [f'<p><a href="{_href(g)}"><img class="grid" src="{_href(g)}" alt="{html.escape(s.name)} grid {i}"></a></p>' for i, g in enumerate(s.grids, 1)]
        head, rows = image_table(s)
        links = []
        for image in s.images:
            if image.status == "failed":
                links.append([])
                continue
            for row in s.rows:
                file = image.files.get(row.label)
                links.append([None, file if file and not Path(file).is_absolute() else None])
        parts.append(f"<details><summary>per-image scores ({counted(len(s.images), 'image')})</summary>{_html_table(head, rows, left=2, links=links)}</details>")
    failures = result.all_failures()
    parts.append("<h2>Failures</h2>" + ("<ul>" + "".join(f"<li>{html.escape(failure_line(w, y))}</li>" for w, y in failures) + "</ul>" if failures else "<p>none</p>"))
    parts.append("</body></html>")
    _write_text(folder / "index.html", "\n".join(parts))


def write_report(result: EvalResult, folder: Path, command: Sequence[str] = ()) -> dict[str, Any]:
    """Grids, index.md, index.html and results.json into `folder`; returns the JSON object."""
    folder = Path(folder)
    write_grids(result, folder)
    data = to_json(result, command)
    write_markdown(result, folder, command)
    write_html(result, folder, command)
    _write_text(folder / "results.json", json.dumps(data, indent=1, allow_nan=False))
    return data
