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
    masks = parser(torch.rand(2, 3, 512, 512))
    assert masks.shape == (2, 512, 512) and masks.dtype == np.float32
    assert 0.0 <= masks.min() and masks.max() <= 1.0
    parsing.load_parser.cache_clear()
