"""Per-photo and per-face cost of the restore pipeline's stages, batched vs one face at a time.

    python bench/bench_pipeline.py [--photos ../shared/data/photos/groups] [--method baseline] [--limit 3]

Stages: read, detect, prepare (the photo-sized background, copied or resized for --upscale: once
per photo, whatever its faces), align, restore (all faces of the photo in batches of --batch-size,
and again one face per call), paste (per face). Prints a Markdown table per photo and a summary;
times are wall-clock seconds on this machine, one run per photo after a warm-up run (the first
photo, and one face one at a time), with --threads torch and OpenCV threads (the bundled ONNX
detector uses onnxruntime's own; its header line says so). "detected at" is the size(s) the photo
is resized to for detection (faces.detect.detection_scales); "total s" is read to paste, without the
one-at-a-time pass and without writing (nothing is written to disk). --upscale defaults to 1 here,
whereas `facerestore restore` enlarges photos up to 1500 px twice. The header gives the CPUs and
the load average at the start: on a machine shared with other jobs the times are that much longer
(oversubscribed torch threads wait on each other). The default 3 group photos hold 97 faces, about
a minute on 2 idle cores; the 8 first hold 406 (17.jpg has 277).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import torch

from facerestore.devices import resolve_device
from facerestore.faces.detect import describe_detector, detection_scales, load_detector
from facerestore.image_io import list_images, read_image
from facerestore.methods.base import MethodOptions
from facerestore.methods.registry import build_method
from facerestore.pipeline import RestoreOptions, Tools, restore_crops, restore_picture
from facerestore.plural import counted

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "groups"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def detection_sizes(height: int, width: int) -> str:
    """The sizes the detector sees for a photo of this size (one or two scales), e.g. 1280x853+600x400."""
    return "+".join(f"{round(width * s.factor)}x{round(height * s.factor)}" for s in detection_scales(height, width))


def precision_of(method: object, requested: str) -> str:
    """What --precision resolved to, when the method says (`autocast`: None is fp32)."""
    if not hasattr(method, "autocast"):
        return requested
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(method.autocast, str(method.autocast))


def machine() -> str:
    """The CPUs and how busy they were at the start: a shared machine's load stretches every time."""
    cpus = counted(os.cpu_count() or 0, "CPU")
    if not hasattr(os, "getloadavg"):  # Windows
        return cpus
    return f"{cpus}, load average {os.getloadavg()[0]:.1f} at the start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--method", default="baseline")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--detector", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--upscale", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=3, help="photos to time (0 = all)")
    parser.add_argument("--precision", default="auto", help="the networks' dtype (as restore's --precision)")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
    parser.add_argument("--no-single", action="store_true", help="skip the one-face-at-a-time pass")
    args = parser.parse_args()

    paths, problems = list_images([args.photos])
    paths = paths[: args.limit or None]
    if not paths:
        why = f" ({problems[0][1]})" if problems else ""
        sys.exit(f"bench_pipeline: no image in {args.photos}{why}; pass --photos FOLDER")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)  # align, paste and every resize run in OpenCV's pool, all cores by default
    device = resolve_device(args.device)
    method = build_method(args.method, MethodOptions(device=device, weights=args.weights, precision=args.precision))
    detector = load_detector(args.detector, device)
    options = RestoreOptions(output=Path("unused"), upscale=args.upscale, batch_size=args.batch_size)

    # warm-up, not timed: first calls pay for lazy initialisation, and the one-at-a-time pass has its own shapes
    warm = read_image(paths[0])
    warm_crops: list = []

    def keep_first(first: int, count: int, faces, restored) -> None:
        if not warm_crops and faces:
            warm_crops.append(faces[0].crop)

    restore_picture(warm, Tools(method=method, detector=detector), options, on_faces=keep_first)
    if warm_crops and not args.no_single:
        restore_crops(method, warm_crops, batch_size=1, seed=0)

    print(f"method {args.method}, device {device}, precision {precision_of(method, args.precision)}, {counted(args.threads, 'thread')} (torch and OpenCV), "
          f"batch {args.batch_size}, upscale {args.upscale}")
    print(f"detector {args.detector}: {describe_detector(detector)}")
    print(f"one run per photo after a warm-up on {paths[0].name}; {machine()}; times in seconds unless the column says ms\n")
    print("| photo | size | detected at | faces | read s | detect s | prepare s | align s | restore s (batched) | restore s (1 by 1) | paste ms/face | total s "
          "| s/face (batched) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for path in paths:
        picture, read_s = timed(read_image, path)
        crops: list = []
        _, n, t = restore_picture(picture, Tools(method=method, detector=detector), options,
                                  on_faces=lambda first, count, faces, restored: crops.extend(f.crop for f in faces))
        single = float("nan")
        if crops and not args.no_single:
            _, single = timed(restore_crops, method, crops, batch_size=1, seed=0)
        total = read_s + sum(t.values())
        rows.append((n, t, single, total))
        nan = float("nan")
        print(
            f"| {path.name} | {picture.width}x{picture.height} | {detection_sizes(picture.height, picture.width)} | {n} | {read_s:.3f} | {t.get('detect', 0):.3f} | {t.get('prepare', 0):.3f} | {t.get('align', 0):.3f} | "
            f"{t.get('restore', 0):.3f} | {single:.3f} | {1000 * t.get('paste', 0) / n if n else nan:.1f} | {total:.3f} | {t.get('restore', 0) / n if n else nan:.3f} |"
        )
    faces = sum(r[0] for r in rows)
    with_faces = [r for r in rows if r[0]]
    batched = sum(r[1]["restore"] for r in with_faces)
    single = sum(r[2] for r in with_faces)
    print()
    print("| summary | value |")
    print("|---|---|")
    print(f"| photos / faces | {len(rows)} / {faces} |")
    print(f"| median detect s per photo | {statistics.median(r[1].get('detect', 0) for r in rows):.3f} |")
    print(f"| prepare ms per photo (background, once) | {1000 * statistics.mean(r[1].get('prepare', 0) for r in rows):.1f} |")
    print(f"| align ms per face | {1000 * sum(r[1].get('align', 0) for r in rows) / max(faces, 1):.1f} |")
    print(f"| paste ms per face (without prepare) | {1000 * sum(r[1].get('paste', 0) for r in rows) / max(faces, 1):.1f} |")
    print(f"| restore s per face, batched | {batched / max(faces, 1):.3f} |")
    if not args.no_single:
        print(f"| restore s per face, one at a time | {single / max(faces, 1):.3f} |")
        print(f"| batched speed-up | {single / batched if batched else float('nan'):.2f}x |")
    print(f"| total s per photo (mean) | {statistics.mean(r[3] for r in rows):.3f} |")


if __name__ == "__main__":
    main()
