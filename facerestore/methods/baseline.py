"""`baseline`: the small one-step UNet facerestore trains and ships (the offline default).

An L1 regression restorer (IDM eq. 7 without the diffusion chain) trained on IDM eq. 11 degradations
of FFHQ faces by `python -m facerestore.training.train_baseline`; facerestore/models/baseline.json
records its data, steps and time; docs/baseline-model.md its measured quality. It is the default until the project's own IDM
model ships. It is not a diffusion method and, being one-step, is deterministic.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from facerestore.devices import Autocast, autocast_dtype, for_inference
from facerestore.errors import UnsupportedCheckpoint, WeightsError
from facerestore.methods.base import MethodInfo, MethodOptions
from facerestore.nets.baseline_unet import BaselineUNet, infer_config
from facerestore.weights.checkpoint import BUNDLED_DAMAGED, load_strict, read_state_dict
from facerestore.weights.store import display_name, loading_option, resolve_explicit

INFO = MethodInfo(
    name="baseline",
    summary="facerestore's own small one-step UNet (L1 on IDM eq. 11 degradations); ships with the package, fast on CPU",
    paper="none: the offline default while the bundled idm model still loses identity on severe damage (docs/baseline-model.md, docs/idm-model.md)",
    license="MIT code; weights trained on FFHQ (CC BY-NC-SA 4.0 data)",
    commercial_use=False,
)


def bundled_weights() -> Path:
    """The safetensors file shipped inside the package."""
    return Path(str(resources.files("facerestore") / "models" / "baseline.safetensors"))


def bundled_card() -> dict:
    """How the bundled model was trained and how well it does (written by the training script)."""
    card = Path(str(resources.files("facerestore") / "models" / "baseline.json"))
    return json.loads(card.read_text()) if card.is_file() else {}


class BaselineMethod:
    info = INFO

    def __init__(self, options: MethodOptions) -> None:
        self.autocast = autocast_dtype(options.device, options.precision, auto_on_cuda=False)  # before reading weights
        if options.weights is not None:
            path = resolve_explicit(options.weights, offline=options.offline, catalogued=(), option=options.weights_option)
        else:
            path = bundled_weights()
            if not path.is_file():
                raise WeightsError(f"the bundled model {path} is missing from this installation", hint=f"reinstall facerestore, or pass {options.weights_option} FILE")
        with loading_option(options.weights_option, named=options.weights is not None, otherwise=BUNDLED_DAMAGED):  # a bad --weights file: exit 2
            state = {k: v.float() for k, v in read_state_dict(path).items()}
            try:
                config = infer_config(state)
            except (KeyError, IndexError) as exc:
                raise UnsupportedCheckpoint(f"{display_name(path)} is not a baseline UNet checkpoint (no {exc})", hint="pass a file written by facerestore.training.train_baseline") from None
            self.net = load_strict(BaselineUNet(config), state, display_name(path))
        self.multiple = config.multiple
        self.weights_files = {"weights": path}
        self.device = torch.device(options.device)
        for_inference(self.net, self.device)

    @torch.inference_mode()
    def restore(self, crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """On the CPU one face per forward pass: a batch of 8 512-px faces has activations far beyond
        the caches and ran 27% slower per face in fp32, 20% in bf16 (bench/bench_pipeline.py); the
        result is the same bit for bit. A GPU gets the whole batch."""
        if not len(crops):
            return crops.clone()
        net = Autocast(self.net, self.autocast)
        x = crops.to(self.device) * 2.0 - 1.0
        out = torch.cat([net(part) for part in x.split(1 if self.device.type == "cpu" else len(x))])
        return ((out.clamp(-1.0, 1.0) + 1.0) / 2.0).to(crops.device)
