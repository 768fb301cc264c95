"""Degrade a file or a folder tree with a named preset and write each image's parameters.

    DST/<relative path>          the degraded copy (same name; --ext changes the format)
    DST/degradations.json        {"preset", "seed", "spec", "images": [{"path", "source", <params>}]}
    DST/degradations.csv         one row per image: path, source and every parameter

Each image's parameters and noise come from a generator keyed by (seed, its relative path), so a
rerun, a subset or another order of the same files gives the same degradations.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.image_io import IMAGE_EXTENSIONS, assert_not_input, assert_output_folder, assert_outside, list_images, output_format, read_image, write_image
from facerestore.training.degradations import DegradationParams, apply_degradation, preset as get_preset, sample_params
from facerestore.training.seeds import check_seed, numpy_rng

FIELDS = [f.name for f in dataclasses.fields(DegradationParams)]


@dataclass
class DegradeReport:
    written: int
    failed: int
    json_path: Path
    csv_path: Path
    records: list[dict]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def degrade_tree(src: Path, dst: Path, *, preset: str = "eq11", seed: int = 0, ext: str = "auto",
                 on_error: Callable[[str], None] | None = None, on_warning: Callable[[str], None] | None = None) -> DegradeReport:
    spec = get_preset(preset)
    check_seed(seed)
    ext = output_format(ext)
    src, dst = Path(src), Path(dst)
    assert_output_folder(dst)
    paths, problems = list_images([src])
    if not paths:
        reason = problems[0][1] if problems else "no images"
        raise UsageError(f"{src}: {reason}", hint="pass an image or a folder of images")
    root = src if src.is_dir() else src.parent
    if src.is_dir():
        assert_outside(dst, src, str(src), hint="write the degraded copies outside the source folder")
        if src.resolve().is_relative_to(dst.resolve()):  # the copies would land among the user's files beside src
            raise UsageError(f"--out {dst} holds the source folder {src}", hint="write the degraded copies to a folder of their own")
    if not src.is_dir() and dst.resolve() == root.resolve():  # the copy would land among the user's files
        raise UsageError(f"--out {dst} is the folder of {src}", hint="write the degraded copy to another folder")
    rels = [path.relative_to(root) for path in paths]
    # auto keeps the input's format where we can write it; a GIF (or a file without an extension)
    # named on the command line gets PNG, as in restore
    targets = [rel if ext == "auto" and rel.suffix.lower() in IMAGE_EXTENSIONS else rel.with_suffix("." + ("png" if ext == "auto" else ext))
               for rel in rels]
    first: dict[str, Path] = {}
    for rel, target in zip(rels, targets):
        if target.as_posix() in first:
            raise UsageError(f"{root / first[target.as_posix()]} and {root / rel} would both be written as {dst / target}",
                             hint="use --ext auto, or rename one of them")
        first[target.as_posix()] = rel
    inputs = {p.resolve() for p in paths}
    records: list[dict] = []
    failed = 0
    for path, rel, target in zip(paths, rels, targets):
        try:
            picture = read_image(path)
            if picture.frames > 1 and on_warning is not None:
                on_warning(f"{path} holds {picture.frames} frames; only the first is degraded, and written as one still image")
            rng = numpy_rng(seed, "degrade", rel.as_posix())
            params = sample_params(rng, spec)
            degraded = apply_degradation(picture.rgb, params, rng)
            assert_not_input(dst / target, inputs, hint="choose another --out folder")  # degrade has no --suffix
            write_image(dst / target, degraded, alpha=picture.alpha, **(picture.encoding() | {"gray": picture.gray or params.gray}))
        except FaceRestoreError as exc:
            failed += 1
            if on_error is not None:
                on_error(exc.one_line())
            continue
        records.append({"path": target.as_posix(), "source": rel.as_posix(), **params.to_dict()})
    json_path, csv_path = dst / "degradations.json", dst / "degradations.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "source", *FIELDS])
    writer.writeheader()
    writer.writerows(records)
    try:
        dst.mkdir(parents=True, exist_ok=True)
        _atomic_text(json_path, json.dumps({"preset": preset, "seed": seed, "spec": dataclasses.asdict(spec), "images": records}, indent=1) + "\n")
        _atomic_text(csv_path, buffer.getvalue())
    except OSError as exc:
        raise FaceRestoreError(f"cannot write the parameters into {dst} ({exc.strerror or exc})", hint="check free space and permissions") from None
    return DegradeReport(written=len(records), failed=failed, json_path=json_path, csv_path=csv_path, records=records)
