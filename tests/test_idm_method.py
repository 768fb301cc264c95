"""`--method idm`: DDPM ancestral sampling (eq. 8) of the x0 net on the shared engine, determinism under
the pipeline's generator, the model file format, and its one-line errors."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.diffusion import NoiseSchedule, Prediction, ddpm_step, space_timesteps
from facerestore.errors import UnsupportedCheckpoint, UsageError, WeightsError
from facerestore.image_io import read_image, write_image
from facerestore.methods.base import MethodOptions
from facerestore.methods import idm as idm_module
from facerestore.methods.idm import (
    INFO,
    IDMMethod,
    grid_for,
    idm_sample,
    load_model,
    per_face_ddpm_step,
    save_model,
)
from facerestore.methods.registry import build_method, method_info, method_names
from facerestore.nets.idm_unet import IDMUNet, idm_unet_config
from facerestore.weights.checkpoint import save_safetensors

pytestmark = pytest.mark.usefixtures("one_thread")

register()
runner = CliRunner()
SCHEDULE = NoiseSchedule.named("linear", 1000)
SIZE = 32


def tiny_net(seed: int = 0) -> IDMUNet:
    torch.manual_seed(seed)
    net = IDMUNet(idm_unet_config("tiny", SIZE))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.03)
    return net.eval()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_model(tiny_net(), tmp_path_factory.mktemp("idm") / "idm.safetensors", SIZE)


def method(path, **options) -> IDMMethod:
    return build_method("idm", MethodOptions(device="cpu", weights=str(path), **options))


class Spy:
    """A stand-in network: records the noise level of every call and predicts a constant x0."""

    def __init__(self, value: float = 0.25) -> None:
        self.gammas: list[float] = []
        self.value = value

    def __call__(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 6  # x_t and the degraded image
        assert torch.all(gamma == gamma[0])
        self.gammas.append(float(gamma[0]))
        return torch.full_like(x[:, :3], self.value)

    def timesteps(self) -> list[int]:
        table = SCHEDULE.alphas_cumprod
        return [int(np.argmin(np.abs(table - g))) for g in self.gammas]


# ----------------------------------------------------------------- the chain


def test_default_is_ten_ddpm_calls_at_the_respaced_timesteps():
    spy = Spy()
    out = idm_sample(spy, torch.zeros(2, 3, 8, 8), [1, 2])
    assert spy.timesteps() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert list(reversed(spy.timesteps())) == list(space_timesteps(1000, "10"))
    assert torch.equal(out, torch.full_like(out, 0.25))  # the last step returns the x0 estimate


def test_steps_option_sets_the_number_of_calls():
    for steps in (1, 5, 20):
        spy = Spy()
        idm_sample(spy, torch.zeros(1, 3, 8, 8), [0], steps=steps)
        assert spy.timesteps() == sorted(space_timesteps(1000, str(steps)), reverse=True)
    for bad in (0, 1001):
        with pytest.raises(UsageError, match="--steps"):
            grid_for(bad)


def test_x0_estimates_are_clipped_before_the_posterior_mean():
    spy = Spy(value=3.0)  # far outside the image range
    out = idm_sample(spy, torch.zeros(1, 3, 8, 8), [0], steps=3)
    assert torch.equal(out, torch.ones_like(out))


def test_each_face_steps_like_the_engine_ddpm_step_with_its_own_generator():
    """The batched wrapper equals `ddpm_step` (posterior variance) run face by face."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 8)
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1

    def denoiser(x_t, t):
        return Prediction(x0=x0[: x_t.shape[0]] if x_t.shape[0] == 3 else x0, eps=torch.zeros_like(x_t))

    gens = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
    batched = per_face_ddpm_step(denoiser, x, 555, 444, schedule=SCHEDULE, generators=gens)
    for i, seed in enumerate((4, 5, 6)):
        one = ddpm_step(lambda x_t, t, i=i: Prediction(x0=x0[i : i + 1], eps=torch.zeros_like(x_t)), x[i : i + 1], 555, 444,
                        schedule=SCHEDULE, generator=torch.Generator().manual_seed(seed), variance="fixed_small")
        torch.testing.assert_close(batched.x_prev[i : i + 1], one.x_prev, rtol=0, atol=0)
    # the marginal of x_{t_prev} is q(x_{t_prev} | x0) when x_t ~ q(x_t | x0): fixed_small, not 1 - alpha_t
    c = SCHEDULE.pair(555, 444)
    assert c.posterior_variance < c.beta


def test_sampling_is_deterministic_under_the_generator_and_faces_are_independent(tiny_model):
    idm = method(tiny_model, steps=4)
    crops = torch.rand(2, 3, 48, 48)
    a = idm.restore(crops, generator=torch.Generator().manual_seed(0))
    b = idm.restore(crops, generator=torch.Generator().manual_seed(0))
    c = idm.restore(crops, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-5  # another seed, another sample (same seed: bitwise equal)
    assert a.shape == crops.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    # a face's result depends only on its own seed, not on the batch it shares
    pair = idm.restore_seeded(crops, [11, 12])
    alone = idm.restore_seeded(crops[1:], [12])
    torch.testing.assert_close(pair[1:], alone, atol=1e-5, rtol=0)


def test_restore_runs_the_net_at_its_trained_size(tiny_model):
    idm = method(tiny_model, steps=2)
    seen = []
    forward = idm.model.net.forward
    idm.model.net.forward = lambda x, gamma: seen.append(tuple(x.shape)) or forward(x, gamma)
    out = idm.restore(torch.rand(1, 3, 512, 512), generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 512, 512)
    assert seen == [(1, 6, SIZE, SIZE)] * 2


# ----------------------------------------------------------------- weights


def test_missing_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(idm_module, "bundled_weights", lambda: tmp_path / "idm.safetensors")  # an install without the bundled model
    with pytest.raises(WeightsError) as info:
        build_method("idm", MethodOptions(device="cpu"))
    line = info.value.one_line()
    assert "facerestore train" in line and "--weights" in line and "\n" not in line


def test_a_run_folder_is_accepted_as_weights(tiny_model):
    assert isinstance(method(tiny_model.parent), IDMMethod)
    with pytest.raises(WeightsError, match="holds no idm.safetensors"):
        method(tiny_model.parent.parent)


def test_a_checkpoint_folder_as_weights_points_to_its_ema(tiny_model, tmp_path):
    """RUN/checkpoints/step_N holds model, ema, optimizer and state: the EMA is the model of that step."""
    step = tmp_path / "run" / "checkpoints" / "step_0000040"
    step.mkdir(parents=True)
    (step / "ema.safetensors").write_bytes(tiny_model.read_bytes())
    with pytest.raises(WeightsError) as info:
        method(step)
    assert info.value.one_line() == f"--weights {step} holds no idm.safetensors; pass {step / 'ema.safetensors'}, the model of that checkpoint"
    assert isinstance(method(step / "ema.safetensors"), IDMMethod)  # and that file loads


def test_config_comes_from_metadata_then_sidecar_then_shapes(tiny_model, tmp_path):
    meta = load_model(tiny_model)
    assert meta.image_size == SIZE and meta.net.config == idm_unet_config("tiny", SIZE)
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    assert card["unet"]["in_channels"] == 6 and card["image_size"] == SIZE and card["objective"] == "x0"
    bare = tmp_path / "bare.safetensors"
    save_safetensors(tiny_net().state_dict(), bare)  # no metadata
    (tmp_path / "bare.json").write_text(json.dumps({"unet": card["unet"], "image_size": 64}))
    assert load_model(bare).image_size == 64
    (tmp_path / "bare.json").unlink()
    inferred = load_model(bare)  # from the tensor shapes alone: 512 assumed
    assert inferred.net.config == idm_unet_config("tiny", SIZE) and inferred.image_size == 512
    x = torch.randn(1, 6, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(inferred.net(x, 0.5), meta.net(x, 0.5))


def test_a_compact_model_keeps_its_residual_and_unshuffle_through_the_file(tmp_path):
    torch.manual_seed(0)
    net = IDMUNet(idm_unet_config("compact", 64))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    path = save_model(net, tmp_path / "idm.safetensors", 64, dtype=torch.float16)
    loaded = load_model(path)
    assert loaded.net.config == net.config and loaded.net.config.input_residual == 3
    x = torch.rand(1, 6, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x, 0.4), net.half().float()(x, 0.4), atol=1e-3, rtol=1e-3)


def test_another_architecture_is_one_line(tiny_baseline, tmp_path):
    with pytest.raises(UnsupportedCheckpoint) as info:
        method(tiny_baseline)
    assert "not an IDM model" in info.value.one_line() and "facerestore train" in info.value.one_line()
    other = tmp_path / "other.safetensors"
    save_safetensors({"w": torch.zeros(2)}, other, {"format": "something-else"})
    with pytest.raises(UnsupportedCheckpoint, match="not an IDM model"):
        method(other)


def test_registry_lists_idm_and_refuses_knobs_it_does_not_have(tiny_model):
    assert "idm" in method_names() and method_info("idm") is INFO
    assert "steps" in INFO.knobs and "10" in INFO.knobs["steps"]
    with pytest.raises(UsageError, match="--eta"):
        method(tiny_model, eta=0.5)
    with pytest.raises(UsageError, match="--steps"):
        method(tiny_model, steps=0)


def test_restore_command_with_idm(tiny_model, tmp_path, monkeypatch):
    y, x = np.mgrid[0:64, 0:64] / 64
    write_image(tmp_path / "in" / "face.png", np.stack([x, y, x * y], -1).astype(np.float32))
    result = runner.invoke(app, [str(tmp_path / "in"), "--aligned", "-m", "idm", "--weights", str(tiny_model), "--steps", "3",
                                 "-o", str(tmp_path / "out"), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    restored = read_image(tmp_path / "out" / "restored_faces" / "face.png").rgb
    assert restored.shape == (512, 512, 3)
    # the 64-px face enlarged to the 512 crop, sampled in 3 steps under the default seed 0
    from facerestore.image_io import resize, to_uint8

    crop = torch.from_numpy(resize(read_image(tmp_path / "in" / "face.png").rgb, 512, 512)).permute(2, 0, 1)[None]
    expected = method(tiny_model, steps=3).restore(crop, generator=torch.Generator().manual_seed(0))[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(to_uint8(restored), to_uint8(expected))  # same arithmetic: the same levels
    monkeypatch.setattr(idm_module, "bundled_weights", lambda: tmp_path / "idm.safetensors")  # an install without the bundled model
    missing = runner.invoke(app, [str(tmp_path / "in"), "--aligned", "-m", "idm", "-o", str(tmp_path / "o2")], catch_exceptions=False)
    assert missing.exit_code == 1
    errors = [line for line in missing.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "facerestore train" in errors[0]


def test_per_face_step_checks_generators():
    with pytest.raises(UsageError):
        per_face_ddpm_step(lambda x, t: None, torch.zeros(2, 3, 4, 4), 10, 5, schedule=SCHEDULE, generators=[torch.Generator()])
    assert callable(partial(per_face_ddpm_step, generators=[]))


def test_bf16_precision_runs_the_unet_in_bf16_and_stays_close_to_float32(tiny_model):
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    results, seen = {}, {}
    for precision in ("fp32", "bf16"):
        m = method(tiny_model, precision=precision)
        dtypes = seen[precision] = set()
        hooks = [c.register_forward_hook(lambda mod, inp, out, d=dtypes: d.add(out.dtype))
                 for c in m.model.net.modules() if isinstance(c, torch.nn.Conv2d)]
        results[precision] = m.restore_seeded(x, [0, 1])
        for h in hooks:
            h.remove()
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    assert results["bf16"].dtype is torch.float32  # the chain's arithmetic stays float32
    difference = (results["bf16"] - results["fp32"]).abs()
    assert 0 < difference.max() < 0.05 and difference.mean() < 0.01  # bf16 keeps ~3 significant digits per layer


def test_fp16_on_the_cpu_is_refused_before_the_weights_are_read(tmp_path):
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        method(tmp_path / "missing.safetensors", precision="fp16")
