"""difface: the plan (timesteps the prior sees), options and usage errors, strict loading of the
official checkpoint formats through the catalogue, an end-to-end CLI run, noise and batching.

Two kinds of networks are used, both seeded:
- tiny nets with the official KEY LAYOUTS (DifFace's per-level residual blocks, attention at the
  deepest levels, SwinIR with PixelUnshuffle(8) in `conv_first.1` and x8 "nearest+conv"), saved
  in the official file formats, for loading and the end-to-end run (one UNet call: a 32-channel
  UNet at 512 costs seconds per call on a loaded 2-core machine);
- a 1x1-conv stand-in prior and estimator (`stand_in`) for the properties of the sampling loop
  itself (100 calls at t = 396 ... 0, determinism, batching), which do not depend on the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from facerestore.diffusion import NoiseSchedule, space_timesteps
from facerestore.errors import UnsupportedCheckpoint, UsageError, WeightsError
from facerestore.methods.base import MethodOptions
from facerestore.methods.difface import DifFaceMethod, DifFaceNets, DifFacePlan, parse_weights
from facerestore.nets.guided_unet import GuidedUNet, UNetConfig
from facerestore.nets.swinir import SwinIRConfig, build_swinir
from helpers import StandInLearnedRange, StandInResidual, pin_catalogue_hashes, seeded_state

pytestmark = pytest.mark.usefixtures("one_thread")

# DifFace's layout scaled down: per-level residual blocks (the last level has 2), attention on the
# two deepest levels (DifFace: 32 and 16 pixels at 512), conv resampling, scale-shift norm, 64-channel
# heads (not recorded in a state dict: the loader assumes the official 64)
TINY_PRIOR = UNetConfig(model_channels=32, channel_mult=(1, 1, 1, 1, 2, 2), num_res_blocks=(1, 1, 1, 1, 1, 2), attention_levels=(4, 5), num_head_channels=64)
# DifFace's estimator scaled down: PixelUnshuffle(8) -> 64x64 tokens, window 8, x8 nearest+conv
TINY_SWINIR = SwinIRConfig(img_size=64, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8, mlp_ratio=2.0, upscale=8, unshuffle=8)

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_states() -> dict[str, dict[str, torch.Tensor]]:
    return {
        "prior": seeded_state(GuidedUNet(TINY_PRIOR), 0),
        "swinir": seeded_state(build_swinir(TINY_SWINIR), 1),
    }


def save_official(states, folder: Path, *, prior_format: str = "raw") -> dict[str, Path]:
    """The two files under their official names: prior raw (or {'state_dict'} with 'module.'), SwinIR {'state_dict'}."""
    folder.mkdir(parents=True, exist_ok=True)
    prior = states["prior"]
    if prior_format == "wrapped":
        prior = {"state_dict": {f"module.{k}": v for k, v in prior.items()}}
    paths = {"prior": folder / "iddpm_ffhq512_ema500000.pth", "swinir": folder / "swinir_restoration512_L1.pth"}
    torch.save(prior, paths["prior"])
    torch.save({"state_dict": states["swinir"]}, paths["swinir"])
    return paths


def stand_in(**options) -> DifFaceMethod:
    """The method on stand-in nets working at 64 (the sampler's arithmetic does not care about the size)."""
    torch.manual_seed(0)
    return DifFaceMethod(MethodOptions(**options), nets=DifFaceNets(StandInLearnedRange(), StandInResidual(), size=64))


def faces(n: int, seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the plan


def test_default_plan_is_the_reference_one():
    """ddim250, q_sample at index 100 (t=400), first UNet call at index 99 (t=396), 100 calls, eta 0.5."""
    plan = DifFacePlan.from_options()
    grid = space_timesteps(1000, "ddim250")
    assert plan.grid == grid and plan.noise_t == grid[100] == 400
    assert plan.first_t == grid[99] == 396 and plan.calls == 100 and plan.eta == 0.5
    assert plan.timesteps == [grid[i] for i in range(99, -1, -1)]


@pytest.mark.parametrize("steps, respacing", [(200, "ddim500"), (100, "ddim250"), (40, "ddim100"), (20, "ddim50"), (8, "ddim20")])
def test_table_viii_settings_start_at_400_on_guided_diffusion_grids(steps, respacing):
    """The paper's acceleration settings (respaced steps / start index: 500/200 ... 20/8)."""
    plan = DifFacePlan.from_options(steps=steps)
    grid = space_timesteps(1000, respacing)
    assert plan.grid == grid and grid.index(400) == steps == plan.calls
    assert plan.timesteps[0] == grid[steps - 1] and plan.timesteps[-1] == 0 and len(plan.timesteps) == steps


def test_start_and_steps_together():
    plan = DifFacePlan.from_options(steps=30, start=600, eta=0.0)
    assert (plan.noise_t, plan.first_t, plan.calls, plan.timesteps[-1]) == (600, 580, 30, 0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps": 500}, "larger than the grid"),
        ({"steps": 0}, "at least 1"),
        ({"steps": 3}, "does not divide"),
        ({"eta": -0.1}, "--eta"),
        ({"eta": 1.5}, "--eta"),
        ({"start": 0}, "out of range"),
        ({"start": 1000}, "out of range"),
        ({"start": 401}, "ddim250"),
        ({"dr2_n": 8}, "--dr2-n is not used by method 'difface'"),
        ({"no_enhancer": True}, "--no-enhancer"),
        ({"weights": "prior=a.pth,vae=b.pth"}, "unknown role"),
        ({"weights": "swinir=missing.pth"}, "^--weights missing.pth: no such file"),  # not the prior's missing download first
    ],
)
def test_usage_errors_come_before_any_weights_are_read(options, message):
    """No weights exist here (offline, empty cache): a WeightsError would mean the check came too late."""
    with pytest.raises(UsageError, match=message):
        DifFaceMethod(MethodOptions(**options))


def test_missing_weights_line_names_both_files(tmp_path):
    """Offline with neither DifFace file: one line names the prior and, at its end, the SwinIR with its
    URL (it named the prior alone; the next run asked for the SwinIR). A file given for a role is not
    reported missing."""
    with pytest.raises(WeightsError) as info:
        DifFaceMethod(MethodOptions())
    line = info.value.one_line()
    assert line.startswith("iddpm_ffhq512_ema500000.pth (weights 'difface_prior') is not on this machine")
    assert line.endswith("; also missing, get and import it the same way: swinir_restoration512_L1.pth (weights 'difface_swinir', "
                         "from https://github.com/zsyOAOA/DifFace/releases/download/V1.0/swinir_restoration512_L1.pth)")
    given = tmp_path / "swinir.pth"
    torch.save({"w": torch.zeros(1)}, given)
    with pytest.raises(WeightsError) as info:
        DifFaceMethod(MethodOptions(weights=f"swinir={given}"))
    assert "also missing" not in info.value.one_line()


def test_parse_weights_roles():
    roles = {"prior": "difface_prior", "swinir": "difface_swinir"}
    assert parse_weights(None, roles, "prior") == {}
    assert parse_weights("p.pth", roles, "prior") == {"prior": "p.pth"}
    assert parse_weights("swinir=s.pth, prior=p.pth", roles, "prior") == {"swinir": "s.pth", "prior": "p.pth"}
    assert parse_weights("difface_swinir=s.pth", roles, "prior") == {"swinir": "s.pth"}
    with pytest.raises(UsageError) as info:
        parse_weights("a.pth,prior=b.pth", roles, "prior")
    assert info.value.one_line() == "--weights names the prior twice (a FILE without ROLE= is the prior); give one prior file: prior=FILE once"
    with pytest.raises(UsageError) as info:
        parse_weights("swinir=a.pth,swinir=a.pth", roles, "prior")
    assert info.value.one_line() == "--weights names the swinir twice; give one swinir file: swinir=FILE once"
    # a folder name holding a comma stays one path: what follows a comma is a new item only as ROLE=
    assert parse_weights("prior=runs/a,b/prior.pth,swinir=s.pth", roles, "prior") == {"prior": "runs/a,b/prior.pth", "swinir": "s.pth"}
    with pytest.raises(UsageError, match="unknown role 'prio'"):
        parse_weights("p.pth,prio=x.pth", roles, "prior")
    for empty in ("", " , "):  # was silently the default weights
        with pytest.raises(UsageError, match="--weights is empty"):
            parse_weights(empty, roles, "prior")


# ------------------------------------------------------------------ loading the official formats


def test_catalogue_files_in_official_formats_load_strictly(tiny_states, tmp_path, monkeypatch):
    """Raw prior + {'state_dict'} SwinIR found through FACERESTORE_WEIGHTS, sha256-checked, converted, loaded."""
    paths = save_official(tiny_states, tmp_path / "weights")
    pin_catalogue_hashes(monkeypatch, paths, {"prior": "difface_prior", "swinir": "difface_swinir"})
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tmp_path / "weights"))
    method = DifFaceMethod(MethodOptions())
    for net, role in ((method.nets.prior, "prior"), (method.nets.estimator, "swinir")):
        loaded = net.state_dict()
        assert set(loaded) == set(tiny_states[role])
        assert all(torch.equal(loaded[k], v) for k, v in tiny_states[role].items())
    assert method.nets.prior.config == TINY_PRIOR


def test_explicit_roles_and_module_prefix(tiny_states, tmp_path):
    """{'state_dict': {'module.' + key}} (DataParallel) prior given as prior=FILE, SwinIR as swinir=FILE."""
    paths = save_official(tiny_states, tmp_path / "w", prior_format="wrapped")
    method = DifFaceMethod(MethodOptions(weights=f"prior={paths['prior']},swinir={paths['swinir']}"))
    loaded = method.nets.prior.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tiny_states["prior"].items())


def test_wrong_or_truncated_checkpoints_are_one_line(tiny_states, tmp_path):
    paths = save_official(tiny_states, tmp_path / "w")
    # a SwinIR file given as the prior
    with pytest.raises(UnsupportedCheckpoint) as info:
        DifFaceMethod(MethodOptions(weights=f"prior={paths['swinir']},swinir={paths['swinir']}"))
    line = info.value.one_line()
    assert "\n" not in line and str(paths["swinir"]) in line and "DifFace prior" in line and "time_embed.0.weight" in line
    # a prior missing its last output block: names the file and the missing keys, loads nothing
    cut = {k: v for k, v in tiny_states["prior"].items() if not k.startswith("out.")}
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(UnsupportedCheckpoint) as info:
        DifFaceMethod(MethodOptions(weights=f"prior={tmp_path / 'cut.pth'},swinir={paths['swinir']}"))
    line = info.value.one_line()
    assert "\n" not in line and "cut.pth" in line and "out.2.weight" in line
    # a file cut short on disk
    data = paths["prior"].read_bytes()
    (tmp_path / "short.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedCheckpoint) as info:
        DifFaceMethod(MethodOptions(weights=f"{tmp_path / 'short.pth'},swinir={paths['swinir']}"))
    assert "short.pth" in info.value.one_line() and "\n" not in info.value.one_line()
    import dataclasses

    torch.save(GuidedUNet(dataclasses.replace(TINY_PRIOR, resblock_updown=True)).state_dict(), tmp_path / "ddpm.pth")
    with pytest.raises(UnsupportedCheckpoint, match="is it dr2_ddpm's file"):  # DR2's DDPM given as the prior
        DifFaceMethod(MethodOptions(weights=f"prior={tmp_path / 'ddpm.pth'},swinir={paths['swinir']}"))


# ------------------------------------------------------------------ end to end through the CLI


def test_cli_end_to_end_with_catalogue_weights(tiny_states, tmp_path, monkeypatch):
    """`facerestore face.png --aligned -m difface --steps 1`: tiny official-format files, one UNet call at t=0."""
    from facerestore.cli.app import app, register
    from facerestore.image_io import read_image, write_image

    register()
    paths = save_official(tiny_states, tmp_path / "weights")
    pin_catalogue_hashes(monkeypatch, paths, {"prior": "difface_prior", "swinir": "difface_swinir"})
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tmp_path / "weights"))
    seen: list[list[int]] = []
    forward = GuidedUNet.forward
    monkeypatch.setattr(GuidedUNet, "forward", lambda self, x, t: (seen.append(t.tolist()), forward(self, x, t))[1])
    y, x = np.mgrid[0:512, 0:512].astype(np.float32)
    face = np.stack([0.5 + 0.3 * np.sin(x / 19), 0.5 + 0.3 * np.cos(y / 13), np.full_like(x, 0.4)], -1)
    write_image(tmp_path / "in" / "face.png", face)
    args = [str(tmp_path / "in" / "face.png"), "--aligned", "-m", "difface", "--steps", "1", "--device", "cpu", "-o", str(tmp_path / "out"), "-q"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = read_image(tmp_path / "out" / "restored_faces" / "face.png").rgb
    assert out.shape == (512, 512, 3) and np.isfinite(out).all()
    assert seen == [[0]]  # steps=1: stride 400, q_sample at 400, the only call at t=0 (the off-by-one)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "difface", "--eta", "-1"], "--eta"),
        (["-m", "difface", "--steps", "7"], "does not divide"),
        (["-m", "baseline", "--eta", "0.3"], "--eta is not used by method 'baseline'"),
        (["-m", "codeformer", "--start", "300"], "--start is not used"),
    ],
)
def test_cli_usage_errors_exit_2(tmp_path, args, message):
    from facerestore.cli.app import app, register
    from facerestore.image_io import write_image

    register()
    write_image(tmp_path / "a.png", np.full((64, 64, 3), 0.5, np.float32))
    result = runner.invoke(app, [str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the sampling loop


def test_default_run_calls_the_prior_100_times_from_t396(monkeypatch):
    noised_to: list[int] = []
    q_sample = NoiseSchedule.q_sample
    monkeypatch.setattr(NoiseSchedule, "q_sample", lambda self, x0, t, noise: (noised_to.append(int(t)), q_sample(self, x0, t, noise))[1])
    method = stand_in()
    out = method.restore(faces(1), torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 64, 64) and 0 <= out.min() and out.max() <= 1
    assert noised_to == [400]
    assert [t for (t,) in method.nets.prior.seen] == list(range(396, -1, -4)) and len(method.nets.prior.seen) == 100


@pytest.mark.parametrize("start, calls", [(200, 50), (800, 200)])
def test_the_default_steps_are_start_over_4_as_documented(start, calls):
    """QA: restore -h, docs/methods.md and `facerestore methods` said the default --steps is 100, but
    without --steps the grid is ddim250 (stride 4, DifFace's code at any start index): --start 200
    runs 50 calls, --start 800 runs 200. The texts now say start/4; this holds them to the count."""
    from typing import get_type_hints

    from facerestore.cli.restore import restore_command
    from facerestore.methods.difface import INFO

    method = stand_in(start=start)
    method.restore(faces(1), torch.Generator().manual_seed(0))
    assert [t for (t,) in method.nets.prior.seen] == list(range(start - 4, -1, -4)) and len(method.nets.prior.seen) == calls == start // 4
    said = "start/4 steps: 100 at the default --start 400"
    docs = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    steps_help = next(m for m in get_type_hints(restore_command, include_extras=True)["steps"].__metadata__ if hasattr(m, "help")).help
    assert said in INFO.knobs["steps"] and said in steps_help and f"| `--steps S` | {said} |" in docs
    assert "then start/4 DDIM steps (100; eta 0.5)" in INFO.summary


def test_one_face_is_the_engines_reference_checked_composition():
    """restore() == the engine's DifFace recipe (diffusion/__init__.py; ddim_step raw-eps is checked
    against guided-diffusion / DifFace in test_diffusion_reference.py) with one generator seeded by
    the face's seed: q_sample noise first, then each step's noise."""
    from functools import partial

    from facerestore.diffusion import LearnedRangeDenoiser, ddim_step, randn_like, sample

    method = stand_in(steps=25, eta=0.7)
    crops = faces(1)
    out = method.restore(crops, torch.Generator().manual_seed(11))
    (seed,) = torch.randint(0, 2**63 - 1, (1,), generator=torch.Generator().manual_seed(11)).tolist()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        estimate = 2 * method.nets.estimator(crops).clamp(0, 1) - 1
        schedule = NoiseSchedule.named("linear", 1000)
        x = schedule.q_sample(estimate, 400, randn_like(estimate, g))
        x = sample(LearnedRangeDenoiser(method.nets.prior, schedule), x, tuple(range(0, 1000, 16)), schedule=schedule,
                   step=partial(ddim_step, eta=0.7, eps_source="raw"), start=384, generator=g)  # fmt: skip
    torch.testing.assert_close(out, ((x + 1) / 2).clamp(0, 1), rtol=0, atol=1e-6)


def test_seeded_determinism_and_batching():
    """Same seed -> same output; another seed -> another; [A, B] in one batch == A then B with the same generator."""
    method = stand_in(steps=10)
    crops = faces(2)
    batch = method.restore(crops, torch.Generator().manual_seed(7))
    assert torch.equal(batch, method.restore(crops, torch.Generator().manual_seed(7)))
    assert (batch - method.restore(crops, torch.Generator().manual_seed(8))).abs().max() > 1e-3
    generator = torch.Generator().manual_seed(7)
    singles = torch.cat([method.restore(crops[:1], generator), method.restore(crops[1:], generator)])
    torch.testing.assert_close(singles, batch, rtol=0, atol=1e-6)
    calls = len(method.nets.prior.seen)
    method.restore(crops, torch.Generator().manual_seed(7))
    assert len(method.nets.prior.seen) - calls == 10  # one prior call per step for the whole batch


def test_eta_and_start_change_the_result():
    crops = faces(1)
    base = stand_in(steps=10).restore(crops, torch.Generator().manual_seed(0))
    for options in ({"steps": 10, "eta": 0.0}, {"steps": 10, "start": 600}):
        assert (stand_in(**options).restore(crops, torch.Generator().manual_seed(0)) - base).abs().max() > 1e-3


def test_other_sizes_are_restored_at_the_prior_size_and_resized_back():
    method = stand_in(steps=2)
    seen = []
    method.nets.estimator.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    crops = faces(1, size=96)
    out = method.restore(crops, torch.Generator().manual_seed(0))
    assert seen == [(1, 3, 64, 64)] and out.shape == (1, 3, 96, 96) and 0 <= out.min() and out.max() <= 1
    # exactly: the 96 crop shrunk to 64 (bicubic, antialiased), restored under the same seed, enlarged back
    small = F.interpolate(crops, size=(64, 64), mode="bicubic", align_corners=False, antialias=True)
    at_64 = stand_in(steps=2).restore(small, torch.Generator().manual_seed(0))
    back = F.interpolate(at_64, size=(96, 96), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(out, back, rtol=0, atol=1e-6)


def test_registry_and_license():
    from facerestore.methods.registry import method_info, method_names

    info = method_info("difface")
    assert "difface" in method_names() and not info.commercial_use and "S-Lab" in info.license
    assert info.weights == ("difface_prior", "difface_swinir") and {"steps", "eta", "start"} <= set(info.knobs)
