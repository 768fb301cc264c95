"""IDM's conditional UNet (noise-level conditioning, presets, config round trips) and the x0-regression
objective (IDM eq. 5 and 7)."""

from __future__ import annotations

import pytest
import torch

from facerestore.diffusion import ConcatCondition, NoiseSchedule, space_timesteps
from facerestore.diffusion.losses import noisy_sample, perturbed_noise, sample_noise_levels, x0_regression_loss
from facerestore.errors import UnsupportedCheckpoint, UsageError
from facerestore.nets.guided_unet import GuidedUNet, UNetConfig, infer_config
from facerestore.nets.idm_unet import (
    IDMUNet,
    PRESETS,
    check_idm_config,
    config_from_dict,
    config_to_dict,
    idm_unet_config,
    infer_idm_config,
    level_spacing,
    noise_level,
    parameter_count,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULE = NoiseSchedule.named("linear", 1000)
MICRO = UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=(1, 1), attention_levels=(), in_channels=6, out_channels=3, num_head_channels=32)


def gammas(timesteps) -> torch.Tensor:
    return torch.tensor([SCHEDULE.alpha_bar(t) for t in timesteps], dtype=torch.float64)


def random_net(config: UNetConfig = MICRO, seed: int = 0) -> IDMUNet:
    torch.manual_seed(seed)
    net = IDMUNet(config)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


# ----------------------------------------------------------------- noise-level conditioning


def test_noise_level_is_rescaled_log_snr():
    g = torch.tensor([0.5, 0.9, 0.1], dtype=torch.float64)
    expected = 50 * (10 - torch.log(g / (1 - g)))
    torch.testing.assert_close(noise_level(g), expected.float())
    assert float(noise_level(torch.tensor([0.5]))) == pytest.approx(500.0)


def test_noise_level_spreads_the_ten_idm_steps_where_gamma_would_not():
    grid = space_timesteps(1000, "10")
    g = gammas(grid)
    levels = noise_level(g)
    assert torch.all(torch.diff(levels) > 0)  # monotone: more noise, larger input
    assert 0 < float(levels[0]) < 50 and 1000 < float(levels[-1]) < 1010  # about the 0..1000 range of timesteps
    assert level_spacing(g) > 50  # neighbouring steps are far apart for the embedding (max frequency 1/unit)
    # the alternatives the docstring rules out: the three noisiest steps nearly coincide
    assert float(torch.diff(torch.sort(1000 * g[-3:]).values).min()) < 2.0
    assert float(torch.diff(torch.sort(1000 * torch.sqrt(1 - g[-3:])).values).min()) < 1.0


def test_net_is_conditioned_on_a_continuous_gamma_and_refuses_integer_timesteps():
    net = random_net()
    x = torch.randn(2, 6, 16, 16)
    with torch.no_grad():
        a = net(x, torch.tensor([0.3, 0.3]))
        b = net(x, torch.tensor([0.3, 0.3]))
        c = net(x, torch.tensor([0.31, 0.31]))
        scalar = net(x, 0.3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, scalar)
    assert (a - c).abs().max() > 1e-4  # a nearby level is a different input
    assert a.shape == (2, 3, 16, 16)
    with pytest.raises(TypeError, match="gamma"):
        net(x, torch.tensor([500, 500]))


# ----------------------------------------------------------------- presets and configs


def test_presets_sizes_and_the_paper_model_is_about_120m():
    counts = {name: parameter_count(idm_unet_config(name, 512 if name != "tiny" else 64)) for name in PRESETS}
    assert counts["tiny"] < 2e6 < counts["small"] < counts["base"] < counts["paper"]
    assert 115e6 < counts["paper"] < 125e6  # "the model comprises of 120M parameters" (sec. 4.1)
    paper = idm_unet_config("paper", 512)
    assert [512 // 2**level for level in paper.attention_levels] == [32, 16, 8]  # attention "32 -> 8"
    assert (paper.in_channels, paper.out_channels) == (6, 3)


def test_preset_rejects_sizes_its_levels_cannot_halve():
    with pytest.raises(ValueError, match="divisible by 64"):
        idm_unet_config("base", 96)
    with pytest.raises(ValueError, match="unknown"):
        idm_unet_config("huge", 512)


def test_config_round_trips_through_json_and_state_dict():
    config = idm_unet_config("tiny", 32)
    assert config_from_dict(config_to_dict(config)) == config
    net = IDMUNet(config)
    assert infer_idm_config(net.state_dict()) == config
    assert infer_config(net.state_dict()) == config  # it is a plain GuidedUNet state dict


def test_other_architectures_are_refused_with_one_line():
    prior = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_levels=(), in_channels=3, out_channels=6)
    with pytest.raises(UnsupportedCheckpoint, match="3 input and 6 output channels, not an IDM model"):
        infer_idm_config(GuidedUNet(prior).state_dict(), "prior.pth")
    with pytest.raises(UnsupportedCheckpoint, match="not an IDM model"):
        infer_idm_config({"conv.weight": torch.zeros(3, 3, 3, 3)}, "other.pth")
    with pytest.raises(UnsupportedCheckpoint):
        check_idm_config(prior)
    with pytest.raises(UnsupportedCheckpoint, match="unknown UNet config fields"):
        config_from_dict({**config_to_dict(MICRO), "depth": 3})


def test_compact_preset_unshuffles_by_4_and_predicts_a_residual_on_the_degraded_input():
    config = idm_unet_config("compact", 512)
    assert (config.pixel_unshuffle, config.input_residual, config.multiple) == (4, 3, 32)
    assert [512 // 4 // 2**level for level in config.attention_levels] == [16]
    assert 4e6 < parameter_count(config) < 5e6
    small = idm_unet_config("compact", 64)  # the same net at a size the test can afford
    net = IDMUNet(small)
    assert net.input_blocks[0][0].weight.shape[1] == 6 * 16 and net.out[2].weight.shape[0] == 3 * 16
    x = torch.randn(2, 6, 64, 64)
    with torch.no_grad():
        untrained = net(x, torch.tensor([0.2, 0.9]))
    torch.testing.assert_close(untrained, x[:, 3:], rtol=0, atol=0)  # zero last conv: x0 = x_d exactly
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.randn(1, 6, 48, 48), 0.5)


def test_unshuffled_residual_net_equals_its_definition():
    """out = pixel_shuffle(body(pixel_unshuffle(x)), u) + x[:, 3:6], checked against a hand-built copy."""
    config = UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=(1, 1), attention_levels=(), in_channels=6,
                        out_channels=3, num_head_channels=32, pixel_unshuffle=2, input_residual=3)
    net = random_net(config)
    plain = GuidedUNet(UNetConfig(**{**config.__dict__, "pixel_unshuffle": 1, "input_residual": None, "in_channels": 24, "out_channels": 12}))
    plain.load_state_dict(net.state_dict())  # the same tensors: only the wrapping differs
    x, gamma = torch.randn(2, 6, 16, 16), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        expected = torch.nn.functional.pixel_shuffle(plain(torch.nn.functional.pixel_unshuffle(x, 2), noise_level(gamma)), 2) + x[:, 3:]
        torch.testing.assert_close(net(x, gamma), expected)


def test_compact_config_round_trips_and_shapes_reveal_the_unshuffle_but_not_the_residual():
    config = idm_unet_config("compact", 64)
    assert config_from_dict(config_to_dict(config)) == config
    inferred = infer_idm_config(IDMUNet(config).state_dict())
    assert inferred.pixel_unshuffle == 4 and inferred.input_residual is None  # hence the config in the file's metadata
    assert inferred == UNetConfig(**{**config.__dict__, "input_residual": None})
    with pytest.raises(ValueError, match="input_residual 4 needs 3 input channels"):
        UNetConfig(**{**config.__dict__, "input_residual": 4})
    with pytest.raises(ValueError, match="pixel_unshuffle must be at least 1"):
        UNetConfig(**{**config.__dict__, "pixel_unshuffle": 0})


# ----------------------------------------------------------------- the objective


def test_discrete_noise_levels_are_schedule_values_and_continuous_ones_lie_between():
    g = torch.Generator().manual_seed(0)
    discrete = sample_noise_levels(SCHEDULE, 2000, generator=g, kind="discrete")
    table = torch.from_numpy(SCHEDULE.alphas_cumprod.copy())
    assert all(bool((table == v).any()) for v in discrete[:50])
    cont = sample_noise_levels(SCHEDULE, 20000, generator=torch.Generator().manual_seed(1), kind="continuous")
    assert float(cont.min()) > 0 and float(cont.max()) <= 1.0
    assert not any(bool((table == v).any()) for v in cont[:50])
    # the same share of levels as the discrete draw lies below every schedule value (uniform t)
    for t in (100, 500, 900):
        share = float((cont < SCHEDULE.alpha_bar(t)).double().mean())
        assert share == pytest.approx((999 - t) / 1000, abs=0.015)
    again = sample_noise_levels(SCHEDULE, 20000, generator=torch.Generator().manual_seed(1), kind="continuous")
    torch.testing.assert_close(again, cont, rtol=0, atol=0)
    with pytest.raises(UsageError):
        sample_noise_levels(SCHEDULE, 1, kind="log")


def test_noisy_sample_is_eq_5():
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    gamma = torch.tensor([0.9, 0.5, 0.01], dtype=torch.float64)
    expected = gamma.sqrt().view(-1, 1, 1, 1).float() * x0 + (1 - gamma).sqrt().view(-1, 1, 1, 1).float() * noise
    torch.testing.assert_close(noisy_sample(x0, gamma, noise), expected)


def test_input_perturbation_is_eps_plus_a_second_scaled_normal():
    """DDPM-IP: scale 0 draws exactly the plain eps (the shipped recipe's random stream is unchanged);
    scale s adds s * xi from the same generator, so the variance is 1 + s^2."""
    plain = perturbed_noise((4, 3, 64, 64), 0.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(plain, torch.randn((4, 3, 64, 64), generator=torch.Generator().manual_seed(3)), rtol=0, atol=0)
    g = torch.Generator().manual_seed(3)
    eps, xi = torch.randn((4, 3, 64, 64), generator=g), torch.randn((4, 3, 64, 64), generator=g)
    perturbed = perturbed_noise((4, 3, 64, 64), 0.2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(perturbed, eps + 0.2 * xi)
    assert float(perturbed.var()) == pytest.approx(1.04, abs=0.02)
    with pytest.raises(UsageError):
        perturbed_noise((1,), -0.1)


def test_a_gradient_step_on_the_l1_objective_moves_the_prediction_towards_x0():
    """Toy: f(cat(x_t, x_d), gamma) = a * x_d + b * x_t; x_d is x0 plus a little noise, so the loss is
    smallest near a = 1, b = 0. One gradient-descent step from a = 0.3 must lower the L1 to x0."""
    torch.manual_seed(0)
    x0 = torch.rand(8, 3, 8, 8) * 2 - 1
    x_d = x0 + 0.05 * torch.randn_like(x0)
    gamma = sample_noise_levels(SCHEDULE, 8, generator=torch.Generator().manual_seed(2))
    noise = torch.randn_like(x0)
    a = torch.tensor(0.3, requires_grad=True)
    b = torch.tensor(0.2, requires_grad=True)

    def net(x, level):
        assert level.dtype == torch.float32 and level.shape == (8,)
        return a * x[:, 3:] + b * x[:, :3]

    loss, prediction = x0_regression_loss(ConcatCondition(net, x_d), x0, gamma, noise)
    loss.backward()
    assert a.grad < 0  # raising a (towards x_d = x0) lowers the loss
    with torch.no_grad():
        a -= 0.5 * a.grad
        b -= 0.5 * b.grad
        after, _ = x0_regression_loss(ConcatCondition(net, x_d), x0, gamma, noise)
    assert after.item() < loss.item() - 0.02
    assert loss.item() == pytest.approx((prediction - x0).abs().mean().item())


def test_l2_is_available_and_other_powers_are_refused():
    x0 = torch.zeros(1, 3, 4, 4)
    gamma = torch.tensor([0.5], dtype=torch.float64)
    net = lambda x, g: torch.full_like(x[:, :3], 0.5)  # noqa: E731
    assert float(x0_regression_loss(net, x0, gamma, torch.zeros_like(x0), p=2)[0]) == pytest.approx(0.25)
    assert float(x0_regression_loss(net, x0, gamma, torch.zeros_like(x0), p=1)[0]) == pytest.approx(0.5)
    with pytest.raises(UsageError):
        x0_regression_loss(net, x0, gamma, torch.zeros_like(x0), p=3)

