"""facerestore's small one-step restorer: a residual UNet that runs at half resolution.

Shapes: x [B,3,H,W] in [-1,1] (H, W divisible by unshuffle * 2**(levels-1)) -> [B,3,H,W] in [-1,1].
Why this shape: PixelUnshuffle(2) moves the 512 crop to 256x256x12 before any convolution, which
makes the whole net about four times cheaper than a full-resolution UNet (it has to be fast on CPU
as the offline default), and the global residual (out = x + f(x)) keeps a clean input unchanged
unless the net has a reason to change it (the IDM paper's authenticity criterion).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BaselineUNetConfig:
    channels: tuple[int, ...] = (32, 64, 128, 256)  # width per level; level i works at H / (unshuffle * 2**i)
    blocks: int = 2  # residual blocks per level, on both the way down and the way up
    unshuffle: int = 2

    @property
    def multiple(self) -> int:
        """Input sides must be divisible by this."""
        return self.unshuffle * 2 ** (len(self.channels) - 1)


class ResBlock(nn.Module):
    """conv-SiLU-conv with an identity skip; no normalisation (it shifts colours in restoration)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class BaselineUNet(nn.Module):
    def __init__(self, config: BaselineUNetConfig) -> None:
        super().__init__()
        self.config = config
        c, u, n = config.channels, config.unshuffle, config.blocks
        self.entry = nn.Sequential(nn.PixelUnshuffle(u), nn.Conv2d(3 * u * u, c[0], 3, padding=1))
        self.encoder = nn.ModuleList(nn.Sequential(*(ResBlock(ch) for _ in range(n))) for ch in c)
        self.down = nn.ModuleList(nn.Conv2d(c[i], c[i + 1], 3, stride=2, padding=1) for i in range(len(c) - 1))
        self.up = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c[i + 1], c[i], 3, padding=1)) for i in range(len(c) - 1)
        )
        self.decoder = nn.ModuleList(nn.Sequential(*(ResBlock(ch) for _ in range(n))) for ch in c[:-1])
        self.exit = nn.Sequential(nn.SiLU(), nn.Conv2d(c[0], 3 * u * u, 3, padding=1), nn.PixelShuffle(u))
        nn.init.zeros_(self.exit[1].weight)  # an untrained net is the identity, not noise
        nn.init.zeros_(self.exit[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.entry(x)
        skips = []
        for level, blocks in enumerate(self.encoder):
            h = blocks(h)
            if level < len(self.down):
                skips.append(h)
                h = self.down[level](h)
        for level in reversed(range(len(self.decoder))):
            h = self.decoder[level](self.up[level](h) + skips[level])
        return x + self.exit(h)


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> BaselineUNetConfig:
    """Read the hyperparameters back from tensor shapes (raises KeyError if it is another net)."""
    entry = state_dict["entry.1.weight"]
    levels = 1 + sum(1 for k in state_dict if k.startswith("down.") and k.endswith(".weight"))
    channels = (int(entry.shape[0]),) + tuple(int(state_dict[f"down.{i}.weight"].shape[0]) for i in range(levels - 1))
    blocks = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.0.")})
    unshuffle = round((int(entry.shape[1]) / 3) ** 0.5)
    return BaselineUNetConfig(channels=channels, blocks=blocks, unshuffle=unshuffle)
