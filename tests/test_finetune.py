"""Unpaired fine-tuning (Kuai et al. 2025; facerestore/training/finetune/): the K/L/N plan on the "250"
grid, Algorithm 1 step by step against an independent replay, the pseudo-target stage (resume,
contact sheet, settings), CodeFormer's code-level fine-tuning (frozen parts, target codes, loss,
EMA, exact resume, export), the generic L1 + LPIPS + GAN path, and the command line.

Networks are tiny seeded nets in the official formats: a CodeFormer at 64 px ({'params_ema'} .pth),
a guided-diffusion UNet prior (raw state dict under DifFace's file name), facerestore's baseline
UNet (safetensors). The Algorithm-1 test uses a 1x1-conv stand-in prior: it checks the sampler's
arithmetic over the full 150 calls, which does not depend on the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import seeded_state
from typer.testing import CliRunner

from facerestore.cli.app import register
from facerestore.diffusion import (
    LearnedRangeDenoiser,
    NoiseSchedule,
    ddpm_step,
    low_pass,
    randn_like,
    space_timesteps,
    timestep_pairs,
)
from facerestore.errors import UsageError
from facerestore.image_io import read_image, write_image
from facerestore.nets.codeformer import CodeFormer, CodeFormerConfig
from facerestore.nets.guided_unet import GuidedUNet, UNetConfig
from facerestore.training.finetune.pseudo_targets import (
    BaseSpec,
    PseudoTargetOptions,
    PseudoTargetPlan,
    Reporter,
    constrained_denoise,
    generate_pseudo_targets,
)
from facerestore.weights.checkpoint import load_strict

register()
runner = CliRunner()
SCHEDULE = NoiseSchedule.named("linear", 1000)
GRID = space_timesteps(1000, "250")

TINY_CF = CodeFormerConfig(nf=32, ch_mult=(1, 1, 2), res_blocks=2, attn_resolutions=(16,), img_size=64, codebook_size=64, emb_dim=16,
                           dim_embd=32, n_head=8, n_layers=2, latent_size=256, connect_list=("16", "32", "64"))
TINY_PRIOR = UNetConfig(model_channels=32, channel_mult=(1, 1, 2), num_res_blocks=(1, 1, 1), attention_levels=(2,), num_head_channels=32)

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--k", "16", "--l", "8", "--n", "8"]  # 4 UNet calls, 2 constrained: the plumbing, not the default plan


def face(i: int, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([0.5 + 0.35 * np.sin(7 * x + i), 0.5 + 0.3 * np.cos(5 * y - 0.7 * i), 0.35 + 0.3 * x * y + 0.04 * i], -1)
    noise = np.random.default_rng(i).normal(0, 0.06, img.shape).astype(np.float32)  # a "degradation"
    return np.clip(img + noise, 0, 1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints in the official formats, under the official file names."""
    folder = tmp_path_factory.mktemp("weights")
    cf = CodeFormer(TINY_CF)
    load_strict(cf, seeded_state(cf, 0))
    torch.save({"params_ema": cf.state_dict()}, folder / "codeformer.pth")
    prior = GuidedUNet(TINY_PRIOR)
    load_strict(prior, seeded_state(prior, 1))
    torch.save(prior.state_dict(), folder / "iddpm_ffhq512_ema500000.pth")
    return {"codeformer": folder / "codeformer.pth", "prior": folder / "iddpm_ffhq512_ema500000.pth"}


@pytest.fixture(scope="module")
def lq(tmp_path_factory) -> Path:
    """Six low-quality 'faces' in two sub-folders, mixed formats, plus files that are not usable."""
    root = tmp_path_factory.mktemp("lq")
    for i in range(6):
        write_image(root / ("a" if i < 4 else "b") / f"{i:02d}.{'png' if i % 2 else 'jpg'}", face(i, 64 + 8 * (i % 2)))
    (root / "b" / "broken.png").write_bytes(b"not an image")
    write_image(root / "b" / "tiny.png", face(0, 8))
    return root


def truncate(path: Path) -> Path:
    """Cut a written image in half: the header (all a header-only scan reads) survives, the pixels do not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="module")
def lq_cut(tmp_path_factory) -> Path:
    """The six faces of `lq` plus two truncated ones; with --holdout 2 (seed 0) c/cut1 is held out, c/cut2 trained on."""
    root = tmp_path_factory.mktemp("lq_cut")
    for i in range(6):
        write_image(root / ("a" if i < 4 else "b") / f"{i:02d}.{'png' if i % 2 else 'jpg'}", face(i, 64 + 8 * (i % 2)))
    for name in ("cut1", "cut2"):
        truncate(write_image(root / "c" / f"{name}.png", face(7, 64)))
    return root


# ====================================================================== the plan


def test_default_plan_is_dt_bfr_on_the_250_grid():
    plan = PseudoTargetPlan.from_options()
    assert (plan.k, plan.l, plan.n) == (600, 360, 16)
    assert plan.grid == GRID and len(GRID) == 250
    assert plan.start_index == 150 and plan.noise_t == GRID[150] == 602  # --started_timesteps 150
    assert plan.first_t == GRID[149] == 598  # the first UNet call: index 149
    assert plan.stop_index == 90 and plan.until_t == GRID[89] == 357  # NOT 361 = GRID[90]
    assert plan.calls == 150 and plan.constrained == 60  # the paper's 240 timesteps
    assert "150 UNet calls, 60 constrained" in plan.describe()


@pytest.mark.parametrize("k, l, calls, constrained", [(900, 180, 225, 180), (600, 0, 150, 149), (600, 600, 150, 0), (360, 360, 90, 0), (4, 0, 1, 0)])
def test_other_plans(k, l, calls, constrained):
    plan = PseudoTargetPlan.from_options(k, l, 8)
    assert plan.calls == calls and plan.constrained == constrained
    assert plan.noise_t == GRID[k // 4]


@pytest.mark.parametrize("options, message", [
    ({"k": 601}, "--k 601 is not on the '250' grid"),
    ({"k": 0}, "--k 0 is out of range"),
    ({"k": 1000}, "--k 1000 is out of range"),
    ({"l": 362}, "--l 362 is not on the '250' grid"),
    ({"k": 360, "l": 400}, "--l 400 must be in 0..K=360"),
    ({"l": -4}, "--l -4 must be in 0..K=600"),
    ({"n": 0}, "--n 0: the low-pass factor N must be a positive integer"),
    ({"n": 24}, "--n 24 does not divide the working size 512 px"),
])
def test_invalid_k_l_n_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        PseudoTargetPlan.from_options(**options, size=512)


@pytest.mark.parametrize("n, size, hint", [
    (16, 100, "use --n 10 or 20 (they divide 100)"),  # it said "use a power of two such as 8 or 16": neither divides 100
    (24, 512, "use --n 16 or 32 (they divide 512)"),
    (16, 97, "use a --size divisible by 16, such as 96"),  # no factor up to 32 divides 97
])
def test_an_n_that_does_not_divide_the_size_gets_values_that_do(n, size, hint):
    with pytest.raises(UsageError) as info:
        PseudoTargetPlan.from_options(k=600, l=360, n=n, size=size)
    assert info.value.hint == hint


@pytest.mark.parametrize("options, suggested", [
    ({"k": 601}, "use 600 or 604"),
    ({"k": 2}, "use 4;"),  # not 0: K starts at 4
    ({"k": 998}, "use 996;"),  # not 1000: the grid ends at 996
    ({"k": 5001}, "use 996;"),
    ({"l": 2, "k": 16}, "use 0 or 4"),
    ({"l": -2}, "use 0;"),  # not -4
    ({"l": 18, "k": 16}, "use 16;"),  # not 20 > K
    ({"l": 1001, "k": 996}, "use 996;"),
])
def test_off_grid_hints_suggest_only_values_in_range(options, suggested):
    with pytest.raises(UsageError) as info:
        PseudoTargetPlan.from_options(**options, size=512)
    line = info.value.one_line()
    assert suggested in line, line
    hinted = [int(v) for v in line.split("; use ", 1)[1].split(";")[0].split(" or ")]
    for value in hinted:  # each suggestion passes the checks when put in place of the bad value
        if "l" in options:
            PseudoTargetPlan.from_options(options.get("k", 600), value, size=512)
        else:
            PseudoTargetPlan.from_options(value, 0, size=512)


# ====================================================================== Algorithm 1, step by step


class StandInPrior(torch.nn.Module):
    """(x_t, t) -> 6 channels (eps, v in [-1,1]) depending on x_t and t; faces independent."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.weight = torch.nn.Parameter(torch.randn(6, 3, 1, 1, generator=g) * 0.5)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(t[0]))
        return torch.tanh(torch.nn.functional.conv2d(x, self.weight) * (1 + t.view(-1, 1, 1, 1) / 1000))


def replay(denoiser, ref: torch.Tensor, plan: PseudoTargetPlan, seed: int) -> list[dict]:
    """Algorithm 1 with the released code's rule, written out for one face: guide after the step FROM
    grid index i when i >= L/4, with the reference noised at the landing timestep (`q_sample(ref, t-1)`
    on the respaced process), fresh noise each time."""
    g = torch.Generator().manual_seed(seed)
    x = SCHEDULE.q_sample(ref, GRID[plan.k // 4], randn_like(ref, g))
    steps = []
    for t, t_prev in timestep_pairs(GRID, start=GRID[plan.k // 4 - 1]):
        x_step = ddpm_step(denoiser, x, t, t_prev, schedule=SCHEDULE, generator=g).x_prev
        guided = GRID.index(t) >= plan.l // 4 and t_prev >= 0
        y_noisy = SCHEDULE.q_sample(ref, t_prev, randn_like(ref, g)) if guided else None
        x = x_step - low_pass(x_step, plan.n) + low_pass(y_noisy, plan.n) if guided else x_step
        steps.append({"t": t, "t_prev": t_prev, "x_step": x_step, "y_noisy": y_noisy, "x": x, "guided": guided})
    return steps


@pytest.mark.parametrize("k, l", [(16, 16), (4, 0), (16, 8), (16, 0), (16, 12)])
def test_plan_text_says_what_the_sampler_guides(k, l, monkeypatch):
    """describe() counts the low-frequency replacements the sampler really makes, and names a "guided down
    to" timestep only when there is one (L=K=16 used to print "guided down to t=12" with 0 constrained)."""
    from facerestore.diffusion import guidance

    plan = PseudoTargetPlan.from_options(k, l, 1)
    landings: list[int] = []
    replace = guidance.replace_low_frequencies
    monkeypatch.setattr(guidance, "replace_low_frequencies", lambda x, y, n: landings.append(1) or replace(x, y, n))
    ref = torch.zeros(1, 3, 8, 8)
    constrained_denoise(LearnedRangeDenoiser(StandInPrior(), SCHEDULE), ref, plan, [torch.Generator().manual_seed(0)], schedule=SCHEDULE)
    text = plan.describe()
    assert len(landings) == plan.constrained and f"{plan.constrained} constrained" in text
    assert ("guided down to" in text) == (plan.constrained > 0), text
    if not plan.constrained:
        assert "no step guided" in text


def test_sampler_is_algorithm_1_with_the_default_plan():
    """150 UNet calls from t=598, 60 guided landings t=594..357; above L the low band is the noisy
    reference's (in the engine's sense: x - Phi(y_t) keeps exactly the step's high band, and the
    low-band gap to the reference collapses), below L the plain DDPM step is left alone."""
    plan = PseudoTargetPlan.from_options()
    net = StandInPrior()
    denoiser = LearnedRangeDenoiser(net, SCHEDULE)
    g = torch.Generator().manual_seed(3)
    ref = (torch.rand(2, 3, 64, 64, generator=g) * 2 - 1).clamp(-1, 1)
    seeds = [11, 12]
    seen = []
    out = constrained_denoise(denoiser, ref, plan, [torch.Generator().manual_seed(s) for s in seeds], schedule=SCHEDULE,
                              callback=lambda p: seen.append((p.t, p.t_prev, p.x.clone())))
    assert len(net.calls) == 150 and net.calls[0] == 598 and net.calls[-1] == 0
    assert [t for t, _, _ in seen] == net.calls

    for face_index, seed in enumerate(seeds):
        steps = replay(denoiser, ref[face_index : face_index + 1], plan, seed)
        guided = [s["t_prev"] for s in steps if s["guided"]]
        assert len(guided) == 60 and guided[0] == GRID[148] and guided[-1] == GRID[89] == 357
        for s, (t, t_prev, x) in zip(steps, seen):
            assert (s["t"], s["t_prev"]) == (t, t_prev)
            mine = x[face_index : face_index + 1]
            torch.testing.assert_close(mine, s["x"], rtol=0, atol=2e-5)  # the same trajectory as the replay
            if s["guided"]:
                high = s["x_step"] - low_pass(s["x_step"], plan.n)
                torch.testing.assert_close(mine - low_pass(s["y_noisy"], plan.n), high, rtol=0, atol=2e-5)
                gap_before = (low_pass(s["x_step"], plan.n) - low_pass(s["y_noisy"], plan.n)).norm()
                gap_after = (low_pass(mine, plan.n) - low_pass(s["y_noisy"], plan.n)).norm()
                assert gap_after < 0.3 * gap_before
            elif t_prev >= 0:
                torch.testing.assert_close(mine, s["x_step"], rtol=0, atol=2e-5)  # free below L: plain DDPM
        torch.testing.assert_close(out[face_index : face_index + 1], steps[-1]["x"], rtol=0, atol=2e-5)
    # each face's noise is its own: face 1 alone gives what it gave in the batch
    alone = constrained_denoise(denoiser, ref[1:], plan, [torch.Generator().manual_seed(seeds[1])], schedule=SCHEDULE)
    torch.testing.assert_close(alone, out[1:], rtol=0, atol=2e-5)


# ====================================================================== the pseudo-target stage


def _pseudo_options(lq: Path, out: Path, weights, **changes) -> PseudoTargetOptions:
    base = dict(lq=lq, out=out, base=BaseSpec(name="codeformer", weights=str(weights["codeformer"])), prior_weights=str(weights["prior"]),
                k=16, l=8, n=8, size=64, batch_size=2, device="cpu")
    return PseudoTargetOptions(**(base | changes))


class Interrupt(Exception):
    pass


def test_stage_resume_skips_finished_targets_and_matches_an_uninterrupted_run(lq, weights, tmp_path):
    straight = generate_pseudo_targets(_pseudo_options(lq, tmp_path / "straight", weights))
    assert straight.total == 6 and straight.done == 6 and straight.skipped == 0
    assert "6 faces, 1 unreadable skipped, 1 too small skipped" in straight.scan
    targets = sorted(p.relative_to(tmp_path / "straight" / "targets").as_posix() for p in (tmp_path / "straight" / "targets").rglob("*.png"))
    assert targets == ["a/00.png", "a/01.png", "a/02.png", "a/03.png", "b/04.png", "b/05.png"]  # relative paths kept, PNG

    stage = {}

    def on_stage(name, total):
        stage["name"] = name

    def on_advance(amount):
        if stage["name"].startswith("pseudo-targets"):
            raise Interrupt  # after the first batch of targets was written and listed

    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        generate_pseudo_targets(_pseudo_options(lq, run, weights), reporter=Reporter(on_stage=on_stage, on_advance=on_advance))
    finished = sorted(p for p in (run / "targets").rglob("*.png"))
    assert len(finished) == 2 and len(list((run / "base").rglob("*.png"))) == 6
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    stages = []
    resumed = generate_pseudo_targets(_pseudo_options(lq, run, weights, batch_size=3),
                                      reporter=Reporter(on_stage=lambda name, total: stages.append((name, total))))
    assert resumed.skipped == 2 and resumed.done == 4
    assert stages == [("pseudo-targets (diffusion prior)", 4)]  # base outputs were reused, not recomputed
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # finished targets untouched
    for rel in targets:  # per-face noise: batch size and the interruption change nothing
        assert (run / "targets" / rel).read_bytes() == (tmp_path / "straight" / "targets" / rel).read_bytes(), rel
    again = generate_pseudo_targets(_pseudo_options(lq, run, weights))
    assert again.done == 0 and again.skipped == 6


def test_contact_sheet_and_settings(lq, weights, tmp_path):
    out = tmp_path / "pt"
    summary = generate_pseudo_targets(_pseudo_options(lq, out, weights, limit=3))
    assert summary.total == 3 and "the first 3 of 6 faces" in summary.scan
    sheet = read_image(summary.sheet).rgb
    assert sheet.shape == (3 * 64 + 2 * 4, 3 * 64 + 2 * 4, 3)  # rows: input | base output | pseudo-target
    first_row_target = sheet[:64, -64:]
    np.testing.assert_allclose(first_row_target, read_image(out / "targets" / "a" / "00.png").rgb, atol=1 / 255 + 1e-6)
    settings = json.loads((out / ".facerestore-pseudo" / "settings.json").read_text())
    assert (settings["k"], settings["l"], settings["n"], settings["respacing"]) == (16, 8, 8, "250")
    with pytest.raises(UsageError, match="holds pseudo-targets made with other settings .*'n': 8 -> 4|n: 8 -> 4"):
        generate_pseudo_targets(_pseudo_options(lq, out, weights, n=4))
    with pytest.raises(UsageError, match="lies inside the input folder"):
        generate_pseudo_targets(_pseudo_options(lq, lq / "out", weights))
    with pytest.raises(UsageError, match="holds the input folder"):  # the other way round: LQ_DIR = OUT/targets
        generate_pseudo_targets(_pseudo_options(out / "targets", out, weights))


def test_pseudo_targets_come_from_the_base_output_through_the_prior(lq, weights, tmp_path):
    """Targets differ from the base outputs (the prior changed them) but keep their low band when L = 0
    constrains every step, and move away from it when nothing is constrained (L = K)."""
    def low_band_gap(out):
        gaps = []
        for rel in ("a/00.png", "a/01.png"):
            base = torch.from_numpy(read_image(out / "base" / rel).rgb).permute(2, 0, 1)
            target = torch.from_numpy(read_image(out / "targets" / rel).rgb).permute(2, 0, 1)
            assert (base - target).abs().max() > 0.02
            gaps.append(float((low_pass(base, 8) - low_pass(target, 8)).abs().mean()))
        return float(np.mean(gaps))

    constrained = generate_pseudo_targets(_pseudo_options(lq, tmp_path / "c", weights, k=40, l=0, limit=2))
    free = generate_pseudo_targets(_pseudo_options(lq, tmp_path / "f", weights, k=40, l=40, limit=2))
    assert constrained.done == free.done == 2
    assert low_band_gap(tmp_path / "c") < 0.5 * low_band_gap(tmp_path / "f")


def test_a_truncated_input_is_skipped_counted_and_retried_not_a_crash(lq_cut, weights, tmp_path):
    """Both cut files pass the header-only scan; decoding them fails: each run skips and counts them,
    makes every other target and a contact sheet, and a rerun tries them again (made once repaired)."""
    out = tmp_path / "pt"
    notes: list[str] = []
    first = generate_pseudo_targets(_pseudo_options(lq_cut, out, weights), reporter=Reporter(on_message=notes.append))
    assert "8 faces" in first.scan  # the scan could not tell
    assert (first.total, first.done, first.skipped, first.unreadable) == (8, 6, 0, 2)
    assert "c/cut1.png" in first.unreadable_first and "truncated" in first.unreadable_first
    warnings = [n for n in notes if n.startswith("warning:")]
    assert len(warnings) == 1 and "2 faces could not be decoded" in warnings[0] and "\n" not in warnings[0]
    assert not (out / "targets" / "c").exists() and not (out / "base" / "c").exists()
    assert first.sheet is not None and first.sheet.is_file()
    again = generate_pseudo_targets(_pseudo_options(lq_cut, out, weights))
    assert (again.done, again.skipped, again.unreadable) == (0, 6, 2)  # --resume is not stuck on them either

    repaired = tmp_path / "repaired"
    import shutil

    shutil.copytree(lq_cut, repaired)
    write_image(repaired / "c" / "cut2.png", face(7, 64))
    shutil.copytree(out, tmp_path / "pt2")
    fixed = generate_pseudo_targets(_pseudo_options(repaired, tmp_path / "pt2", weights))
    assert (fixed.done, fixed.skipped, fixed.unreadable) == (1, 6, 1)
    assert (tmp_path / "pt2" / "targets" / "c" / "cut2.png").is_file()


class Identity:
    """A stand-in restorer that returns its input: the report's geometry is then visible exactly."""

    info = None

    def restore(self, crops, generator=None):
        return crops


def test_report_skips_a_held_out_face_that_fails_to_decode(lq_cut, tmp_path):
    from facerestore.training.finetune.pseudo_targets import InputFace
    from facerestore.training.finetune.report import write_report

    faces = [InputFace(rel, lq_cut / rel) for rel in ("a/01.png", "c/cut1.png", "b/05.png")]
    notes: list[str] = []
    result = write_report(tmp_path / "report", faces, Identity(), Identity(), size=64, seed=0, batch_size=2, reporter=Reporter(on_message=notes.append))
    assert result.faces == 2 and result.skipped == 1
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [p["path"] for p in report["per_face"]] == ["a/01.png", "b/05.png"]
    assert [p["psnr_finetuned_vs_base"] for p in report["per_face"]] == ["inf", "inf"]  # identical: JSON has no infinity
    assert report["psnr_finetuned_vs_base_mean"] is None  # "inf" stays out of the mean
    assert [s["path"] for s in report["skipped"]] == ["c/cut1.png"] and "truncated" in report["skipped"][0]["reason"]
    assert "Skipped (could not be decoded): c/cut1.png" in (tmp_path / "report" / "report.md").read_text()
    assert len(notes) == 1 and notes[0].startswith("warning: 1 held-out face could not be decoded and is left out")
    assert not (tmp_path / "report" / "base" / "c").exists()


def test_a_deleted_or_replaced_target_is_made_again_on_a_rerun(lq, weights, tmp_path):
    """The manifest lists a face as done only while its target file is there with the listed size."""
    out = tmp_path / "pt"
    generate_pseudo_targets(_pseudo_options(lq, out, weights, limit=4))
    lines = (out / ".facerestore-pseudo" / "done-rank0.jsonl").read_text().splitlines()
    assert all(json.loads(line)["bytes"] == (out / "targets" / json.loads(line)["target"]).stat().st_size for line in lines)
    original = {rel: (out / "targets" / rel).read_bytes() for rel in ("a/00.png", "a/01.png")}
    (out / "targets" / "a" / "00.png").unlink()
    write_image(out / "targets" / "a" / "01.png", face(9))  # another image in its place: another size
    stages = []
    again = generate_pseudo_targets(_pseudo_options(lq, out, weights, limit=4), reporter=Reporter(on_stage=lambda name, total: stages.append((name, total))))
    assert (again.done, again.skipped) == (2, 2)
    assert stages == [("pseudo-targets (diffusion prior)", 2)]  # from the kept base outputs
    for rel, data in original.items():
        assert (out / "targets" / rel).read_bytes() == data, rel
    assert again.sheet is not None and again.sheet.is_file()

    # a manifest written before sizes were recorded still reads: a present file counts as done
    state = out / ".facerestore-pseudo"
    old = [json.dumps({k: v for k, v in json.loads(line).items() if k != "bytes"}) for line in (state / "done-rank0.jsonl").read_text().splitlines()]
    (state / "done-rank0.jsonl").write_text("\n".join(old) + "\n")
    (out / "targets" / "a" / "02.png").unlink()
    third = generate_pseudo_targets(_pseudo_options(lq, out, weights, limit=4))
    assert (third.done, third.skipped) == (1, 3)


def test_a_second_run_into_a_folder_in_use_is_refused_and_leaves_the_first_runs_temp_files(lq, weights, tmp_path, monkeypatch):
    """Both runs wrote, and the second one's cleanup deleted the temp file the first was writing."""
    import os

    from facerestore.image_io import temp_prefix
    from facerestore.training.out_lock import LOCK_NAME, output_lock

    out = tmp_path / "pt"
    generate_pseudo_targets(_pseudo_options(lq, out, weights, limit=2))
    (out / "targets" / "a" / "01.png").unlink()  # to be made again: its temp files are cleaned up first
    live = out / "targets" / "a" / f"{temp_prefix(out / 'targets' / 'a' / '01.png')}k3x9q2zw.tmp"  # what the running one is writing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with output_lock(out):
        live.write_bytes(b"half written")
        with pytest.raises(UsageError) as refused:
            generate_pseudo_targets(_pseudo_options(lq, out, weights, limit=2))
        assert live.read_bytes() == b"half written"
    assert refused.value.exit_code == 2
    assert refused.value.one_line() == f"{out} is being written by another run (pid {os.getpid()}); wait for it to end, or choose another --out"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p != live} == before  # nothing written, the lock file gone
    live.unlink()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from facerestore.training.finetune import pseudo_targets

    with monkeypatch.context() as patched:
        patched.setattr(pseudo_targets, "constrained_denoise", interrupted)
        with pytest.raises(KeyboardInterrupt):
            generate_pseudo_targets(_pseudo_options(lq, out, weights, limit=2))
    assert not (out / LOCK_NAME).exists()  # released on Ctrl-C, and at a normal end:
    assert generate_pseudo_targets(_pseudo_options(lq, out, weights, limit=2)).done == 1 and not (out / LOCK_NAME).exists()


def replace(path: Path, image: np.ndarray) -> None:
    """Another image at the same path, its mtime surely another (file times may be coarser than a test)."""
    stamp = path.stat().st_mtime_ns
    write_image(path, image)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))


def test_an_input_replaced_at_the_same_path_gets_a_new_pseudo_target_on_a_rerun(lq, weights, tmp_path):
    """A rerun kept the target (and the base output) of the old image as done; only the target's size was checked."""
    import hashlib
    import shutil

    src = tmp_path / "lq"
    shutil.copytree(lq, src)
    out = tmp_path / "pt"
    generate_pseudo_targets(_pseudo_options(src, out, weights, limit=4))
    rels = ["a/00.png", "a/01.png", "a/02.png", "a/03.png"]
    stamps = {rel: (out / "targets" / rel).stat().st_mtime_ns for rel in rels}
    replace(src / "a" / "01.png", face(9, 72))
    stages = []
    again = generate_pseudo_targets(_pseudo_options(src, out, weights, limit=4), reporter=Reporter(on_stage=lambda name, total: stages.append((name, total))))
    assert (again.done, again.skipped, again.changed) == (1, 3, 1)
    assert stages == [("base outputs (codeformer)", 1), ("pseudo-targets (diffusion prior)", 1)]  # its base output is redone too
    fresh = tmp_path / "fresh"
    generate_pseudo_targets(_pseudo_options(src, fresh, weights, limit=4))
    for rel in ("base/a/01.png", "targets/a/01.png"):  # the new image's, not the old one's: as a fresh run makes them
        redone, made_fresh = read_image(out / rel).samples.astype(int), read_image(fresh / rel).samples.astype(int)
        # the rerun restores it alone, the fresh run in a batch of 4: float rounding moves a few samples by a level
        difference = np.abs(redone - made_fresh)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.001, (rel, difference.max(), (difference > 0).mean())
    assert all((out / "targets" / rel).stat().st_mtime_ns == stamps[rel] for rel in rels if rel != "a/01.png")
    last = json.loads((out / ".facerestore-pseudo" / "done-rank0.jsonl").read_text().splitlines()[-1])
    data = (src / "a" / "01.png").read_bytes()
    assert (last["path"], last["source_size"], last["source_sha256"]) == ("a/01.png", len(data), hashlib.sha256(data).hexdigest())
    stamp = (src / "a" / "00.jpg").stat().st_mtime_ns
    os.utime(src / "a" / "00.jpg", ns=(stamp + 10**9, stamp + 10**9))  # touched, same image: not redone
    touched = generate_pseudo_targets(_pseudo_options(src, out, weights, limit=4))
    assert (touched.done, touched.skipped, touched.changed) == (0, 4, 0)

    # replaced after its base output was made but before its target: the base output is not reused
    def on_advance(amount):
        if stage["name"].startswith("pseudo-targets"):
            raise Interrupt  # after the first batch of targets (a/00, a/01); a/02 and a/03 have base outputs only

    stage = {}
    cut = tmp_path / "cut"
    with pytest.raises(Interrupt):
        generate_pseudo_targets(_pseudo_options(src, cut, weights, limit=4), reporter=Reporter(on_stage=lambda name, total: stage.update(name=name), on_advance=on_advance))
    replace(src / "a" / "03.png", face(11, 72))
    stages = []
    resumed = generate_pseudo_targets(_pseudo_options(src, cut, weights, limit=4), reporter=Reporter(on_stage=lambda name, total: stages.append((name, total))))
    assert (resumed.done, resumed.skipped, resumed.changed) == (2, 2, 0)  # never listed as done: nothing to redo, only a stale base output
    assert stages == [("base outputs (codeformer)", 1), ("pseudo-targets (diffusion prior)", 2)]
    generate_pseudo_targets(_pseudo_options(src, fresh, weights, limit=4))
    for rel in ("base/a/03.png", "targets/a/03.png", "targets/a/02.png"):
        assert (cut / rel).read_bytes() == (fresh / rel).read_bytes(), rel


def test_a_weights_file_changed_in_place_with_the_same_size_is_not_mixed_into_the_targets(lq, weights, tmp_path):
    """settings.json records each weights file's sha256: another checkpoint of the same size under the
    same path is refused; a settings.json from before (no sha256) is still resumable."""
    import hashlib
    import os
    import shutil

    base = tmp_path / "w" / "codeformer.pth"
    base.parent.mkdir()
    shutil.copy(weights["codeformer"], base)
    options = _pseudo_options(lq, tmp_path / "pt", weights, limit=2, base=BaseSpec(name="codeformer", weights=str(base)))
    generate_pseudo_targets(options)
    state = tmp_path / "pt" / ".facerestore-pseudo"
    settings = json.loads((state / "settings.json").read_text())
    assert settings["base"]["weights"]["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert settings["prior"]["sha256"] == hashlib.sha256(weights["prior"].read_bytes()).hexdigest()

    original, stat = base.read_bytes(), base.stat()
    other = CodeFormer(TINY_CF)
    load_strict(other, seeded_state(other, 5))
    torch.save({"params_ema": other.state_dict()}, base)
    os.utime(base, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert base.stat().st_size == stat.st_size and base.read_bytes() != original
    with pytest.raises(UsageError, match=f"the base weights file {base} changed since the pseudo-targets in .* were made") as info:
        generate_pseudo_targets(options)
    assert "\n" not in info.value.one_line() and "put the original file back" in info.value.one_line()

    base.write_bytes(original)
    for entry in (settings["base"]["weights"], settings["prior"]):  # as written before hashing
        del entry["sha256"]
    (state / "settings.json").write_text(json.dumps(settings))
    again = generate_pseudo_targets(options)
    assert (again.done, again.skipped) == (0, 2)
    assert "sha256" not in json.loads((state / "settings.json").read_text())["prior"]  # left as it was


def test_a_registered_base_imported_again_with_another_file_is_not_mixed_into_the_targets(lq, weights, tmp_path):
    """--base-weights NAME (your own, `weights import FILE --name NAME`): settings.json records its file's
    sha256 too, so importing another checkpoint under the same name is refused on a rerun."""
    from facerestore.weights.store import import_file

    import_file(weights["codeformer"], "mybase")
    options = _pseudo_options(lq, tmp_path / "pt", weights, limit=1, base=BaseSpec(name="codeformer", weights="mybase"))
    generate_pseudo_targets(options)
    recorded = json.loads((tmp_path / "pt" / ".facerestore-pseudo" / "settings.json").read_text())["base"]["weights"]
    assert recorded["name"] == "mybase" and len(recorded["sha256"]) == 64
    other = CodeFormer(TINY_CF)
    load_strict(other, seeded_state(other, 5))
    torch.save({"params_ema": other.state_dict()}, tmp_path / "other.pth")
    import_file(tmp_path / "other.pth", "mybase")
    with pytest.raises(UsageError, match="the base weights file mybase changed since the pseudo-targets"):
        generate_pseudo_targets(options)


def test_report_keeps_a_non_square_face_unstretched(tmp_path):
    """The models see a face's centred square (load_input); the report's outputs are that square at its
    own size, and the input column is the same square: with an identity restorer, output == input crop."""
    from facerestore.training.finetune.pseudo_targets import InputFace
    from facerestore.training.finetune.report import write_report

    wide = np.concatenate([face(1, 64)[:, :16] * 0.2, face(2, 64), face(3, 64)[:, :16] * 0.2 + 0.8], axis=1)  # 96 x 64
    write_image(tmp_path / "in" / "wide.png", wide)
    write_image(tmp_path / "in" / "tall.png", np.concatenate([face(4, 80)[:8], face(5, 80), face(6, 80)[:8]], axis=0)[:, :80])  # 80 x 96
    faces = [InputFace(rel, tmp_path / "in" / rel) for rel in ("wide.png", "tall.png")]
    result = write_report(tmp_path / "report", faces, Identity(), Identity(), size=64, seed=0)
    assert result.faces == 2
    crop = read_image(tmp_path / "in" / "wide.png").rgb[:, 16:80]
    for column in ("base", "finetuned"):
        out = read_image(tmp_path / "report" / column / "wide.png").rgb
        assert out.shape == (64, 64, 3)
        np.testing.assert_array_equal(out, crop)  # not the 96-wide input squeezed into 64 and stretched back
        assert read_image(tmp_path / "report" / column / "tall.png").rgb.shape == (80, 80, 3)
    from facerestore.image_io import resize

    sheet = read_image(result.sheet).rgb  # cells at the largest input square (80), below 256
    np.testing.assert_allclose(sheet[:80, :80], resize(crop, 80, 80), atol=1 / 255 + 1e-6)  # the input cell is the same square


def test_scan_inputs_counts_broken_links_and_duplicates(tmp_path):
    from facerestore.training.finetune.pseudo_targets import scan_inputs

    root = tmp_path / "lq"
    write_image(root / "a.png", face(0))
    (root / "b.png").symlink_to(root / "a.png")
    (root / "c.png").symlink_to(tmp_path / "gone.png")
    faces, summary = scan_inputs(root, 64)
    assert [f.rel for f in faces] == ["a.png"]
    assert summary == "1 face, 1 broken link skipped, 1 duplicate (links to a file already listed) skipped"
    (root / "a.png").unlink()  # now b.png is a broken link too
    with pytest.raises(UsageError) as refused:
        scan_inputs(root, 64)
    assert refused.value.one_line() == f"no usable faces in {root}: 2 files skipped (2 broken links); link to the images themselves"
