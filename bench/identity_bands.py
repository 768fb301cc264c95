"""Where a restorer's PSNR and identity changes lie in scale, for an evaluate report.

A degraded face carries information only up to some scale (eq. 11's severe preset: sigma 8 and a
factor 8 leave the 64 px image), and ArcFace sees it through a 112 px chip, so it is blind above
about 128 px. Splitting each restoration at those scales with a down-and-up resize (area down,
cubic up) and swapping bands with the input shows which band earns a PSNR gain and which one costs
identity: a change below the information scale (denoising, or a pull toward the average face) or
one above it (invented detail). Each row is paired against the input on the same faces (mean
difference ± standard error, faces won), as in bench_idm_model.py.

    FACERESTORE_WEIGHTS=../shared/weights python bench/bench_idm_model.py --report DIR/results.json --bands
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from facerestore.evaluation.runner import load_face
from facerestore.image_io import read_image
from facerestore.metrics import compute
from facerestore.metrics.identity import face_embedding

SIZE = 512
Variant = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (output, input) -> image


def below(image: np.ndarray, side: int) -> np.ndarray:
    """The image's band below `side` px: shrunk to side x side (area) and enlarged back (cubic)."""
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)


def variants(info: int, sight: int) -> dict[str, Variant]:
    """The band swaps, named for the table; `info` is the information scale, `sight` ArcFace's limit."""
    return {
        "output": lambda o, i: o,
        f"output below {info} px only": lambda o, i: below(o, info),
        f"input below {info} px + output above": lambda o, i: o - below(o, info) + below(i, info),
        f"input below {sight} px + output above": lambda o, i: o - below(o, sight) + below(i, sight),
        f"input below {info} px only": lambda o, i: below(i, info),
    }


def band_scores(report: dict, folder: Path, set_name: str, label: str, *, info: int = 64, sight: int = 128) -> dict[str, list[tuple[float, float]]]:
    """{variant: [(PSNR gain, identity gain) per face]} against the input, for one set and method row."""
    swaps = variants(info, sight)
    gains: dict[str, list[tuple[float, float]]] = {name: [] for name in swaps}
    images = next(s for s in report["sets"] if s["name"] == set_name)["images"]
    for image in images:
        files = image.get("files", {})
        if image.get("status") != "ok" or "input" not in files or label not in files:
            continue
        clean = load_face(Path(image["source"]))[0]
        reference = face_embedding(clean)
        degraded = read_image(folder / files["input"]).rgb
        restored = read_image(folder / files[label]).rgb

        def score(x: np.ndarray) -> tuple[float, float]:
            x = np.clip(x, 0.0, 1.0).astype(np.float32)
            return compute("psnr", x, clean).value, float(face_embedding(x) @ reference)

        base = score(degraded)
        for name, swap in swaps.items():
            psnr, identity = score(swap(restored, degraded))
            gains[name].append((psnr - base[0], identity - base[1]))
    return gains


if __name__ == "__main__":
    raise SystemExit("identity_bands.py is a helper of bench_idm_model.py: run "
                     "`python bench/bench_idm_model.py --report DIR/results.json --bands`")
