"""DifFace's SwinIR estimator on spandrel's SwinIR: official key manifest, round trips, golden outputs."""

from __future__ import annotations


import pytest
import spandrel
import torch

from facerestore.errors import UnsupportedCheckpoint
from facerestore.nets.swinir import SwinIRConfig, build_swinir, infer_config
from facerestore.weights.checkpoint import load_strict
from helpers import seeded_state

pytestmark = pytest.mark.usefixtures("one_thread")

# DifFace's layout scaled down: PixelUnshuffle(8) in conv_first, x8 "nearest+conv" (conv_up1..3),
# shifted windows with stored attention masks; a 64x64 input becomes 8x8 features
TINY = SwinIRConfig(img_size=8, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4, mlp_ratio=2.0, upscale=8, unshuffle=8)
TINY_OTHERS = [
    SwinIRConfig(img_size=8, embed_dim=16, depths=(2,), num_heads=(4,), window_size=4, mlp_ratio=1.5, upscale=2, unshuffle=1, upsampler="pixelshuffle", resi_connection="3conv"),
    SwinIRConfig(img_size=8, embed_dim=12, depths=(2, 2), num_heads=(3, 2), window_size=4, upscale=1, unshuffle=1, upsampler=""),
]


def seeded_net(config: SwinIRConfig, seed: int = 0) -> torch.nn.Module:
    net = build_swinir(config)
    return load_strict(net, seeded_state(net, seed)).eval()


def face(config: SwinIRConfig, seed: int = 1) -> torch.Tensor:
    side = config.img_size * config.unshuffle
    return torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(seed))


# --- the official checkpoint's layout ------------------------------------------------------------

SWINIR_KEYS = [  # from DifFace models/swinir.py built with configs/sample/iddpm_ffhq512_swinir.yaml
    ("conv_first.1.weight", (180, 192, 3, 3)),
    ("conv_first.1.bias", (180,)),
    ("patch_embed.norm.weight", (180,)),
    ("layers.0.residual_group.blocks.0.attn.relative_position_bias_table", (225, 6)),
    ("layers.0.residual_group.blocks.0.attn.relative_position_index", (64, 64)),
    ("layers.0.residual_group.blocks.1.attn_mask", (64, 64, 64)),
    ("layers.0.residual_group.blocks.0.attn.qkv.weight", (540, 180)),
    ("layers.0.residual_group.blocks.0.mlp.fc1.weight", (360, 180)),
    ("layers.7.residual_group.blocks.5.attn_mask", (64, 64, 64)),
    ("layers.7.conv.weight", (180, 180, 3, 3)),
    ("norm.weight", (180,)),
    ("conv_after_body.weight", (180, 180, 3, 3)),
    ("conv_before_upsample.0.weight", (64, 180, 3, 3)),
    ("conv_up3.weight", (64, 64, 3, 3)),
    ("conv_hr.weight", (64, 64, 3, 3)),
    ("conv_last.weight", (3, 64, 3, 3)),
]


def test_full_size_matches_official_manifest():
    """Built on the CPU: spandrel's SwinIR calls .item() while building, which the meta device refuses."""
    config = SwinIRConfig.difface_512()
    net = build_swinir(config)
    state = net.state_dict()
    assert len(state) == 732
    assert sum(p.numel() for p in net.parameters()) == 15_792_587  # 15.79M as measured upstream
    assert sum(k.endswith("attn_mask") for k in state) == 24 and sum(k.endswith("relative_position_index") for k in state) == 48
    assert "conv_first.weight" not in state
    for key, shape in SWINIR_KEYS:
        assert tuple(state[key].shape) == shape, key
    assert infer_config(state) == config
    assert config.multiple == 64


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY, *TINY_OTHERS], ids=["difface", "pixelshuffle-3conv", "denoise"])
def test_round_trip(config):
    """build -> state dict -> infer_config -> rebuild -> strict load (buffers included) -> same config, same output."""
    net = seeded_net(config)
    state = net.state_dict()
    assert infer_config(state) == config
    again = load_strict(build_swinir(infer_config(state)), state).eval()
    x = face(config)
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out, again(x))
    side = config.img_size * config.upscale  # input side img_size * unshuffle, times upscale / unshuffle
    assert out.shape == (2, 3, side, side)


def test_spandrel_reads_the_same_model():
    """spandrel's own loader detects the DifFace layout (conv_first.1.*), loads it strictly and agrees."""
    net = seeded_net(TINY)
    descriptor = spandrel.ModelLoader().load_from_state_dict(dict(net.state_dict()))
    assert descriptor.architecture.id == "SwinIR" and descriptor.scale == 1
    x = face(TINY)
    with torch.no_grad():
        torch.testing.assert_close(descriptor.model.eval()(x), net(x), rtol=0, atol=1e-6)


# --- golden outputs from the reference -----------------------------------------------------------
# Produced once outside the repository with zsyOAOA/DifFace@5c9ab801 models/swinir.py:
# SwinIR(img_size=8, patch_size=1, in_chans=3, embed_dim=12, depths=[2,2], num_heads=[2,2],
# window_size=4, mlp_ratio=2, sf=8, img_range=1.0, upsampler='nearest+conv', resi_connection='1conv',
# unshuffle=True, unshuffle_scale=8), load_state_dict(seeded_state(build_swinir(TINY), 0), strict=True)
# (attention masks and position indices included; the ones DifFace computes itself are identical),
# eval, run on face(TINY) (CPU, float32). The reference output equalled ours exactly (max abs
# difference 0.0); so did TINY_OTHERS against DifFace's SwinIR without unshuffle. Numbers: the
# reference's out[:, :, -2:, -2:], rounded.
GOLDEN = [
    0.657915, 0.690385, 0.544938, 0.632735, 0.434901, 0.344092, 0.527871, 0.443556,
    0.379541, 0.36274, 0.372567, 0.365045, 0.604828, 0.684345, 0.5952, 0.665042,
    0.402357, 0.358942, 0.497301, 0.428862, 0.412106, 0.377994, 0.41914, 0.381118,
]


def test_matches_reference_outputs():
    with torch.no_grad():
        out = seeded_net(TINY)(face(TINY))
    assert out.shape == (2, 3, 64, 64)
    torch.testing.assert_close(out[:, :, -2:, -2:].flatten(), torch.tensor(GOLDEN), rtol=1e-4, atol=1e-4)


def test_autocast_bfloat16():
    net = seeded_net(TINY)
    x = face(TINY)
    with torch.no_grad():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() / reference.abs().max() < 0.05


# --- loading the wrong thing -----------------------------------------------------------------------


def test_truncated_state_dict_gives_one_line():
    state = seeded_net(TINY).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("layers.1.")}
    with pytest.raises(UnsupportedCheckpoint) as info:
        load_strict(build_swinir(TINY), state, "swinir_restoration512_L1.pth")
    line = info.value.one_line()
    assert "\n" not in line
    assert "swinir_restoration512_L1.pth does not fit SwinIR: missing" in line and "layers.1.residual_group.blocks.0.norm1.weight" in line


def test_other_architecture_is_refused():
    from facerestore.nets.guided_unet import GuidedUNet, UNetConfig

    other = GuidedUNet(UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_levels=(1,), num_head_channels=32)).state_dict()
    with pytest.raises(UnsupportedCheckpoint, match="not a SwinIR state dict: key 'conv_first.weight' is missing"):
        infer_config(other)
