"""SPARNetHD (DR2's enhancer): official key manifest (meta device), round trips, golden outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from facerestore.errors import UnsupportedCheckpoint
from facerestore.nets.sparnet import SPARNetConfig, SPARNetHD, infer_config
from facerestore.weights.checkpoint import load_strict
from helpers import seeded_state

pytestmark = pytest.mark.usefixtures("one_thread")

# upstream BaseModel arguments scaled down; the key structure (spectral-norm triplets, hourglasses,
# shortcut convs, InstanceNorm) is SPARNetHD2D's
TINY_ARGS = {"size": 64, "min_ch": 16, "max_ch": 64, "min_feat_size": 16, "res_depth": 2, "bottleneck_size": 16}
TINY = SPARNetConfig.from_base_model_args(**TINY_ARGS, att_name="spar")
TINY_3D = SPARNetConfig.from_base_model_args(**TINY_ARGS, att_name="spar3d")
TINY_PLAIN = SPARNetConfig(widths=(16, 32), res_blocks=1, hourglass_depth=1, hourglass_channels=16, spectral_norm=False)


def seeded_net(config: SPARNetConfig, seed: int = 0) -> SPARNetHD:
    net = SPARNetHD(config)
    return load_strict(net, seeded_state(net, seed)).eval()


def face(size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- the official checkpoint's layout, on the meta device ----------------------------------------

SPAR_KEYS = [  # from DR2 SPAR/models.py createModel("SPARNetHD2D") (spectral_norm applied by init_network)
    ("encoder.0.conv2d.weight_orig", (102, 3, 3, 3)),
    ("encoder.0.conv2d.weight_u", (102,)),
    ("encoder.0.conv2d.weight_v", (27,)),
    ("encoder.0.conv2d.bias", (102,)),
    ("encoder.1.shortcut_func.conv2d.weight_orig", (204, 102, 3, 3)),
    ("encoder.1.preact_func.0.norm.weight", (102,)),
    ("encoder.1.conv1.conv2d.weight_orig", (204, 102, 3, 3)),
    ("encoder.1.conv1.norm.norm.weight", (204,)),
    ("encoder.1.att_func.b1_4.conv2d.weight_orig", (64, 204, 3, 3)),
    ("encoder.1.att_func.b2_plus_1.conv2d.weight_v", (576,)),
    ("encoder.1.att_func.out_block.0.conv2d.weight_orig", (1, 64, 3, 3)),
    ("encoder.4.conv2.conv2d.weight_orig", (512, 512, 3, 3)),
    ("res_layers.8.att_func.b3_1.conv2d.weight_u", (64,)),
    ("decoder.3.att_func.b1_5.conv2d.weight_orig", (64, 102, 3, 3)),
    ("decoder.3.conv1.conv2d.weight_orig", (102, 204, 3, 3)),
    ("out_conv.conv2d.weight_orig", (3, 102, 3, 3)),
    ("out_conv.conv2d.bias", (3,)),
]


def test_full_size_matches_official_manifest():
    config = SPARNetConfig.hd2d_512()
    assert config == SPARNetConfig()  # the defaults are SPARNetHD2D
    assert config.widths == (102, 204, 408, 512, 512) and config.res_blocks == 9
    with torch.device("meta"):
        net = SPARNetHD(config)
    state = net.state_dict()
    assert len(state) == 892
    assert sum(p.numel() for p in net.parameters()) == 85_793_412  # 85.79M as measured upstream
    assert sum(k.endswith(("weight_orig", "weight_u", "weight_v")) for k in state) == 531
    assert not any(k.endswith(".conv2d.weight") for k in state)
    assert not any(k.startswith("res_layers.") and "shortcut_func" in k for k in state)  # identity shortcuts
    for key, shape in SPAR_KEYS:
        assert tuple(state[key].shape) == shape, key
    assert infer_config(state) == config


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY, TINY_3D, TINY_PLAIN], ids=["spar", "spar3d", "plain"])
def test_round_trip(config):
    """build -> state dict -> infer_config -> rebuild -> strict load -> same config, same output."""
    net = seeded_net(config)
    state = net.state_dict()
    assert infer_config(state) == config
    again = load_strict(SPARNetHD(infer_config(state)), state).eval()
    x = face()
    with torch.no_grad():
        assert torch.equal(net(x), again(x))


def test_spectral_norm_divides_by_the_stored_sigma():
    """In eval mode the conv weight is weight_orig / (u . W v) with the loaded u, v (no power iteration)."""
    net = seeded_net(TINY)
    conv = net.encoder[0].conv2d
    with torch.no_grad():
        net(face())
        matrix = conv.weight_orig.reshape(conv.weight_orig.shape[0], -1)
        sigma = torch.dot(conv.weight_u, matrix @ conv.weight_v)
        torch.testing.assert_close(conv.weight, conv.weight_orig / sigma)
    assert sigma > 0


# --- golden outputs from the reference -----------------------------------------------------------
# Produced once outside the repository with Kaldwin0106/DR2_Drgradation_Remover@09c97ed1:
# SPAR.sparnet.BaseModel(**TINY_ARGS, att_name=..., norm_type='in', relu_type='leakyrelu') passed
# through SPAR.models.init_network(model, use_norm='spectral_norm') (as createModel("SPARNetHD2D")
# does), then load_state_dict(seeded_state(SPARNetHD(TINY...), 0), strict=True), eval, run on
# face() (CPU, float32). The reference outputs equalled ours exactly (max abs difference 0.0).
# Numbers: the reference's out[:, :, -2:, -2:], rounded.
GOLDEN = {
    "spar": (
        TINY,
        [-2.567641, -1.943834, -2.419269, -2.15835, -2.106699, -1.291377, -1.630371, -0.663805,
         1.255984, 0.965141, 1.157333, 1.02071, -0.234091, -0.401205, -0.38606, -0.170357,
         -0.402899, 0.047221, 0.144166, 0.431678, -0.615, -0.683179, -0.035018, -0.015421],
    ),
    "spar3d": (
        TINY_3D,
        [-0.820893, -1.283353, -1.297989, -2.190355, 2.687217, 1.64506, 3.19448, 1.791322,
         0.811586, 0.394408, 0.510693, 0.279927, 0.108315, -0.664398, -0.129402, -1.070451,
         -0.482239, -0.191172, -1.272611, -1.233511, 0.080762, -0.163407, -0.558334, -0.704048],
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_matches_reference_outputs(name):
    config, expected = GOLDEN[name]
    with torch.no_grad():
        out = seeded_net(config)(face())
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out[:, :, -2:, -2:].flatten(), torch.tensor(expected), rtol=1e-4, atol=1e-4)


def test_autocast_bfloat16():
    net = seeded_net(TINY)
    x = face()
    with torch.no_grad():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() / reference.abs().max() < 0.05


def test_input_size_must_fit_the_hourglasses():
    assert TINY.multiple == 8 and SPARNetConfig.hd2d_512().multiple == 32
    with pytest.raises(ValueError, match="not divisible by 8"):
        seeded_net(TINY)(torch.zeros(1, 3, 36, 36))


# --- loading the wrong thing -----------------------------------------------------------------------


def test_truncated_state_dict_gives_one_line():
    state = seeded_net(TINY).state_dict()
    del state["decoder.1.conv2.conv2d.weight_u"]
    with pytest.raises(UnsupportedCheckpoint) as info:
        load_strict(SPARNetHD(TINY), state, "SPARNetHD_FFHQ_DR2aug.pth")
    line = info.value.one_line()
    assert "\n" not in line
    assert "SPARNetHD_FFHQ_DR2aug.pth does not fit SPARNetHD: missing 1: decoder.1.conv2.conv2d.weight_u" in line


def test_plain_weights_do_not_load_into_spectral_norm():
    """A state dict without the triplets (spectral norm removed) is refused with the first keys."""
    plain = SPARNetHD(dataclasses.replace(TINY, spectral_norm=False)).state_dict()
    with pytest.raises(UnsupportedCheckpoint, match=r"missing \d+: encoder\.0\.conv2d\.weight_orig, .*unexpected \d+: encoder\.0\.conv2d\.weight,"):
        load_strict(SPARNetHD(TINY), plain, "sparnet.pth")


def test_other_architecture_is_refused():
    from facerestore.nets.guided_unet import GuidedUNet, UNetConfig

    with torch.device("meta"):
        other = GuidedUNet(UNetConfig.dr2_256()).state_dict()
    with pytest.raises(UnsupportedCheckpoint, match="not a SPARNet state dict: no convolution weight under 'encoder.0'"):
        infer_config(other)
