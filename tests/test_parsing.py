"""Parsing mask: class mapping, feathering, and the ParseNet checkpoint path."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from facerestore.faces import parsing
from facerestore.weights import catalogue
from facerestore.weights.catalogue import official_catalogue


def test_labels_to_mask_keeps_face_and_hair_drops_neck_cloth_background():
    labels = np.zeros((512, 512), np.int64)
    labels[100:400, 100:400] = 1  # skin
    labels[50:100, 100:400] = 13  # hair
    labels[400:512, :] = 18  # cloth
    mask = parsing.labels_to_mask(labels)
    assert mask[250, 250] > 0.99 and mask[75, 250] > 0.5  # skin and hair kept
    assert mask[480, 250] < 0.01 and mask[250, 20] < 0.01  # cloth and background dropped
    assert mask[:10].max() == 0 and mask[:, -10:].max() == 0  # zeroed frame
    assert np.abs(np.diff(mask, axis=1)).max() < 0.05  # feathered, no hard edge


def test_parsenet_checkpoint_loads_through_the_catalogue(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = parsing.build_parsenet()
    path = tmp_path / "parsing_parsenet.pth"
    torch.save(net.state_dict(), path)
    entry = official_catalogue()["parsing_parsenet"]
    fake = type(entry)(**{**entry.__dict__, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    monkeypatch.setattr(catalogue, "official_catalogue", lambda: {"parsing_parsenet": fake})
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tmp_path))
    parsing.load_parser.cache_clear()
    parser = parsing.load_parser("cpu", offline=True)
    parsing.load_parser.cache_clear()
    loaded = parser.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())


def test_parse_masks_batched():
    """Labels come from the argmax over classes; a tiny ParseNet keeps this fast."""
    from facexlib.parsing.parsenet import ParseNet

    torch.manual_seed(0)
    net = ParseNet(in_size=64, out_size=64, base_ch=8, res_depth=1, ch_range=[8, 16], parsing_ch=19).eval()
    with torch.no_grad():
        net.out_mask_conv.conv2d.weight.zero_()
        net.out_mask_conv.conv2d.bias.copy_(torch.arange(19.0) == 1)  # every pixel: class 1 (skin)
    masks = parsing.parse_masks(net, torch.rand(2, 3, 64, 64))
    assert masks.shape == (2, 64, 64) and masks.dtype == np.float32
    assert masks[:, 10:-10, 10:-10].min() > 0.0 and masks[:, :10].max() == 0.0
