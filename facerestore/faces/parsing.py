"""Face-parsing mask for paste-back (ANCHORS.md 1.4): blend the face, keep the photo's neck, clothes and background.

ParseNet (facexlib, 19 classes at 512) labels the restored crop; classes 0 background, 14 hat,
16 necklace, 17 neck and 18 cloth become 0, everything else (skin, features, hair, earrings) 1. As in
facexlib the mask is blurred twice (101x101, sigma 11) and a 10-pixel frame is zeroed. paste.py
multiplies it into the square soft mask: the product is never larger than either mask, like the
CodeFormer fork's min(), but keeps the smooth edge of both.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np
import torch

DROPPED_CLASSES = (0, 14, 16, 17, 18)
BLUR_KERNEL, BLUR_SIGMA, FRAME = 101, 11, 10

Parser = Callable[[torch.Tensor], np.ndarray]  # crops [B,3,512,512] in [0,1] -> masks [B,512,512] float32


def labels_to_mask(labels: np.ndarray) -> np.ndarray:
    """Integer class map HxW -> feathered float32 mask in [0,1] (facexlib's recipe)."""
    mask = np.isin(labels, DROPPED_CLASSES, invert=True).astype(np.float32)
    for _ in range(2):
        mask = cv2.GaussianBlur(mask, (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA)
    mask[:FRAME], mask[-FRAME:], mask[:, :FRAME], mask[:, -FRAME:] = 0, 0, 0, 0
    return np.clip(mask, 0.0, 1.0)


def build_parsenet() -> torch.nn.Module:
    """facexlib's ParseNet in the configuration of the published parsing_parsenet.pth."""
    from facexlib.parsing.parsenet import ParseNet

    return ParseNet(in_size=512, out_size=512, parsing_ch=19)


class ParsingModel:
    """A loaded parsing net, callable as a `Parser`."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net

    def __call__(self, crops: torch.Tensor) -> np.ndarray:
        return parse_masks(self.net, crops)


@lru_cache(maxsize=2)
def load_parser(device: str = "cpu", offline: bool | None = None) -> ParsingModel:
    """The parsing model from the weights catalogue (`parsing_parsenet`), loaded strictly, once per process."""
    from facerestore.weights.checkpoint import load_strict, read_state_dict
    from facerestore.weights.store import display_name, resolve

    path = resolve("parsing_parsenet", offline=offline)
    return ParsingModel(load_strict(build_parsenet(), read_state_dict(path), display_name(path)).to(device).eval())


@torch.inference_mode()
def parse_masks(net: torch.nn.Module, crops: torch.Tensor) -> np.ndarray:
    """Batched: crops [B,3,512,512] RGB in [0,1] -> masks [B,512,512]."""
    device = next(net.parameters()).device
    logits = net(crops.to(device) * 2.0 - 1.0)[0]
    labels = logits.argmax(dim=1).cpu().numpy()
    return np.stack([labels_to_mask(item) for item in labels])
