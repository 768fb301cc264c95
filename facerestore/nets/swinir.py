"""DifFace's SwinIR restoration estimator, on spandrel's SwinIR module (ANCHORS.md 5.2).

DifFace (`models/swinir.py`, `configs/sample/iddpm_ffhq512_swinir.yaml`) builds SwinIR with
`conv_first = Sequential(PixelUnshuffle(8), Conv2d(3*64, 180, 3, 1, 1))`, so its checkpoint
`swinir_restoration512_L1.pth` has `conv_first.1.*` keys, and upsamples x8 with "nearest+conv":
a 512 face goes to 64x64 features and back to 512. spandrel's SwinIR has the same layers and
forward pass; it unshuffles inside `forward` (`start_unshuffle`) and names the conv `conv_first`.
`build_swinir` therefore builds spandrel's module without the unshuffle and puts DifFace's
`Sequential(PixelUnshuffle, conv)` in `conv_first`: keys, buffers (`attn_mask`,
`relative_position_index`) and outputs are then DifFace's own.

Shapes: x [B,3,H,W] RGB in [0,1] (512 for the official weights; H, W divisible by
`unshuffle * window_size`) -> [B,3,H*upscale/unshuffle,W*upscale/unshuffle] in [0,1] (not
clamped; DifFace clamps). The mean (0.4488,0.4371,0.4040) is subtracted inside.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from spandrel.architectures.SwinIR import SwinIR
from spandrel.util import get_pixelshuffle_params, get_seq_len
from torch import nn

from facerestore.errors import UnsupportedCheckpoint

Upsampler = Literal["nearest+conv", "pixelshuffle", "pixelshuffledirect", ""]


@dataclass(frozen=True)
class SwinIRConfig:
    """SwinIR hyperparameters. `infer_config` reads all of them from a state dict except
    `drop_path_rate` (training only) and `img_range` (1.0 in DifFace's models; 255 in SwinIR's JPEG ones)."""

    img_size: int = 64  # side of the feature map the attention masks are stored for (after unshuffle)
    embed_dim: int = 180
    depths: tuple[int, ...] = (6,) * 8
    num_heads: tuple[int, ...] = (6,) * 8
    window_size: int = 8
    mlp_ratio: float = 2.0
    upscale: int = 8
    unshuffle: int = 8  # PixelUnshuffle factor inside conv_first; 1 = a plain conv_first
    upsampler: Upsampler = "nearest+conv"
    resi_connection: Literal["1conv", "3conv"] = "1conv"
    img_range: float = 1.0
    in_channels: int = 3
    drop_path_rate: float = 0.1  # stochastic depth while training (SwinIR's default, used by DifFace)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        object.__setattr__(self, "mlp_ratio", float(self.mlp_ratio))
        object.__setattr__(self, "img_range", float(self.img_range))
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} need one entry per stage")
        if any(self.embed_dim % h for h in self.num_heads):
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.upsampler == "nearest+conv" and self.upscale not in (2, 4, 8):
            raise ValueError(f"'nearest+conv' upsamples by 2, 4 or 8, not {self.upscale}")
        if self.upsampler == "" and self.upscale != 1:
            raise ValueError(f"upsampler '' keeps the size; upscale must be 1, not {self.upscale}")

    @property
    def multiple(self) -> int:
        """Input sides must be divisible by this."""
        return self.unshuffle * self.window_size

    @classmethod
    def difface_512(cls) -> SwinIRConfig:
        """DifFace's estimator `swinir_restoration512_L1.pth`: 15.79M params, [0,1] RGB 512 -> 512."""
        return cls()


def build_swinir(config: SwinIRConfig) -> SwinIR:
    """spandrel's SwinIR with DifFace's `conv_first = Sequential(PixelUnshuffle(u), conv)`.

    forward(x [B, in_channels, H, W] in [0,1]) -> [B, in_channels, H*upscale/u, W*upscale/u].
    """
    c = config
    with warnings.catch_warnings():
        # spandrel's SwinIR calls torch.meshgrid without `indexing`; the default ("ij") is the one it means
        warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)
        net = SwinIR(
            img_size=c.img_size,
            patch_size=1,
            in_chans=c.in_channels,
            embed_dim=c.embed_dim,
            depths=list(c.depths),
            num_heads=list(c.num_heads),
            window_size=c.window_size,
            mlp_ratio=c.mlp_ratio,
            drop_path_rate=c.drop_path_rate,
            upscale=c.upscale,
            img_range=c.img_range,
            upsampler=c.upsampler,
            resi_connection=c.resi_connection,
            start_unshuffle=1,  # the unshuffle goes into conv_first instead
        )
    if c.unshuffle > 1:
        conv = nn.Conv2d(c.in_channels * c.unshuffle**2, c.embed_dim, 3, 1, 1)
        net.conv_first = nn.Sequential(nn.PixelUnshuffle(c.unshuffle), conv)  # DifFace's layout and keys
    return net


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise UnsupportedCheckpoint(f"not a SwinIR state dict: key {key!r} is missing", hint="pass DifFace's swinir_restoration512_L1.pth")
    return state[key]


def infer_config(state: Mapping[str, torch.Tensor]) -> SwinIRConfig:
    """Read a `SwinIRConfig` from key names and tensor shapes (the rules of spandrel's SwinIR loader,
    without its guess `img_range = 255 if window_size == 7`: DifFace's models use 1.0)."""
    block = "layers.0.residual_group.blocks.0"
    if "conv_first.1.weight" in state:
        first = state["conv_first.1.weight"]
        unshuffle = round(math.sqrt(first.shape[1] // 3))  # as spandrel: DifFace's estimators take RGB
        in_channels = first.shape[1] // unshuffle**2
    else:
        first = _need(state, "conv_first.weight")
        unshuffle, in_channels = 1, first.shape[1]
    embed_dim = first.shape[0]
    window = round(math.sqrt(_need(state, f"{block}.attn.relative_position_index").shape[0]))
    mask = state.get("layers.0.residual_group.blocks.1.attn_mask")
    if mask is None:
        raise UnsupportedCheckpoint("SwinIR state dict without attn_mask buffers: the training size is unknown", hint="pass a checkpoint saved with its buffers")
    img_size = round(math.sqrt(mask.shape[0])) * window
    stages = get_seq_len(state, "layers")
    depths = tuple(get_seq_len(state, f"layers.{i}.residual_group.blocks") for i in range(stages))
    heads = tuple(_need(state, f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table").shape[1] for i in range(stages))
    if "conv_before_upsample.0.weight" in state:
        if "conv_up1.weight" in state:
            upsampler: Upsampler = "nearest+conv"
            upscale = 2 ** sum(1 for i in (1, 2, 3) if f"conv_up{i}.weight" in state)
        else:
            upsampler = "pixelshuffle"
            upscale, _ = get_pixelshuffle_params(dict(state), "upsample")  # spandrel's SwinIR fixes num_feat = 64
    elif "upsample.0.weight" in state:
        upsampler = "pixelshuffledirect"
        upscale = round(math.sqrt(state["upsample.0.bias"].shape[0] // in_channels))
    else:
        upsampler, upscale = "", 1
    try:
        return SwinIRConfig(
            img_size=img_size,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=heads,
            window_size=window,
            mlp_ratio=_need(state, f"{block}.mlp.fc1.bias").shape[0] / embed_dim,
            upscale=upscale,
            unshuffle=unshuffle,
            upsampler=upsampler,
            resi_connection="1conv" if "conv_after_body.weight" in state else "3conv",
            in_channels=in_channels,
        )
    except ValueError as exc:
        raise UnsupportedCheckpoint(f"SwinIR state dict with an unusable shape: {exc}") from None
