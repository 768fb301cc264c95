"""LPIPS-vgg: unavailable (clearly) without the backbone offline; with a stand-in backbone imported
through the weights store it is 0 on identical images and equals the lpips package's own module."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lpips")

import torch  # noqa: E402

from facerestore.metrics import compute  # noqa: E402
from facerestore.metrics.lpips import lpips_distance  # noqa: E402
from facerestore.metrics.result import MetricUnavailable  # noqa: E402
from facerestore.weights.store import import_file  # noqa: E402


def image_pair(seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random((size, size, 3), dtype=np.float32)
    b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    return a, b


@pytest.fixture(scope="module")
def reference_lpips():
    """The lpips package's module with a random (seeded) trunk, its weights rounded to float16."""
    import lpips

    torch.manual_seed(0)
    net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    with torch.no_grad():
        for p in net.net.parameters():
            p.copy_(p.half().float())
    return net


@pytest.fixture(scope="module")
def standin_file(reference_lpips, tmp_path_factory):
    """The reference module's trunk saved under torchvision's key names (float16 keeps it at 29 MB)."""
    from safetensors.torch import save_file

    state = {}
    for key, value in reference_lpips.net.state_dict().items():  # slice3.10.weight -> features.10.weight
        _, index, param = key.split(".")
        state[f"features.{index}.{param}"] = value.half().contiguous()
    path = tmp_path_factory.mktemp("lpips") / "standin_vgg16.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture
def standin_backbone(standin_file) -> str:
    """The stand-in imported into this test's weights home as the user's own weights 'test_vgg'."""
    import_file(standin_file, name="test_vgg")
    return "test_vgg"


def test_unavailable_offline_without_the_backbone():
    a, b = image_pair(0)
    with pytest.raises(MetricUnavailable) as info:
        lpips_distance(a, b)
    line = info.value.one_line()
    assert "LPIPS-vgg is unavailable" in line
    assert "vgg16-397923af.pth" in line
    assert "facerestore weights import vgg16-397923af.pth" in line
    result = compute("lpips", a, b)
    assert result.status == "unavailable" and result.value is None
    assert "vgg16-397923af.pth" in result.reason


def test_identical_images_are_at_distance_zero(standin_backbone):
    a, b = image_pair(1)
    assert lpips_distance(a, a, weights=standin_backbone) == pytest.approx(0.0, abs=1e-7)
    assert lpips_distance(a, b, weights=standin_backbone) > 1e-3


def test_equals_the_lpips_package_with_the_same_backbone(standin_backbone, reference_lpips):
    """Checks the key mapping, the package's heads and the [0,1] -> [-1,1] input convention."""
    a, b = image_pair(2)
    with torch.no_grad():
        expected = reference_lpips(
            torch.from_numpy(a.transpose(2, 0, 1))[None], torch.from_numpy(b.transpose(2, 0, 1))[None], normalize=True
        ).item()
    assert lpips_distance(a, b, weights=standin_backbone) == pytest.approx(expected, rel=1e-5)


def test_a_checkpoint_without_vgg_features_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "not_vgg.safetensors"
    save_file({"classifier.0.weight": torch.zeros(2, 2)}, str(path))
    import_file(path, name="not_vgg")
    a, b = image_pair(3)
    result = compute("lpips", a, b, weights="not_vgg")
    assert result.value is None and "features.0.weight" in result.reason
