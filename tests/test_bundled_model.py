"""The models shipped inside the package (`baseline`, and the compact `idm`): each is there, loads
strictly, matches its card, and on real held-out faces (../shared) improves medium damage while
barely touching clean faces."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
import torch

from facerestore.image_io import list_images, read_image
from facerestore.methods.base import MethodOptions
from facerestore.methods.baseline import BaselineMethod, bundled_card, bundled_weights
from facerestore.methods.idm import IDMMethod
from facerestore.methods.idm import bundled_weights as idm_bundled_weights
from facerestore.nets.idm_unet import idm_unet_config
from facerestore.training.degradations import degrade

pytestmark = pytest.mark.usefixtures("one_thread")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def check_shipped(method, net: torch.nn.Module, path, card: dict, faces: int) -> None:
    """The bundled file matches its card (parameters, sha256) and restores random crops to valid images."""
    assert sum(p.numel() for p in net.parameters()) == card["params"]
    crops = torch.rand(faces, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    out = method.restore(crops, generator=torch.Generator().manual_seed(0))
    assert out.shape == crops.shape and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]


def held_out_psnr(method, shared_data, count: int) -> tuple[float, float, float]:
    """Mean PSNR on the last `count` CelebA-HQ faces (never trained on): medium-damaged input, its
    restoration, and the restoration of the clean face (the authenticity criterion)."""
    paths, _ = list_images([shared_data / "faces-hq" / "celeba-hq"])
    faces = [cv2.resize(read_image(p).rgb, (512, 512), interpolation=cv2.INTER_AREA) for p in paths[-count:]]
    rng = np.random.default_rng(0)
    degraded = [degrade(f, rng, "medium")[0] for f in faces]

    def restore(images):
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        return method.restore(batch, generator=torch.Generator().manual_seed(0)).permute(0, 2, 3, 1).numpy()

    def mean_psnr(images) -> float:
        return float(np.mean([psnr(i, f) for i, f in zip(images, faces, strict=True)]))

    return mean_psnr(degraded), mean_psnr(restore(degraded)), mean_psnr(restore(faces))


def test_bundled_model_is_shipped_and_matches_its_card():
    path = bundled_weights()
    assert path.is_file(), "facerestore/models/baseline.safetensors is part of the package"
    card = bundled_card()
    assert card["name"] == "baseline" and card["keep_size"] is True and card["steps"] >= 1000
    method = BaselineMethod(MethodOptions())  # no --weights: the bundled file
    check_shipped(method, method.net, path, card, faces=2)


def test_baseline_runs_one_face_per_forward_on_the_cpu_with_the_batched_result(tiny_baseline):
    method = BaselineMethod(MethodOptions(weights=tiny_baseline))
    crops = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        batched = ((method.net(crops * 2 - 1).clamp(-1, 1) + 1) / 2)
    sizes = []
    method.net.register_forward_hook(lambda module, args, output: sizes.append(len(args[0])))
    out = method.restore(crops)
    assert sizes == [1, 1, 1]
    torch.testing.assert_close(out, batched, rtol=0, atol=1e-6)
    assert method.restore(crops[:0]).shape == (0, 3, 64, 64)


def test_bundled_model_restores_held_out_faces(shared_data):
    """Four CelebA-HQ faces (never trained on): medium eq. 11 damage gets better, clean faces stay."""
    before, after, clean = held_out_psnr(BaselineMethod(MethodOptions()), shared_data, 4)
    assert after > before, (before, after)
    assert clean > 33, clean  # the authenticity criterion: a clean face is left (nearly) alone


# ----------------------------------------------------------------- the bundled IDM model


def test_bundled_idm_is_shipped_and_matches_its_card():
    path = idm_bundled_weights()
    assert path.is_file(), "facerestore/models/idm.safetensors is part of the package"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["preset"] == "compact" and card["image_size"] == 512 and card["unet"]["input_residual"] == 3
    method = IDMMethod(MethodOptions(steps=2))  # no --weights: the bundled file
    assert method.model.net.config == idm_unet_config("compact", 512)
    check_shipped(method, method.model.net, path, card, faces=1)


def test_bundled_idm_restores_held_out_faces_in_ten_steps(shared_data):
    """Three CelebA-HQ faces (never trained on), the default 10 steps: medium damage gets better, clean faces stay."""
    before, after, clean = held_out_psnr(IDMMethod(MethodOptions()), shared_data, 3)
    assert after > before, (before, after)
    assert clean > 33, clean  # the authenticity criterion
