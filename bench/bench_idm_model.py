"""The shipped IDM model on held-out CelebA-HQ at IDM eq. 11's three fixed severities (issue 5's table).

    FACERESTORE_WEIGHTS=../shared/weights python bench/bench_idm_model.py [--limit N] [--methods idm,baseline]

Runs `facerestore evaluate -m METHODS --hq ../shared/data/faces-hq/celeba-hq --degrade
mild,medium,severe --authenticity --offline` (so the numbers are exactly what a user's evaluate run
gives; the report folder is kept under --out) and prints, per severity, PSNR, SSIM and ArcFace
identity (w600k_mbf ONNX from FACERESTORE_WEIGHTS, default ../shared/weights) of the input and of each method, whether the
method beats its input on PSNR and identity (with the paired per-face difference: mean +/- its
standard error, and on how many faces the method wins; "tie" when the difference is within two
standard errors of zero, so that a gap can be told from noise), the authenticity test (restore the clean face: PSNR of
f(x) to x and of f(f(x)) to f(x)), and seconds per face at the method's default steps (10 for idm)
on this machine's CPU. The held-out faces were never trained on (docs/idm-model.md).
With --dlib it adds a second opinion on identity from dlib's recogniser, a net that no training
here validates on (bench/second_identity.py); with --bands, where each method's severe-set PSNR and
identity changes lie in scale (bench/identity_bands.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from facerestore.errors import FaceRestoreError

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("psnr", "ssim", "identity")


def run_evaluate(args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "facerestore", "evaluate", "-m", args.methods, "--hq", str(args.hq),
               "--degrade", "mild,medium,severe", "--authenticity", "--offline", "--metrics", ",".join(METRICS),
               "--out", str(args.out), "--quiet"]
    if args.limit:
        command += ["--limit", str(args.limit)]
    if args.precision != "auto":
        command += ["--precision", args.precision]
    for weights in args.weights:
        command += ["--weights", weights]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return json.loads((args.out / "results.json").read_text())


def mean(row: dict, metric: str) -> float | None:
    value = row["metrics"].get(metric, {}).get("mean")
    return value if isinstance(value, (int, float)) else None


def paired(s: dict, row: dict, base: dict, metric: str) -> tuple[float, float, int, int] | None:
    """(mean difference row - base, its standard error, faces where row wins, faces) over the faces both scored."""
    diffs = []
    for image in s.get("images", []):
        scores = image.get("scores", {})
        a = scores.get(row["label"], {}).get(metric, {}).get("value")
        b = scores.get(base["label"], {}).get(metric, {}).get("value")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            diffs.append(a - b)
    return paired_stats(diffs)


def paired_stats(diffs: list[float]) -> tuple[float, float, int, int] | None:
    """(mean of the per-face differences, its standard error, faces with a positive one, faces); None under 2 faces."""
    if len(diffs) < 2:
        return None
    mean_diff = sum(diffs) / len(diffs)
    variance = sum((d - mean_diff) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean_diff, (variance / len(diffs)) ** 0.5, sum(d > 0 for d in diffs), len(diffs)


def paired_text(stats: tuple[float, float, int, int], digits: int) -> str:
    """yes / NO / tie for a paired difference: a tie within two standard errors of zero, since a gain
    that noise could give is not a gain; then the numbers."""
    diff, error, wins, faces = stats
    word = "tie" if abs(diff) <= 2 * error else "yes" if diff > 0 else "NO"
    return f"{word} ({diff:+.{digits}f} ± {error:.{digits}f}, {wins}/{faces})"


def verdict(s: dict, row: dict, base: dict, metric: str, digits: int) -> str:
    """`paired_text` where the report has per-face scores, else yes / NO by the means."""
    stats = paired(s, row, base, metric)
    if stats is None:
        if mean(row, metric) is None or mean(base, metric) is None:
            return "-"  # not measured (e.g. no ArcFace weights): no verdict
        return "yes" if mean(row, metric) > mean(base, metric) else "NO"
    return paired_text(stats, digits)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hq", type=Path, default=ROOT.parent / "shared" / "data" / "faces-hq" / "celeba-hq")
    parser.add_argument("--methods", default="idm", help="comma-separated methods (default idm; e.g. idm,baseline)")
    parser.add_argument("--limit", type=int, default=None, help="first N faces only (default all 61)")
    parser.add_argument("--precision", default="auto", help="the networks' precision (facerestore evaluate --precision), e.g. bf16 on a CPU with AMX")
    parser.add_argument("--weights", action="append", default=[],
                        help="a candidate model instead of the bundled one (facerestore evaluate --weights: FILE, or METHOD:FILE; repeat)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_idm_model")
    parser.add_argument("--report", type=Path, default=None, help="print the table of an existing results.json instead of running")
    parser.add_argument("--dlib", action="store_true",
                        help="also print a second opinion on identity from dlib's recogniser (bench/second_identity.py; needs dlib-bin and face-recognition-models)")
    parser.add_argument("--bands", action="store_true",
                        help="also print where each method's PSNR and identity changes lie in scale on the severe set (bench/identity_bands.py)")
    args = parser.parse_args()
    # the ArcFace weights for evaluate and for --bands, which scores in this process
    os.environ.setdefault("FACERESTORE_WEIGHTS", str(ROOT.parent / "shared" / "weights"))
    if not args.hq.is_dir() and args.report is None:
        sys.exit(f"bench_idm_model: {args.hq} is not a folder; pass --hq (the held-out faces)")
    report = json.loads(args.report.read_text()) if args.report else run_evaluate(args)

    print(f"\n{report['sets'][0]['images_total']} faces from {report['hq']}, {report['seconds']:.0f} s in all")
    methods = {label: info for label, info in report.get("methods", {}).items() if info.get("kind", "method") == "method"}
    if methods:  # a row is named after its method: say which model it is (a user's --weights, or the default)
        print("models: " + "; ".join(f"{label} = {info.get('weights') or 'its default weights'}" for label, info in methods.items()))
    print()
    print("| set | row | PSNR | SSIM | identity | beats input on PSNR (paired diff ± s.e., faces won) | on identity | s/face |")
    print("|---|---|---|---|---|---|---|---|")
    for s in report["sets"]:
        rows = s["rows"]
        base = next((r for r in rows if r["kind"] == "input"), None)
        for row in rows:
            values = [mean(row, m) for m in METRICS]
            verdicts = ["", ""]
            if base is not None and row is not base and row["kind"] == "method":
                verdicts = [verdict(s, row, base, "psnr", 2), verdict(s, row, base, "identity", 4)]
            seconds = row.get("seconds_per_face")
            print(f"| {s['name']} | {row['label']} | {fmt(values[0])} | {fmt(values[1], 4)} | {fmt(values[2], 4)} | {verdicts[0]} | {verdicts[1]} | {fmt(seconds)} |")
    for metric in METRICS:
        reasons = {r["metrics"].get(metric, {}).get("reason", "") for s in report["sets"] for r in s["rows"]}
        if not any(mean(r, metric) is not None for s in report["sets"] for r in s["rows"]) and any(reasons):
            print(f"\nnot measured ({metric} column: -): {sorted(filter(None, reasons))[0]}")
    folder = args.report.parent if args.report else args.out
    if args.dlib:
        print_second_opinion(report, folder)
    if args.bands:
        print_bands(report, folder)


def print_second_opinion(report: dict, folder: Path) -> None:
    """The identity verdicts again with dlib's recogniser, which training never sees."""
    import second_identity  # beside this script, which is sys.path[0]

    why = second_identity.unavailable()
    if why:
        print(f"\nsecond opinion skipped: {why}")
        return
    table, skipped = second_identity.distances(report, folder)
    note = f"; {skipped} references without a face dlib finds were left out" if skipped else ""
    print(f"\nSecond opinion on identity: dlib face recognition distance to the clean face (lower is closer; "
          f"the same person below 0.6){note}\n")
    print("| set | row | dlib distance | closer than the input (paired gain ± s.e., faces won) |")
    print("|---|---|---|---|")
    for name, rows in table.items():
        base = rows.get("input", {})
        for label, values in rows.items():
            stats = paired_stats([base[k] - d for k, d in values.items() if k in base]) if label != "input" else None
            verdict_text = paired_text(stats, 4) if stats else ""
            print(f"| {name} | {label} | {np.mean(list(values.values())):.4f} | {verdict_text} |")


def print_bands(report: dict, folder: Path, set_name: str = "severe") -> None:
    """Each method's severe-set change split at the information scale and at ArcFace's limit."""
    import identity_bands  # beside this script, which is sys.path[0]

    chosen = next((s for s in report["sets"] if s["name"] == set_name), None)
    if chosen is None:
        print(f"\nbands skipped: the report has no {set_name} set")
        return
    labels = [r["label"] for r in chosen["rows"] if r["kind"] == "method"]
    try:
        scores = {label: identity_bands.band_scores(report, folder, set_name, label) for label in labels}
    except FaceRestoreError as exc:
        print(f"\nbands skipped: {exc}")
        return
    print(f"\nWhere the change lies on the {set_name} set (bench/identity_bands.py; paired gain over the input ± s.e., faces won)\n")
    print("| row | band swap | PSNR gain | identity gain |")
    print("|---|---|---|---|")
    for label in labels:
        for name, gains in scores[label].items():
            psnr, identity = (paired_stats([g[k] for g in gains]) for k in (0, 1))
            if psnr is not None and identity is not None:
                print(f"| {label} | {name} | {paired_text(psnr, 2)} | {paired_text(identity, 4)} |")


if __name__ == "__main__":
    main()
