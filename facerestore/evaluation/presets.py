"""Degraded evaluation inputs: fixed IDM eq. 11 severities and seeded random draws, reproducible per image.

    x_d = [ (x (*) k_sigma) downsampled by r + n_delta ]_JPEG_q, resized back     (IDM eq. 11)

Presets (fixed parameters, the same as `VAL_SEVERITIES` of facerestore.training.train_baseline):

    name     sigma  r   noise  JPEG q
    mild      1.5   2     3      85
    medium    4     4     8      70
    severe    8     8    12      55
    eq11     drawn per image from the training ranges (sigma 0.2-10, r 1-8, noise 0-15, q 50-100)

Reproducibility: every image gets its own random generator, seeded from (--seed, preset, the image's
key). The key is the image's path relative to the input folder without its extension, so the same
face gets the identical degraded input in every run, for every method, whatever --limit, the folder
order or the file format. The noise (and, for eq11, the parameters) come from that generator only.
The degraded image is rounded to 8 bits, so the PNG saved under report/inputs/ is exactly what the
methods saw.
"""

from __future__ import annotations

import hashlib

import numpy as np

from facerestore.errors import UsageError
from facerestore.training.degradations import Eq11Params, Eq11Ranges, apply_eq11, sample_eq11

SEVERITIES: dict[str, Eq11Params] = {
    "mild": Eq11Params(sigma=1.5, scale=2.0, noise=3.0, jpeg=85),
    "medium": Eq11Params(sigma=4.0, scale=4.0, noise=8.0, jpeg=70),
    "severe": Eq11Params(sigma=8.0, scale=8.0, noise=12.0, jpeg=55),
}
RANDOM = "eq11"
PRESETS = (*SEVERITIES, RANDOM)
DEFAULT_PRESET = "medium"


def check_preset(name: str) -> str:
    if name not in PRESETS:
        raise UsageError(f"--degrade {name!r} is not a degradation preset", hint=f"use one of: {', '.join(PRESETS)}")
    return name


def describe(name: str) -> str:
    """One line for reports: what the preset does."""
    if name == RANDOM:
        r = Eq11Ranges()
        return (
            f"IDM eq. 11, parameters drawn per image: sigma {r.sigma[0]:g}-{r.sigma[1]:g}, r {r.scale[0]:g}-{r.scale[1]:g}, "
            f"noise {r.noise[0]:g}-{r.noise[1]:g}, JPEG q {r.jpeg[0]:g}-{r.jpeg[1]:g}"
        )
    p = SEVERITIES[check_preset(name)]
    return f"IDM eq. 11 with blur sigma {p.sigma:g}, downsampling r {p.scale:g}, noise {p.noise:g}/255, JPEG q {p.jpeg}"


def preset_params(name: str) -> dict | None:
    """The fixed parameters of a preset (None for eq11, whose parameters differ per image)."""
    return None if check_preset(name) == RANDOM else SEVERITIES[name].to_dict()


def image_rng(seed: int, preset: str, key: str) -> np.random.Generator:
    """The generator for one image: a function of (seed, preset, key) only.

    The whole seed goes in (SeedSequence takes any non-negative int): masking it to 32 bits made
    --seed S and S + 2^32 give identical inputs. Seeds below 2^32 keep the inputs they always had.
    """
    digest = hashlib.sha256(f"{preset}\0{key}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([int(seed), int.from_bytes(digest[:8], "little")]))


def quantize(image: np.ndarray) -> np.ndarray:
    """Round float [0, 1] to 8-bit levels (what a PNG stores), still float32 in [0, 1]."""
    return (np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def degrade(image: np.ndarray, preset: str, *, seed: int, key: str) -> tuple[np.ndarray, Eq11Params]:
    """Degrade one float32 RGB HxWx3 image in [0, 1]: (8-bit-rounded degraded image, parameters used)."""
    rng = image_rng(seed, check_preset(preset), key)
    params = sample_eq11(rng) if preset == RANDOM else SEVERITIES[preset]
    return quantize(apply_eq11(image, params, rng)), params
