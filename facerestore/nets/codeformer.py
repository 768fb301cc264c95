"""CodeFormer (Zhou et al., NeurIPS 2022) as our own module, key-identical to `codeformer.pth` (ANCHORS.md 2.4).

Why not spandrel-extra-arches' module (which we use to check this one): it hard-codes the VQGAN
backbone (nf 64, ch_mult (1,2,2,4,4,8), 512 input), so no small test checkpoint can be built, and
its forward fixes `code_only=False, adain=True`, so the code-level outputs that fine-tuning needs
(Kuai et al. 2025, ANCHORS.md 7.2: logits, `lq_feat` and codebook features of target indices) are
out of reach. Here every size is a field of `CodeFormerConfig`; `official()` gives the published
94.11M-parameter net with the same 515 state-dict keys and shapes.

Layout (official config, B faces at once, x [B,3,512,512] in [-1,1] RGB):
    encoder.blocks        conv, 6 levels of res blocks (attention at 16), non-local block, norm, conv
                          -> lq_feat [B,256,16,16]; features kept at the `connect_list` sides
    feat_emb + position_emb -> ft_layers (9 pre-norm self-attention layers, 8 heads, MLP 1024, GELU)
    idx_pred_layer        LayerNorm + Linear(512 -> 1024, no bias) -> logits [B,256,1024]
    quantize.embedding    codebook [1024,256]: top-1 code per token -> quant_feat [B,256,16,16],
                          AdaIN to lq_feat's per-channel mean/std when `adain`
    generator.blocks      the VQGAN decoder; at each `connect_list` side a controllable feature
                          transformation (fuse_convs_dict) adds w * (dec * scale + shift), skipped at w = 0

Differences from the reference code that keep outputs equal up to float rounding:
- attention (the transformer's and the VQGAN's single-head spatial one) runs through
  `F.scaled_dot_product_attention`; the transformer keeps `nn.MultiheadAttention`'s parameter names
  (`self_attn.in_proj_weight`, `in_proj_bias`, `out_proj.*`) so official checkpoints load unchanged;
- tokens are kept batch-first ([B,L,C]) instead of the reference's [L,B,C];
- the code lookup is `logits.argmax` and an embedding gather instead of softmax + topk and a one-hot
  matmul: the same codes (softmax is monotonic) and bit-identical codebook rows, which also stay
  float32 under autocast instead of being rounded to bf16 by the matmul;
- the skip indices into the encoder and generator (hard-coded tables upstream) are derived from the
  config; for the official config they equal the reference's tables.
Gradients follow the reference's stage-3 behaviour: the looked-up codebook features and the encoder
skip features are detached (`detach_16=True` upstream).

Under bf16 autocast the convolutions, linear layers and attention run in bf16; AdaIN statistics and
the nearest-code distances are computed in float32. fp16 is not advised (spandrel marks CodeFormer
`supports_half=False`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facerestore.errors import UnsupportedCheckpoint

NORM_GROUPS = 32  # GroupNorm(32, C, eps=1e-6) everywhere in the VQGAN: every width must divide by 32
HINT = "pass the official codeformer.pth or a CodeFormer fine-tuned from it"


@dataclass(frozen=True)
class CodeFormerConfig:
    """CodeFormer hyperparameters. `infer_config` reads all of them from a state dict except `n_head`.

    nf, ch_mult, res_blocks, attn_resolutions, img_size, emb_dim, codebook_size: the VQGAN
    (level i works at side img_size / 2**i with nf * ch_mult[i] channels; attention blocks at the
    sides in attn_resolutions; the latent has emb_dim channels). dim_embd, n_head, n_layers: the
    transformer (MLP width 2 * dim_embd as upstream). latent_size: number of tokens, the latent
    side squared. connect_list: sides where encoder features are fused into the decoder (kept as
    strings, the `fuse_convs_dict` keys, in increasing size).
    """

    nf: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8)
    res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    img_size: int = 512
    codebook_size: int = 1024
    emb_dim: int = 256
    dim_embd: int = 512
    n_head: int = 8
    n_layers: int = 9
    latent_size: int = 256
    connect_list: tuple[str, ...] = ("32", "64", "128", "256")

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(sorted(int(r) for r in self.attn_resolutions)))
        object.__setattr__(self, "connect_list", tuple(str(s) for s in sorted(int(s) for s in self.connect_list)))
        if not self.ch_mult or self.res_blocks < 1 or self.n_layers < 0:
            raise ValueError(f"need at least one level and one res block (ch_mult {self.ch_mult}, res_blocks {self.res_blocks})")
        down = 2 ** (len(self.ch_mult) - 1)
        if self.img_size % down:
            raise ValueError(f"img_size {self.img_size} is not divisible by 2**(len(ch_mult)-1) = {down}")
        if self.latent_size != self.latent_side**2:
            raise ValueError(f"latent_size {self.latent_size} != ({self.img_size}/{down})**2 = {self.latent_side**2}")
        widths = {self.nf * m for m in self.ch_mult}
        if any(w % NORM_GROUPS for w in widths):
            raise ValueError(f"every width nf*ch_mult ({sorted(widths)}) must be a multiple of {NORM_GROUPS} (GroupNorm groups)")
        if self.dim_embd % self.n_head:
            raise ValueError(f"dim_embd {self.dim_embd} is not divisible by n_head {self.n_head}")
        sides = self.sides
        unknown = [s for s in self.connect_list if int(s) not in sides]
        if unknown:
            raise ValueError(f"connect_list {unknown} are not feature sides of this net {sides}")

    @property
    def latent_side(self) -> int:
        return self.img_size // 2 ** (len(self.ch_mult) - 1)

    @property
    def sides(self) -> tuple[int, ...]:
        """Feature side of each level, from img_size down to latent_side."""
        return tuple(self.img_size // 2**i for i in range(len(self.ch_mult)))

    def width(self, side: int | str) -> int:
        """Channels of the features at a given side (the level's nf * ch_mult)."""
        return self.nf * self.ch_mult[self.sides.index(int(side))]

    @classmethod
    def official(cls) -> CodeFormerConfig:
        """`codeformer.pth` (v0.1.0): 94.11M params, 515 tensors, [-1,1] RGB 512 -> 512."""
        return cls()


# ---------------------------------------------------------------- VQGAN building blocks


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GroupNorm-swish-conv twice plus a (1x1-projected when widths differ) skip. [B,Cin,H,W] -> [B,Cout,H,W]."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.conv_out = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (1x1 convs q, k, v, proj_out), residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # [B,C,H,W] -> [B,1,HW,C]: one head, scale C**-0.5 (SDPA's default)
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Pad right/bottom by one, 3x3 conv with stride 2: side -> side/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then 3x3 conv: side -> 2*side."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """[B,3,S,S] -> [B,emb_dim,S/2**(L-1),S/2**(L-1)] as one flat `blocks` list (the checkpoint's indices).

    `skip_index[side]` is the block after which the features at that side are kept for fusion: the
    last res block of the level (before its attention block, if any); upstream's table
    {'512': 2, '256': 5, '128': 8, '64': 11, '32': 14, '16': 18} for the official config.
    """

    def __init__(self, config: CodeFormerConfig) -> None:
        super().__init__()
        nf, mult = config.nf, config.ch_mult
        blocks: list[nn.Module] = [nn.Conv2d(3, nf, 3, 1, 1)]
        self.skip_index: dict[int, int] = {}
        ch = nf
        for level, side in enumerate(config.sides):
            out = nf * mult[level]
            for _ in range(config.res_blocks):
                blocks.append(ResBlock(ch, out))
                ch = out
                self.skip_index[side] = len(blocks) - 1
                if side in config.attn_resolutions:
                    blocks.append(AttnBlock(ch))
            if level != len(mult) - 1:
                blocks.append(Downsample(ch))
        blocks += [ResBlock(ch, ch), AttnBlock(ch), ResBlock(ch, ch), _norm(ch), nn.Conv2d(ch, config.emb_dim, 3, 1, 1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Generator(nn.Module):
    """The VQGAN decoder [B,emb_dim,s,s] -> [B,3,S,S] as one flat `blocks` list.

    `fuse_index[side]` is the block after which the fusion at that side is applied: the first res
    block of each level above the latent, the last res block of the latent level; upstream's table
    {'16': 6, '32': 9, '64': 12, '128': 15, '256': 18, '512': 21} for the official config.
    """

    def __init__(self, config: CodeFormerConfig) -> None:
        super().__init__()
        nf, mult = config.nf, config.ch_mult
        ch = nf * mult[-1]
        blocks: list[nn.Module] = [nn.Conv2d(config.emb_dim, ch, 3, 1, 1), ResBlock(ch, ch), AttnBlock(ch), ResBlock(ch, ch)]
        self.fuse_index: dict[int, int] = {}
        for level in reversed(range(len(mult))):
            side = config.sides[level]
            out = nf * mult[level]
            for r in range(config.res_blocks):
                blocks.append(ResBlock(ch, out))
                ch = out
                if r == 0 or level == len(mult) - 1:  # the latent level keeps overwriting: its last
                    self.fuse_index[side] = len(blocks) - 1
                if side in config.attn_resolutions:
                    blocks.append(AttnBlock(ch))
            if level != 0:
                blocks.append(Upsample(ch))
        blocks += [_norm(ch), nn.Conv2d(ch, 3, 3, 1, 1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain VQGAN decoder (no fusion), e.g. for `codebook_features` of given codes."""
        for block in self.blocks:
            x = block(x)
        return x


class Codebook(nn.Module):
    """The VQGAN codebook (`quantize.embedding.weight` [codebook_size, emb_dim])."""

    def __init__(self, codebook_size: int, emb_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, emb_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)


# ---------------------------------------------------------------- transformer and fusion


class SelfAttention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameter names, on SDPA.

    Queries and keys see x + pos, values see x (DETR-style positional queries, as upstream).
    x, pos: [B,L,C] (pos may broadcast over B) -> [B,L,C].
    """

    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qk = F.linear(x + pos, self.in_proj_weight[: 2 * c], self.in_proj_bias[: 2 * c])
        v = F.linear(x, self.in_proj_weight[2 * c :], self.in_proj_bias[2 * c :])

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B,L,C] -> [B,h,L,C/h]
            return t.reshape(b, n, self.n_head, c // self.n_head).transpose(1, 2)

        q, k = qk.chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class TransformerLayer(nn.Module):
    """Pre-norm layer: x + attn(norm1(x)), then x + linear2(gelu(linear1(norm2(x)))). [B,L,C] -> [B,L,C]."""

    def __init__(self, dim: int, n_head: int, dim_mlp: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, n_head)
        self.linear1 = nn.Linear(dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), pos)
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class FuseSFT(nn.Module):
    """Controllable feature transformation: dec + w * (dec * scale(e) + shift(e)), e = ResBlock([enc, dec])."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(channels, channels, 3, 1, 1))
        self.shift = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(channels, channels, 3, 1, 1))

    def forward(self, enc: torch.Tensor, dec: torch.Tensor, w: float) -> torch.Tensor:
        e = self.encode_enc(torch.cat([enc, dec], dim=1))
        return dec + w * (dec * self.scale(e) + self.shift(e))


def adaptive_instance_norm(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give `content` [B,C,H,W] the per-channel mean and std (unbiased var + eps) of `style`; float32 statistics."""

    def stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = t.float().flatten(2)
        return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]

    c_mean, c_std = stats(content)
    s_mean, s_std = stats(style)
    return ((content.float() - c_mean) / c_std * s_std + s_mean).to(content.dtype)


# ---------------------------------------------------------------- the net


class CodeFormer(nn.Module):
    """CodeFormer on a `CodeFormerConfig`; state-dict keys as in `codeformer.pth` (`params_ema`).

    forward(x [B,3,S,S] in [-1,1], w, adain) -> (out [B,3,S,S] ~[-1,1] (not clamped),
    logits [B,L,codebook_size], lq_feat [B,emb_dim,s,s]) with S = img_size, s = latent_side, L = s*s.
    """

    def __init__(self, config: CodeFormerConfig) -> None:
        super().__init__()
        self.config = config
        # registration order = the official state dict's key order
        self.position_emb = nn.Parameter(torch.zeros(config.latent_size, config.dim_embd))
        self.encoder = Encoder(config)
        self.quantize = Codebook(config.codebook_size, config.emb_dim)
        self.generator = Generator(config)
        self.feat_emb = nn.Linear(config.emb_dim, config.dim_embd)
        self.ft_layers = nn.Sequential(*(TransformerLayer(config.dim_embd, config.n_head, 2 * config.dim_embd) for _ in range(config.n_layers)))
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(config.dim_embd), nn.Linear(config.dim_embd, config.codebook_size, bias=False))
        self.fuse_convs_dict = nn.ModuleDict({side: FuseSFT(config.width(side)) for side in config.connect_list})

    def _check_input(self, x: torch.Tensor) -> None:
        side = self.config.img_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != side or x.shape[3] != side:
            raise ValueError(f"CodeFormer takes [B,3,{side},{side}] in [-1,1], got {list(x.shape)}")

    def _encode(self, x: torch.Tensor, keep: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """x -> (lq_feat [B,emb_dim,s,s], {side: encoder features kept for fusion})."""
        self._check_input(x)
        wanted = {self.encoder.skip_index[side]: side for side in keep}
        kept = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in wanted:
                kept[wanted[i]] = x
        return x, kept

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,S,S] in [-1,1] -> lq_feat [B,emb_dim,s,s], the encoder's continuous latent."""
        return self._encode(x)[0]

    def predict_logits(self, lq_feat: torch.Tensor) -> torch.Tensor:
        """lq_feat [B,emb_dim,s,s] -> code logits [B,L,codebook_size] (the transformer; no softmax)."""
        tokens = self.feat_emb(lq_feat.flatten(2).transpose(1, 2))  # [B,L,dim_embd]
        pos = self.position_emb.unsqueeze(0)
        for layer in self.ft_layers:
            tokens = layer(tokens, pos)
        return self.idx_pred_layer(tokens)

    def code_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Code-only pass for training (upstream `code_only=True`): x -> (logits [B,L,N], lq_feat [B,emb_dim,s,s])."""
        lq_feat = self.encode(x)
        return self.predict_logits(lq_feat), lq_feat

    def codebook_features(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices [B,L] or [B,s,s] (int) -> codebook vectors as a latent [B,emb_dim,s,s].

        With indices from `nearest_codes` of a target this is fine-tuning's MSE target for lq_feat.
        """
        side = self.config.latent_side
        feat = F.embedding(indices.reshape(indices.shape[0], -1), self.quantize.embedding.weight)  # [B,L,E]
        return feat.transpose(1, 2).reshape(indices.shape[0], -1, side, side)

    def nearest_codes(self, lq_feat: torch.Tensor) -> torch.Tensor:
        """lq_feat [B,emb_dim,s,s] -> indices [B,L] of the nearest codebook vectors (the VQ quantiser's rule).

        Fine-tuning's ground-truth codes: `nearest_codes(encode(target))` on a frozen pre-trained copy.
        """
        with torch.autocast(lq_feat.device.type, enabled=False):  # distances in float32 even under autocast
            z = lq_feat.float().flatten(2).transpose(1, 2)  # [B,L,E]
            codes = self.quantize.embedding.weight.float()
            dist = (z**2).sum(-1, keepdim=True) + (codes**2).sum(-1) - 2 * z @ codes.t()
            return dist.argmin(-1)

    def forward(self, x: torch.Tensor, w: float = 0.0, adain: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B,3,S,S] in [-1,1]; w >= 0 the fidelity weight (0: codebook only; upstream inference uses [0,1],
        its stage-3 training also 1.3). `adain` defaults to True as in upstream's inference script (its
        forward's own default is False).

        Returns (out [B,3,S,S], logits [B,L,codebook_size], lq_feat [B,emb_dim,s,s]).
        """
        sides = tuple(int(s) for s in self.config.connect_list) if w > 0 else ()
        lq_feat, skips = self._encode(x, sides)
        logits = self.predict_logits(lq_feat)
        # top-1 code per token -> codebook vectors; detached as upstream (detach_16)
        quant = self.codebook_features(logits.argmax(-1)).detach()
        if adain:
            quant = adaptive_instance_norm(quant, lq_feat)
        fuse_at = {self.generator.fuse_index[s]: s for s in sides}
        h = quant
        for i, block in enumerate(self.generator.blocks):
            h = block(h)
            if i in fuse_at:
                side = fuse_at[i]
                h = self.fuse_convs_dict[str(side)](skips[side].detach(), h, w)
        return h, logits, lq_feat


# ---------------------------------------------------------------- reading a config back


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise UnsupportedCheckpoint(f"not a CodeFormer state dict: key {key!r} is missing", hint=HINT)
    return state[key]


def _indices(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _block_kind(state: Mapping[str, torch.Tensor], prefix: str) -> str:
    """What module sits at `prefix` (e.g. 'encoder.blocks.3'): res, attn, down, norm or conv."""
    if f"{prefix}.norm1.weight" in state:
        return "res"
    if f"{prefix}.q.weight" in state:
        return "attn"
    if f"{prefix}.conv.weight" in state:
        return "down"
    weight = state.get(f"{prefix}.weight")
    if weight is None:
        raise UnsupportedCheckpoint(f"not a CodeFormer state dict: no block at {prefix!r}", hint=HINT)
    return "conv" if weight.ndim == 4 else "norm"


def infer_config(state: Mapping[str, torch.Tensor], n_head: int = 8) -> CodeFormerConfig:
    """Read a `CodeFormerConfig` from key names and tensor shapes.

    `n_head` cannot be read from shapes (the heads share one in_proj matrix): it is 8 in every
    published checkpoint and in the fine-tuning code; pass another value only if you know the
    checkpoint was trained with it. The encoder's block sequence gives ch_mult, res_blocks and the
    attention sides; img_size = latent side * 2**(levels-1), the latent side from position_emb.
    """
    position = _need(state, "position_emb")
    codebook = _need(state, "quantize.embedding.weight")
    first = _need(state, "encoder.blocks.0.weight")
    _need(state, "idx_pred_layer.1.weight")
    nf = first.shape[0]

    blocks = _indices(state, "encoder.blocks")
    if blocks != list(range(len(blocks))) or len(blocks) < 7:
        raise UnsupportedCheckpoint(f"not a CodeFormer state dict: encoder.blocks are {blocks[:3]}...{blocks[-3:]}", hint=HINT)
    kinds = [_block_kind(state, f"encoder.blocks.{i}") for i in blocks]
    if kinds[-5:] != ["res", "attn", "res", "norm", "conv"]:
        raise UnsupportedCheckpoint(f"not a CodeFormer encoder: it ends with {kinds[-5:]}", hint=HINT)
    # split blocks 1..-6 into levels at the downsamplers
    levels: list[list[int]] = [[]]
    for i, kind in zip(blocks[1:-5], kinds[1:-5]):
        if kind == "down":
            levels.append([])
        else:
            levels[-1].append(i)
    ch_mult, res_counts, attn_levels = [], set(), []
    for level, members in enumerate(levels):
        res = [i for i in members if kinds[i] == "res"]
        if not res:
            raise UnsupportedCheckpoint(f"not a CodeFormer encoder: level {level} has no res block", hint=HINT)
        width = state[f"encoder.blocks.{res[-1]}.conv2.weight"].shape[0]
        if width % nf:
            raise UnsupportedCheckpoint(f"not a CodeFormer encoder: width {width} at level {level} is not a multiple of nf {nf}", hint=HINT)
        ch_mult.append(width // nf)
        res_counts.add(len(res))
        if any(kinds[i] == "attn" for i in members):
            attn_levels.append(level)
    if len(res_counts) != 1:
        raise UnsupportedCheckpoint(f"not a CodeFormer encoder: levels have {sorted(res_counts)} res blocks", hint=HINT)

    latent_side = math.isqrt(position.shape[0])
    img_size = latent_side * 2 ** (len(ch_mult) - 1)
    try:
        return CodeFormerConfig(
            nf=nf,
            ch_mult=tuple(ch_mult),
            res_blocks=res_counts.pop(),
            attn_resolutions=tuple(img_size // 2**level for level in attn_levels),
            img_size=img_size,
            codebook_size=codebook.shape[0],
            emb_dim=codebook.shape[1],
            dim_embd=position.shape[1],
            n_head=n_head,
            n_layers=len(_indices(state, "ft_layers")),
            latent_size=position.shape[0],
            connect_list=tuple(k.split(".")[1] for k in state if k.startswith("fuse_convs_dict.") and k.endswith(".scale.0.weight")),
        )
    except ValueError as exc:
        raise UnsupportedCheckpoint(f"CodeFormer state dict with an unusable shape: {exc}", hint=HINT) from None
