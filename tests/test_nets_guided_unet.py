"""guided-diffusion UNet: official key manifests (meta device), round trips, golden outputs, numerics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facerestore.errors import UnsupportedCheckpoint
from facerestore.nets.guided_unet import GroupNorm32, GuidedUNet, UNetConfig, attention_levels_for, infer_config, timestep_embedding
from facerestore.weights.checkpoint import load_strict
from helpers import seeded_state

pytestmark = pytest.mark.usefixtures("one_thread")

# Tiny configs with the official key structure: DifFace's per-level residual blocks, conv resampling
# and attention on several levels; DR2's residual up/downsampling and attention on one level.
TINY_DIFFACE = UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=(1, 2, 3), attention_levels=(1, 2), num_head_channels=32)
TINY_DR2 = UNetConfig(model_channels=32, channel_mult=(1, 1, 2), num_res_blocks=(1, 1, 1), attention_levels=(2,), num_head_channels=32, resblock_updown=True)
TINY_OTHERS = [
    # no scale-shift norm, parameter-free resampling (nearest / average pooling: levels show as gaps)
    UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=(2, 1, 1), attention_levels=(0,), num_head_channels=16, use_scale_shift_norm=False, conv_resample=False),
    # a conditional model: x_t concatenated with a 3-channel degraded image, x0 output
    UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_levels=(1,), num_head_channels=32, in_channels=6, out_channels=3),
]


def seeded_net(config: UNetConfig, seed: int = 0) -> GuidedUNet:
    net = GuidedUNet(config)
    return load_strict(net, seeded_state(net, seed)).eval()


def inputs(config: UNetConfig, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, config.in_channels, size, size, generator=g), torch.tensor([3, 999])


# --- the official checkpoints' layouts, on the meta device (no memory) ---------------------------

DIFFACE_KEYS = [  # from DifFace models/unet.py built with configs/sample/iddpm_ffhq512_swinir.yaml
    ("time_embed.0.weight", (128, 32)),
    ("input_blocks.0.0.weight", (32, 3, 3, 3)),
    ("input_blocks.2.0.op.weight", (32, 32, 3, 3)),
    ("input_blocks.12.0.emb_layers.1.weight", (512, 128)),
    ("input_blocks.12.1.qkv.weight", (768, 256, 1)),
    ("input_blocks.12.1.proj_out.weight", (256, 256, 1)),
    ("input_blocks.22.1.norm.weight", (512,)),
    ("middle_block.1.qkv.weight", (1536, 512, 1)),
    ("output_blocks.0.0.in_layers.2.weight", (512, 1024, 3, 3)),
    ("output_blocks.0.0.skip_connection.weight", (512, 1024, 1, 1)),
    ("output_blocks.4.2.conv.weight", (512, 512, 3, 3)),
    ("output_blocks.14.1.conv.weight", (256, 256, 3, 3)),
    ("output_blocks.22.0.out_layers.3.weight", (32, 32, 3, 3)),
    ("out.0.weight", (32,)),
    ("out.2.weight", (6, 32, 3, 3)),
]
DR2_KEYS = [  # from DR2 DRDR/unet.py defaults (= guided-diffusion create_model with ILVR's FFHQ flags)
    ("time_embed.2.weight", (512, 512)),
    ("input_blocks.0.0.weight", (128, 3, 3, 3)),
    ("input_blocks.2.0.in_layers.2.weight", (128, 128, 3, 3)),
    ("input_blocks.9.1.qkv.weight", (1536, 512, 1)),
    ("input_blocks.11.0.emb_layers.1.weight", (1024, 512)),
    ("middle_block.1.qkv.weight", (1536, 512, 1)),
    ("middle_block.2.out_layers.3.weight", (512, 512, 3, 3)),
    ("output_blocks.0.0.in_layers.2.weight", (512, 1024, 3, 3)),
    ("output_blocks.1.1.in_layers.2.weight", (512, 512, 3, 3)),
    ("output_blocks.2.1.qkv.weight", (1536, 512, 1)),
    ("output_blocks.3.2.in_layers.0.weight", (512,)),
    ("out.2.weight", (6, 128, 3, 3)),
]


@pytest.mark.parametrize(
    ("preset", "tensors", "params", "blocks", "attention_inputs", "spots"),
    [
        (UNetConfig.difface_512, 630, 159_788_454, 23, [12, 13, 15, 16, 17, 19, 20, 21, 22], DIFFACE_KEYS),
        (UNetConfig.dr2_256, 362, 93_563_910, 12, [9], DR2_KEYS),
    ],
)
def test_full_size_matches_official_manifest(preset, tensors, params, blocks, attention_inputs, spots):
    config = preset()
    with torch.device("meta"):
        net = GuidedUNet(config)
    state = net.state_dict()
    assert len(state) == tensors
    assert sum(p.numel() for p in net.parameters()) == params  # 159.79M / 93.56M as measured upstream
    assert len(net.input_blocks) == len(net.output_blocks) == blocks
    assert sorted({int(k.split(".")[1]) for k in state if k.startswith("input_blocks.") and ".qkv." in k}) == attention_inputs
    for key, shape in spots:
        assert tuple(state[key].shape) == shape, key
    assert infer_config(state) == config


def test_presets_read_upstream_attention_conventions():
    assert attention_levels_for(512, (32, 16, 8), 7) == (4, 5, 6)  # DifFace: feature-map sizes in pixels
    assert attention_levels_for(256, (256 // 16,), 6) == (4,)  # guided-diffusion: downsample rate 16
    assert UNetConfig.difface_512().widths == (32, 64, 128, 256, 256, 512, 512)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY_DIFFACE, TINY_DR2, *TINY_OTHERS], ids=["difface", "dr2", "plain", "conditional"])
def test_round_trip(config):
    """build -> state dict -> infer_config -> rebuild -> strict load -> same config, same output."""
    net = seeded_net(config)
    state = net.state_dict()
    inferred = infer_config(state, num_head_channels=config.num_head_channels)
    assert inferred == config
    again = load_strict(GuidedUNet(inferred), state).eval()
    x, t = inputs(config)
    with torch.no_grad():
        assert torch.equal(net(x, t), again(x, t))


# --- golden outputs from the reference implementations ------------------------------------------
# Produced once outside the repository: DifFace (zsyOAOA/DifFace@5c9ab801, models/unet.py) built with
# image_size=16, model_channels=32, channel_mult=[1,2,2], num_res_blocks=[1,2,3],
# attention_resolutions=[8,4], num_head_channels=32, use_scale_shift_norm=True, out_channels=6; and
# DR2 (Kaldwin0106/DR2_Drgradation_Remover@09c97ed1, DRDR/unet.py) and openai/guided-diffusion@22e0df81
# (guided_diffusion/unet.py), both with image_size=16, model_channels=32, channel_mult=(1,1,2),
# num_res_blocks=1, attention_resolutions=[4] (downsample rate), num_head_channels=32,
# use_scale_shift_norm=True, resblock_updown=True. `seeded_state(GuidedUNet(TINY_*), 0)` was loaded
# into each with load_state_dict(strict=True) and run on `inputs(config)` (CPU, float32); every
# reference output equalled ours exactly (max abs difference 0.0; the two DR2 references too). The same
# script also matched TINY_OTHERS against DifFace (parameter-free resampling, no scale-shift) and
# guided-diffusion (6 input channels). The numbers are the reference's out[:, :2, -2:, -2:], rounded.
GOLDEN = {
    "difface": (
        TINY_DIFFACE,
        [-0.019801, 0.039005, -0.243279, 0.128402, -0.498435, 0.053018, -0.166965, -0.001479,
         0.272124, 0.064084, -0.074108, -0.08947, 0.284477, 0.110856, -0.367201, -0.104848],
    ),
    "dr2": (
        TINY_DR2,
        [-0.049848, -0.654043, 0.12344, -0.259268, 0.926923, 0.194516, -0.250771, 0.026025,
         0.474895, -0.030875, -0.735439, -0.55266, -0.290849, 0.080832, -0.375449, 0.318851],
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_matches_reference_outputs(name):
    config, expected = GOLDEN[name]
    x, t = inputs(config)
    with torch.no_grad():
        out = seeded_net(config)(x, t)
    assert out.shape == (2, 6, 16, 16)
    torch.testing.assert_close(out[:, :2, -2:, -2:].flatten(), torch.tensor(expected), rtol=1e-4, atol=1e-4)


# --- numerics ------------------------------------------------------------------------------------


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 2.5, 999.0])
    emb = timestep_embedding(t, 7)  # odd: a zero column is appended
    assert emb.shape == (3, 7) and emb.dtype == torch.float32
    freqs = torch.tensor([10000 ** (-i / 3) for i in range(3)])
    torch.testing.assert_close(emb[:, :3], torch.cos(t[:, None] * freqs))
    torch.testing.assert_close(emb[:, 3:6], torch.sin(t[:, None] * freqs))
    assert torch.equal(emb[:, 6], torch.zeros(3))
    assert torch.equal(emb[0, :3], torch.ones(3))


def test_attention_uses_legacy_head_order():
    """qkv channels are [q_h, k_h, v_h] per head (QKVAttentionLegacy), not [q..., k..., v...]."""
    net = seeded_net(TINY_DIFFACE)
    block = net.input_blocks[3][1]  # attention at level 1, 64 channels, 2 heads
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        qkv = block.qkv(block.norm(x.reshape(2, 64, -1)))
        heads, ch, length = 2, 32, 16
        q, k, v = qkv.reshape(2 * heads, 3 * ch, length).split(ch, dim=1)
        weights = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
        legacy = torch.einsum("bts,bcs->bct", weights, v).reshape(2, heads * ch, length)
        expected = x + block.proj_out(legacy).reshape(2, 64, 4, 4)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_float_and_scalar_timesteps():
    net = seeded_net(TINY_DR2)
    x, _ = inputs(TINY_DR2)
    with torch.no_grad():
        batch = net(x, torch.tensor([400, 400]))
        assert torch.equal(net(x, 400), batch)
        assert torch.equal(net(x, torch.tensor(400.0)), batch)
        fractional = net(x, torch.tensor([400.5, 400.5]))
    assert not torch.equal(fractional, batch)


def test_group_norm_runs_in_float32():
    norm = GroupNorm32(64)
    with torch.no_grad():
        norm.weight.normal_(generator=torch.Generator().manual_seed(4))
    x = (torch.randn(2, 64, 5, 5, generator=torch.Generator().manual_seed(5)) * 50 + 20).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = F.group_norm(x.float(), 32, norm.weight, norm.bias, norm.eps).to(torch.bfloat16)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_low_precision(dtype):
    net = seeded_net(TINY_DIFFACE)
    x, t = inputs(TINY_DIFFACE)
    with torch.no_grad():
        reference = net(x, t)
        with torch.autocast("cpu", dtype=dtype):
            low = net(x, t)
    assert low.dtype == dtype and torch.isfinite(low).all()
    error = (low.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.05


def test_whole_net_in_bfloat16():
    net = seeded_net(TINY_DR2).to(torch.bfloat16)
    x, t = inputs(TINY_DR2)
    with torch.no_grad():
        out = net(x.to(torch.bfloat16), t)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_input_size_must_fit_the_levels():
    with pytest.raises(ValueError, match="divisible by 4"):
        seeded_net(TINY_DR2)(torch.zeros(1, 3, 18, 18), 0)


# --- loading the wrong thing -----------------------------------------------------------------------


def test_truncated_state_dict_gives_one_line():
    net = seeded_net(TINY_DIFFACE)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("output_blocks.5.")}
    with pytest.raises(UnsupportedCheckpoint) as info:
        load_strict(GuidedUNet(TINY_DIFFACE), state, "prior.safetensors")
    line = info.value.one_line()
    assert "\n" not in line
    assert "prior.safetensors" in line and "missing" in line and "output_blocks.5.0.in_layers.0.weight" in line


def test_other_architecture_is_refused():
    from facerestore.nets.sparnet import SPARNetConfig, SPARNetHD

    other = SPARNetHD(SPARNetConfig(widths=(16, 32), res_blocks=1, hourglass_depth=1, hourglass_channels=16)).state_dict()
    with pytest.raises(UnsupportedCheckpoint, match="not a guided-diffusion UNet state dict: key 'time_embed.0.weight' is missing"):
        infer_config(other)
    # the other preset's weights: right architecture family, wrong shapes
    with torch.device("meta"):
        dr2 = GuidedUNet(UNetConfig.dr2_256()).state_dict()
        difface = GuidedUNet(UNetConfig.difface_512())
    with pytest.raises(UnsupportedCheckpoint, match=r"DR2_FFHQ.pkl does not fit GuidedUNet: missing \d+: .*; unexpected \d+: .*; wrong shape") as info:
        load_strict(difface, dr2, "DR2_FFHQ.pkl")
    assert "\n" not in info.value.one_line()
