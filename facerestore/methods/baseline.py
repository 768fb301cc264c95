"""`baseline`: the small feed-forward UNet facerestore trains and ships (the offline default).

It is an L1 regression restorer trained on eq. 11 degradations of FFHQ faces (see
facerestore/models/baseline.json for data, steps and measured quality). It is a placeholder
default until the project's own IDM model ships; it is not a diffusion method.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from facerestore.methods.base import MethodInfo, MethodOptions
from facerestore.nets.baseline_unet import BaselineUNet, infer_config
from facerestore.weights.checkpoint import load_strict, read_state_dict

INFO = MethodInfo(
    name="baseline",
    summary="small UNet regression restorer trained by facerestore (offline default, fast on CPU)",
    paper="none: facerestore's own model (IDM eq. 11 degradations, L1 loss)",
    license="MIT (weights trained by facerestore on FFHQ, CC BY-NC-SA 4.0 data)",
    commercial_use=False,
)


def bundled_weights() -> Path:
    """The safetensors file shipped inside the package."""
    return Path(str(resources.files("facerestore") / "models" / "baseline.safetensors"))


def bundled_card() -> dict:
    card = Path(str(resources.files("facerestore") / "models" / "baseline.json"))
    return json.loads(card.read_text()) if card.is_file() else {}


class BaselineMethod:
    info = INFO

    def __init__(self, options: MethodOptions) -> None:
        path = options.weights or bundled_weights()
        state = read_state_dict(path)
        self.net = BaselineUNet(infer_config(state))
        load_strict(self.net, state, path)
        self.device = torch.device(options.device)
        self.net.to(self.device).eval()

    @torch.inference_mode()
    def restore(self, crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = crops.to(self.device) * 2.0 - 1.0
        return ((self.net(x).clamp(-1.0, 1.0) + 1.0) / 2.0).to(crops.device)
