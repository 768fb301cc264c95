"""FID: the Fréchet distance against closed forms, sets handled with a tiny feature extractor, the
FID Inception checked against basicsr's pytorch-fid port, and "unavailable" offline without weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facerestore.metrics import compute
from facerestore.metrics.fid import FrechetStats, fid, frechet_distance, set_features, stats_distance
from facerestore.metrics.result import MetricUnavailable


def test_one_dimensional_gaussians():
    """N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2."""
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == pytest.approx(9.0 + 1.0)


def test_gaussians_with_general_covariances():
    """Against the textbook formula with scipy.linalg.sqrtm of the product (pytorch-fid's way)."""
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_singular_covariances_of_few_samples():
    """Fewer samples than dimensions (every small evaluation set): rank-deficient, still exact."""
    from scipy import linalg

    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 12)), rng.standard_normal((7, 12)) + 0.5
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    mu1, mu2 = x.mean(0), y.mean(0)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    # sqrt of round-off-sized eigenvalues: ~1e-7 against a trace of ~12
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_the_low_rank_path_for_small_sets_equals_the_full_formula():
    rng = np.random.default_rng(2)
    small = FrechetStats.from_features(rng.standard_normal((20, 64)))
    other = FrechetStats.from_features(rng.standard_normal((15, 64)) * 1.3 + 0.2)
    full = frechet_distance(small.mu, small.sigma, other.mu, other.sigma)
    # the full formula takes square roots of round-off-sized eigenvalues: agreement to ~1e-8
    assert stats_distance(small, other) == pytest.approx(full, rel=1e-7)
    assert stats_distance(small, small) == pytest.approx(0.0, abs=1e-9)
    # statistics without features (loaded from .npz) take the full formula
    assert stats_distance(FrechetStats(small.mu, small.sigma), other) == pytest.approx(full, rel=1e-12)


def tiny_extractor(batch: torch.Tensor) -> torch.Tensor:
    """A stand-in for Inception: 8x8 average colour blocks (192 features)."""
    return torch.nn.functional.adaptive_avg_pool2d(batch, 8).flatten(1)


def random_faces(seed: int, count: int, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((size, size, 3), dtype=np.float32) for _ in range(count)]


def test_a_set_against_itself_is_zero_and_a_shifted_set_is_not(tmp_path):
    from facerestore.image_io import write_image

    images = random_faces(1, 12)
    assert fid(images, images, extractor=tiny_extractor) == pytest.approx(0.0, abs=1e-6)
    # the same set from a folder of PNGs (8-bit files: within rounding of the arrays)
    for i, image in enumerate(images):
        write_image(tmp_path / f"{i:02d}.png", image)
    assert fid(tmp_path, tmp_path, extractor=tiny_extractor) == pytest.approx(0.0, abs=1e-6)
    brighter = [np.clip(x + 0.1, 0, 1) for x in images]
    assert fid(brighter, images, extractor=tiny_extractor) > 0.5


def test_precomputed_statistics_round_trip(tmp_path):
    features = set_features(random_faces(2, 10), tiny_extractor)
    assert features.shape == (10, 192)
    stats = FrechetStats.from_features(features)
    stats.save(tmp_path / "ref.npz")
    again = FrechetStats.load(tmp_path / "ref.npz")
    assert again.count == 10
    assert fid(random_faces(2, 10), tmp_path / "ref.npz", extractor=tiny_extractor) == pytest.approx(0.0, abs=1e-6)
    # two sets of statistics need no feature extractor (so no Inception weights, even offline)
    shifted = FrechetStats(stats.mu + 1.0, stats.sigma)
    assert fid(shifted, tmp_path / "ref.npz") == pytest.approx(192.0, rel=1e-6)
    (tmp_path / "ref.npz").rename(tmp_path / "REF.NPZ")  # a name in capitals is the same kind of file
    assert fid(shifted, tmp_path / "REF.NPZ") == pytest.approx(192.0, rel=1e-6)


def test_unavailable_offline_without_the_inception_weights():
    images = random_faces(3, 3)
    with pytest.raises(MetricUnavailable) as info:
        fid(images, images)
    line = info.value.one_line()
    assert "pt_inception-2015-12-05-6726825d.pth" in line and "facerestore weights import" in line
    result = compute("fid", images, images)
    assert result.status == "unavailable" and "pt_inception-2015-12-05-6726825d.pth" in result.reason


def he_random_state(net) -> dict[str, torch.Tensor]:
    """Seeded He-scaled weights for every tensor of the net, BatchNorm as identity: activations stay
    O(1) through 94 layers (no denormals), and nothing is spent on torchvision's slow init."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("running_var") or (key.endswith(".weight") and value.ndim == 1):
            state[key] = torch.ones(value.shape)
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(value.shape, dtype=torch.long)
        elif value.ndim > 1:
            fan_in = value[0].numel()
            state[key] = (torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5).half().float()
        else:
            state[key] = torch.zeros(value.shape)
    return state


@pytest.mark.slow
def test_our_inception_is_basicsrs_pytorch_fid_port(tmp_path, monkeypatch):
    """Same seeded weights, ours through the store: our features equal basicsr's InceptionV3 (the
    pytorch-fid port) on the same image, resize to 299 and [-1, 1] scaling included."""
    import basicsr.archs.inception as reference
    from safetensors.torch import save_file

    from facerestore.metrics.fid import build_fid_inception, load_inception
    from facerestore.weights.store import import_file

    state = he_random_state(build_fid_inception())
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(tmp_path / "standin_inception.safetensors"))
    import_file(tmp_path / "standin_inception.safetensors", name="test_inception")
    ours = load_inception("test_inception")

    monkeypatch.setattr(reference, "load_url", lambda *args, **kwargs: state)  # instead of a download
    theirs = reference.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    batch = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(batch)[0].flatten(1)
    got = ours(batch)
    assert got.shape == (1, 2048) and float(expected.abs().mean()) > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
