"""Validation during training: a fixed set of faces, degraded once, restored by the EMA model.

For each validation face x (the first `count` images of the --val folder, resized to --size) and
each validation preset (the training degradation, or `--val-degrade mild,medium,severe`):

    x_d      = degradation(x), parameters keyed by the seed, the face and the preset: the same at
               every validation
    input    PSNR(x_d, x)          how degraded the inputs are
    output   PSNR(f(x_d), x)       restoration quality
    clean    PSNR(f(x), x)         IDM's authenticity criterion (eq. 2): restoring a clean face should
                                   change it little; it falls if the model starts hallucinating

With an `identity(image, reference)` function (ArcFace cosine, `--val-identity`) the same three get
an identity similarity to x beside their PSNR: a small restorer can gain PSNR while it moves faces
away from the person (docs/idm-model.md), and PSNR alone does not show it.

The grid PNG has one row per face: x_d | f(x_d) for each preset, then x | f(x). The fixed severities
(the presets of `facerestore evaluate`) let a run be selected on the bar it will be benched on, at
the training size (their blur and downsampling are in pixels at that size). PSNR is `facerestore.metrics.psnr`
(RGB, 0-255 scale, the papers' convention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.image_io import folder_relation, list_images
from facerestore.metrics.psnr import psnr
from facerestore.training.data import load_face, to_tensor
from facerestore.training.degradations import DegradationSpec, apply_degradation, sample_params
from facerestore.training.seeds import stable_seed

CHUNK = 8


@dataclass(frozen=True)
class ValFace:
    clean: np.ndarray  # HxWx3 float32 [0, 1]
    degraded: dict[str, np.ndarray]  # preset name -> the face degraded with it


def training_overlap(val: Path | str, data: Sequence[str], targets: Sequence[str] = ()) -> str | None:
    """The warning line for a --val folder that is, lies inside or holds a training data (or --targets)
    folder: its PSNR would then score faces the model trains on. Not an error: a smoke test may
    validate on its training faces on purpose."""
    for folders, what in ((data, "training data folder"), (targets, "--targets folder")):
        for folder in folders:
            relation = folder_relation(val, folder)
            if relation:
                return (f"warning: --val {val} {relation} the {what} {folder}: validation scores faces the model trains on; "
                        "pass a folder of held-out faces for a fair score")
    return None


def load_val_faces(folder: Path, count: int, size: int, specs: dict[str, DegradationSpec], seed: int,
                   skipped: list[tuple[Path, str]] | None = None) -> list[ValFace]:
    """The first `count` readable images of `folder`, resized and degraded deterministically by each preset.

    With one preset a face's parameters are keyed by (seed, "val", i), as they always were; with
    several, by (seed, "val", name, i), so each severity is the same whichever others are validated.
    `skipped`, when given, receives what was passed over on the way, and why (a folder link not
    followed, a broken link, an image that does not decode), for the caller's warning lines.
    """
    folder = Path(folder)
    links: list[tuple[Path, str]] = []
    paths, problems = list_images([folder], links=links)
    if problems and not paths:
        raise UsageError(f"--val {folder}: {problems[0][1]}", hint="pass a folder of aligned face images")
    left_out = [*links, *((path, reason) for path, reason in problems if path != folder)]
    faces: list[ValFace] = []
    for path in paths:
        if len(faces) == count:
            break
        try:
            clean = load_face(str(path), size)
        except FaceRestoreError as exc:  # "PATH is not an image file ...": the reason, as list_images words its own
            reason = str(exc)
            left_out.append((path, reason[len(f"{path} "):] if reason.startswith(f"{path} ") else reason))
            continue
        degraded = {}
        for name, spec in specs.items():
            key = ("val", len(faces)) if len(specs) == 1 else ("val", name, len(faces))
            rng = np.random.default_rng(stable_seed(seed, *key))
            degraded[name] = apply_degradation(clean, sample_params(rng, spec), rng)
        faces.append(ValFace(clean=clean, degraded=degraded))
    if not faces:
        raise UsageError(f"--val {folder} holds no readable image", hint="pass a folder of aligned face images")
    if skipped is not None:
        skipped.extend(left_out)
    return faces


def _restore(net: torch.nn.Module, images: list[np.ndarray], steps: int, seeds: list[int]) -> list[np.ndarray]:
    from facerestore.methods.idm import idm_sample

    device = next(net.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, len(images), CHUNK):
        batch = torch.stack([to_tensor(x) for x in images[start : start + CHUNK]]).to(device)
        restored = idm_sample(net, batch, seeds[start : start + CHUNK], steps=steps)
        out.extend(((restored.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy())
    return out


def _mean_psnr(images: list[np.ndarray], references: list[np.ndarray]) -> float:
    return round(float(np.mean([min(psnr(a, b), 99.0) for a, b in zip(images, references)])), 3)  # identical images: +inf


@torch.no_grad()
def validate(net: torch.nn.Module, faces: list[ValFace], *, steps: int = 10, seed: int = 0,
             identity: Callable[[np.ndarray, np.ndarray], float] | None = None) -> tuple[dict, np.ndarray]:
    """(metrics, grid) as in the module docstring.

    With one preset the metrics are flat (input_psnr, output_psnr, clean_psnr, ...); with several,
    each preset's input_* and output_* sit under its name and the clean_* numbers stay on top.
    """
    was_training = net.training
    net.eval()
    seeds = [stable_seed(seed, "val-sample", i) for i in range(len(faces))]
    names = list(faces[0].degraded)
    clean = [f.clean for f in faces]
    restored = {name: _restore(net, [f.degraded[name] for f in faces], steps, seeds) for name in names}
    kept = _restore(net, clean, steps, seeds)
    net.train(was_training)

    def score(images: list[np.ndarray]) -> float:
        return round(float(np.mean([identity(image, c) for image, c in zip(images, clean)])), 4)

    per_preset = {}
    for name in names:
        degraded = [f.degraded[name] for f in faces]
        row = {"input_psnr": _mean_psnr(degraded, clean), "output_psnr": _mean_psnr(restored[name], clean)}
        if identity is not None:
            row |= {"input_identity": score(degraded), "output_identity": score(restored[name])}
        per_preset[name] = row
    metrics = {
        "clean_psnr": _mean_psnr(kept, clean),
        "clean_psnr_worst": round(float(np.min([min(psnr(k, c), 99.0) for k, c in zip(kept, clean)])), 3),
        "faces": len(faces),
        "steps": steps,
    }
    if identity is not None:
        metrics["clean_identity"] = score(kept)
    metrics = per_preset[names[0]] | metrics if len(names) == 1 else metrics | per_preset
    rows = [np.concatenate([image for name in names for image in (f.degraded[name], restored[name][i])] + [f.clean, kept[i]], axis=1)
            for i, f in enumerate(faces)]
    return metrics, np.concatenate(rows, axis=0)


def describe(metrics: dict, step: int, presets: tuple[str, ...]) -> str:
    """The one-line validation message of a training run."""
    def part(row: dict) -> str:
        text = f"{row['input_psnr']:.2f} -> {row['output_psnr']:.2f} dB"
        return text + (f", identity {row['input_identity']:.4f} -> {row['output_identity']:.4f}" if "output_identity" in row else "")

    rows = {name: metrics[name] for name in presets} if len(presets) > 1 else {presets[0]: metrics}
    clean = f"clean kept at {metrics['clean_psnr']:.2f} dB" + (f", identity {metrics['clean_identity']:.4f}" if "clean_identity" in metrics else "")
    return f"validation at step {step}: " + "; ".join(f"{name} {part(row)}" for name, row in rows.items()) + f"; {clean}"
