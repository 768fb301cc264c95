"""dr2: the omega table and the timesteps the DDPM sees, options and usage errors, the PIL-exact
input resize, strict loading of the official formats (raw `.pkl` DDPM, raw SPARNetHD with
spectral-norm triplets) through the catalogue, an end-to-end CLI run, noise, batching, --dr2-auto.

As in test_difface.py: tiny nets with the official key layouts for loading and the end-to-end run,
a 1x1-conv stand-in DDPM and enhancer for the properties of the loop (26 calls from t=605 for the
medium preset, determinism, batching, the auto selection).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from facerestore.diffusion import NoiseSchedule, space_timesteps
from facerestore.errors import UnsupportedCheckpoint, UsageError, WeightsError
from facerestore.methods.base import MethodOptions
from facerestore.methods.dr2 import (
    AUTO_WEIGHT,
    DR2Method,
    DR2Nets,
    DR2Setting,
    lowband_rmse,
    settings_from_options,
    to_dr2_input,
    to_enhancer_input,
)
from facerestore.nets.guided_unet import GuidedUNet, UNetConfig
from facerestore.nets.sparnet import SPARNetConfig, SPARNetHD
from helpers import StandInLearnedRange, StandInResidual, pin_catalogue_hashes, seeded_state

pytestmark = pytest.mark.usefixtures("one_thread")

# ILVR/DR2's FFHQ-256 layout scaled down: residual up/downsampling, one attention level at 16x16
# (DR2: downsample rate 16), scale-shift norm, 64-channel heads (the loader assumes the official 64)
TINY_DDPM = UNetConfig(model_channels=32, channel_mult=(1, 1, 1, 1, 2), num_res_blocks=(1, 1, 1, 1, 1), attention_levels=(4,), num_head_channels=64, resblock_updown=True)
# SPARNetHD2D scaled down, with its spectral-norm convolutions (weight_orig / weight_u / weight_v)
TINY_SPAR = SPARNetConfig(widths=(8, 16), res_blocks=1, hourglass_depth=1, hourglass_channels=8, spectral_norm=True)
GRID = space_timesteps(1000, "100")

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_states() -> dict[str, dict[str, torch.Tensor]]:
    return {"ddpm": seeded_state(GuidedUNet(TINY_DDPM), 0), "enhancer": seeded_state(SPARNetHD(TINY_SPAR), 1)}


def save_official(states, folder: Path, roles=("ddpm", "enhancer")) -> dict[str, Path]:
    """Both files raw (`load_state_dict(torch.load(...))` in dr2e.py) under their official names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {"ddpm": "DR2_FFHQ.pkl", "enhancer": "SPARNetHD_FFHQ_DR2aug.pth"}
    paths = {role: folder / names[role] for role in roles}
    for role, path in paths.items():
        torch.save(states[role], path)
    return paths


def stand_in(quality=None, size: int = 64, **options) -> DR2Method:
    """The method on stand-in nets, DR2 at `size` and the enhancer at 2 * size (256 / 512 officially)."""
    torch.manual_seed(0)
    nets = DR2Nets(StandInLearnedRange(), StandInResidual(), size=size, enhancer_size=2 * size)
    return DR2Method(MethodOptions(**options), nets=nets, quality=quality)


def faces(n: int, seed: int = 0, size: int = 128) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "preset, omega, calls, first, last",
    [("mild", 42, 21, 424, 222), ("medium", 60, 26, 605, 353), ("severe", 65, 31, 656, 353)],
)
def test_presets_follow_the_reference_variant_omega(preset, omega, calls, first, last):
    (setting,) = settings_from_options(MethodOptions(dr2_preset=preset))
    assert (setting.omega, setting.calls, setting.start_t, setting.stop_t) == (omega, calls, first, last)
    assert setting.timesteps == [GRID[i] for i in range(omega, setting.tau - 1, -1)]


def test_default_is_medium_and_overrides():
    assert settings_from_options(MethodOptions()) == (DR2Setting(8, 35),)
    assert settings_from_options(MethodOptions(dr2_preset="severe", dr2_tau=40)) == (DR2Setting(16, 40),)
    assert settings_from_options(MethodOptions(dr2_n=2)) == (DR2Setting(2, 35),)
    assert [DR2Setting(n, 10).omega for n in (1, 2, 4, 8, 16)] == [15, 20, 30, 35, 40]
    assert DR2Setting(16, 80).omega == 99  # the reference's min(tau + 30, 100) would index past its 100 steps
    assert settings_from_options(MethodOptions(dr2_auto=True)) == (DR2Setting(4, 22), DR2Setting(8, 35), DR2Setting(16, 35))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dr2_tau": 99}, "outside 0..98"),
        ({"dr2_tau": 100}, "outside 0..98"),
        ({"dr2_tau": -1}, "outside 0..98"),
        ({"dr2_n": 3}, "dividing 256"),
        ({"dr2_n": 0}, "dividing 256"),
        ({"dr2_preset": "extreme"}, "not a preset"),
        ({"dr2_auto": True, "dr2_n": 4}, "cannot be combined"),
        ({"steps": 10}, "--steps is not used by method 'dr2'"),
        ({"eta": 0.5}, "--eta is not used"),
        ({"no_enhancer": True, "weights": "ddpm=a.pkl,enhancer=b.pth"}, "--no-enhancer"),
    ],
)
def test_usage_errors_come_before_any_weights_are_read(options, message):
    with pytest.raises(UsageError, match=message):
        DR2Method(MethodOptions(**options))


def test_usage_error_lines_say_what_to_do():
    """--dr2-tau -1 said "outside the indices 0..99", and 99 was then refused by a second message; the
    weights conflicts had no hint at all."""
    for tau in (-1, 99, 1000):
        with pytest.raises(UsageError) as info:
            DR2Method(MethodOptions(dr2_tau=tau))
        assert info.value.one_line() == (f"--dr2-tau {tau} is outside 0..98: tau is an index on the 100-step grid and DR2 must stop below "
                                         "its start omega (at most 99); pass --dr2-tau 0..98 (bigger removes more degradation; the presets "
                                         "use 22, 35), or leave it out")
    assert DR2Setting.checked(2, 98).omega == 99  # the top of the range runs
    with pytest.raises(UsageError) as info:
        DR2Method(MethodOptions(no_enhancer=True, weights="enhancer=b.pth"))
    assert info.value.one_line() == ("--weights names an enhancer= file, but --no-enhancer skips the enhancer; drop enhancer=FILE from "
                                     "--weights to run without the enhancer, or drop --no-enhancer to use it")


def test_missing_baidu_weights_offline_is_one_actionable_line(tmp_path):
    from facerestore.cli.app import app, register
    from facerestore.image_io import write_image

    register()
    write_image(tmp_path / "a.png", np.full((64, 64, 3), 0.5, np.float32))
    result = runner.invoke(app, [str(tmp_path / "a.png"), "--aligned", "-m", "dr2", "-o", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "DR2_FFHQ.pkl" in line and "Baidu" in line and "facerestore weights import" in line
    assert "it is only on a Baidu Cloud share" in line  # was "get it from only on a ..."


def test_missing_weights_line_names_both_baidu_files():
    """With neither DR2 file here, the one line names both (it named DR2_FFHQ.pkl alone, and the rerun
    after importing it then asked for SPARNetHD, from the same Baidu share)."""
    with pytest.raises(WeightsError) as info:
        DR2Method(MethodOptions())
    line = info.value.one_line()
    assert line.startswith("DR2_FFHQ.pkl (weights 'dr2_ddpm') is not on this machine")
    assert line.endswith("; also missing, get and import it the same way: SPARNetHD_FFHQ_DR2aug.pth (weights 'dr2_sparnethd', from the same place); "
                         "or pass --no-enhancer, which needs no SPARNetHD_FFHQ_DR2aug.pth")
    with pytest.raises(WeightsError) as info:
        DR2Method(MethodOptions(no_enhancer=True))  # needs the DDPM alone
    assert "also missing" not in info.value.one_line() and "--no-enhancer" not in info.value.one_line()


def test_a_missing_enhancer_says_no_enhancer_needs_none(tiny_states, tmp_path):
    paths = save_official(tiny_states, tmp_path / "w", roles=("ddpm",))
    with pytest.raises(WeightsError) as info:
        DR2Method(MethodOptions(weights=str(paths["ddpm"])))
    assert info.value.one_line().startswith("SPARNetHD_FFHQ_DR2aug.pth (weights 'dr2_sparnethd') is not on this machine")
    assert info.value.one_line().endswith("; then run `facerestore weights import SPARNetHD_FFHQ_DR2aug.pth` or put it in a folder named by "
                                          "FACERESTORE_WEIGHTS; or pass --no-enhancer, which needs no SPARNetHD_FFHQ_DR2aug.pth")


# ------------------------------------------------------------------ resizing


def test_input_resize_is_pil_bicubic_exactly():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = (rng.random((512, 512, 3)) ** 2 * 255).round().astype(np.uint8)  # hard case: noise, full range
    pil = np.asarray(Image.fromarray(image).resize((256, 256), Image.BICUBIC)).astype(np.float32)
    ours = to_dr2_input(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    ours = ((ours[0].permute(1, 2, 0) + 1) * 127.5).numpy()
    assert np.abs(ours - pil).max() < 1e-3  # every 8-bit value equal


def test_enhancer_input_is_plain_bicubic_without_reclamp():
    x0 = torch.linspace(-1, 1, 256).repeat(1, 3, 256, 1)
    x0[..., :128] = 1.0
    up = to_enhancer_input(x0)
    assert up.shape == (1, 3, 512, 512) and up.max() > 1.0  # a = -0.75 overshoots at the edge; not clamped
    torch.testing.assert_close(up, F.interpolate(x0, size=(512, 512), mode="bicubic", align_corners=False))


# ------------------------------------------------------------------ loading and end to end


def test_catalogue_files_in_official_formats_load_strictly(tiny_states, tmp_path, monkeypatch):
    """Raw .pkl DDPM and raw SPARNetHD with spectral-norm triplets via FACERESTORE_WEIGHTS, sha256-checked, converted."""
    paths = save_official(tiny_states, tmp_path / "weights")
    pin_catalogue_hashes(monkeypatch, paths, {"ddpm": "dr2_ddpm", "enhancer": "dr2_sparnethd"})
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tmp_path / "weights"))
    method = DR2Method(MethodOptions())
    for net, role in ((method.nets.ddpm, "ddpm"), (method.nets.enhancer, "enhancer")):
        loaded = net.state_dict()
        assert set(loaded) == set(tiny_states[role]) and all(torch.equal(loaded[k], v) for k, v in tiny_states[role].items())
    assert any(k.endswith("weight_u") for k in method.nets.enhancer.state_dict())


def test_no_enhancer_needs_only_the_ddpm(tiny_states, tmp_path):
    paths = save_official(tiny_states, tmp_path / "w", roles=("ddpm",))
    method = DR2Method(MethodOptions(no_enhancer=True, weights=str(paths["ddpm"])))
    assert method.nets.enhancer is None
    with pytest.raises(WeightsError, match="SPARNetHD_FFHQ_DR2aug.pth"):
        DR2Method(MethodOptions(weights=str(paths["ddpm"])))


def test_wrong_or_truncated_checkpoints_are_one_line(tiny_states, tmp_path):
    paths = save_official(tiny_states, tmp_path / "w")
    with pytest.raises(UnsupportedCheckpoint) as info:  # the DDPM given as the enhancer
        DR2Method(MethodOptions(weights=f"ddpm={paths['ddpm']},enhancer={paths['ddpm']}"))
    line = info.value.one_line()
    assert "\n" not in line and "DR2_FFHQ.pkl" in line and "SPARNetHD" in line
    cut = {k: v for k, v in tiny_states["enhancer"].items() if not k.startswith("res_layers.0.conv1.conv2d.weight_")}
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(UnsupportedCheckpoint) as info:  # the spectral-norm triplet of one conv missing
        DR2Method(MethodOptions(weights=f"ddpm={paths['ddpm']},enhancer={tmp_path / 'cut.pth'}"))
    line = info.value.one_line()
    assert "\n" not in line and "cut.pth" in line and "missing 3" in line and "res_layers.0.conv1.conv2d.weight_orig" in line
    import dataclasses

    torch.save(GuidedUNet(dataclasses.replace(TINY_DDPM, resblock_updown=False)).state_dict(), tmp_path / "prior.pth")
    with pytest.raises(UnsupportedCheckpoint, match="is it difface_prior's file"):  # DifFace's prior, which would run and blur
        DR2Method(MethodOptions(weights=f"ddpm={tmp_path / 'prior.pth'},enhancer={paths['enhancer']}"))


def test_import_refuses_another_architecture_under_an_official_name(tiny_states, tmp_path):
    """DifFace's prior saved as DR2_FFHQ.pkl was imported and its sha256 recorded as dr2_ddpm's (no
    published one), after which the real file was refused; now the loader's own checks run first."""
    import dataclasses

    from facerestore.errors import BadWeightsFile
    from facerestore.weights import store
    from facerestore.weights.catalogue import get_entry

    wrong = tmp_path / "wrong" / "DR2_FFHQ.pkl"
    wrong.parent.mkdir()
    torch.save(GuidedUNet(dataclasses.replace(TINY_DDPM, resblock_updown=False)).state_dict(), wrong)
    with pytest.raises(BadWeightsFile) as info:
        store.import_weights(wrong)
    line = info.value.one_line()
    assert info.value.exit_code == 2 and "\n" not in line
    assert line.startswith(f"{wrong} has the name of dr2_ddpm's file but does not fit the DR2 DDPM (guided-diffusion UNet): its UNet resamples "
                           "outside residual blocks")
    assert "; it fits difface_prior (iddpm_ffhq512_ema500000.pth) instead; nothing was stored; if it is difface_prior's file, name it " \
           "iddpm_ffhq512_ema500000.pth and import that; else get the official DR2_FFHQ.pkl (only on a Baidu" in line
    enhancer = tmp_path / "wrong" / "SPARNetHD_FFHQ_DR2aug.pth"  # the DDPM under the enhancer's name
    torch.save(tiny_states["ddpm"], enhancer)
    with pytest.raises(BadWeightsFile, match="has the name of dr2_sparnethd's file but is not a SPARNetHD enhancer checkpoint .* it fits dr2_ddpm"):
        store.import_weights(enhancer)
    assert not (store.cache_dir() / "DR2_FFHQ.pkl").exists() and store.expected_sha256(get_entry("dr2_ddpm")) == ""

    paths = save_official(tiny_states, tmp_path / "w")
    for path in paths.values():  # the real files are then imported, as before
        assert store.import_weights(path).path == store.cache_dir() / path.name
    assert DR2Method(MethodOptions()).nets.enhancer is not None


def test_a_wrong_copy_in_the_cache_says_how_to_replace_it(tiny_states, tmp_path, monkeypatch):
    """A wrong file stored before import checked architectures (its sha256 recorded as the official
    one): the run named it but only said to pass DR2's files; `import --no-verify` replaces it."""
    import dataclasses
    import hashlib
    import json

    from facerestore.weights import store

    cached = store.cache_dir() / "DR2_FFHQ.pkl"
    cached.parent.mkdir(parents=True)
    torch.save(GuidedUNet(dataclasses.replace(TINY_DDPM, resblock_updown=False)).state_dict(), cached)
    (store.home_dir() / "recorded_sha256.json").write_text(json.dumps({"dr2_ddpm": hashlib.sha256(cached.read_bytes()).hexdigest()}))
    with pytest.raises(UnsupportedCheckpoint) as info:
        DR2Method(MethodOptions(no_enhancer=True))
    line = info.value.one_line()
    assert info.value.exit_code == 1 and line.startswith(f"{cached} (weights 'dr2_ddpm') does not fit the DR2 DDPM")
    assert line.endswith("that copy is not the official DR2_FFHQ.pkl (only on a Baidu Cloud share (code dr2e) linked from https://github.com/"
                         "Kaldwin0106/DR2_Drgradation_Remover (a community Google Drive mirror is linked in its issue #4)): get the official "
                         "file and run `facerestore weights import --no-verify DR2_FFHQ.pkl`, which replaces it")
    paths = save_official(tiny_states, tmp_path / "w", roles=("ddpm",))
    store.import_weights(paths["ddpm"], verify=False)  # what the line says
    assert DR2Method(MethodOptions(no_enhancer=True)).nets.enhancer is None

    shared = tmp_path / "shared"  # a wrong copy in a FACERESTORE_WEIGHTS folder is for its owner to delete
    shared.mkdir()
    torch.save(GuidedUNet(dataclasses.replace(TINY_DDPM, resblock_updown=False)).state_dict(), shared / "SPARNetHD_FFHQ_DR2aug.pth")
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared))
    with pytest.raises(UnsupportedCheckpoint) as info:
        DR2Method(MethodOptions())
    assert info.value.one_line().startswith(f"{shared / 'SPARNetHD_FFHQ_DR2aug.pth'} (weights 'dr2_sparnethd') is not a SPARNetHD enhancer checkpoint")
    assert info.value.one_line().endswith("): delete it or put the official file in its place")


def test_cli_end_to_end_with_catalogue_weights(tiny_states, tmp_path, monkeypatch):
    """`facerestore face.png --aligned -m dr2 --dr2-n 2 --dr2-tau 98`: omega = 99, two DDPM calls at t=999, 989."""
    from facerestore.cli.app import app, register
    from facerestore.image_io import read_image, write_image

    register()
    paths = save_official(tiny_states, tmp_path / "weights")
    pin_catalogue_hashes(monkeypatch, paths, {"ddpm": "dr2_ddpm", "enhancer": "dr2_sparnethd"})
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tmp_path / "weights"))
    seen: list[list[int]] = []
    forward = GuidedUNet.forward
    monkeypatch.setattr(GuidedUNet, "forward", lambda self, x, t: (seen.append(t.tolist()), forward(self, x, t))[1])
    y, x = np.mgrid[0:512, 0:512].astype(np.float32)
    write_image(tmp_path / "in" / "face.png", np.stack([0.5 + 0.3 * np.sin(x / 19), 0.5 + 0.3 * np.cos(y / 13), np.full_like(x, 0.4)], -1))
    args = [str(tmp_path / "in" / "face.png"), "--aligned", "-m", "dr2", "--dr2-n", "2", "--dr2-tau", "98", "--device", "cpu", "-o", str(tmp_path / "out"), "-q"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = read_image(tmp_path / "out" / "restored_faces" / "face.png").rgb
    assert out.shape == (512, 512, 3) and np.isfinite(out).all()
    assert seen == [[999], [989]]


# ------------------------------------------------------------------ the sampling loop


def test_medium_calls_the_ddpm_26_times_from_t605(monkeypatch):
    noised_to: list[int] = []
    q_sample = NoiseSchedule.q_sample
    monkeypatch.setattr(NoiseSchedule, "q_sample", lambda self, x0, t, noise: (noised_to.append(int(t)), q_sample(self, x0, t, noise))[1])
    method = stand_in(size=256)
    out = method.restore(faces(1, size=512), torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 512, 512) and 0 <= out.min() and out.max() <= 1
    seen = [t for (t,) in method.nets.ddpm.seen]
    assert len(seen) == 26 and seen[0] == 605 and seen[-1] == 353 and seen == [GRID[i] for i in range(60, 34, -1)]
    # x_omega at grid[60], then the reference re-noised at every landing step grid[59] .. grid[35]
    assert noised_to == [605] + [GRID[i] for i in range(59, 34, -1)]


def test_one_face_is_the_engines_reference_checked_composition():
    """remove_degradation() == the engine's DR2 recipe (ddpm_step + low_frequency_guidance, checked
    against a transcription of DR2's dr2_sample_loop in test_diffusion_reference.py) with one
    generator: x_omega's noise first, then per step the step's noise and the reference's."""
    from functools import partial

    from facerestore.diffusion import LearnedRangeDenoiser, ddpm_step, low_frequency_guidance, randn_like, sample

    method = stand_in(dr2_preset="severe")
    y = to_dr2_input(faces(1), 64)
    x0 = method.remove_degradation(y, method.settings[0], [1234])
    g = torch.Generator().manual_seed(1234)
    schedule = NoiseSchedule.named("linear", 1000)
    with torch.no_grad():
        x = schedule.q_sample(y, GRID[65], randn_like(y, g))
        step = low_frequency_guidance(partial(ddpm_step, variance="learned_range"), y, 16, until_t=GRID[35])
        expected = sample(LearnedRangeDenoiser(method.nets.ddpm, schedule), x, GRID, schedule=schedule, step=step,
                          start=GRID[65], stop_at=GRID[35], generator=g)  # fmt: skip
    torch.testing.assert_close(x0, expected, rtol=0, atol=1e-6)


def test_seeded_determinism_and_batching():
    method = stand_in(dr2_preset="mild")
    crops = faces(2)
    batch = method.restore(crops, torch.Generator().manual_seed(3))
    assert torch.equal(batch, method.restore(crops, torch.Generator().manual_seed(3)))
    assert (batch - method.restore(crops, torch.Generator().manual_seed(4))).abs().max() > 1e-3
    generator = torch.Generator().manual_seed(3)
    singles = torch.cat([method.restore(crops[:1], generator), method.restore(crops[1:], generator)])
    torch.testing.assert_close(singles, batch, rtol=0, atol=1e-6)


def test_no_enhancer_returns_the_upsampled_dr2_output():
    method = stand_in(no_enhancer=True)
    crops = faces(1)
    out = method.restore(crops, torch.Generator().manual_seed(5))
    seed = torch.randint(0, 2**63 - 1, (1,), generator=torch.Generator().manual_seed(5)).tolist()
    x0 = method.remove_degradation(to_dr2_input(crops, 64), method.settings[0], seed)
    torch.testing.assert_close(out, ((to_enhancer_input(x0, 128) + 1) / 2).clamp(0, 1))
    assert method.nets.enhancer is None


# ------------------------------------------------------------------ --dr2-auto


def test_lowband_rmse_measures_low_frequency_drift_in_levels():
    y = 0.5 * to_dr2_input(faces(1, size=512))  # values in [-0.5, 0.5]: nothing below clamps
    picture = F.interpolate((y + 1) / 2, size=(512, 512), mode="bicubic", align_corners=False)
    assert lowband_rmse(picture, y)[0] < 1.0  # the same picture at 512
    checker = (torch.arange(512)[:, None] + torch.arange(512)[None, :]) % 2 * 0.04 - 0.02
    assert lowband_rmse(picture + checker, y)[0] < 1.0  # +-5 levels of pixel-scale pattern do not count
    assert lowband_rmse(picture + 10 / 255, y)[0] == pytest.approx(10, abs=0.5)  # a 10-level shift does


def test_auto_picks_the_lowest_score_per_face_with_shared_noise():
    """Scores scripted per candidate: face 0 must get (4,22), face 1 (8,35); each row equals that explicit run."""
    scripted = iter([[0.0, 300.0], [100.0, 0.0], [200.0, 100.0]])  # NIQE per candidate (mild, medium, severe), per face
    method = stand_in(quality=lambda images: next(scripted), dr2_auto=True)
    crops = faces(2)
    out = method.restore(crops, torch.Generator().manual_seed(9))
    assert [c.setting for c in method.last_choices] == [(4, 22), (8, 35)]
    for choice in method.last_choices:
        for n, tau, niqe, drift, score in choice.candidates:
            assert score == pytest.approx(niqe + AUTO_WEIGHT * drift) and drift >= 0
    mild = stand_in(dr2_preset="mild").restore(crops, torch.Generator().manual_seed(9))
    medium = stand_in(dr2_preset="medium").restore(crops, torch.Generator().manual_seed(9))
    assert torch.equal(out[0], mild[0]) and torch.equal(out[1], medium[1])


@pytest.mark.slow
def test_auto_with_real_niqe():
    """The default quality score is basicsr's NIQE (imports basicsr: ~10 s once), at the official sizes."""
    method = stand_in(size=256, dr2_auto=True)
    method.restore(faces(1, size=512), torch.Generator().manual_seed(0))
    (choice,) = method.last_choices
    niqes = [row[2] for row in choice.candidates]
    assert all(math.isfinite(v) and v > 0 for v in niqes)
    assert choice.chosen == min(range(3), key=lambda k: choice.candidates[k][4])
