"""Peak memory (RSS) and time of `python -m facerestore PHOTO -o OUT` on large photos.

    FACERESTORE_WEIGHTS=../shared/weights python bench/bench_memory.py [--photos ../shared/data/photos/large]
        [--upscale auto,2] [--big 8000x6000] [--folder] [--limit N] [--max-pixels N]

Each case runs the command in a fresh subprocess (so one case's arrays cannot lower or raise the
next one's peak) and reads the child's peak resident set size from the kernel (os.wait4's
ru_maxrss), which counts everything: Python, torch, the models and every array. "auto" is the
command's default --upscale (1 for photos over 1500 px on their long side). --big makes a synthetic
photo of that size (the largest photo resized, written under /tmp) and runs it at the default scale.
--folder also restores all the photos in one run: its peak should be the largest single photo's,
not grow with their number. A case the command refuses (an output over --max-pixels) prints its
one-line error instead of numbers. Prints a Markdown table: photo | size | upscale | faces | peak
RSS MB | seconds; the header gives the CPUs and the load average at the start, since seconds on a
shared machine are not those of an idle one. The command is `python -m facerestore`, so run this from
the repository root (or with PYTHONPATH set) to measure that checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "large"


def run_case(inputs: list[Path], upscale: str, extra: list[str]) -> tuple[int, float, float, str | None]:
    """(faces, peak RSS in MB, seconds, error line or None) of one restore run in a fresh process
    (spawned and reaped here, so that wait4 gives that child's own peak)."""
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as out:
        command = [sys.executable, "-m", "facerestore", *map(str, inputs), "-o", out, "--json", "-q", *extra]
        if upscale != "auto":
            command += ["--upscale", upscale]
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            start = time.perf_counter()
            pid = os.posix_spawn(command[0], command, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, stdout.fileno(), 1),
                                                                                  (os.POSIX_SPAWN_DUP2, stderr.fileno(), 2)])
            _, _, usage = os.wait4(pid, 0)
            seconds = time.perf_counter() - start
            stdout.seek(0)
            stderr.seek(0)
            text, errors = stdout.read(), stderr.read()
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    try:
        summary = json.loads(text)
    except ValueError:
        return 0, peak, seconds, (errors.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    failed = [r["error"] for r in summary["results"] if r["status"] == "failed"]
    return int(summary["faces"]), peak, seconds, failed[0] if failed else None


def photo_size(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # turned upright when read
            width, height = height, width
    return f"{width}x{height}"


def pixels_of(size: str) -> int:
    width, height = (int(v) for v in size.split("x"))
    return width * height


def make_big(source: Path, size: str) -> Path:
    """The source photo (the largest, of the same shape as most phone photos) resized to `size` (WIDTHxHEIGHT), under /tmp; made once."""
    import cv2

    from facerestore.image_io import read_image, write_image

    width, height = (int(v) for v in size.lower().split("x"))
    target = Path(tempfile.gettempdir()) / f"bench-memory-{width}x{height}.jpg"
    if not target.exists():
        rgb = read_image(source, max_pixels=width * height * 2).rgb
        write_image(target, cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1), jpeg_quality=92)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="a folder of photos, or one photo")
    parser.add_argument("--upscale", default="auto,2", help="comma-separated scales; auto is the command's default")
    parser.add_argument("--big", default="8000x6000", help="a synthetic photo of this size, or 'none'")
    parser.add_argument("--folder", action="store_true", help="also restore all photos in one run")
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos (0: all)")
    parser.add_argument("--max-pixels", type=int, default=None, help="passed to the command (e.g. to allow --upscale 4 on 12 MP)")
    args = parser.parse_args()

    photos = [args.photos] if args.photos.is_file() else sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if args.limit:
        photos = photos[: args.limit]
    if not photos:
        sys.exit(f"error: no photos in {args.photos}")
    extra = ["--max-pixels", str(args.max_pixels)] if args.max_pixels else []
    scales = [s.strip() for s in args.upscale.split(",") if s.strip()]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load} at the start; weights: {os.environ.get('FACERESTORE_WEIGHTS', 'default')}")
    print()
    print("| photo | size | upscale | faces | peak RSS MB | seconds |")
    print("|---|---|---|---|---|---|")

    def row(name: str, size: str, inputs: list[Path], upscale: str) -> None:
        faces, peak, seconds, error = run_case(inputs, upscale, extra)
        if error:
            print(f"| {name} | {size} | {upscale} | refused: {error} | {peak:.0f} | {seconds:.1f} |", flush=True)
        else:
            print(f"| {name} | {size} | {upscale} | {faces} | {peak:.0f} | {seconds:.1f} |", flush=True)

    for photo in photos:
        for upscale in scales:
            row(photo.name, photo_size(photo), [photo], upscale)
    if args.big.lower() != "none":
        largest = max(photos, key=lambda p: pixels_of(photo_size(p)))
        big = make_big(largest, args.big)
        row(f"{big.name} (synthetic)", photo_size(big), [big], "auto")
    if args.folder:
        row(f"folder of {len(photos)}", "as above", photos, scales[0])


if __name__ == "__main__":
    main()
