"""SPARNetHD (Chen et al., "Learning Spatial Attention for Face Super-Resolution", TIP 2020): DR2's enhancer.

DR2 (Kaldwin0106/DR2_Drgradation_Remover, `SPAR/models.py:createModel("SPARNetHD2D")`) builds
`BaseModel(min_ch=32, max_ch=512, size=512, min_feat_size=32, res_depth=10, att_name='spar',
norm_type='in', relu_type='leakyrelu', bottleneck_size=4)` and then wraps every Conv2d in
`torch.nn.utils.spectral_norm`, so `SPARNetHD_FFHQ_DR2aug.pth` holds `weight_orig`, `weight_u` and
`weight_v` per convolution (ANCHORS.md 6.6). This module rebuilds that tree with the same keys;
spectral norm is applied in the constructor, before any state dict is loaded.

Shapes: x [B,3,H,W] in [-1,1] RGB (512 for the official weights; H, W divisible by
`config.multiple`) -> [B,3,H,W] in [-1,1] (not clamped).

Tree (`widths` = channels per scale, w0 at full resolution):
```
encoder.0        ConvLayer(in -> w0), bias, no norm
encoder.1..D     ResidualBlock(w_i -> w_{i+1}, down)    D = down_steps
res_layers.*     ResidualBlock(w_D -> w_D)              res_blocks of them
decoder.0..D-1   ResidualBlock(w_{D-i} -> w_{D-i-1}, up)
out_conv         ConvLayer(w0 -> out), bias, no norm
```
Each ResidualBlock: shortcut conv (when resampling or changing width), pre-activation
InstanceNorm(affine) + LeakyReLU(0.2), two ConvLayers, and an hourglass that predicts a spatial
attention map (sigmoid) multiplying the residual branch. Hourglass depths go
`hourglass_depth, hourglass_depth-1, ...` down the encoder, stay at `hourglass_depth-D+1` in the
body and grow by one per decoder block, as upstream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from facerestore.errors import UnsupportedCheckpoint

Scale = Literal["none", "down", "up"]


@dataclass(frozen=True)
class SPARNetConfig:
    """Structure of a SPARNet `BaseModel`; all fields can be read back from a state dict.

    Upstream's `(size, min_feat_size, min_ch, max_ch, res_depth, bottleneck_size)` arguments map to
    these fields through `from_base_model_args` (several argument sets give the same network).
    """

    widths: tuple[int, ...] = (102, 204, 408, 512, 512)  # channels at full resolution, /2, /4, ...
    res_blocks: int = 9
    hourglass_depth: int = 4  # depth of the first encoder block's hourglass
    hourglass_channels: int = 64
    attention: Literal["spar", "spar3d"] = "spar"  # one attention map per position, or one per channel too
    spectral_norm: bool = True
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2:
            raise ValueError(f"SPARNet needs at least one downsampling step, got widths {self.widths}")
        if self.hourglass_depth - self.down_steps + 1 < 0:
            raise ValueError(f"hourglass_depth {self.hourglass_depth} is too small for {self.down_steps} downsampling steps")
        if self.attention not in ("spar", "spar3d"):
            raise ValueError(f"attention must be 'spar' or 'spar3d', got {self.attention!r}")

    @property
    def down_steps(self) -> int:
        return len(self.widths) - 1

    @property
    def multiple(self) -> int:
        """Input sides must be divisible by this (downsampling steps plus the deepest hourglass)."""
        return 2 ** (self.down_steps + max(self.hourglass_depth - self.down_steps + 1, 0))

    @classmethod
    def hd2d_512(cls) -> SPARNetConfig:
        """SPARNetHD2D as DR2 builds it: 85.79M params, runs at 512."""
        return cls.from_base_model_args(size=512, min_ch=32, max_ch=512, min_feat_size=32, res_depth=10, bottleneck_size=4, att_name="spar")

    @classmethod
    def from_base_model_args(
        cls,
        *,
        size: int,
        min_ch: int,
        max_ch: int,
        min_feat_size: int,
        res_depth: int,
        bottleneck_size: int,
        att_name: Literal["spar", "spar3d"],
        ch_in: int = 3,
        spectral_norm: bool = True,
    ) -> SPARNetConfig:
        """The structure upstream `BaseModel(...)` builds from its arguments (norm 'in', relu 'leakyrelu')."""

        def clip(c: int) -> int:
            return max(min_ch, min(c, max_ch))

        down_steps = int(math.log2(size // min_feat_size))
        base = clip(max_ch // (down_steps + 1))
        return cls(
            widths=tuple(clip(base * 2**i) for i in range(down_steps + 1)),
            res_blocks=res_depth + 3 - down_steps,
            hourglass_depth=int(math.log2(64 / bottleneck_size)),
            attention=att_name,
            spectral_norm=spectral_norm,
            in_channels=ch_in,
            out_channels=3,
        )


class ConvLayer(nn.Module):
    """[nearest x2 when up] -> reflection pad -> conv k x k (stride 2 when down) -> [InstanceNorm] -> [LeakyReLU 0.2].

    Keys: `conv2d.*` and, with `norm`, `norm.norm.{weight,bias}`. The conv has a bias only without norm.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, scale: Scale = "none", norm: bool = False, relu: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.pad = kernel // 2
        self.conv2d = nn.Conv2d(cin, cout, kernel, 2 if scale == "down" else 1, bias=not norm)
        if norm:
            self.norm = InstanceNorm(cout)
        self.use_norm, self.relu = norm, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(F.pad(x, (self.pad,) * 4, mode="reflect"))
        if self.use_norm:
            x = self.norm(x)
        return F.leaky_relu(x, 0.2) if self.relu else x


class InstanceNorm(nn.Module):
    """InstanceNorm2d(affine) under upstream's `NormLayer` key name: `norm.weight`, `norm.bias`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class HourGlass(nn.Module):
    """Spatial attention: x [B,C,H,W] -> x * sigmoid(hourglass(x)); identity at depth 0.

    The attention map has 1 channel ('spar') or C channels ('spar3d'). H and W must be divisible by
    2**depth. Submodules `b1_l`, `b2_l`, `b2_plus_1`, `b3_l` for l = depth..1, and `out_block.0`.
    """

    def __init__(self, depth: int, channels: int, mid: int, attn_channels: int) -> None:
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):  # registration order of upstream's recursion
            cin = channels if level == depth else mid
            self.add_module(f"b1_{level}", ConvLayer(cin, mid, norm=True, relu=True))
            self.add_module(f"b2_{level}", ConvLayer(cin, mid, scale="down", norm=True, relu=True))
            if level == 1:
                self.add_module("b2_plus_1", ConvLayer(mid, mid, norm=True, relu=True))
        for level in range(1, depth + 1):
            self.add_module(f"b3_{level}", ConvLayer(mid, mid, scale="up", norm=True, relu=True))
        if depth:
            self.out_block = nn.Sequential(ConvLayer(mid, attn_channels), nn.Sigmoid())

    def _hourglass(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up1 = self._modules[f"b1_{level}"](x)
        low = self._modules[f"b2_{level}"](x)
        low = self._hourglass(level - 1, low) if level > 1 else self._modules["b2_plus_1"](low)
        up2 = self._modules[f"b3_{level}"](low)
        if up2.shape[2:] != up1.shape[2:]:
            up2 = F.interpolate(up2, up1.shape[2:])
        return up1 + up2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.depth:
            return x
        return x * self.out_block(self._hourglass(self.depth, x))


class ResidualBlock(nn.Module):
    """x [B,cin,H,W] -> [B,cout,H',W'] (H' = H/2 down, 2H up): shortcut(x) + attention(conv2(conv1(preact(x))))."""

    def __init__(self, cin: int, cout: int, scale: Scale, hourglass_depth: int, hourglass_channels: int, attention: str) -> None:
        super().__init__()
        if scale != "none" or cin != cout:
            self.shortcut_func = ConvLayer(cin, cout, 3, scale)
        else:
            self.shortcut_func = nn.Identity()
        self.preact_func = nn.Sequential(InstanceNorm(cin), nn.LeakyReLU(0.2))
        scales: tuple[Scale, Scale] = {"down": ("none", "down"), "up": ("up", "none"), "none": ("none", "none")}[scale]
        self.conv1 = ConvLayer(cin, cout, 3, scales[0], norm=True, relu=True)
        self.conv2 = ConvLayer(cout, cout, 3, scales[1], norm=True)
        self.att_func = HourGlass(hourglass_depth, cout, hourglass_channels, 1 if attention == "spar" else cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut_func(x) + self.att_func(self.conv2(self.conv1(self.preact_func(x))))


class SPARNetHD(nn.Module):
    """SPARNet `BaseModel` with spectral-norm convolutions (when `config.spectral_norm`).

    forward(x [B, in_channels, H, W] in [-1,1]) -> [B, out_channels, H, W]. Spectral norm uses the
    stored `weight_u`/`weight_v` in eval mode and runs one power iteration per forward in train mode
    (torch.nn.utils.spectral_norm).
    """

    def __init__(self, config: SPARNetConfig) -> None:
        super().__init__()
        self.config = config
        c, w, depth = config, config.widths, config.hourglass_depth
        block = {"hourglass_channels": c.hourglass_channels, "attention": c.attention}
        encoder: list[nn.Module] = [ConvLayer(c.in_channels, w[0], 3)]
        for i in range(c.down_steps):
            encoder.append(ResidualBlock(w[i], w[i + 1], "down", depth - i, **block))
        self.encoder = nn.Sequential(*encoder)
        body_depth = depth - c.down_steps + 1
        self.res_layers = nn.Sequential(*(ResidualBlock(w[-1], w[-1], "none", body_depth, **block) for _ in range(c.res_blocks)))
        self.decoder = nn.Sequential(
            *(ResidualBlock(w[c.down_steps - i], w[c.down_steps - i - 1], "up", body_depth + 1 + i, **block) for i in range(c.down_steps))
        )
        self.out_conv = ConvLayer(w[0], c.out_channels, 3)
        if c.spectral_norm:
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.utils.spectral_norm(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} is not divisible by {m}")
        return self.out_conv(self.decoder(self.res_layers(self.encoder(x))))


def _conv_key(state: Mapping[str, torch.Tensor], prefix: str) -> str:
    for suffix in ("weight_orig", "weight"):
        if f"{prefix}.conv2d.{suffix}" in state:
            return f"{prefix}.conv2d.{suffix}"
    raise UnsupportedCheckpoint(f"not a SPARNet state dict: no convolution weight under {prefix!r}", hint="pass DR2's SPARNetHD_FFHQ_DR2aug.pth")


def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    found = {k[len(prefix) + 1 :].split(".", 1)[0] for k in state if k.startswith(prefix + ".")}
    return len(found)


def infer_config(state: Mapping[str, torch.Tensor]) -> SPARNetConfig:
    """Read a `SPARNetConfig` from key names and tensor shapes (raises `UnsupportedCheckpoint` when
    SPARNet's keys are absent; other mismatches are found by `load_strict`)."""
    first = _conv_key(state, "encoder.0")
    spectral = first.endswith("weight_orig")
    down_steps = _count(state, "encoder") - 1
    if down_steps < 1:
        raise UnsupportedCheckpoint("not a SPARNet state dict: the encoder has no downsampling blocks")
    widths = [state[first].shape[0]] + [state[_conv_key(state, f"encoder.{i}.conv1")].shape[0] for i in range(1, down_steps + 1)]
    hourglass = "encoder.1.att_func"
    depth = sum(1 for k in state if k.startswith(f"{hourglass}.b1_") and k.endswith(".conv2d." + ("weight_orig" if spectral else "weight")))
    if depth:
        mid = state[_conv_key(state, f"{hourglass}.b1_{depth}")].shape[0]
        attn = state[_conv_key(state, f"{hourglass}.out_block.0")].shape[0]
    else:
        mid, attn = SPARNetConfig.hourglass_channels, 1
    try:
        return SPARNetConfig(
            widths=tuple(widths),
            res_blocks=_count(state, "res_layers"),
            hourglass_depth=depth,
            hourglass_channels=mid,
            attention="spar" if attn == 1 else "spar3d",
            spectral_norm=spectral,
            in_channels=state[first].shape[1],
            out_channels=state[_conv_key(state, "out_conv")].shape[0],
        )
    except ValueError as exc:
        raise UnsupportedCheckpoint(f"SPARNet state dict with an unusable shape: {exc}") from None
