"""FID (Heusel et al. 2017): Fréchet distance between Inception feature statistics of two image sets.

d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the matrix square root by scipy (see
`frechet_distance` for why through symmetric eigendecompositions).

Features are the 2048-d pool3 output of the TensorFlow FID Inception ported by pytorch-fid
(pt_inception-2015-12-05-6726825d.pth; the net the papers' numbers come from), used as pytorch-fid
does: RGB in [0, 1], bilinear resize to 299x299, scaled to [-1, 1]. The net is torchvision's
Inception3 with the four FID-patched blocks that basicsr ships (TF's average pooling excludes the
padding; the last block max-pools), built on the meta device and loaded strictly from our weights
catalogue (`inception_fid`); nothing is downloaded at run time. Missing offline -> unavailable.

Cost: about 5.7 GFLOP per image at 299x299, 1.4 s of CPU per image on the 2-core development
machine. Sets smaller than 2048 images use an exact low-rank form of the trace term (milliseconds);
larger sets and precomputed statistics need two 2048x2048 eigendecompositions (~35 s of CPU there).
A set is a folder, a list of files, or a list of images; the reference may also be precomputed
statistics (`FrechetStats`, or an .npz with `mu` and `sigma` as pytorch-fid saves them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

import numpy as np

from facerestore.errors import UsageError
from facerestore.metrics.images import ImageLike, as_image
from facerestore.metrics.result import MetricUnavailable, resolve_weights

WEIGHTS = "inception_fid"
METRIC = "FID"
FEATURE_DIM = 2048
INPUT_SIZE = 299
# for the message shown until weights.toml lists `inception_fid`
OFFICIAL_FILE = "pt_inception-2015-12-05-6726825d.pth"
OFFICIAL_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
OFFICIAL_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"

Extractor = Callable[[Any], Any]  # torch [B,3,H,W] in [0, 1] -> [B, D] (tensor or array)
ImageSet = Union[str, Path, Sequence[ImageLike], "FrechetStats"]


# ---------------------------------------------------------------- the distance


@dataclass(frozen=True, eq=False)
class FrechetStats:
    """Mean and covariance of a set's features (what FID compares), with the set size; the
    features themselves are kept when known, for the exact low-rank distance of small sets."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int = 0
    features: np.ndarray | None = None

    @classmethod
    def from_features(cls, features: np.ndarray) -> FrechetStats:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise UsageError(f"FID needs at least 2 images per set, got {len(features)}")
        small = len(features) < features.shape[1]  # only `stats_distance`'s low-rank form reads them; 70 000 x 2048 would hold 1.1 GB
        return cls(features.mean(0), np.cov(features, rowvar=False), len(features), features if small else None)

    def save(self, path: Path | str) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, count=self.count)

    @classmethod
    def load(cls, path: Path | str) -> FrechetStats:
        with np.load(path) as data:
            return cls(data["mu"], data["sigma"], int(data["count"]) if "count" in data else 0)


def stats_distance(a: FrechetStats, b: FrechetStats) -> float:
    """FID between two sets' statistics, exact either way.

    When both sets are smaller than the feature dimension (the usual evaluation on a CPU: tens to
    hundreds of faces against 2048 features) the trace term comes from the features: with centred
    features X1 (N1 x D), X2 (N2 x D), S1 S2 has the nonzero eigenvalues of M M^T where
    M = X1 X2^T / sqrt((N1-1)(N2-1)), so Tr (S1 S2)^(1/2) is the sum of M's singular values:
    an N1 x N2 SVD instead of two D x D eigendecompositions (about a minute at D = 2048 here).
    """
    dim = len(a.mu)
    if a.features is None or b.features is None or max(len(a.features), len(b.features)) >= dim:
        return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    from scipy import linalg

    x1, x2 = a.features - a.mu, b.features - b.mu
    m = (x1 @ x2.T) / np.sqrt((len(x1) - 1) * (len(x2) - 1))
    trace_root = float(linalg.svdvals(m).sum())
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_root)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (covariances symmetric PSD).

    Tr (S1 S2)^(1/2) is computed as Tr (R S2 R)^(1/2) with R = S1^(1/2): S1 S2 is similar to the
    symmetric PSD matrix R S2 R, so both have the same (real, non-negative) eigenvalues. Two scipy
    symmetric eigendecompositions replace `scipy.linalg.sqrtm` of the non-symmetric product, which
    at 2048 dimensions takes minutes with scipy 1.17 and returns complex round-off; singular
    covariances (fewer images than dimensions) need no diagonal offset this way.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise UsageError(f"FID statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    values, vectors = linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    inner = root1 @ sigma2 @ root1
    trace_root = float(np.sqrt(np.clip(linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


# ---------------------------------------------------------------- the Inception features


def build_fid_inception():
    """torchvision Inception3 patched into the TF FID Inception (1008 classes), on the meta device."""
    import torch
    from basicsr.archs.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
    from torchvision.models import inception_v3

    with torch.device("meta"):
        net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        net.Mixed_5b = FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = FIDInceptionE_1(1280)
        net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class InceptionFeatures:
    """[B,3,H,W] RGB in [0, 1] -> [B,2048] pool3 features, as pytorch-fid computes them."""

    def __init__(self, net, device: str = "cpu") -> None:
        import torch

        stem = [net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1, net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, net.maxpool2]
        mixed = [getattr(net, f"Mixed_{n}") for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")]
        self.body = torch.nn.Sequential(*stem, *mixed, torch.nn.AdaptiveAvgPool2d(1)).eval().requires_grad_(False).to(device)
        self.device = device

    def __call__(self, batch):
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = F.interpolate(batch.to(self.device, torch.float32), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            return self.body(2.0 * x - 1.0).flatten(1)


def load_inception(weights: str | Path = WEIGHTS, offline: bool | None = None, device: str = "cpu") -> InceptionFeatures:
    """The FID feature extractor with weights from our catalogue (or a file path), built once per file."""
    from facerestore.weights.catalogue import load_catalogue

    if str(weights) == WEIGHTS and WEIGHTS not in load_catalogue():
        raise MetricUnavailable(
            f"{METRIC} is unavailable: {OFFICIAL_FILE} (weights '{WEIGHTS}') is not in the weights catalogue on this install; "
            f"get it from {OFFICIAL_URL} (sha256 {OFFICIAL_SHA256})",
            hint=f"then run `facerestore weights import {OFFICIAL_FILE} --name {WEIGHTS}`",
        )
    path = resolve_weights(METRIC, weights, offline=offline)
    stat = path.stat()
    return _build(str(path.resolve()), stat.st_size, stat.st_mtime_ns, device)


@lru_cache(maxsize=1)
def _build(path: str, size: int, mtime_ns: int, device: str) -> InceptionFeatures:
    from facerestore.weights.checkpoint import load_strict, read_state_dict
    from facerestore.weights.store import display_name

    net = build_fid_inception().to_empty(device="cpu")
    load_strict(net, read_state_dict(path), display_name(path))
    return InceptionFeatures(net, device)


# ---------------------------------------------------------------- sets of images


def iter_images(images: str | Path | Sequence[ImageLike]) -> Iterator[np.ndarray]:
    """A folder (walked recursively), one file, or a sequence of images/paths -> float RGB images."""
    if isinstance(images, (str, Path)):
        from facerestore.image_io import list_images

        found, problems = list_images([Path(images)])
        if problems and not found:
            raise UsageError(f"{images}: {problems[0][1]}")
        images = found
    for item in images:
        yield as_image(item)


def _batches(images: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive images of one size stacked into [B,H,W,3] (a size change starts a new batch)."""
    batch: list[np.ndarray] = []
    for image in images:
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield np.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield np.stack(batch)


def set_features(images: str | Path | Sequence[ImageLike], extractor: Extractor, *, batch_size: int = 8) -> np.ndarray:
    """[N, D] features of every image of a set."""
    import torch

    chunks = []
    for batch in _batches(iter_images(images), batch_size):
        out = extractor(torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))))
        chunks.append(out.detach().cpu().double().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float64))
    if not chunks:
        raise UsageError("FID: an image set is empty", hint="pass a folder or a list with at least 2 images")
    return np.concatenate(chunks).reshape(sum(len(c) for c in chunks), -1)


def _is_statistics(images: ImageSet) -> bool:
    return isinstance(images, FrechetStats) or (isinstance(images, (str, Path)) and str(images).lower().endswith(".npz"))


def set_statistics(images: ImageSet, extractor: Extractor, *, batch_size: int = 8) -> FrechetStats:
    """FrechetStats of a set; precomputed statistics (or an .npz of them) pass through."""
    if isinstance(images, FrechetStats):
        return images
    if _is_statistics(images):
        return FrechetStats.load(images)  # type: ignore[arg-type]
    return FrechetStats.from_features(set_features(images, extractor, batch_size=batch_size))


def reference_statistics(
    reference: ImageSet,
    *,
    extractor: Extractor | None = None,
    weights: str | Path = WEIGHTS,
    offline: bool | None = None,
    device: str = "cpu",
    batch_size: int = 8,
) -> FrechetStats:
    """The statistics of a reference set, for `fid` of many sets against it (an evaluation's rows and
    sets): read once instead of once per comparison (the same options as `fid`)."""
    if extractor is None and not _is_statistics(reference):
        extractor = load_inception(weights, offline, device)
    return set_statistics(reference, extractor, batch_size=batch_size)  # type: ignore[arg-type]


def fid(
    restored: ImageSet,
    reference: ImageSet,
    *,
    extractor: Extractor | None = None,
    weights: str | Path = WEIGHTS,
    offline: bool | None = None,
    device: str = "cpu",
    batch_size: int = 8,
) -> float:
    """FID between two sets (lower is better; ~0 for a set against itself).

    `extractor` replaces the Inception net (tests, or another feature space); by default the FID
    Inception is loaded from the catalogue.
    """
    if extractor is None and not (_is_statistics(restored) and _is_statistics(reference)):
        extractor = load_inception(weights, offline, device)
    a = set_statistics(restored, extractor, batch_size=batch_size)  # type: ignore[arg-type]
    b = set_statistics(reference, extractor, batch_size=batch_size)  # type: ignore[arg-type]
    return stats_distance(a, b)
