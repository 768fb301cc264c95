"""Validation during training: a fixed set of faces, degraded once, restored by the EMA model.

For each validation face x (the first `count` images of the --val folder, resized to --size):

    x_d      = degradation(x), parameters keyed by (seed, "val", i): the same at every validation
    input    PSNR(x_d, x)          how degraded the inputs are
    output   PSNR(f(x_d), x)       restoration quality
    clean    PSNR(f(x), x)         IDM's authenticity criterion (eq. 2): restoring a clean face should
                                   change it little; it falls if the model starts hallucinating

With an `identity(image, reference)` function (ArcFace cosine, `--val-identity`) the same three get
an identity similarity to x beside their PSNR: a small restorer can gain PSNR while it moves faces
away from the person (docs/idm-model.md), and PSNR alone does not show it.

The grid PNG has one row per face: x_d | f(x_d) | x | f(x). PSNR is `facerestore.metrics.psnr`
(RGB, 0-255 scale, the papers' convention).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.image_io import list_images
from facerestore.metrics.psnr import psnr
from facerestore.training.data import load_face, to_tensor
from facerestore.training.degradations import DegradationSpec, apply_degradation, sample_params
from facerestore.training.seeds import stable_seed

CHUNK = 8


@dataclass(frozen=True)
class ValFace:
    clean: np.ndarray  # HxWx3 float32 [0, 1]
    degraded: np.ndarray


def load_val_faces(folder: Path, count: int, size: int, spec: DegradationSpec, seed: int) -> list[ValFace]:
    """The first `count` readable images of `folder`, resized and degraded deterministically."""
    paths, problems = list_images([folder])
    if problems and not paths:
        raise UsageError(f"--val {folder}: {problems[0][1]}", hint="pass a folder of aligned face images")
    faces: list[ValFace] = []
    for path in paths:
        if len(faces) == count:
            break
        try:
            clean = load_face(str(path), size)
        except FaceRestoreError:
            continue
        rng = np.random.default_rng(stable_seed(seed, "val", len(faces)))
        degraded = apply_degradation(clean, sample_params(rng, spec), rng)
        faces.append(ValFace(clean=clean, degraded=degraded))
    if not faces:
        raise UsageError(f"--val {folder} holds no readable image", hint="pass a folder of aligned face images")
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


@torch.no_grad()
def validate(net: torch.nn.Module, faces: list[ValFace], *, steps: int = 10, seed: int = 0,
             identity: Callable[[np.ndarray, np.ndarray], float] | None = None) -> tuple[dict, np.ndarray]:
    """(metrics, grid): mean PSNRs (and identities) as in the module docstring, and the image grid."""
    was_training = net.training
    net.eval()
    seeds = [stable_seed(seed, "val-sample", i) for i in range(len(faces))]
    restored = _restore(net, [f.degraded for f in faces], steps, seeds)
    kept = _restore(net, [f.clean for f in faces], steps, seeds)
    net.train(was_training)
    inputs = [psnr(f.degraded, f.clean) for f in faces]
    outputs = [psnr(r, f.clean) for r, f in zip(restored, faces)]
    clean = [psnr(k, f.clean) for k, f in zip(kept, faces)]
    finite = lambda values: [min(v, 99.0) for v in values]  # noqa: E731 - identical images give +inf
    metrics = {
        "input_psnr": round(float(np.mean(finite(inputs))), 3),
        "output_psnr": round(float(np.mean(finite(outputs))), 3),
        "clean_psnr": round(float(np.mean(finite(clean))), 3),
        "clean_psnr_worst": round(float(np.min(finite(clean))), 3),
        "faces": len(faces),
        "steps": steps,
    }
    if identity is not None:
        for name, images in (("input", [f.degraded for f in faces]), ("output", restored), ("clean", kept)):
            metrics[f"{name}_identity"] = round(float(np.mean([identity(image, f.clean) for image, f in zip(images, faces)])), 4)
    rows = [np.concatenate([f.degraded, r, f.clean, k], axis=1) for f, r, k in zip(faces, restored, kept)]
    return metrics, np.concatenate(rows, axis=0)
