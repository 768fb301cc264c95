"""IDM's conditional denoiser (Zhao et al. 2023, sec. 3.2 and appendix A): a guided-diffusion UNet
that sees x_t and the degraded image side by side and is told the noise level gamma, not t.

    forward(x [B, 6, H, W] = cat(x_t, x_d), gamma [B] in (0, 1)) -> x0 estimate [B, 3, H, W]

x_t, x_d and the output are in the [-1, 1] image scale. The state dict is exactly a `GuidedUNet`'s
(`in_channels=6`, `out_channels=3`), so `guided_unet.infer_config` reads the architecture back.

Noise-level conditioning. IDM conditions on gamma = alpha_bar (its eq. 5-8, after SR3), a value in
(0, 1). The UNet's sinusoidal embedding was designed for inputs spread over 0..1000 (frequencies
1 .. 1e-4 per unit), so gamma is mapped to

    level(gamma) = 50 * (10 - log(gamma / (1 - gamma)))                    (log-SNR, rescaled)

before the embedding. log-SNR spreads the noise levels evenly where it matters: on the linear T=1000
schedule it runs from 39 (t=0, log-SNR 9.2) to 1006 (t=999, log-SNR -10.1), and the 10 DDPM steps
of IDM (t = 999, 888, ..., 0) land 55 to 364 units apart. The alternatives are worse:
1000 * gamma puts t = 777, 888 and 999 within 2.2 units of each other, and 1000 * sqrt(1 - gamma)
puts them within 1.1 units, so the net could hardly tell the three noisiest steps apart. The map is
monotone and schedule-free: a continuous gamma (SR3's training, `diffusion.losses`) or the gamma of
any schedule's integer t gives the same embedding for the same noise level.

Presets (`idm_unet_config(name, size)`), attention where feature maps are 32, 16 and 8 pixels
(the paper's "32 -> 8"), scale-shift normalisation and 64-channel heads as guided-diffusion:

| preset | widths per level (512 -> 8 px) | res blocks | params | use |
|---|---|---|---|---|
| tiny  | 32, 64, 64 (3 levels) | 1 | 1.2M | tests and smoke runs at <= 128 px |
| small | 32, 64, 64, 128, 128, 128, 128 | 1 | 8.6M | CPU experiments; fp16 file ~17 MB |
| base  | 32, 64, 64, 128, 128, 256, 256 | 2 | 30.2M | one-GPU training |
| paper | 64, 128, 128, 256, 256, 512, 512 | 2 | 120.8M | the paper's size (~120M, Ho et al.'s widths one level up) |

`tiny` attends at its deepest level whatever the size; the others need sides divisible by 64.

`compact` is the CPU model that ships inside the package (docs/idm-model.md): the same UNet behind a
space-to-depth stem (`pixel_unshuffle=4`: the 512 crop enters as 128x128x96, the last conv returns
128x128x48 and depth-to-space gives 512x512x3), so its four levels work at 128, 64, 32 and 16
pixels and attend at 16; and with `input_residual=3` it predicts x0 as x_d + f(x_t, x_d, gamma), so
an untrained net returns the degraded input instead of grey, and a clean input needs no work (the
paper's authenticity criterion). About 0.35 s per call for one 512 face on 2 CPU cores; 4.5M params.
A model file stores both fields in its config, so any `facerestore` loads it as it was trained.
(An EDM-style skip that also passes x_t / sqrt(gamma) through at low noise was tried and dropped:
the net then trusts the chain's own imperfect samples, and 10-step outputs lost 1-2 dB.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch

from facerestore.errors import UnsupportedCheckpoint
from facerestore.nets.guided_unet import GuidedUNet, UNetConfig, attention_levels_for, infer_config

IN_CHANNELS = 6  # x_t and the degraded image
OUT_CHANNELS = 3  # the x0 estimate
LEVEL_SCALE = 50.0
LEVEL_OFFSET = 10.0
ATTENTION_PIXELS = (32, 16, 8)
MIN_GAMMA = 1e-12  # gamma is clamped to [MIN_GAMMA, 1 - MIN_GAMMA] so the level stays finite

_PRESETS: dict[str, tuple[int, tuple[int, ...], int]] = {
    # name: (model_channels, channel_mult, res blocks per level)
    "tiny": (32, (1, 2, 2), 1),
    "small": (32, (1, 2, 2, 4, 4, 4, 4), 1),
    "base": (32, (1, 2, 2, 4, 4, 8, 8), 2),
    "paper": (64, (1, 2, 2, 4, 4, 8, 8), 2),
    "compact": (32, (1, 2, 4, 4), 1),
}
COMPACT_UNSHUFFLE = 4
PRESETS = tuple(_PRESETS)


def noise_level(gamma: torch.Tensor) -> torch.Tensor:
    """The embedding input for noise level gamma = alpha_bar: 50 * (10 - logit(gamma)), float32."""
    g = gamma.float().clamp(MIN_GAMMA, 1.0 - MIN_GAMMA)
    return LEVEL_SCALE * (LEVEL_OFFSET - (torch.log(g) - torch.log1p(-g)))


def size_multiple(preset: str) -> int:
    """Image sizes a preset takes are multiples of this (each level halves the image)."""
    if preset not in _PRESETS:
        raise ValueError(f"unknown IDM model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unshuffle = COMPACT_UNSHUFFLE if preset == "compact" else 1
    return unshuffle * 2 ** (len(_PRESETS[preset][1]) - 1)


def preset_of(config: UNetConfig, size: int) -> str | None:
    """The preset whose UNet at `size` is `config` (a model started from --init-from says which net it
    is), or None for an architecture of its own."""
    for name in PRESETS:
        try:
            if idm_unet_config(name, size) == config:
                return name
        except ValueError:  # a size this preset does not take
            continue
    return None


def idm_unet_config(preset: str, size: int) -> UNetConfig:
    """The UNet of a preset for images of `size` pixels (a ValueError names a bad preset or size)."""
    multiple = size_multiple(preset)
    channels, mult, blocks = _PRESETS[preset]
    levels = len(mult)
    unshuffle = COMPACT_UNSHUFFLE if preset == "compact" else 1
    if size < multiple or size % multiple:
        raise ValueError(f"the {preset} model needs an image size divisible by {multiple} (its {levels} levels), got {size}")
    if preset == "tiny":
        attention: tuple[int, ...] = (levels - 1,)
    elif preset == "compact":
        attention = (levels - 1,)  # 16 px at 512: attention at 32 px costs more than the rest of the net
    else:
        attention = attention_levels_for(size, ATTENTION_PIXELS, levels)
    return UNetConfig(
        model_channels=channels,
        channel_mult=mult,
        num_res_blocks=(blocks,) * levels,
        attention_levels=attention,
        in_channels=IN_CHANNELS,
        out_channels=OUT_CHANNELS,
        num_head_channels=64,
        use_scale_shift_norm=True,
        resblock_updown=False,
        conv_resample=True,
        pixel_unshuffle=unshuffle,
        input_residual=IN_CHANNELS - OUT_CHANNELS if preset == "compact" else None,
    )


def check_idm_config(config: UNetConfig, source: str = "checkpoint") -> UNetConfig:
    """UnsupportedCheckpoint unless the UNet takes 6 channels and returns 3 (an IDM denoiser)."""
    if config.in_channels != IN_CHANNELS or config.out_channels != OUT_CHANNELS:
        raise UnsupportedCheckpoint(
            f"{source} is a UNet with {config.in_channels} input and {config.out_channels} output channels, not an IDM model "
            f"({IN_CHANNELS} in: x_t and the degraded image; {OUT_CHANNELS} out: x0)",
            hint="pass a model written by `facerestore train`",
        )
    return config


def config_to_dict(config: UNetConfig) -> dict:
    """JSON-ready fields of a UNetConfig (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def config_from_dict(data: Mapping, source: str = "checkpoint") -> UNetConfig:
    """The inverse of `config_to_dict`; UnsupportedCheckpoint for unknown or invalid fields."""
    names = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UnsupportedCheckpoint(f"{source}: unknown UNet config fields {unknown}", hint="it was written by another version or tool")
    try:
        return check_idm_config(UNetConfig(**dict(data)), source)
    except (TypeError, ValueError) as exc:
        raise UnsupportedCheckpoint(f"{source}: invalid UNet config ({exc})", hint="the JSON config is damaged") from None


def infer_idm_config(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> UNetConfig:
    """Read the architecture from a state dict's shapes and check it is an IDM denoiser."""
    conv_in, conv_out = state.get("input_blocks.0.0.weight"), state.get("out.2.weight")
    unshuffle = 1
    if conv_in is not None and conv_out is not None and conv_in.shape[1] != IN_CHANNELS:
        ratio = conv_in.shape[1] // IN_CHANNELS
        root = math.isqrt(ratio)
        if root * root == ratio and conv_in.shape[1] == IN_CHANNELS * ratio and conv_out.shape[0] == OUT_CHANNELS * ratio:
            unshuffle = root  # a space-to-depth stem; whether x0 = x_d + f is not visible in shapes
    try:
        config = infer_config(state, pixel_unshuffle=unshuffle)
    except UnsupportedCheckpoint as exc:
        raise UnsupportedCheckpoint(f"{source} is not an IDM model ({exc})", hint="pass a model written by `facerestore train`") from None
    return check_idm_config(config, source)


class IDMUNet(GuidedUNet):
    """GuidedUNet conditioned on the noise level gamma instead of the timestep (see the module doc).

    forward(x [B, 6, H, W], gamma [B] or a scalar, floats in (0, 1)) -> [B, 3, H, W]
    """

    def __init__(self, config: UNetConfig) -> None:
        check_idm_config(config, "config")
        super().__init__(config)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:  # type: ignore[override]
        gamma = torch.as_tensor(gamma, device=x.device)
        if gamma.dtype in (torch.int32, torch.int64):
            raise TypeError("IDMUNet takes the noise level gamma = alpha_bar (a float in (0, 1)), not an integer timestep")
        return super().forward(x, noise_level(gamma))


def parameter_count(config: UNetConfig) -> int:
    """Parameters of the UNet built from `config`, counted on the meta device (no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in IDMUNet(config).parameters())


def level_spacing(gammas: torch.Tensor) -> float:
    """Smallest distance between the embedding inputs of neighbouring noise levels (for docs/tests)."""
    levels = torch.sort(noise_level(gammas)).values
    return float(torch.diff(levels).min()) if levels.numel() > 1 else math.inf
