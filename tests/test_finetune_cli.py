"""`facerestore finetune` through typer's CliRunner: help, one-line errors with exit codes before any
work, a whole run with resume, the pseudo-targets command's resume, the fine-tuned file through
`restore --method codeformer --weights FILE`; slow: the real Wider-Test faces, and torchrun."""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import test_finetune as shared
import torch
from helpers import folders_without_usable_faces, lock_held, seeded_state, torchrun
from test_finetune import FAST, face
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.errors import FaceRestoreError, UsageError
from facerestore.image_io import read_image, write_image

pytestmark = pytest.mark.usefixtures("one_thread")

register()
runner = CliRunner()

lq = shared.lq  # the shared fixture
weights = shared.weights  # the shared fixture


def run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, code: int, *needles: str) -> str:
    text = result.output.strip()
    assert result.exit_code == code, result.output
    assert "\n" not in text and text.startswith("error: "), text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def tiny_run_args(lq: Path, out: Path, weights, *extra) -> list:
    return ["finetune", "--unpaired", lq, "--out", out, "--base-weights", weights["codeformer"], "--prior-weights", weights["prior"],
            "--size", "64", *FAST, "--holdout", "2", "--steps", "2", "--batch-size", "2", "--save-every", "1", "--workers", "0",
            "--device", "cpu", "-q", *extra]


@pytest.mark.parametrize("command", [["finetune"], ["finetune", "run"], ["finetune", "pseudo-targets"]])
def test_help(command):
    result = run(*command, "-h")
    assert result.exit_code == 0 and "Usage" in result.output


def test_pseudo_targets_help_states_each_default_once():
    """--base and --size say their default in words; typer's '[default: ...]' repeated it."""
    text = " ".join(run("finetune", "pseudo-targets", "-h").output.split())
    assert "codeformer (default;" in text and "(default 512, the prior's)" in text
    assert "[default: codeformer]" not in text and "[default: 512]" not in text


def test_a_word_that_is_no_stage_lists_the_stages():
    """`finetune lq --out X` (no --unpaired, or a typo of a stage): one line naming the stages, not click's
    "unexpected extra argument" of the default `run` command."""
    text = one_line_error(run("finetune", "lq", "--out", "X"), 2, "finetune has no stage 'lq'", "run, pseudo-targets", "--unpaired lq")
    assert "Usage" not in text
    one_line_error(run("finetune", "pseudo-target", "lq", "--out", "X"), 2, "no stage 'pseudo-target'", "did you mean pseudo-targets?")
    one_line_error(run("finetune", "my faces", "--out", "X"), 2, "--unpaired 'my faces'")


def test_every_option_has_help_text():
    from facerestore.cli.finetune import pseudo_targets_command, run_command

    for command in (run_command, pseudo_targets_command):
        hints = get_type_hints(command, include_extras=True)
        for name in inspect.signature(command).parameters:
            assert hints[name].__metadata__[0].help, f"{command.__name__}: --{name} has no help"


# ----------------------------------------------------------------- bad input: one line, before any work


def test_bad_inputs_are_one_line_before_any_work(tmp_path, weights, lq):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"junk")
    out = tmp_path / "run"

    one_line_error(run(*tiny_run_args(empty, out, weights)), 2, f"no usable faces in {empty}: 1 file skipped (1 unreadable); re-export or remove")
    # the base model without weights (offline): names the file and the import command
    args = tiny_run_args(lq, out, weights)
    args[args.index("--base-weights") : args.index("--base-weights") + 2] = []
    one_line_error(run(*args), 1, "codeformer.pth (weights 'codeformer') is not on this machine", "facerestore weights import codeformer.pth")
    # the prior missing offline
    args = tiny_run_args(lq, out, weights)
    args[args.index("--prior-weights") : args.index("--prior-weights") + 2] = []
    one_line_error(run(*args), 1, "iddpm_ffhq512_ema500000.pth (weights 'difface_prior') is not on this machine", "facerestore weights import")
    # a missing explicit file is a usage error naming the option it came from, not the restore command's --weights
    absent = tmp_path / "absent.pth"
    args = tiny_run_args(lq, out, weights)
    args[args.index("--base-weights") + 1] = absent
    one_line_error(run(*args), 2, f"--base-weights {absent}: no such file")
    args = tiny_run_args(lq, out, weights)
    args[args.index("--prior-weights") + 1] = absent
    one_line_error(run(*args), 2, f"--prior-weights {absent}: no such file")
    one_line_error(run(*tiny_run_args(lq, out, weights, "--k", "601")), 2, "--k 601 is not on the '250' grid")
    one_line_error(run(*tiny_run_args(lq, out, weights, "--l", "20", "--k", "16")), 2, "--l 20 must be in 0..K=16")
    one_line_error(run(*tiny_run_args(lq, out, weights, "--n", "3")), 2, "--n 3 does not divide the working size 64 px")
    one_line_error(run(*tiny_run_args(lq, out, weights, "--base", "difface")), 2, "--base difface cannot be fine-tuned")
    unknown = one_line_error(run(*tiny_run_args(lq, out, weights, "--base", "codefromer")), 2, "unknown --base 'codefromer'", "codeformer", "baseline")
    assert "pseudo-targets" not in unknown  # no advice to make pseudo-targets with a method that does not exist
    one_line_error(run(*tiny_run_args(lq, out, weights, "--base", "baseline")), 2, "uses a GAN against real faces", "--real DIR")
    one_line_error(run(*tiny_run_args(lq, out, weights, "--holdout", "6")), 2, "would hold out 6 of 6 faces")
    huge = one_line_error(run(*tiny_run_args(lq, out, weights, "--holdout", "1e300")), 2, "--holdout 1e+300 would hold out 6 of 6 faces")
    assert len(huge) < 300, huge
    one_line_error(run(*tiny_run_args(lq, out, weights, "--holdout", "1.5")), 2, "--holdout 1.5")
    for option in ("--lpips-weight", "--gan-weight"):
        one_line_error(run(*tiny_run_args(lq, out, weights, option, "-0.5")), 2, f"{option} must be a finite number >= 0", "got -0.5")
    one_line_error(run(*tiny_run_args(lq, out, weights, "--size", "32")), 2, "works on 64 px faces", "--size 64")
    one_line_error(run("finetune", "--out", out, "--resume"), 2, "nothing to resume")
    one_line_error(run("finetune", "--out", out), 2, "no input folder given", "--unpaired LQ_DIR")
    before = sorted(p.name for p in lq.iterdir())
    for inside, relation in ((lq, "is"), (lq / "run", "lies inside")):
        one_line_error(run(*tiny_run_args(lq, inside, weights)), 2, f"--out {inside} {relation} the input folder")
    assert sorted(p.name for p in lq.iterdir()) == before  # not even a config.json among the faces
    assert not out.exists()  # nothing was written by any of these

    pt_out = tmp_path / "pt"
    one_line_error(run("finetune", "pseudo-targets", empty, "--out", pt_out, "--device", "cpu"), 2, "no usable faces")
    one_line_error(run("finetune", "pseudo-targets", lq, "--out", pt_out, "--base-weights", weights["codeformer"], "--size", "64", "--device", "cpu"),
                   1, "iddpm_ffhq512_ema500000.pth")
    one_line_error(run("finetune", "pseudo-targets", lq, "--out", pt_out, "--prior-weights", weights["prior"], "--base", "codeformer",
                       "--base-fidelity", "2", "--device", "cpu"), 2, "--base-fidelity must be in [0,1]")
    for base in ("codeformer", "baseline", "difface", "dr2", "idm"):  # the last three resolve their own files
        one_line_error(run("finetune", "pseudo-targets", lq, "--out", pt_out, "--base", base, "--base-weights", absent, "--prior-weights", weights["prior"],
                           "--size", "64", "--device", "cpu"), 2, f"--base-weights {absent}: no such file")
    one_line_error(run("finetune", "pseudo-targets", lq, "--out", pt_out, "--base", "difface", "--base-weights", "prio=x.pth", "--prior-weights",
                       weights["prior"], "--size", "64", "--device", "cpu"), 2, "--base-weights 'prio=x.pth': unknown role 'prio'")
    one_line_error(run("finetune", "pseudo-targets", lq, "--out", pt_out, "--base-weights", weights["codeformer"], "--prior-weights", absent,
                       "--size", "64", "--device", "cpu"), 2, f"--prior-weights {absent}: no such file")
    for seed in ("-1", str(2**63)):  # the range every command takes (training.seeds.check_seed)
        one_line_error(run("finetune", "pseudo-targets", lq, "--out", pt_out, "--seed", seed), 2, f"--seed must be between 0 and 2^63-1, got {seed}")
    assert not pt_out.exists()


def test_a_prior_weights_file_of_another_model_asks_for_the_prior_alone(tmp_path, weights, lq):
    """The hint was difface's --weights one: '... (prior=) and swinir_restoration512_L1.pth (swinir=)';
    --prior-weights takes one file, with no roles, and SwinIR has no part in fine-tuning."""
    text = one_line_error(run("finetune", "pseudo-targets", lq, "--out", tmp_path / "pt", "--base", "baseline", "--prior-weights", weights["codeformer"],
                              "--size", "64", "--device", "cpu"), 2, "--prior-weights")
    assert text.endswith("; pass DifFace's iddpm_ffhq512_ema500000.pth"), text
    assert "swinir" not in text.lower() and "prior=" not in text


def test_the_missing_base_weights_line_also_names_a_missing_prior(tmp_path, weights, lq):
    """With neither codeformer.pth nor the DifFace prior on the machine, the line named only
    codeformer.pth: the prior's was the next run's error. One run says everything to fetch
    (docs/weights.md), as restore's dr2 and difface do."""
    from facerestore.weights.store import get_entry

    prior = get_entry("difface_prior")
    out = tmp_path / "run"
    for command in (["finetune", "--unpaired", lq, "--out", out], ["finetune", "pseudo-targets", lq, "--out", out]):
        line = one_line_error(run(*command, "--size", "64", "--device", "cpu", "-q"), 1, "codeformer.pth (weights 'codeformer') is not on this machine")
        assert line.endswith("; then run `facerestore weights import codeformer.pth` or put it in a folder named by FACERESTORE_WEIGHTS; "
                             f"also missing, get and import it the same way: iddpm_ffhq512_ema500000.pth (weights 'difface_prior', from {prior.urls[0]})"), line
    # a prior that is there (or given) is not named; nor is the prior when the base is what is there
    args = tiny_run_args(lq, out, weights)
    args[args.index("--base-weights") : args.index("--base-weights") + 2] = []
    assert "also missing" not in one_line_error(run(*args), 1, "codeformer.pth")
    args = tiny_run_args(lq, out, weights)
    args[args.index("--prior-weights") : args.index("--prior-weights") + 2] = []
    assert "also missing" not in one_line_error(run(*args), 1, "iddpm_ffhq512_ema500000.pth")
    assert not out.exists()


def test_a_negative_worker_count_is_refused_before_any_work(tmp_path, weights, lq):
    """QA reported `--workers -1` as accepted silently; it is refused before anything is written."""
    out = tmp_path / "run"
    args = tiny_run_args(lq, out, weights)
    args[args.index("--workers") + 1] = "-1"
    assert one_line_error(run(*args), 2) == "error: --workers must be >= 0, got -1"
    assert not out.exists()


def test_a_folder_without_a_usable_face_is_one_line_with_what_was_skipped_and_why(tmp_path, weights, lq):
    """"no usable faces in X (0 images, 1 unreadable skipped)" counted what was skipped but not why nor
    what to do about it, and advised the short side whatever the files were skipped for; an empty
    --real folder said only that it "holds no usable face images". Now as `train` says it."""
    empty, poor = folders_without_usable_faces(tmp_path)
    assert one_line_error(run(*tiny_run_args(empty, tmp_path / "r1", weights)), 2) == (
        f"error: no faces in {empty}: no jpg, jpeg, png, bmp, tif, tiff, webp file in it or below; pass the folder of low-quality aligned faces")
    skipped = (f"3 files skipped (2 smaller than 32 px on the short side, 1 unreadable); use faces at least 32 px on the short side "
               f"(or a smaller --size: at 256 faces below 32 px are skipped), and re-export or remove the unreadable files ({poor / 'c.jpg'})")
    args = tiny_run_args(poor, tmp_path / "r2", weights)
    args[args.index("--size") + 1] = "256"
    assert one_line_error(run(*args), 2) == f"error: no usable faces in {poor}: {skipped}"
    made = run("finetune", "pseudo-targets", poor, "--out", tmp_path / "r3", "--size", "256", "--device", "cpu")
    assert one_line_error(made, 2) == f"error: no usable faces in {poor}: {skipped}"
    real = one_line_error(run(*tiny_run_args(lq, tmp_path / "r4", weights, "--base", "baseline", "--real", poor)), 2)
    assert real == (f"error: no usable --real faces in {poor}: 3 files skipped (2 smaller than 16 px on the short side, 1 unreadable); "
                    f"use faces at least 16 px on the short side, and re-export or remove the unreadable files ({poor / 'c.jpg'})")
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3, 4))


def test_an_out_folder_holding_an_input_folder_is_refused_before_any_work(tmp_path, weights, lq):
    """`pseudo-targets OUT/targets --out OUT` would write each target over its input; LQ_DIR (or --real)
    inside the run folder likewise. Refused in one line, exit 2, before the weights are even looked
    for (no --prior-weights here: a later check would fail on the missing prior, exit 1), nothing written."""
    import shutil

    out = tmp_path / "pt"
    shutil.copytree(lq, out / "targets")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    pt = ["finetune", "pseudo-targets", "--size", "64", *FAST, "--device", "cpu", "-q"]
    one_line_error(run(*pt, out / "targets", "--out", out), 2, f"--out {out} holds the input folder {out / 'targets'}")
    one_line_error(run(*pt, out / "targets" / "a", "--out", out / "targets"), 2, "holds the input folder")
    one_line_error(run(*pt, out, "--out", out), 2, f"--out {out} is the input folder {out}")  # equality, as before
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before

    args = tiny_run_args(out / "targets", out, weights)
    one_line_error(run(*args), 2, f"--out {out} holds the input folder")
    real = tmp_path / "real"
    shutil.copytree(lq / "a", real)
    one_line_error(run(*tiny_run_args(lq, real / "run", weights, "--base", "baseline", "--real", real)), 2, "lies inside the --real folder")
    one_line_error(run(*tiny_run_args(lq, tmp_path, weights, "--base", "baseline", "--real", real)), 2, f"--out {tmp_path} holds the --real folder")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert not (real / "run").exists() and not (tmp_path / "config.json").exists()


def test_resume_accepts_the_defaults_the_run_used_and_refuses_other_values(tmp_path, lq):
    """--lr and --base-fidelity are stored resolved: naming the default on --resume is no change, also for a
    config.json written with None (before the defaults were stored); another value is refused, naming both."""
    from facerestore.errors import UsageError
    from facerestore.training.checkpoints import write_json
    from facerestore.training.finetune.run import CONFIG_VERSION, resolve_config

    out = tmp_path / "run"
    config = resolve_config(out, resume=False, lq=lq)
    assert (config.lr, config.base_fidelity) == (1e-4, 0.5)
    baseline = resolve_config(tmp_path / "other", resume=False, lq=lq, base="baseline")
    assert (baseline.lr, baseline.base_fidelity) == (2e-5, None)  # no fidelity knob: nothing to store
    out.mkdir()
    for stored in (config.to_dict(), {**config.to_dict(), "lr": None, "base_fidelity": None}):
        write_json(out / "config.json", {"version": CONFIG_VERSION, "finetune": stored})
        resumed = resolve_config(out, resume=True, lr=1e-4, base_fidelity=0.5)
        assert (resumed.lr, resumed.base_fidelity) == (1e-4, 0.5)
        with pytest.raises(UsageError, match=r"--base-fidelity 0\.5 -> 0\.7"):
            resolve_config(out, resume=True, base_fidelity=0.7)
        one_line_error(run("finetune", "--out", out, "--resume", "--lr", "2e-4"), 2, f"--resume keeps the recipe of the run in {out}, but --lr 0.0001 -> 0.0002")


def _edited(key: str, value: object):
    return lambda data: {**data, "finetune": {**data["finetune"], key: value}}


@pytest.mark.parametrize("edit, said", [
    ("{", " is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); fix the file, or"),
    (lambda data: [data], " holds a list, not a run config object; fix the file, or"),
    (lambda data: {k: v for k, v in data.items() if k != "finetune"}, " has no key finetune; fix finetune in the file, or"),
    (_edited("size", "big"), ': finetune.size is "big", not an integer; fix finetune.size in the file, or'),
    (lambda data: {**data, "finetune": {k: v for k, v in data["finetune"].items() if k != "lr"}}, " has no key finetune.lr; fix finetune.lr in the file, or"),
    (_edited("base", "codefromer"), ': finetune.base "codefromer" is invalid (unknown --base \'codefromer\'; fine-tune codeformer (code-level, as DT-BFR) '
                                    "or baseline (L1 + LPIPS + GAN)); fix finetune.base in the file, or"),
    (_edited("amp", "no"), ': finetune.amp is "no", not true or false; fix finetune.amp in the file, or'),
    (_edited("k", 601), ": finetune.k 601 is invalid (--k 601 is not on the '250' grid: it must be a multiple of 4 (grid index = value / 4); "
                        "use 600 or 604; the paper's K=600, L=360 are indices 150 and 90); fix finetune.k in the file, or"),
    (_edited("lr", -1), ": finetune.lr -1 is invalid (--lr must be positive, got -1); fix finetune.lr in the file, or"),
    (_edited("lr_milestones", [1, "2"]), ': finetune.lr_milestones is [1, "2"], not a list of integers or null; fix finetune.lr_milestones in the file, or'),
    (_edited("depth", 3), ": unknown key finetune.depth; remove it or correct its name in the file, or"),
    (lambda data: {**data, "version": 2}, ": version is 2, but this facerestore reads version 1; resume the run with the facerestore that wrote it, or"),
], ids=["json", "list", "no-section", "type", "missing", "unknown-base", "bool", "off-grid", "range", "list-type", "unknown-key", "version"])
def test_a_hand_edited_run_config_is_one_line_naming_the_file_and_the_key(tmp_path, lq, edit, said):
    """A config.json that is no fine-tuning config any more stopped --resume with a traceback (a TypeError
    for "size": "big" when a check compared it), ran on with a missing key silently defaulted or an unknown
    key dropped, or named the option but not the file for a value out of range."""
    from facerestore.training.checkpoints import write_json
    from facerestore.training.finetune.run import CONFIG_VERSION, resolve_config

    out = tmp_path / "run"
    out.mkdir()
    path = out / "config.json"
    data = {"version": CONFIG_VERSION, "finetune": resolve_config(out, resume=False, lq=lq, size=64).to_dict()}
    if callable(edit):
        write_json(path, edit(json.loads(json.dumps(data))))
    else:
        path.write_text(edit + json.dumps(data))
    result = run("finetune", "--out", out, "--resume", "--device", "cpu", "-q")
    assert one_line_error(result, 2) == f"error: {path}{said} start a new run with another --out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # nothing else written


@pytest.mark.parametrize("written, said", [
    ("{", " is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ('["a/0.png"]', ' holds ["a/0.png"], not the run\'s split of the faces ({"train": [...], "holdout": [...]})'),
    ('{"train": ["a/0.png"]}', " has no key holdout"),
    ('{"train": "a/0.png", "holdout": []}', ': train is "a/0.png", not a list of paths relative to the --unpaired folder'),
    ('{"train": [1], "holdout": []}', ": train is [1], not a list of paths relative to the --unpaired folder"),
], ids=["json", "list", "missing-key", "not-a-list", "not-paths"])
def test_a_damaged_file_list_is_one_line_naming_it(tmp_path, lq, written, said):
    """--resume with a damaged RUN/files.json ended in a JSONDecodeError or KeyError traceback."""
    from facerestore.training.checkpoints import write_json
    from facerestore.training.finetune.run import CONFIG_VERSION, resolve_config

    out = tmp_path / "run"
    out.mkdir()
    write_json(out / "config.json", {"version": CONFIG_VERSION, "finetune": resolve_config(out, resume=False, lq=lq, size=64).to_dict()})
    path = out / "files.json"
    path.write_text(written)
    result = run("finetune", "--out", out, "--resume", "--device", "cpu", "-q")
    assert one_line_error(result, 2) == f"error: {path}{said}; fix the file, or start a new run with another --out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "files.json"]  # nothing else written


def test_resume_with_more_steps_keeps_the_lr_milestones_of_the_first_steps(tmp_path, lq):
    """config.json holds the milestones of the run's first --steps; configs written before they were
    stored get those of their (first) steps, never those of the new --steps."""
    from facerestore.training.checkpoints import write_json
    from facerestore.training.finetune.run import CONFIG_VERSION, resolve_config
    from facerestore.training.finetune.trainer import milestones_for

    out = tmp_path / "run"
    config = resolve_config(out, resume=False, lq=lq, steps=40_000)
    assert config.lr_milestones == (35_000, 38_000)
    out.mkdir()
    stored = config.to_dict()
    for written in (stored, {k: v for k, v in stored.items() if k != "lr_milestones"}):
        write_json(out / "config.json", {"version": CONFIG_VERSION, "finetune": written})
        resumed = resolve_config(out, resume=True, steps=60_000)
        assert resumed.steps == 60_000 and resumed.lr_milestones == (35_000, 38_000) != milestones_for(60_000)


def test_resume_goes_on_to_the_steps_of_the_latest_extension(tmp_path, lq):
    """RUN/steps.json (written when --resume --steps changes the length) is the target of a plain --resume;
    config.json keeps the first --steps and its milestones. Without steps.json a run has config.json's steps,
    and a --steps (given or recorded) below the newest checkpoint's step is one line before any work."""
    from facerestore.training.checkpoints import record_target_steps, step_dir, write_json
    from facerestore.training.finetune.run import CONFIG_VERSION, resolve_config

    out = tmp_path / "run"
    out.mkdir()
    config = resolve_config(out, resume=False, lq=lq, steps=40_000)
    write_json(out / "config.json", {"version": CONFIG_VERSION, "finetune": config.to_dict()})
    record_target_steps(out, 40_000, section="finetune")  # no change: nothing to record
    assert not (out / "steps.json").exists() and resolve_config(out, resume=True).steps == 40_000
    record_target_steps(out, 60_000, section="finetune")
    assert resolve_config(out, resume=True).steps == 60_000
    assert resolve_config(out, resume=True).lr_milestones == (35_000, 38_000)
    assert resolve_config(out, resume=True, steps=50_000).steps == 50_000
    assert json.loads((out / "config.json").read_text())["finetune"]["steps"] == 40_000

    (step_dir(out, 45_000)).mkdir(parents=True)
    (step_dir(out, 45_000) / "state.json").write_text("{}")
    assert resolve_config(out, resume=True).steps == 60_000
    with pytest.raises(UsageError, match=r"already at step 45000, beyond --steps 44000") as refused:
        resolve_config(out, resume=True, steps=44_000)
    assert "pass --steps 45000 or more, or leave --steps out to continue to 60000" in refused.value.one_line()
    (out / "steps.json").unlink()  # a run extended before steps.json existed
    with pytest.raises(UsageError, match=r"already at step 45000, beyond its recorded --steps 40000"):
        resolve_config(out, resume=True)
    (out / "steps.json").write_text("{")
    with pytest.raises(UsageError, match=r"steps\.json is not a step count"):
        resolve_config(out, resume=True)


def test_printed_commands_quote_paths_with_spaces(tmp_path, lq, monkeypatch):
    """"register it:" and "interrupted; continue with:" can be pasted into a shell as they are."""
    import shlex

    from facerestore.training.finetune import run as run_module

    model = tmp_path / "my runs" / "codeformer-finetuned.safetensors"
    result = run_module.FinetuneResult(run=model.parent, model=model, step=1, losses=[], pseudo=None, report=None, train_faces=1,
                                       holdout_faces=0, name="codeformer-ft-my-runs")
    assert shlex.split(result.import_command) == ["facerestore", "weights", "import", str(model), "--name", "codeformer-ft-my-runs"]

    def interrupted(config, **_):
        Path(config.out).mkdir(parents=True)
        (Path(config.out) / "config.json").write_text("{}")  # what a run writes before its first stage
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "finetune_unpaired", interrupted)
    out = tmp_path / "my runs" / "ft 1"
    result = run("finetune", "--unpaired", lq, "--out", out, "-q")
    assert result.exit_code == 130, result.output
    advice = result.output.strip().split("interrupted; continue with: ", 1)[1]
    assert shlex.split(advice) == ["facerestore", "finetune", "--out", str(out), "--resume"]


def test_ctrl_c_before_the_run_is_written_does_not_advise_resume(tmp_path, lq, monkeypatch):
    """--resume needs RUN/config.json: an interrupt while the inputs are scanned or the models load leaves none."""
    from facerestore.training.finetune import run as run_module

    def interrupted(config, **_):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "finetune_unpaired", interrupted)
    out = tmp_path / "run"
    result = run("finetune", "--unpaired", lq, "--out", out, "-q")
    assert result.exit_code == 130, result.output
    assert "--resume" not in result.output and "nothing to resume" in result.output and "run the same command again" in result.output
    assert not out.exists()


# ----------------------------------------------------------------- torchrun, with the process group patched out


def as_rank(monkeypatch, rank: int, world: int = 2) -> None:
    """This process as rank `rank` of `torchrun --nproc_per_node world`."""
    for name, value in (("WORLD_SIZE", world), ("RANK", rank), ("LOCAL_RANK", rank)):
        monkeypatch.setenv(name, str(value))


def test_a_batch_the_processes_cannot_split_is_refused_before_the_run_is_written(tmp_path, weights, lq, monkeypatch):
    """Found only when the data loader starts, after stage 1, the run folder would already hold -b 3 and
    refuse the corrected -b 4: the check runs before the process group and before anything is written."""
    import torch.distributed

    from facerestore.training.checkpoints import write_json
    from facerestore.training.finetune.run import CONFIG_VERSION, resolve_config

    def no_group(*args, **kwargs):
        raise AssertionError("checked before the process group starts")

    monkeypatch.setattr(torch.distributed, "init_process_group", no_group)
    as_rank(monkeypatch, 0)
    out = tmp_path / "run"
    one_line_error(run(*tiny_run_args(lq, out, weights, "--batch-size", "3")), 2,
                   "--batch-size 3 is the global batch and must be divisible by the 2 processes", "e.g. --batch-size 4")
    assert not out.exists()
    # on resume the batch is part of the recipe: the way out is another number of processes
    out.mkdir()
    config = resolve_config(out, resume=False, lq=lq, batch_size=2)
    write_json(out / "config.json", {"version": CONFIG_VERSION, "finetune": config.to_dict()})
    as_rank(monkeypatch, 0, world=3)
    one_line_error(run("finetune", "--out", out, "--resume", "--steps", "3"), 2, "divisible by the 3 processes",
                   "resume with a number of processes that divides 2")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


@pytest.mark.parametrize("stage", ["run", "pseudo-targets"])
@pytest.mark.parametrize(("rank", "output"), [(1, ""), (0, "error: rank 1: cannot write x (No space left on device)\n")])
def test_a_peers_failure_ends_this_rank_quietly_with_the_peers_code(tmp_path, weights, lq, monkeypatch, stage, rank, output):
    """A peer that failed left its code and line in the group's store; this rank's collective call then
    breaks (a RuntimeError from gloo): it exits with the peer's code, and only rank 0 prints the peer's line."""
    import torch.distributed

    from facerestore.training import distributed
    from facerestore.training.finetune import pseudo_targets
    from facerestore.training.finetune import run as run_module

    store = torch.distributed.HashStore()
    distributed.record_failure(store, distributed.Dist(rank=1 - rank, world=2), FaceRestoreError("cannot write x (No space left on device)"))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *args, **kwargs: None)
    monkeypatch.setattr(distributed, "_store", lambda: store)
    as_rank(monkeypatch, rank)

    def broken_barrier(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500")

    monkeypatch.setattr(run_module, "_run", broken_barrier)
    monkeypatch.setattr(pseudo_targets, "_generate", broken_barrier)
    result = run_stage(stage, tmp_path, weights, lq)
    assert (result.exit_code, result.output) == (1, output)


def run_stage(stage: str, tmp_path: Path, weights, lq: Path):
    if stage == "run":
        return run(*tiny_run_args(lq, tmp_path / "run", weights))
    return run("finetune", "pseudo-targets", lq, "--out", tmp_path / "pt", "--size", "64", "--device", "cpu", "-q")


@pytest.mark.parametrize("stage", ["run", "pseudo-targets"])
def test_a_ranks_own_error_is_left_for_its_peers(tmp_path, weights, lq, monkeypatch, stage):
    """The failing rank records its code and line before it leaves the group, so its peers can stop alike."""
    import torch.distributed

    from facerestore.training import distributed
    from facerestore.training.finetune import pseudo_targets
    from facerestore.training.finetune import run as run_module

    store = torch.distributed.HashStore()
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *args, **kwargs: None)
    monkeypatch.setattr(distributed, "_store", lambda: store)
    as_rank(monkeypatch, 0)

    def full_disk(*args, **kwargs):
        raise UsageError("cannot write RUN/files.json (No space left on device)")

    monkeypatch.setattr(run_module, "_run", full_disk)
    monkeypatch.setattr(pseudo_targets, "_generate", full_disk)
    result = run_stage(stage, tmp_path, weights, lq)
    one_line_error(result, 2, "cannot write RUN/files.json")
    peer = distributed.peer_failure(store, distributed.Dist(rank=1, world=2))
    assert peer is not None and (peer.rank, peer.exit_code, str(peer)) == (0, 2, "rank 0: cannot write RUN/files.json (No space left on device)")


# ----------------------------------------------------------------- whole runs


def test_run_resume_and_register(tmp_path, weights, lq):
    out = tmp_path / "run"
    result = run(*tiny_run_args(lq, out, weights))
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    model = out / "codeformer-finetuned.safetensors"
    assert lines[0].startswith("fine-tuned codeformer: step 2 of 2, last loss ") and lines[0].endswith(f"weights: {model}")
    assert lines[1].startswith(f"report: {out / 'report' / 'report.md'} (2 held-out faces; NIQE ")
    assert lines[2] == f"register it: facerestore weights import {model} --name codeformer-ft-run"
    assert lines[3] == "then:        facerestore PHOTO --method codeformer --weights codeformer-ft-run"

    split = json.loads((out / "files.json").read_text())
    assert len(split["train"]) == 4 and len(split["holdout"]) == 2 and not set(split["train"]) & set(split["holdout"])
    targets = sorted(p.relative_to(out / "pseudo" / "targets").as_posix() for p in (out / "pseudo" / "targets").rglob("*.png"))
    assert targets == sorted(str(Path(r).with_suffix(".png")) for r in split["train"])  # held-out faces get no pseudo-target
    assert (out / "pseudo" / "contact_sheet.png").is_file() and (out / "report" / "contact_sheet.png").is_file()
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["faces"] == 2 and {p["path"] for p in report["per_face"]} == set(split["holdout"])
    # these inputs are 64-72 px: too small for NIQE, which says so instead of inventing a number
    assert report["niqe_mean"]["base"] is None and any("NIQE needs at least 192x192" in r for r in report["niqe_unavailable"])
    sheet = read_image(out / "report" / "contact_sheet.png").rgb
    thumb = max(read_image(lq / rel).height for rel in split["holdout"])  # cells at the inputs' size (below 256)
    assert sheet.shape == (2 * thumb + 4, 3 * thumb + 2 * 4, 3)  # 2 rows of input | base | fine-tuned
    stamps = {p: p.stat().st_mtime_ns for p in (out / "pseudo" / "targets").rglob("*.png")}

    again = run(*tiny_run_args(lq, out, weights))
    one_line_error(again, 2, "already holds a fine-tuning run", "--resume")
    changed = run("finetune", "--out", out, "--resume", "--n", "4")
    one_line_error(changed, 2, f"--resume keeps the recipe of the run in {out}, but --n 8 -> 4")

    resumed = run("finetune", "--out", out, "--resume", "--steps", "4", "--workers", "0", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert "pseudo-targets: all 4 done already" in resumed.output and "resumed fine-tuning from" in resumed.output
    assert "fine-tuned codeformer: step 4 of 4" in resumed.output
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    # the LR schedule of the first --steps 2 (both halvings at step 2) holds for the extra steps: not moved to step 4
    assert [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()] == [1e-4, 1e-4, 2.5e-5, 2.5e-5]
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # no pseudo-target redone

    # the extension is the run's length from now on: a plain --resume goes on to step 4, not back to the first --steps 2
    again = run("finetune", "--out", out, "--resume", "--workers", "0", "--device", "cpu", "-q")
    assert again.exit_code == 0, again.output
    assert "fine-tuned codeformer: step 4 of 4" in again.output
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert json.loads((out / "config.json").read_text())["finetune"]["steps"] == 2  # written once, as the run started
    assert json.loads((out / "steps.json").read_text()) == {"steps": 4}
    # a --steps below the step reached stays an error, found before any work
    shorter = one_line_error(run("finetune", "--out", out, "--resume", "--steps", "3"), 2, "the run is already at step 4, beyond --steps 3")
    assert "pass --steps 4 or more, or leave --steps out to continue to 4" in shorter
    assert json.loads((out / "steps.json").read_text()) == {"steps": 4}

    registered = run("weights", "import", model, "--name", "codeformer-ft-run")
    assert registered.exit_code == 0, registered.output
    from safetensors.torch import load_file

    from facerestore.methods.base import MethodOptions
    from facerestore.methods.registry import build_method

    method = build_method("codeformer", MethodOptions(weights="codeformer-ft-run"))
    exported = load_file(str(model))
    assert all(torch.equal(v, exported[k]) for k, v in method.net.state_dict().items())


def test_resume_refuses_a_recipe_other_than_its_checkpoints_and_allows_the_schedule_to_change(tmp_path, weights, lq):
    """config.json edited after a checkpoint was written continued those weights under another recipe
    (the command line's options were compared with config.json only); each checkpoint records the run's
    recipe, and resume compares the two before any work. What may change stays allowed."""
    out = tmp_path / "run"
    assert run(*tiny_run_args(lq, out, weights)).exit_code == 0
    path = out / "config.json"
    original = path.read_text()
    path.write_text(original.replace('"lr": 0.0001', '"lr": 0.0002').replace('"ema": 0.995', '"ema": 0.9'))
    resume = ["finetune", "--out", out, "--resume", "--workers", "0", "--device", "cpu", "-q"]
    edited = one_line_error(run(*resume, "--steps", "3"), 2)
    assert edited == (f"error: {path} differs from the recipe of its checkpoint step_0000002: lr 0.0001 -> 0.0002, ema 0.995 -> 0.9; "
                      "set them back in config.json (and resume with the same options), or start a new run with another --out")
    path.write_text(original)
    given = one_line_error(run(*resume, "--steps", "3", "--lr", "0.5", "--batch-size", "4", "--unpaired", lq / "a"), 2)
    assert given == (f"error: --resume keeps the recipe of the run in {out}, but --unpaired {lq} -> {lq / 'a'}, --batch-size 2 -> 4, --lr 0.0001 -> 0.5; "
                     "drop these options or give the run's values, or start a new run with another --out")
    assert len((out / "log.jsonl").read_text().splitlines()) == 2  # neither trained
    allowed = run(*resume, "--steps", "3", "--save-every", "1", "--keep", "3", "--pseudo-batch", "1", "--offline")
    assert allowed.exit_code == 0, allowed.output
    assert "step 3 of 3" in allowed.output
    state = out / "checkpoints" / "step_0000003" / "state.json"
    written = json.loads(state.read_text())
    assert written["recipe"]["lr"] == 1e-4 and written["recipe"]["lq"] == str(lq) and written["recipe"]["lr_milestones"] == [2, 2]
    # checkpoints written before they recorded the run's recipe held the stage-2 settings: compared on those
    older = {"base": "codeformer", "steps": 3, "batch_size": 2, "lr": 1e-4, "ema": 0.995, "size": 64, "seed": 0, "disc_channels": 32,
             "milestones": [2, 2], "save_every": 1, "keep": 3, "workers": 0}
    state.write_text(json.dumps({**written, "recipe": older}))
    assert one_line_error(run(*resume, "--steps", "4"), 2).startswith(f"error: {path} differs from the recipe of its checkpoint step_0000003: disc_width 32 -> 64; ")
    state.write_text(json.dumps({**written, "recipe": {**older, "disc_channels": 64}}))
    assert run(*resume, "--steps", "4").exit_code == 0
    state = out / "checkpoints" / "step_0000004" / "state.json"
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "recipe"}))  # none recorded: resumed as before
    assert run(*resume, "--steps", "5").exit_code == 0 and len((out / "log.jsonl").read_text().splitlines()) == 5


def test_run_with_truncated_faces_skips_them_in_every_stage(tmp_path, weights):
    """c/cut2.png (trained on) and c/cut1.png (held out) pass the header-only scan but cannot be decoded:
    no pseudo-target and no pair for the first, no report row for the second, a warning line for each,
    exit 0; --resume tries the cut one again instead of crashing."""
    cut = shared.lq_cut.__wrapped__(tmp_path_factory=_Factory(tmp_path))
    out = tmp_path / "run"
    result = run(*tiny_run_args(cut, out, weights))
    assert result.exit_code == 0, result.output
    assert "warning: 1 face could not be decoded and gets no pseudo-target (first: " in result.output
    assert "warning: 1 held-out face could not be decoded and is left out of the report" in result.output
    split = json.loads((out / "files.json").read_text())
    assert "c/cut2.png" in split["train"] and "c/cut1.png" in split["holdout"]
    assert not (out / "pseudo" / "targets" / "c").exists()
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["faces"] == 1 and [s["path"] for s in report["skipped"]] == ["c/cut1.png"]
    resumed = run("finetune", "--out", out, "--resume", "--steps", "3", "--workers", "0", "--device", "cpu", "-q")
    assert resumed.exit_code == 0, resumed.output
    assert "fine-tuned codeformer: step 3 of 3" in resumed.output


def _tiny_config(lq: Path, out: Path, weights, resume: bool = False, **changes):
    from facerestore.training.finetune.run import resolve_config

    options = dict(lq=lq, base_weights=weights["codeformer"], prior_weights=weights["prior"], size=64, k=16, l=8, n=8, holdout="2", steps=2,
                   batch_size=2, save_every=100, workers=0, device="cpu")
    return resolve_config(out, resume=resume, **(({} if resume else options) | changes))


def test_a_run_or_a_resume_into_a_run_folder_in_use_is_refused_before_it_writes(tmp_path, weights, lq):
    """Two runs (or a run and a --resume of it) into one RUN both wrote its targets, log, checkpoints and weights."""
    from test_out_lock import hold_in_another_process

    from facerestore.training.finetune.run import finetune_unpaired
    from facerestore.training.out_lock import LOCK_NAME, output_lock

    out = tmp_path / "run"
    assert run(*tiny_run_args(lq, out, weights)).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with output_lock(out):  # the lock itself, past the look resolve_config takes
        with pytest.raises(UsageError) as refused:
            finetune_unpaired(_tiny_config(lq, out, weights, resume=True, steps=3), resume=True)
        assert refused.value.exit_code == 2
        assert refused.value.one_line() == f"{out} is being written by another run (pid {os.getpid()}); wait for it to end, or choose another --out"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    holder = hold_in_another_process(out)
    try:
        again = run(*tiny_run_args(lq, out, weights))  # not "already holds a fine-tuning run; pass --resume"
        resumed = run("finetune", "--out", out, "--resume", "--steps", "3", "--workers", "0", "--device", "cpu", "-q")
    finally:
        holder.kill()
        holder.wait()
    in_use = f"{out} is being written by another run (pid {holder.pid})"
    assert one_line_error(again, 2) == f"error: {in_use}; wait for it to end, or choose another --out"
    assert one_line_error(resumed, 2) == f"error: {in_use}; wait for it to end, or choose another --out"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_NAME} == before
    resumed = run("finetune", "--out", out, "--resume", "--steps", "3", "--workers", "0", "--device", "cpu", "-q")  # the killed holder's lock is taken over
    assert resumed.exit_code == 0, resumed.output
    assert "step 3 of 3" in resumed.output and not (out / LOCK_NAME).exists()


def test_finetune_holds_its_lock_through_the_save_ctrl_c_asks_for_and_releases_it_however_it_ends(tmp_path, weights, lq, monkeypatch):
    from facerestore.training.finetune import trainer
    from facerestore.training.finetune.run import finetune_unpaired
    from facerestore.training.out_lock import LOCK_NAME

    out = tmp_path / "run"
    saves: list[tuple[int, bool]] = []
    save = trainer.save_checkpoint

    def watched(run_dir, step, **kwargs):
        saves.append((step, lock_held(run_dir)))
        save(run_dir, step, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", watched)

    def interrupt_at_1(report):
        if report.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the step ends and is saved under the lock, then it stops

    with pytest.raises(KeyboardInterrupt):
        finetune_unpaired(_tiny_config(lq, out, weights), on_step=interrupt_at_1)
    assert saves == [(1, True)] and not lock_held(out) and not (out / LOCK_NAME).exists()

    def crash(report):
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        finetune_unpaired(_tiny_config(lq, out, weights, resume=True), resume=True, on_step=crash)
    assert not lock_held(out) and not (out / LOCK_NAME).exists()
    finetune_unpaired(_tiny_config(lq, out, weights, resume=True), resume=True)
    assert saves[-1] == (2, True) and not lock_held(out) and not (out / LOCK_NAME).exists()


def test_resume_remakes_a_deleted_pseudo_target(tmp_path, weights, lq):
    out = tmp_path / "run"
    assert run(*tiny_run_args(lq, out, weights)).exit_code == 0
    target = sorted((out / "pseudo" / "targets").rglob("*.png"))[0]
    data = target.read_bytes()
    target.unlink()
    resumed = run("finetune", "--out", out, "--resume", "--steps", "3", "--workers", "0", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert "pseudo-targets: 1 made, 3 already done" in resumed.output
    assert target.read_bytes() == data


def test_resume_makes_a_new_pseudo_target_for_an_input_replaced_at_the_same_path(tmp_path, weights, lq):
    """--resume said 'all done already' and fine-tuned on the target of the old image."""
    import shutil

    from test_finetune import replace

    from facerestore.training.finetune.pseudo_targets import target_name

    src = tmp_path / "lq"
    shutil.copytree(lq, src)
    out = tmp_path / "run"
    assert run(*tiny_run_args(src, out, weights)).exit_code == 0
    rel = json.loads((out / "files.json").read_text())["train"][0]
    target = out / "pseudo" / "targets" / target_name(rel)
    data = target.read_bytes()
    replace(src / rel, face(9, read_image(src / rel).height))
    resumed = run("finetune", "--out", out, "--resume", "--steps", "3", "--workers", "0", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert "pseudo-targets: 1 made (1 changed input redone), 3 already done" in resumed.output
    assert target.read_bytes() != data and "fine-tuned codeformer: step 3 of 3" in resumed.output
    again = run("finetune", "--out", out, "--resume", "--steps", "4", "--workers", "0", "--device", "cpu")
    assert "pseudo-targets: all 4 done already" in again.output


def test_pseudo_targets_command_counts_a_truncated_face(tmp_path, weights):
    cut = shared.lq_cut.__wrapped__(tmp_path_factory=_Factory(tmp_path))
    result = run("finetune", "pseudo-targets", cut, "--out", tmp_path / "pt", "--base-weights", weights["codeformer"], "--prior-weights", weights["prior"],
                 "--size", "64", *FAST, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert "6 pseudo-targets made, 0 already done, 2 could not be decoded (skipped), 8 in all" in result.output


class _Factory:
    """What a module-scoped fixture function needs from tmp_path_factory, to call it inside one test."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir()
        return folder


def test_pseudo_targets_command_resumes(tmp_path, weights, lq):
    out = tmp_path / "pt"
    common = ["finetune", "pseudo-targets", lq, "--out", out, "--base-weights", weights["codeformer"], "--prior-weights", weights["prior"],
              "--size", "64", *FAST, "--device", "cpu", "-q"]
    first = run(*common, "--limit", "2")
    assert first.exit_code == 0, first.output
    assert "2 pseudo-targets made, 0 already done, 2 in all" in first.output
    stamps = {p: p.stat().st_mtime_ns for p in (out / "targets").rglob("*.png")}
    second = run(*common)
    assert second.exit_code == 0, second.output
    assert "4 pseudo-targets made, 2 already done, 6 in all" in second.output and f"contact sheet: {out / 'contact_sheet.png'}" in second.output
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert len(list((out / "targets").rglob("*.png"))) == 6


def test_restore_loads_an_exported_codeformer_file(tmp_path, monkeypatch):
    """`facerestore FACE --aligned --method codeformer --weights FILE` on a file written by the fine-tuning
    export (a 512-px tiny CodeFormer: the restore pipeline works on 512 crops)."""
    from facerestore.nets.codeformer import CodeFormer, CodeFormerConfig
    from facerestore.training.finetune.objectives import export_model
    from facerestore.weights.checkpoint import load_strict

    config = CodeFormerConfig(nf=32, ch_mult=(1,) * 6, res_blocks=1, attn_resolutions=(16,), img_size=512, codebook_size=64, emb_dim=16,
                              dim_embd=32, n_head=8, n_layers=2, latent_size=256, connect_list=("16", "64", "128"))
    net = CodeFormer(config)
    load_strict(net, seeded_state(net, 4))
    model = export_model("codeformer", net.state_dict(), tmp_path / "codeformer-finetuned.safetensors", {"step": "1"})
    write_image(tmp_path / "in" / "face.png", face(0, 512))
    from facerestore.methods.codeformer import CodeFormerMethod

    calls = []
    restore = CodeFormerMethod.restore
    monkeypatch.setattr(CodeFormerMethod, "restore", lambda self, crops, generator=None: calls.append((self, restore(self, crops, generator))) or calls[-1][1])
    result = run("--aligned", tmp_path / "in" / "face.png", "-o", tmp_path / "out", "--method", "codeformer", "--weights", model, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    restored = read_image(tmp_path / "out" / "restored_faces" / "face.png").rgb
    assert restored.shape == (512, 512, 3) and restored.std() > 0.01
    # the method ran the exported weights, every tensor equal, at the default fidelity, and its output was written
    (method, out), = calls
    assert method.net.config == config and method.fidelity == 0.5
    loaded = method.net.state_dict()
    assert set(loaded) == set(net.state_dict()) and all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    np.testing.assert_allclose(restored, out[0].permute(1, 2, 0).numpy(), rtol=0, atol=0.5 / 255 + 1e-6)  # rounded to 8 bits once


# ----------------------------------------------------------------- slow: real faces, torchrun


@pytest.mark.slow
def test_real_wider_test_run_with_tiny_models(shared_data, tmp_path, weights):
    """The whole CLI on the 20 real Wider-Test faces (512 px), tiny models at 64 px, the DEFAULT plan
    (K=600, L=360, N=16: 150 UNet calls per batch), 20 fine-tuning steps, 4 held-out faces with NIQE."""
    wider = shared_data / "faces-lq-real" / "Wider-Test"
    out = tmp_path / "wider"
    start = time.perf_counter()
    result = run("finetune", "--unpaired", wider, "--out", out, "--base-weights", weights["codeformer"], "--prior-weights", weights["prior"],
                 "--size", "64", "--holdout", "4", "--steps", "20", "--batch-size", "4", "--save-every", "10", "--workers", "0",
                 "--device", "cpu", "-q")
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    print(f"\nWider-Test CLI run (20 faces, tiny models at 64 px, default K/L/N): {seconds:.1f} s")
    assert len(list((out / "pseudo" / "targets").glob("*.png"))) == 16
    settings = json.loads((out / "pseudo" / ".facerestore-pseudo" / "settings.json").read_text())
    assert (settings["k"], settings["l"], settings["n"]) == (600, 360, 16)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["faces"] == 4
    for key in ("input", "base", "finetuned"):
        assert report["niqe_mean"][key] is not None and math.isfinite(report["niqe_mean"][key])
    assert read_image(out / "report" / "finetuned" / report["per_face"][0]["path"]).rgb.shape == (512, 512, 3)  # back at the input's size
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 20 and np.mean(losses[-4:]) < np.mean(losses[:4])


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tmp_path, weights, lq):
    """torchrun with 2 CPU processes: pseudo-targets sharded by rank (same files), DDP fine-tuning with
    the global batch split (same losses up to float sums), one report, one set of final lines."""
    plan = ["--prior-start", "16", "--prior-until", "8", "--prior-lowpass", "8"]  # torchrun would read --l / --n as its own options
    args = ["--unpaired", lq, "--base-weights", weights["codeformer"], "--prior-weights", weights["prior"], "--size", "64", *plan,
            "--holdout", "2", "--steps", "3", "--batch-size", "4", "--save-every", "2", "--workers", "0", "--device", "cpu", "-q"]
    ddp = tmp_path / "ddp"
    done = torchrun(["finetune", *args, "--out", ddp], tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("fine-tuned codeformer: step 3 of 3") == 1
    single = tmp_path / "single"
    result = run("finetune", *args, "--out", single)
    assert result.exit_code == 0, result.output

    def losses(folder):
        return [json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]

    np.testing.assert_allclose(losses(ddp), losses(single), rtol=1e-5)
    # Each face's noise is keyed by its path, so the ranks draw what one process draws; but a rank
    # batches other faces together, and batched convolutions round differently on some CPUs (AVX-512
    # vs AVX2 kernels): a pixel may land one 8-bit level apart (seen: 1 pixel of 4 targets on an EPYC)
    targets = sorted((single / "pseudo" / "targets").rglob("*.png"))
    assert len(targets) == len(list((ddp / "pseudo" / "targets").rglob("*.png"))) > 0
    for target in targets:
        one, two = read_image(target).rgb, read_image(ddp / target.relative_to(single)).rgb
        levels = np.abs(one - two) * 255
        assert levels.max() <= 1 + 1e-3 and (levels > 0.5).mean() < 1e-3, (target.name, levels.max(), (levels > 0.5).sum())
    assert len(list((ddp / "pseudo" / ".facerestore-pseudo").glob("done-rank*.jsonl"))) == 2
    files = lambda run: sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and "done-rank" not in p.name and "base-rank" not in p.name)
    assert files(ddp) == files(single)


@pytest.mark.slow
def test_an_error_on_every_rank_or_on_rank_0_alone_stops_all_ranks_with_its_code_and_one_line(tmp_path, weights, lq):
    """torchrun with 2 CPU processes (as tests/test_train_ddp.py does for `train`)."""
    from helpers import assert_all_ranks_stopped_with, torchrun

    plan = ["--prior-start", "16", "--prior-until", "8", "--prior-lowpass", "8"]  # torchrun would read --l / --n as its own options
    args = ["finetune", "--unpaired", lq, "--base-weights", weights["codeformer"], "--prior-weights", weights["prior"], "--size", "64", *plan,
            "--holdout", "2", "--steps", "2", "--batch-size", "2", "--save-every", "1", "--workers", "0", "--device", "cpu", "-q"]
    # a global batch the 2 processes cannot split: refused before the run folder is written
    done = torchrun([*args, "--batch-size", "3", "--out", tmp_path / "r1"], tmp_path)
    assert_all_ranks_stopped_with(done, 2, "--batch-size 3 is the global batch and must be divisible by the 2 processes")
    assert not (tmp_path / "r1").exists()
    # rank 0 alone fails at its first save while rank 1 waits at a barrier: rank 1 leaves quietly, with rank 0's code
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "checkpoints").write_text("a file where the checkpoints folder goes")  # as a full disk at the first save
    done = torchrun([*args, "--out", tmp_path / "r2"], tmp_path)
    assert_all_ranks_stopped_with(done, 1, "cannot write checkpoint")



def test_a_full_disk_is_one_line_saying_how_to_go_on(tmp_path, weights, lq, monkeypatch):
    """An OSError while a stage writes (ENOSPC on log.jsonl, a target) was a traceback."""
    import errno

    from facerestore.training.finetune import pseudo_targets, run as run_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "log.jsonl"))

    monkeypatch.setattr(run_module, "finetune_unpaired", full)
    monkeypatch.setattr(pseudo_targets, "generate_pseudo_targets", full)
    one_line_error(run(*tiny_run_args(lq, tmp_path / "run", weights)), 1, "cannot write", "log.jsonl (No space left on device)",
                   "free some space", "run the same command again")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # the run had started: --resume continues it
    monkeypatch.setattr(run_module, "resolve_config", lambda *a, **k: None)
    one_line_error(run(*tiny_run_args(lq, tmp_path / "run", weights)), 1, f"continue with: facerestore finetune --out {tmp_path / 'run'} --resume")
    one_line_error(run("finetune", "pseudo-targets", lq, "--out", tmp_path / "pt", "--device", "cpu", "-q"), 1,
                   "No space left on device", "rerun the same command to make the remaining pseudo-targets")


def test_a_damaged_fine_tuned_model_is_one_line_naming_stage_3_and_the_file_and_resume_exports_it_again(tmp_path, weights, lq, monkeypatch):
    """Stage 3 loads the model stage 2 exported, which no option named: a damaged one was
    "--weights: ...", an option the user never gave. Deleting it and --resume exports it again."""
    from facerestore.training.finetune import trainer

    real_export = trainer.export_model

    def damaged_export(base, state, path, metadata):
        real_export(base, state, path, metadata)
        with open(path, "r+b") as file:  # cut off, as by a full disk or an interrupted copy
            file.truncate(path.stat().st_size // 2)
        return path

    monkeypatch.setattr(trainer, "export_model", damaged_export)
    out = tmp_path / "run"
    model = out / "codeformer-finetuned.safetensors"
    text = one_line_error(run(*tiny_run_args(lq, out, weights)), 1, f"finetune stage 3 (report): the fine-tuned model {model} is truncated or damaged (not a readable safetensors file: ",
                          f"; delete {model} and continue with: facerestore finetune --out {out} --resume, which exports it again")
    assert "--weights" not in text
    monkeypatch.undo()
    model.unlink()
    resumed = run("finetune", "--out", out, "--resume", "--workers", "0", "--device", "cpu", "-q")
    assert resumed.exit_code == 0, resumed.output
    assert (out / "report" / "report.md").is_file()


def test_the_real_folders_scan_is_summarised(tmp_path, lq):
    """--real is scanned like the input folder; what it skipped (unreadable, too small) is said, not dropped silently."""
    from facerestore.training.finetune.run import _check_options, resolve_config

    config = resolve_config(tmp_path / "run", resume=False, lq=lq, base="baseline", real=lq, size=64)
    _, _, real, note = _check_options(config)
    assert len(real) == 6 and note == "6 real faces, 1 unreadable skipped, 1 too small skipped"
    assert _check_options(resolve_config(tmp_path / "run", resume=False, lq=lq, size=64))[3] == ""


def test_a_fine_tuning_step_that_runs_out_of_memory_is_one_line(weights, lq, tmp_path, monkeypatch):
    from facerestore.training.finetune import objectives

    def too_big(self, batch, autocast):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB of which 1.10 GiB is free.")

    monkeypatch.setattr(objectives.CodeObjective, "step", too_big)
    text = one_line_error(run(*tiny_run_args(lq, tmp_path / "ft", weights)), 1)
    assert text == ("error: out of memory in training step 1 with --batch-size 2 at --size 64 (Tried to allocate 2.00 GiB. GPU 0 has a total "
                    "capacity of 7.79 GiB of which 1.10 GiB is free); start a new run with a smaller --batch-size or --size, or --amp, or "
                    "train on a GPU with more memory (a resumed run keeps its --batch-size and --size)")
