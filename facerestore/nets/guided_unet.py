"""The guided-diffusion UNet (Dhariwal & Nichol 2021), key- and shape-compatible with its checkpoints.

Two official checkpoints load into it unchanged (ANCHORS.md 4.5, 5.2, 6.5):
- DifFace's 512 prior `iddpm_ffhq512_ema500000.pth` (DifFace's `models/unet.py`, which allows a
  different number of residual blocks per level): `UNetConfig.difface_512()`;
- DR2's 256 DDPM `DR2_FFHQ.pkl` (guided-diffusion `create_model` with ILVR's FFHQ flags):
  `UNetConfig.dr2_256()`.

Module tree (names are the checkpoint keys):
```
time_embed            Linear(C, 4C) - SiLU - Linear(4C, 4C)               C = model_channels
input_blocks.0        [conv3x3(in_channels -> w0)]
input_blocks.i        [ResBlock (+ AttentionBlock)]  per level, num_res_blocks[level] times
                      [Downsample | down-ResBlock]    between levels
middle_block          [ResBlock, AttentionBlock, ResBlock]
output_blocks.j       [ResBlock(h ++ skip) (+ AttentionBlock) (+ Upsample | up-ResBlock)]
                      num_res_blocks[level] + 1 per level, deepest level first
out                   GroupNorm32 - SiLU - conv3x3(w0 -> out_channels)
```
Level `l` works at `H / 2**l` with `model_channels * channel_mult[l]` channels. Upstream gives
attention places as feature-map sizes (DifFace: pixels, e.g. [32, 16, 8] at 512) or downsample
rates (guided-diffusion: e.g. [16] at 256); both name levels, so the config stores the levels
(`attention_levels_for` converts).

Numerics follow upstream: GroupNorm (32 groups) runs in float32 and casts back; the sinusoidal
timestep embedding is built in float32. Attention is `scaled_dot_product_attention` with the legacy
head split (heads first, then q/k/v inside each head), which equals `QKVAttentionLegacy`.
Everything else runs under `torch.autocast` (bf16/fp16) or after `net.to(dtype)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facerestore.errors import UnsupportedCheckpoint

GROUPS = 32  # GroupNorm32: every normalised width must be a multiple of this


@dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of `GuidedUNet`; every field but `num_head_channels` and `dropout` can be
    read back from a state dict (`infer_config`)."""

    model_channels: int
    channel_mult: tuple[float, ...]  # width of level l = int(model_channels * channel_mult[l])
    num_res_blocks: tuple[int, ...]  # residual blocks per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...]  # levels whose residual blocks are followed by self-attention
    in_channels: int = 3
    out_channels: int = 6  # 6 = learn_sigma (eps and the variance interpolation v)
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False  # residual blocks do the up/downsampling (else Upsample/Downsample)
    conv_resample: bool = True  # Upsample/Downsample with a 3x3 conv (else nearest / average pooling)
    dropout: float = 0.0
    pixel_unshuffle: int = 1  # > 1: space-to-depth by this factor before the first conv, depth-to-space after the last
    input_residual: int | None = None  # k: the output is added to input channels [k, k + out_channels) (IDM: x_d, k = 3)

    def __post_init__(self) -> None:
        mult = tuple(int(m) if float(m).is_integer() else float(m) for m in self.channel_mult)
        object.__setattr__(self, "channel_mult", mult)
        object.__setattr__(self, "num_res_blocks", tuple(int(n) for n in self.num_res_blocks))
        object.__setattr__(self, "attention_levels", tuple(sorted(int(a) for a in self.attention_levels)))
        levels = len(self.channel_mult)
        if levels == 0 or len(self.num_res_blocks) != levels:
            raise ValueError(f"channel_mult and num_res_blocks need one entry per level, got {self.channel_mult} and {self.num_res_blocks}")
        if min(self.num_res_blocks) < 1:
            raise ValueError(f"every level needs at least one residual block, got {self.num_res_blocks}")
        if any(not 0 <= a < levels for a in self.attention_levels):
            raise ValueError(f"attention_levels {self.attention_levels} outside 0..{levels - 1}")
        if any(w % GROUPS for w in self.widths):
            raise ValueError(f"level widths {self.widths} must be multiples of {GROUPS} (GroupNorm32)")
        if self.pixel_unshuffle < 1:
            raise ValueError(f"pixel_unshuffle must be at least 1, got {self.pixel_unshuffle}")
        if self.input_residual is not None and not 0 <= self.input_residual <= self.in_channels - self.out_channels:
            raise ValueError(f"input_residual {self.input_residual} needs {self.out_channels} input channels from there, the input has {self.in_channels}")
        if self.num_head_channels < 1:
            raise ValueError(f"num_head_channels must be positive, got {self.num_head_channels}")
        for level in (*self.attention_levels, levels - 1):  # the middle block always attends
            if self.widths[level] % self.num_head_channels:
                raise ValueError(f"width {self.widths[level]} at level {level} is not a multiple of num_head_channels {self.num_head_channels}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels per level."""
        return tuple(int(m * self.model_channels) for m in self.channel_mult)

    @property
    def multiple(self) -> int:
        """Input sides must be divisible by this (the unshuffle, then one halving per level below the first)."""
        return self.pixel_unshuffle * 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def difface_512(cls) -> UNetConfig:
        """DifFace's FFHQ-512 prior (`configs/sample/iddpm_ffhq512_swinir.yaml`): 159.79M params, runs at 512."""
        mult = (1, 2, 4, 8, 8, 16, 16)
        return cls(
            model_channels=32,
            channel_mult=mult,
            num_res_blocks=(1, 2, 2, 2, 2, 3, 4),
            attention_levels=attention_levels_for(512, (32, 16, 8), len(mult)),  # pixel sizes -> (4, 5, 6)
            num_head_channels=64,
            use_scale_shift_norm=True,
            resblock_updown=False,
            conv_resample=True,
        )

    @classmethod
    def dr2_256(cls) -> UNetConfig:
        """DR2's DDPM = ILVR's FFHQ-256 guided-diffusion model: 93.56M params, runs at 256."""
        mult = (1, 1, 2, 2, 4, 4)
        return cls(
            model_channels=128,
            channel_mult=mult,
            num_res_blocks=(1,) * len(mult),
            attention_levels=attention_levels_for(256, (256 // 16,), len(mult)),  # downsample rate 16 -> (4,)
            num_head_channels=64,
            use_scale_shift_norm=True,
            resblock_updown=True,
            conv_resample=True,
        )


def attention_levels_for(image_size: int, resolutions: Iterable[int], levels: int) -> tuple[int, ...]:
    """Levels whose feature maps (`image_size / 2**level` pixels) are listed in `resolutions`.

    For guided-diffusion's downsample rates `r`, pass `image_size // r` for each.
    """
    wanted = set(resolutions)
    return tuple(level for level in range(levels) if image_size // 2**level in wanted)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as guided-diffusion's.

    t [B] -> [B, dim] float32: `cos(t * f_i)` for the first half, `sin(t * f_i)` for the second,
    `f_i = max_period ** (-i / (dim // 2))`; a zero column is appended when `dim` is odd.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) computed in float32 whatever the input dtype; returns the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise (guided-diffusion's `zero_module`): residual branches start as identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Upsample(nn.Module):
    """[B,C,H,W] -> [B,C,2H,2W]: nearest neighbour, then a 3x3 conv when `use_conv`."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """[B,C,H,W] -> [B,C,H/2,W/2]: strided 3x3 conv when `use_conv`, else 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding; optionally resamples by 2.

    x [B,C_in,H,W], emb [B,E] -> [B,C_out,H',W'] (H' = 2H for `up`, H/2 for `down`, else H).
    With `use_scale_shift_norm` the embedding gives (scale, shift): `norm(h) * (1 + scale) + shift`;
    otherwise it is added before the second norm.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float, use_scale_shift_norm: bool, resample: str = "") -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = resample
        if resample == "up":
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif resample == "down":
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        elif resample:
            raise ValueError(f"resample must be '', 'up' or 'down', got {resample!r}")
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions, residual: x [B,C,H,W] -> [B,C,H,W].

    `qkv` is a 1x1 Conv1d to 3C channels laid out per head as [q_h, k_h, v_h] (the legacy order of
    guided-diffusion's `QKVAttentionLegacy`); heads have `num_head_channels` channels each.
    """

    def __init__(self, channels: int, num_head_channels: int) -> None:
        super().__init__()
        self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # [B, 3C, T]
        qkv = qkv.reshape(b, self.num_heads, 3 * (c // self.num_heads), -1).transpose(-1, -2)  # [B, heads, T, 3*ch]
        q, k, v = qkv.chunk(3, dim=-1)  # each [B, heads, T, ch]
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(ch)) v
        a = a.transpose(-1, -2).reshape(b, c, -1)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """Runs its layers in order, passing the timestep embedding to the ResBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class GuidedUNet(nn.Module):
    """guided-diffusion's UNetModel (2-D, no class conditioning) with per-level residual blocks.

    forward(x [B, in_channels, H, W], t [B] | scalar, original-schedule timesteps, int or float)
        -> [B, out_channels, H, W]; H and W divisible by `config.multiple`.
    For the official priors x_t is in the [-1,1] image scale and the output is (eps, v) for
    `out_channels=6`. A conditional model takes `in_channels = 3 + condition channels` with the
    condition concatenated after x_t by the caller.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        emb_dim = 4 * c.model_channels
        widths = c.widths

        def res(cin: int, cout: int, resample: str = "") -> ResBlock:
            return ResBlock(cin, emb_dim, cout, c.dropout, c.use_scale_shift_norm, resample)

        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = widths[0]
        u2 = c.pixel_unshuffle**2
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(c.in_channels * u2, ch, 3, padding=1))])
        skips = [ch]
        for level, width in enumerate(widths):
            for _ in range(c.num_res_blocks[level]):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if level in c.attention_levels:
                    layers.append(AttentionBlock(ch, c.num_head_channels))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(ch)
            if level != len(widths) - 1:
                down = res(ch, ch, "down") if c.resblock_updown else Downsample(ch, c.conv_resample)
                self.input_blocks.append(TimestepSequential(down))
                skips.append(ch)

        self.middle_block = TimestepSequential(res(ch, ch), AttentionBlock(ch, c.num_head_channels), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(c.num_res_blocks[level] + 1):
                layers = [res(ch + skips.pop(), widths[level])]
                ch = widths[level]
                if level in c.attention_levels:
                    layers.append(AttentionBlock(ch, c.num_head_channels))
                if level and i == c.num_res_blocks[level]:
                    layers.append(res(ch, ch, "up") if c.resblock_updown else Upsample(ch, c.conv_resample))
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _zero(nn.Conv2d(widths[0], c.out_channels * u2, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        b, _, height, width = x.shape
        m = self.config.multiple
        if height % m or width % m:
            raise ValueError(f"input {height}x{width} is not divisible by {m} (one halving per level)")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape [{b}], got {tuple(t.shape)}")
        emb_in = timestep_embedding(t, self.config.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(emb_in)
        u = self.config.pixel_unshuffle
        h = x.to(self.input_blocks[0][0].weight.dtype)
        if u > 1:
            h = F.pixel_unshuffle(h, u)
        hs = []
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        out = self.out(h)
        if u > 1:
            out = F.pixel_shuffle(out, u)
        k = self.config.input_residual
        if k is not None:
            out = out + x[:, k : k + self.config.out_channels].to(out.dtype)
        return out


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise UnsupportedCheckpoint(f"not a guided-diffusion UNet state dict: key {key!r} is missing", hint="pass the DifFace or DR2 diffusion checkpoint")
    return state[key]


def _blocks(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """Indices i with keys under `prefix.i.`, sorted."""
    found = {int(k[len(prefix) + 1 :].split(".", 1)[0]) for k in state if k.startswith(prefix + ".")}
    return sorted(found)


def infer_config(state: Mapping[str, torch.Tensor], *, num_head_channels: int = 64, dropout: float = 0.0,
                 pixel_unshuffle: int = 1) -> UNetConfig:
    """Read a `UNetConfig` from a state dict's key names and tensor shapes.

    `num_head_channels` (64 in both official checkpoints), `dropout` and `pixel_unshuffle` (which
    multiplies the first conv's inputs and the last conv's outputs by its square) leave no
    unambiguous trace in a state dict, so they are arguments; `input_residual` is reported as None.
    `conv_resample` is only visible without `resblock_updown` and with more than one level; it is
    reported as True otherwise. Raises `UnsupportedCheckpoint` when the
    keys that every guided-diffusion UNet has are missing; anything else that does not fit is found
    by `load_strict`.
    """
    model_channels = _need(state, "time_embed.0.weight").shape[1]
    in_channels = _need(state, "input_blocks.0.0.weight").shape[1] // pixel_unshuffle**2
    out_channels = _need(state, "out.2.weight").shape[0] // pixel_unshuffle**2
    _need(state, "middle_block.1.qkv.weight")
    middle = _need(state, "middle_block.0.emb_layers.1.weight").shape[0]
    scale_shift = middle == 2 * _need(state, "middle_block.0.out_layers.3.weight").shape[0]

    # Output blocks, deepest level first; a level's last block carries the upsampler when it has
    # parameters (a conv, or an up-ResBlock).
    outputs = _blocks(state, "output_blocks")
    if outputs != list(range(len(outputs))) or not outputs:
        raise UnsupportedCheckpoint(f"not a guided-diffusion UNet state dict: output_blocks {outputs[:8]} are not numbered 0..n-1")
    groups: list[list[tuple[int, bool]]] = [[]]  # per level: (width, has attention) of each block
    resblock_updown = conv_up = False
    for k in outputs:
        width = _need(state, f"output_blocks.{k}.0.out_layers.3.weight").shape[0]
        attn = f"output_blocks.{k}.1.qkv.weight" in state
        groups[-1].append((width, attn))
        j = 2 if attn else 1
        if f"output_blocks.{k}.{j}.in_layers.2.weight" in state:
            resblock_updown = True
        elif f"output_blocks.{k}.{j}.conv.weight" in state:
            conv_up = True
        else:
            continue
        groups.append([])
    if not groups[-1]:
        raise UnsupportedCheckpoint("not a guided-diffusion UNet state dict: the last output block upsamples")
    if len(groups) == 1:
        # Parameter-free up/downsampling (nearest, average pooling): levels show as gaps in input_blocks.
        inputs = _blocks(state, "input_blocks")
        runs: list[list[tuple[int, bool]]] = [[]]
        for i in range(1, inputs[-1] + 1):
            if i not in inputs:
                runs.append([])
                continue
            width = _need(state, f"input_blocks.{i}.0.out_layers.3.weight").shape[0]
            runs[-1].append((width, f"input_blocks.{i}.1.qkv.weight" in state))
        if any(not run for run in runs):
            raise UnsupportedCheckpoint("not a guided-diffusion UNet state dict: a level without residual blocks in input_blocks")
        levels = [[*run, run[-1]] for run in runs]  # an output level has one block more
    else:
        levels = groups[::-1]
    widths = [group[0][0] for group in levels]
    mult = tuple(w // model_channels if w % model_channels == 0 else w / model_channels for w in widths)
    try:
        return UNetConfig(
            model_channels=model_channels,
            channel_mult=mult,
            num_res_blocks=tuple(len(group) - 1 for group in levels),
            attention_levels=tuple(level for level, group in enumerate(levels) if any(a for _, a in group)),
            in_channels=in_channels,
            out_channels=out_channels,
            num_head_channels=num_head_channels,
            use_scale_shift_norm=scale_shift,
            resblock_updown=resblock_updown,
            conv_resample=conv_up or resblock_updown or len(levels) == 1,
            dropout=dropout,
            pixel_unshuffle=pixel_unshuffle,
        )
    except ValueError as exc:
        raise UnsupportedCheckpoint(f"guided-diffusion UNet state dict with an unusable shape: {exc}") from None
