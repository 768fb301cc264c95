"""`facerestore evaluate` end to end through the CLI: inputs, authenticity, report, bad input, exit codes.

Fake methods (monkeypatched into the registry) give exact numbers; the tiny baseline checkpoint is
the real method. LPIPS, ArcFace and FID weights are absent here (offline, isolated home), so those
metrics go through the registry's "unavailable" path; NIQE and the FID features use tiny stand-ins.
"""

from __future__ import annotations

import html
import json
import os
import re
import urllib.parse
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.evaluation import presets
from facerestore.image_io import read_image, write_image
from facerestore.methods.base import MethodInfo
from facerestore.metrics.psnr import psnr

register()
runner = CliRunner()
FAST = "psnr"  # SSIM costs 0.15 s per 512 pair here; only the authenticity test needs it


def run(*args):
    return runner.invoke(app, ["evaluate", *(str(a) for a in args)], catch_exceptions=False)


def pattern(seed: int, size: int = 512) -> np.ndarray:
    """A smooth random image in [0.15, 0.85] on 8-bit levels (no face in it)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0.15, 0.85, size=(16, 16, 3)).astype(np.float32)
    return presets.quantize(np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), 0.15, 0.85))


@pytest.fixture
def hq(tmp_path) -> Path:
    folder = tmp_path / "hq"
    for i in range(2):
        write_image(folder / f"face{i}.png", pattern(i))
    return folder


# ------------------------------------------------------------------ fake methods


class Identity:
    info = MethodInfo("identity", "returns its input", "none", "test", True)

    def restore(self, crops, generator=None):
        return crops.clone()


class Brighten:
    """Adds exactly 10 levels: PSNR against the input is 20 log10(255 / 10) = 28.1308 dB."""

    info = MethodInfo("brighten", "adds 10/255", "none", "test", True)

    def restore(self, crops, generator=None):
        return (crops + 10.0 / 255.0).clamp(0, 1)


class Broken:
    info = MethodInfo("broken", "always fails", "none", "test", True)

    def restore(self, crops, generator=None):
        raise RuntimeError("CUDNN_STATUS_INTERNAL_ERROR (simulated)")  # not out of memory: that one is retried (out_of_memory)


class Interrupted:
    info = MethodInfo("interrupted", "Ctrl-C while restoring", "none", "test", True)

    def restore(self, crops, generator=None):
        raise KeyboardInterrupt


class SmallGpu:
    """Identity that runs out of GPU memory above one face at a time."""

    info = MethodInfo("small-gpu", "identity, one face at a time", "none", "test", True)

    def restore(self, crops, generator=None):
        if crops.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 3.81 GiB of which 1.10 GiB is free.")
        return crops.clone()


FAKES = {"identity": Identity, "brighten": Brighten, "broken": Broken, "interrupted": Interrupted, "small-gpu": SmallGpu}


@pytest.fixture(autouse=True)
def fake_methods(monkeypatch):
    from facerestore.methods import registry

    real = registry.build_method
    monkeypatch.setattr(registry, "build_method", lambda name, options: FAKES[name]() if name in FAKES else real(name, options))


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def row(data: dict, set_name: str, label: str) -> dict:
    found = next(s for s in data["sets"] if s["name"] == set_name)
    return next(r for r in found["rows"] if r["label"] == label)


# ------------------------------------------------------------------ authenticity


def test_authenticity_identity_is_perfect_and_a_shift_gives_the_exact_psnr(hq, tmp_path):
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "-m", "brighten", "--authenticity", "--limit", "1", "--metrics", "psnr,ssim", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    data = results(out)
    assert [s["name"] for s in data["sets"]] == ["authenticity"]  # --authenticity alone: no degraded table
    for comparison in ("f(x) vs x", "f(f(x)) vs f(x)", "f(f(x)) vs x"):
        metrics = row(data, "authenticity", f"identity: {comparison}")["metrics"]
        assert metrics["psnr"]["mean"] == "inf" and metrics["psnr"]["status"] == "ok"
        assert metrics["ssim"]["mean"] == pytest.approx(1.0)
    shift = 20 * math.log10(255 / 10)
    assert row(data, "authenticity", "brighten: f(x) vs x")["metrics"]["psnr"]["mean"] == pytest.approx(shift, abs=1e-6)
    assert row(data, "authenticity", "brighten: f(f(x)) vs f(x)")["metrics"]["psnr"]["mean"] == pytest.approx(shift, abs=1e-6)
    assert row(data, "authenticity", "brighten: f(f(x)) vs x")["metrics"]["psnr"]["mean"] == pytest.approx(20 * math.log10(255 / 20), abs=1e-6)
    twice = read_image(out / "authenticity" / "brighten" / "twice" / "face0.png").rgb
    assert np.allclose(twice, pattern(0) + 20 / 255, atol=1e-6)
    assert (out / "grids" / "authenticity_1.png").is_file()


# ------------------------------------------------------------------ degraded inputs


def test_degraded_inputs_are_identical_across_runs_and_methods(hq, tmp_path, tiny_baseline):
    a, b = tmp_path / "a", tmp_path / "b"
    first = run("--hq", hq, "-m", "identity", "--degrade", "mild", "--seed", "7", "--metrics", FAST, "-o", a, "-q")
    second = run("--hq", hq, "-m", "baseline", "--weights", tiny_baseline, "--degrade", "mild,severe", "--seed", "7", "--metrics", FAST, "-o", b, "-q")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    for name in ("face0", "face1"):
        saved = read_image(a / "inputs" / "mild" / f"{name}.png").rgb
        assert np.array_equal(saved, read_image(b / "inputs" / "mild" / f"{name}.png").rgb)
        expected, _ = presets.degrade(read_image(hq / f"{name}.png").rgb, "mild", seed=7, key=name)
        assert np.array_equal(saved, expected)
        # the identity method returns the input, so its row equals the input row exactly
        assert np.array_equal(read_image(a / "restored" / "identity" / "mild" / f"{name}.png").rgb, saved)
    data_a, data_b = results(a), results(b)
    input_a = row(data_a, "mild", "input")["metrics"]["psnr"]["mean"]
    assert input_a == row(data_b, "mild", "input")["metrics"]["psnr"]["mean"]
    expected_mean = np.mean([psnr(read_image(a / "inputs" / "mild" / f"face{i}.png").rgb, pattern(i)) for i in range(2)])
    assert input_a == pytest.approx(expected_mean, abs=1e-9)
    assert row(data_a, "mild", "identity")["metrics"]["psnr"]["mean"] == input_a
    assert row(data_b, "severe", "input")["metrics"]["psnr"]["mean"] < input_a
    params = next(s for s in data_b["sets"] if s["name"] == "severe")["params"]
    assert params == {"sigma": 8.0, "scale": 8.0, "noise": 12.0, "jpeg": 55}


def test_report_names_the_weights_each_method_ran_with(hq, tmp_path, tiny_baseline, monkeypatch):
    """A report of a user's model must say which model its rows are: the row is named after the
    method, and the command alone keeps a relative path, meaningless once the report moves."""
    models = tmp_path / "runs"
    models.mkdir()
    (models / "mine.safetensors").write_bytes(tiny_baseline.read_bytes())
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "baseline", "-m", "identity", "--weights", "baseline:runs/mine.safetensors", "--degrade", "mild",
                 "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    methods = results(out)["methods"]
    assert methods["baseline"]["weights"] == str(models / "mine.safetensors")
    assert "weights" not in methods["identity"]  # no --weights for it: its default, nothing to record
    assert f"; weights {models / 'mine.safetensors'} — " in (out / "index.md").read_text()


def test_report_records_a_registered_name_as_the_file_it_resolved_to(hq, tmp_path, tiny_baseline):
    """`--weights baseline:my-model` is a name the user may reuse for another file tomorrow: the
    report keeps the absolute path of the file it measured, with the name beside it."""
    from facerestore.weights import store

    stored = store.import_file(tiny_baseline, name="my-model")
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "baseline", "-m", "identity", "--weights", "baseline:my-model", "--degrade", "mild",
                 "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    baseline = results(out)["methods"]["baseline"]
    assert baseline["weights"] == str(stored) and Path(baseline["weights"]).is_absolute()
    assert baseline["weights_name"] == "my-model"
    assert f"; weights {stored} (my-model) — " in (out / "index.md").read_text()


def test_weights_record_makes_each_role_of_a_list_absolute(tmp_path, tiny_baseline, monkeypatch):
    """A multi-file method's ROLE=VALUE list: every file absolute, every name its stored file."""
    from facerestore.cli.evaluate import weights_record
    from facerestore.weights import store

    stored = store.import_file(tiny_baseline, name="my-prior")
    (tmp_path / "swin.pth").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert weights_record("prior=my-prior,swinir=swin.pth") == {
        "weights": f"prior={stored},swinir={tmp_path / 'swin.pth'}", "weights_name": "prior=my-prior,swinir=swin.pth"}
    assert weights_record("swin.pth") == {"weights": str(tmp_path / "swin.pth")}


def test_report_files_and_json_cover_every_method_and_metric(hq, tmp_path, tiny_baseline):
    out = tmp_path / "report"
    result = run(
        "--hq", hq, "-m", "baseline", "-m", "identity", "--weights", f"baseline:{tiny_baseline}", "--degrade", "medium",
        "--metrics", "psnr,identity", "-o", out, "--json",
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    data = results(out)
    assert printed == data and data["generator"] == "facerestore evaluate"
    for name in ("index.md", "index.html", "results.json", "grids/medium_1.png", "inputs/medium/face0.png", "restored/baseline/medium/face1.png"):
        assert (out / name).is_file(), name
    (medium,) = data["sets"]
    assert [r["label"] for r in medium["rows"]] == ["input", "baseline", "identity"]
    for r in medium["rows"]:
        assert set(r["metrics"]) == {"psnr", "identity"}
        assert all("status" in m for m in r["metrics"].values())
        assert r["metrics"]["psnr"]["status"] == "ok" and r["metrics"]["psnr"]["count"] == 2
        arcface = r["metrics"]["identity"]  # offline without w600k_mbf.onnx: said, not faked or dropped
        assert arcface["status"] == "unavailable" and arcface["mean"] is None and arcface["count"] == 0
        assert "w600k_mbf.onnx" in arcface["reason"] and "facerestore weights import" in arcface["reason"]
    assert row(data, "medium", "baseline")["seconds_per_face"] > 0
    for image in medium["images"]:
        assert set(image["scores"]) == {"input", "baseline", "identity"}
    markdown = (out / "index.md").read_text()
    assert "| baseline |" in markdown and "unavailable [1]" in markdown and "[1] identity: " in markdown and "w600k_mbf.onnx" in markdown
    assert "](grids/medium_1.png)" in markdown
    page = (out / "index.html").read_text()
    assert 'src="grids/medium_1.png"' in page and str(tmp_path) not in page.split("<table>", 1)[1]
    grid = read_image(out / "grids" / "medium_1.png").rgb
    assert grid.shape[1] == 4 * 256 + 3 * 2  # input | baseline | identity | reference


def test_rerun_replaces_the_report_and_foreign_folders_are_refused(hq, tmp_path):
    out = tmp_path / "report"
    assert run("--hq", hq, "-m", "identity", "-m", "brighten", "--metrics", "psnr", "-o", out, "-q").exit_code == 0
    assert (out / "restored" / "brighten").is_dir()
    again = run("--hq", hq, "-m", "identity", "--limit", "1", "--metrics", "psnr", "-o", out, "-q")
    assert again.exit_code == 0, again.output
    assert not (out / "restored" / "brighten").exists()
    assert [i["key"] for i in results(out)["sets"][0]["images"]] == ["face0"]
    assert not any(p.name.startswith(".report") for p in tmp_path.iterdir())  # no staging or old copies left
    foreign = tmp_path / "photos"
    write_image(foreign / "holiday.png", pattern(5, 64))
    refused = run("--hq", hq, "-m", "identity", "-o", foreign)
    assert refused.exit_code == 2 and "not a facerestore evaluation report" in refused.output
    assert (foreign / "holiday.png").is_file()
    inside = run("--hq", hq, "-m", "identity", "-o", hq / "report")
    assert inside.exit_code == 2 and "overlaps the input" in inside.output


def test_a_rerun_removes_what_killed_runs_left_and_nothing_of_a_live_one(hq, tmp_path):
    """kill -9 skips the cleanup: the next run deletes staging folders whose process is gone."""
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = tmp_path / f".report.{int(finished.stdout)}.abc123.partial"  # that process has exited
    live = tmp_path / f".report.{os.getpid()}.def456.partial"  # another evaluate still writing
    old = tmp_path / ".report.ghi789.old"  # killed between the swap and the delete
    for folder in (dead, live, old):
        folder.mkdir()
    (old / "results.json").write_text(json.dumps({"generator": "facerestore evaluate"}))
    (tmp_path / ".report.keep").mkdir()  # not ours: no pid, not a report
    assert run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", tmp_path / "report", "-q").exit_code == 0
    left = {p.name for p in tmp_path.iterdir() if p.name.startswith(".report")}
    assert left == {".report.keep", live.name}


def test_a_rerun_leaves_the_live_run_of_a_report_whose_name_extends_its_own(hq, tmp_path):
    """--out report.4194303 (a name, not a pid) writing beside --out report: its staging folder stays."""
    from facerestore.evaluation.report import remove_stale_staging

    other = tmp_path / f".report.4194303.{os.getpid()}.abc123.partial"  # a live run of report.4194303
    other_old = tmp_path / ".report.4194303.def456.old"  # its swap in progress
    for folder in (other, other_old):
        folder.mkdir()
    (other_old / "results.json").write_text(json.dumps({"generator": "facerestore evaluate"}))
    assert remove_stale_staging(tmp_path / "report") == 0
    assert other.is_dir() and other_old.is_dir()


def test_ctrl_c_says_the_earlier_report_is_kept_and_exits_130(hq, tmp_path):
    out = tmp_path / "report"
    assert run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q").exit_code == 0
    before = (out / "results.json").read_bytes()
    result = run("--hq", hq, "-m", "interrupted", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 130
    assert result.output.strip() == f"interrupted; {out}: the earlier report in it is unchanged; rerun the same command to evaluate again"
    assert (out / "results.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("earlier", [False, True])
def test_ctrl_c_while_the_models_load_leaves_no_staging_folder(hq, tmp_path, monkeypatch, earlier):
    """The staging folder exists before the methods are built (a checkpoint can take a minute to load)."""
    from facerestore.methods import registry

    out = tmp_path / "report"
    if earlier:
        assert run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q").exit_code == 0
    staged = []

    def loading(name, options):
        staged.extend(p for p in tmp_path.iterdir() if p.name.endswith(".partial"))
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "build_method", loading)
    result = run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q")
    assert staged, "the staging folder should exist while the models load"
    assert result.exit_code == 130, result.output
    kept = "the earlier report in it is unchanged" if earlier else "nothing was written"
    assert result.output.strip() == f"interrupted; {out}: {kept}; rerun the same command to evaluate again"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]
    assert out.is_dir() == earlier


def test_a_full_disk_while_writing_the_report_is_one_line_and_keeps_the_earlier_report(hq, tmp_path, monkeypatch):
    """It was an OSError traceback; a failed swap also left the earlier report as debris the next run deletes."""
    import errno

    from facerestore.evaluation import report

    out = tmp_path / "report"
    assert run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q").exit_code == 0
    before = (out / "results.json").read_bytes()

    def full(result, folder, command):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "index.html"))

    write_html = report.write_html
    monkeypatch.setattr(report, "write_html", full)
    result = run("--hq", hq, "-m", "brighten", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: cannot write ") and line.endswith(
        f"index.html (No space left on device); free some space (or fix the folder), then rerun the same command ({out}: the earlier report in it is unchanged)")
    assert (out / "results.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]

    monkeypatch.setattr(report, "write_html", write_html)
    real = os.replace

    def swap_fails(src, dst):
        if str(src).endswith(".partial"):
            raise OSError(errno.EIO, "Input/output error", str(src))
        return real(src, dst)

    monkeypatch.setattr(report.os, "replace", swap_fails)
    result = run("--hq", hq, "-m", "brighten", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (f"error: cannot move the new report into {out} (Input/output error); it could not be kept either; "
                                     f"{out} holds the earlier report, unchanged; fix the folder (permissions, free space), then rerun the same command")
    assert (out / "results.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


@pytest.mark.parametrize("earlier", [True, False])
def test_a_failed_swap_into_out_names_out_and_keeps_the_new_report_beside_it(hq, tmp_path, monkeypatch, earlier):
    """The line named the hidden staging folder (.report.PID.X.partial, which the next run deletes),
    not --out, and the finished report was deleted with it."""
    import errno

    from facerestore.evaluation import report

    out = tmp_path / "report"
    if earlier:
        assert run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q").exit_code == 0
        before = (out / "results.json").read_bytes()
    real = os.replace

    def refused(src, dst):  # --out's folder turned read-only for the swap (a mount remounted, chmod by a job)
        if Path(dst) == out and str(src).endswith(".partial"):
            raise OSError(errno.EACCES, "Permission denied", str(src), None, str(dst))
        return real(src, dst)

    monkeypatch.setattr(report.os, "replace", refused)
    result = run("--hq", hq, "-m", "brighten", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 1, result.output
    [kept] = [p for p in tmp_path.iterdir() if p.name.startswith("report.new-")]
    before_text = f"{out} holds the earlier report, unchanged" if earlier else f"{out} was not made"
    assert result.output.strip() == (f"error: cannot move the new report into {out} (Permission denied); it is in {kept}; {before_text}; "
                                     f"fix the folder, then replace {out} by {kept} (or rerun the same command)")
    assert "brighten" in json.loads((kept / "results.json").read_text())["methods"]
    assert (out / "results.json").read_bytes() == before if earlier else not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hq", "{hq}", "--lq", "{hq}", "-m", "identity"], "--hq and --lq cannot be combined"),
        (["--hq", "{hq}"], "no --method given"),
        (["-m", "identity"], "nothing to evaluate"),
        (["--hq", "{hq}", "-m", "identity", "--degrade", "extreme"], "not a degradation preset"),
        (["--hq", "{hq}", "-m", "identity", "--metrics", "psnr,sharpness"], "unknown metric 'sharpness'"),
        (["--lq", "{hq}", "-m", "identity", "--metrics", "psnr"], "psnr needs references"),
        (["--lq", "{hq}", "-m", "identity", "--metrics", "psnr,ssim"], "psnr, ssim need references"),
        (["--lq", "{hq}", "-m", "identity", "--degrade", "mild"], "--degrade needs --hq"),
        (["--lq", "{hq}", "-m", "identity", "--authenticity"], "--authenticity needs --hq"),
        (["--hq", "{empty}", "-m", "identity"], "folder has no images"),
        (["--hq", "{hq}", "-m", "nosuchmethod"], "unknown method 'nosuchmethod'"),
        (["--hq", "{hq}", "-m", "identity", "-m", "brighten", "--weights", "x.safetensors"], "say which one it is for"),
        (["--hq", "{hq}", "-m", "identity", "--limit", "0"], "--limit must be at least 1"),
        (["--hq", "{hq}", "-m", "identity", "--authenticity", "--restored", "x={hq}"], "no --degrade preset is evaluated"),
        (["--hq", "{hq}", "-m", "identity", "--restored", "identity={hq}"], "already used"),
        (["--hq", "{hq}", "-m", "identity", "--restored", "x=nope"], "--restored x=nope: nope does not exist; pass --restored LABEL=DIR, DIR the folder of that tool's restored faces"),
        (["--hq", "{hq}", "-m", "identity", "--restored", "x={hq}/face0.png"], "face0.png is a file, not a folder; pass --restored LABEL=DIR"),
        (["--hq", "{hq}", "-m", "baseline", "-m", "idm", "--fidelity", "0.7"], "--fidelity is not used by baseline, idm"),
        (["--hq", "{hq}", "-m", "baseline", "--steps", "5"], "--steps is not used by baseline"),
        (["--hq", "{hq}", "-m", "codeformer", "--eta", "0.2"], "--eta is not used by codeformer; it is an option of difface; drop --eta, or add --method difface"),
        (["--hq", "{hq}", "-m", "codeformer", "-m", "idm", "--dr2-preset", "severe"], "--dr2-preset is not used by codeformer, idm; it is an option of dr2"),
        (["--hq", "{hq}", "--restored", "x={hq}", "--no-enhancer"], "--no-enhancer needs a --method; it is an option of dr2"),
        (["--hq", "{hq}", "-m", "identity", "--seed", "-1"], "--seed must be between 0 and 2^63-1"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(hq, tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(*(a.format(hq=hq, empty=empty) for a in args), "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not (tmp_path / "out").exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_a_ref_set_fid_cannot_use_is_refused_before_any_model_loads(hq, tmp_path, monkeypatch):
    """Only its existence was checked: FID found a junk file, an empty folder or an .npz without mu/sigma
    after the whole run, showed "failed" and the run exited 0."""
    from facerestore.methods import registry

    monkeypatch.setattr(registry, "build_method", lambda name, options: pytest.fail("a model loaded before --ref-set was checked"))
    one = tmp_path / "one"
    write_image(one / "a.png", pattern(0))
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.npz").write_text("<html>not found</html>")
    np.savez(tmp_path / "keys.npz", mean=np.zeros(2048), cov=np.eye(2048))
    np.savez(tmp_path / "small.npz", mu=np.zeros(3), sigma=np.eye(3))
    np.savez(tmp_path / "caps.npz", mu=np.zeros(3), sigma=np.eye(3))
    (tmp_path / "caps.npz").rename(tmp_path / "CAPS.NPZ")  # read as statistics too, not refused by its name
    np.savez(tmp_path / "nan.npz", mu=np.full(2048, np.nan), sigma=np.eye(2048))
    np.save(tmp_path / "array.npy", np.zeros(2048))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    (tmp_path / "notes.txt").write_text("faces")
    (tmp_path / "hollow.npz").write_bytes(b"")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "keys.npz").read_bytes()[:100])  # a zip cut short
    np.savez(tmp_path / "objects.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(2048))
    expected = {
        "empty": "holds 0 images; FID needs at least 2",
        "one": "holds 1 image; FID needs at least 2",
        "junk.npz": "is not an .npz archive (it is no zip file)",
        "array.npz": "is not an .npz archive (it is an .npy: one array, not an archive of named arrays)",
        "hollow.npz": "is not an .npz archive (it is empty)",
        "cut.npz": "is not a readable .npz (a zip archive cut short or damaged)",
        "objects.npz": "is not a readable .npz (it holds pickled (object) arrays, which are never loaded)",
        "keys.npz": "has no mu or sigma (it holds: mean, cov)",
        "small.npz": "mu has shape [3] and sigma [3, 3]; FID needs mu [2048] and sigma [2048, 2048]",
        "nan.npz": "mu and sigma must be finite numbers",
        "CAPS.NPZ": "mu has shape [3] and sigma [3, 3]",
        "notes.txt": "is neither a folder of images nor an .npz of FID statistics",
    }
    for name, message in expected.items():
        result = run("--lq", hq, "-m", "identity", "--ref-set", tmp_path / name, "-o", tmp_path / "out", "-q")
        assert result.exit_code == 2, (name, result.output)
        [line] = result.output.strip().splitlines()
        assert line.startswith(f"error: --ref-set {tmp_path / name}") and message in line, line
        assert line.endswith("an .npz of FID statistics (mu [2048], sigma [2048, 2048]) as pytorch-fid saves them"), line
        assert "allow_pickle" not in line, line  # numpy's advice to load a file's code is never passed on
        assert not (tmp_path / "out").exists()

    real = os.access  # root reads anything: simulate a file this user may not read
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path).name == "small.npz" and mode & os.R_OK else real(path, mode, **kw))
    from facerestore.errors import UsageError
    from facerestore.evaluation.runner import EvalSpec, resolve_spec

    with pytest.raises(UsageError) as refused:
        resolve_spec(EvalSpec(methods=("identity",), lq=hq, ref_set=tmp_path / "small.npz"))
    assert refused.value.one_line() == (
        f"--ref-set {tmp_path / 'small.npz'} cannot be read (permission denied); make it readable (chmod a+r), or copy it somewhere of yours and pass the copy")


def test_bad_files_fail_alone_and_exit_1(hq, tmp_path):
    (hq / "broken.png").write_bytes(b"not a png at all")
    write_image(hq / "wide.png", pattern(3)[:256])  # 512x256: not an aligned crop
    write_image(hq / "face0.jpg", pattern(0))  # same name as face0.png
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 1
    assert "broken.png is not an image file" in result.output and "not a square aligned face crop" in result.output
    assert "has the same name" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and len(set(errors)) == 3, result.output  # each failure once, its path once
    assert all(line.count(str(hq)) == 1 for line in errors), result.output
    data = results(out)
    failed = {f["what"] for f in data["failures"]}
    assert {str(hq / "broken.png"), str(hq / "wide.png"), str(hq / "face0.png")} <= failed
    images = {i["key"]: i for i in data["sets"][0]["images"]}
    assert images["broken"]["status"] == "failed" and images["face1"]["status"] == "ok"
    listed = [line for line in (out / "index.md").read_text().split("## Failures")[1].splitlines() if line.startswith("- ")]
    assert len(listed) == 3 and all(line.count(str(hq)) == 1 for line in listed), listed  # each path once, not "PATH: PATH: ..."
    assert row(data, "medium", "identity")["metrics"]["psnr"]["count"] == 2  # face0 (png or jpg) and face1


def test_a_broken_link_fails_alone_and_counts_toward_the_limit(hq, tmp_path):
    """It was a usage error for the whole folder, named after the folder: one dangling link stopped 1000 faces.
    It is an image of each set that failed, as an unreadable file is: counted in images_total and images_failed,
    which left it out while the run's failures listed it."""
    (hq / "face05.png").symlink_to(tmp_path / "gone.png")  # sorts between face0 and face1
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[0] == f"error: {hq / 'face05.png'}: is a broken link (its target does not exist)"
    data = results(out)
    assert [f["what"] for f in data["failures"]] == [str(hq / "face05.png")]
    assert row(data, "medium", "identity")["metrics"]["psnr"]["count"] == 2
    assert all((s["images_total"], s["images_failed"]) == (3, 1) for s in data["sets"]), [(s["images_total"], s["images_failed"]) for s in data["sets"]]
    linked = {i["key"]: i for i in data["sets"][0]["images"]}["face05"]
    assert linked["status"] == "failed" and linked["error"] == f"{hq / 'face05.png'}: is a broken link (its target does not exist)"
    assert run("--hq", hq, "-m", "identity", "--metrics", "psnr", "--limit", "1", "-o", out, "-q").exit_code == 0  # face0 alone
    limited = run("--hq", hq, "-m", "identity", "--metrics", "psnr", "--limit", "2", "-o", out, "-q")
    assert limited.exit_code == 1 and [i["key"] for i in results(out)["sets"][0]["images"]] == ["face0", "face05"]
    only = tmp_path / "only"
    only.mkdir()
    (only / "a.png").symlink_to(tmp_path / "gone.png")
    refused = run("--hq", only, "-m", "identity", "-o", tmp_path / "out")
    assert refused.exit_code == 2 and refused.output.strip() == (
        f"error: --hq {only}: no image to evaluate, only 1 broken link (first: {only / 'a.png'}); pass a folder of aligned face crops (jpg, png, webp, tif, bmp)")
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_only_an_unreadable_sub_folder_says_so_not_broken_link(tmp_path, monkeypatch):
    """list_images reports a sub-folder it cannot list (105afd8) beside broken links (4f54a3d): with no
    image at all the line called that folder a broken link."""
    only = tmp_path / "only"
    locked = only / "locked"
    write_image(locked / "a.png", pattern(0))
    real_scandir = os.scandir

    def scandir(path=".", *args):
        if Path(path) == locked:  # root lists anything: simulate a folder this user may not open
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    refused = run("--hq", only, "-m", "identity", "-o", tmp_path / "out")
    assert refused.exit_code == 2 and refused.output.strip() == (
        f"error: --hq {only}: no image to evaluate, only 1 unreadable folder (first: {locked}); pass a folder of aligned face crops (jpg, png, webp, tif, bmp)")
    (only / "b.png").symlink_to(tmp_path / "gone.png")
    both = run("--hq", only, "-m", "identity", "-o", tmp_path / "out")
    assert both.exit_code == 2 and f"only 1 broken link and 1 unreadable folder (first: {only / 'b.png'})" in both.output


def test_a_duplicate_name_outside_the_limit_is_not_a_failure(hq, tmp_path):
    write_image(hq / "face1.jpg", pattern(1))  # same name as face1.png, which --limit 1 leaves out
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--metrics", "psnr", "--limit", "1", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert results(out)["failures"] == [] and "same name" not in result.output
    write_image(hq / "face0.jpg", pattern(0))  # a duplicate of the image it keeps still fails
    again = run("--hq", hq, "-m", "identity", "--metrics", "psnr", "--limit", "1", "-o", out, "-q")
    assert again.exit_code == 1 and "face0.png: skipped: face0.jpg has the same name" in again.output


def test_a_failing_method_fails_only_its_rows(hq, tmp_path):
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "broken", "-m", "identity", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 1
    assert "broken failed: RuntimeError: CUDNN_STATUS_INTERNAL_ERROR (simulated)" in result.output
    data = results(out)
    assert row(data, "medium", "identity")["metrics"]["psnr"]["count"] == 2
    broken = row(data, "medium", "broken")["metrics"]["psnr"]
    assert broken["status"] == "failed" and broken["count"] == 0 and "CUDNN_STATUS_INTERNAL_ERROR" in broken["reason"]
    assert "| broken | failed [1] |" in (out / "index.md").read_text()
    assert all("broken" in i["row_errors"] for i in data["sets"][0]["images"])


def test_a_batch_that_does_not_fit_in_memory_is_split_with_one_warning_and_scored_in_full(hq, tmp_path):
    """It failed every batch of the method (its rows "failed"), though one face at a time fitted."""
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "small-gpu", "--degrade", "mild,medium", "--metrics", "psnr", "--batch-size", "2", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith(("warning:", "error:"))] == [
        "warning: out of memory restoring 2 faces at once; going on with 1 at a time (pass --batch-size 1 to start there)"]
    data = results(out)
    for preset in ("mild", "medium"):
        assert row(data, preset, "small-gpu")["metrics"]["psnr"] == row(data, preset, "input")["metrics"]["psnr"]


def test_warnings_of_loading_weights_and_detectors_are_said_once_and_kept_in_the_report(hq, tmp_path, monkeypatch):
    """A damaged weights copy passed over while a method loaded, or while it ran, and `--detector auto`
    falling back to another detector, were printed on stderr by the store and the detector and missing
    from the report; the report's warnings list lacked them. Now each is said once and recorded."""
    import hashlib

    from facerestore.faces import detect
    from facerestore.methods import registry
    from facerestore.weights import catalogue, store
    from facerestore.weights.catalogue import WeightsEntry

    entries = {}
    for name in ("tiny_a", "tiny_b"):
        source = tmp_path / "src" / f"{name}.pth"
        source.parent.mkdir(exist_ok=True)
        torch.save(torch.nn.Linear(3, 2).state_dict(), source)
        entries[name] = WeightsEntry(name=name, filename=source.name, urls=(), sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
                                     size=source.stat().st_size, license="MIT", commercial_use=True)
    real_catalogue = catalogue.official_catalogue()
    monkeypatch.setattr(catalogue, "official_catalogue", lambda: {**real_catalogue, **entries})
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in entries:
        store.import_file(tmp_path / "src" / f"{name}.pth")  # the good copy, in the cache
        (shared / f"{name}.pth").write_bytes(b"cut short")  # a damaged one, searched first
    (shared / "detection_Resnet50_Final.pth").write_bytes(b"cut short")
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared))
    monkeypatch.setattr(store, "_warned_passed_over", set())
    detect.load_detector.cache_clear()

    class Loads(Identity):
        def __init__(self):
            store.locate("tiny_a")  # while the methods load, before the run

        def restore(self, crops, generator=None):
            store.locate("tiny_b")  # a part loaded on first use, during the run
            detect.load_detector("auto")
            return crops.clone()

    monkeypatch.setattr(registry, "build_method", lambda name, options: Loads())
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q")
    detect.load_detector.cache_clear()
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(said) == 3 and len(result.output.splitlines()) == 3, result.output  # each once, nothing else
    assert said[0].startswith(f"warning: {shared / 'tiny_a.pth'} (weights 'tiny_a') is damaged")
    assert said[1].startswith(f"warning: {shared / 'tiny_b.pth'} (weights 'tiny_b') is damaged")
    assert said[2].startswith(f"warning: --detector auto uses the bundled detector instead: {shared / 'detection_Resnet50_Final.pth'} has sha256")
    assert results(out)["warnings"] == [line.removeprefix("warning: ") for line in said]
    index = (out / "index.md").read_text()
    assert all(f"- **warning**: {line.removeprefix('warning: ')}\n" in index for line in said)
    assert html.escape(said[0].removeprefix("warning: ")) in (out / "index.html").read_text()


def test_one_image_is_counted_in_good_english(tmp_path):
    """"— 1 images." in the console, index.md and index.html; "1 of 1 images were not 512x512"."""
    hq = tmp_path / "hq"
    write_image(hq / "face0.png", pattern(0, 256))  # resized to 512, and said so
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--degrade", "mild", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    text = (out / "index.md").read_text() + (out / "index.html").read_text() + json.dumps(results(out)["notes"])
    assert "1 images" not in text and " — 1 image." in text and "per-image scores (1 image)" in text
    assert "1 of 1 image was not 512x512 and was resized" in text


def test_a_missing_result_names_the_folder_that_was_searched(hq, tmp_path):
    theirs = tmp_path / "theirs"
    for key in ("face0", "face1"):
        write_image(theirs / "mild" / f"{key}.png", pattern(0))
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--degrade", "mild,medium", "--restored", f"t={theirs}", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 1
    medium = next(s for s in results(out)["sets"] if s["name"] == "medium")
    assert medium["images"][0]["row_errors"]["t"] == f"t: no restored image named face0.<ext> in {theirs / 'medium'}"


def test_restored_folder_with_wrong_sizes_and_names(hq, tmp_path):
    theirs = tmp_path / "theirs"
    write_image(theirs / "face0.png", pattern(0, 256))  # wrong size
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--restored", f"other={theirs}", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 1
    images = {i["key"]: i for i in results(out)["sets"][0]["images"]}
    assert "is 256x256 but the input and reference are 512x512" in images["face0"]["row_errors"]["other"]
    assert "no restored image named face1" in images["face1"]["row_errors"]["other"]
    assert "is 256x256 but the input" in result.output and "2 failures; report:" in result.output  # -q keeps errors
    unrelated = tmp_path / "unrelated"
    write_image(unrelated / "cat.png", pattern(1))
    refused = run("--hq", hq, "-m", "identity", "--restored", f"other={unrelated}", "-o", tmp_path / "r2")
    assert refused.exit_code == 2 and "no file is named after an input" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


def test_with_json_every_failure_is_one_line_on_stderr_and_stdout_stays_json(hq, tmp_path):
    """A missing or wrong-size --restored file is said on stderr as an unreadable input is, each once."""
    (hq / "broken.png").write_bytes(b"not a png at all")
    write_image(hq / "face2.png", pattern(2))
    theirs = tmp_path / "theirs"
    write_image(theirs / "face0.png", pattern(0, 256))  # wrong size; face1 and face2 have none
    (theirs / "face1.png").write_bytes(b"not a png either")
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--restored", f"other={theirs}", "--metrics", "psnr", "-o", out, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == results(out)
    errors = result.stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in errors), result.stderr
    assert len(errors) == 4 and len(set(errors)) == 4, result.stderr
    assert any("broken.png is not an image file" in line for line in errors)
    assert any(f"other: {theirs / 'face0.png'} is 256x256 but the input and reference are 512x512" in line for line in errors)
    assert any(f"other: {theirs / 'face1.png'}" in line and "is not an image file" in line for line in errors)
    assert any(f"other: no restored image named face2.<ext> in {theirs}" in line for line in errors)
    quiet = run("--hq", hq, "-m", "identity", "--restored", f"other={theirs}", "--metrics", "psnr", "-o", out, "-q")
    said = [line for line in quiet.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(said) == sorted(errors)  # -q: the same lines, none repeated by the closing list


def test_a_non_face_image_makes_lmd_unavailable_not_the_report(hq, tmp_path):
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--limit", "1", "--degrade", "mild", "--metrics", "psnr,lmd", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    metrics = row(results(out), "mild", "identity")["metrics"]
    assert metrics["psnr"]["status"] == "ok"
    assert metrics["lmd"]["status"] == "unavailable" and "no face found" in metrics["lmd"]["reason"]
    assert "no face found" in (out / "index.md").read_text()


# ------------------------------------------------------------------ real inputs (no references)


def test_lq_inputs_get_no_reference_scores_and_fid(hq, tmp_path, monkeypatch):
    from facerestore.metrics import fid as fid_module
    from facerestore.metrics import niqe as niqe_module

    # stand-ins: a "NIQE" that is the image mean, and FID on per-channel means instead of Inception
    monkeypatch.setattr(niqe_module, "niqe", lambda image, **kw: float(np.mean(image)))
    monkeypatch.setattr(fid_module, "load_inception", lambda *a, **kw: (lambda batch: batch.mean(dim=(2, 3))))
    lq = tmp_path / "lq"
    write_image(lq / "a.png", pattern(0))
    write_image(lq / "b.png", pattern(1, 256))  # smaller: resized to 512 (cubic) and said so
    out = tmp_path / "report"
    result = run("--lq", lq, "-m", "brighten", "--ref-set", hq, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    data = results(out)
    (real,) = data["sets"]
    assert real["kind"] == "real" and real["metrics"] == ["niqe", "fid"]
    niqe_in, niqe_out = row(data, "real", "input")["metrics"]["niqe"], row(data, "real", "brighten")["metrics"]["niqe"]
    assert niqe_out["mean"] == pytest.approx(niqe_in["mean"] + 10 / 255, abs=2e-3)
    fid_in, fid_out = row(data, "real", "input")["metrics"]["fid"], row(data, "real", "brighten")["metrics"]["fid"]
    assert fid_in["status"] == fid_out["status"] == "ok" and fid_out["value"] != fid_in["value"]
    assert "resized from 256x256 to 512x512 (cubic)" in json.dumps(data["notes"]) + json.dumps(real["images"])
    assert (out / "restored" / "brighten" / "b.png").is_file() and (out / "grids" / "real_1.png").is_file()
    missing = run("--lq", lq, "-m", "brighten", "--metrics", "fid", "-o", tmp_path / "r2")
    assert missing.exit_code == 2 and "needs --ref-set" in missing.output


def test_what_a_ref_set_walk_passes_over_is_named_in_a_warning(hq, tmp_path, monkeypatch):
    """FID's reference statistics were computed without a --ref-set's broken links and folder links
    up to itself, and nothing said so."""
    import shutil

    from facerestore.metrics import fid as fid_module
    from facerestore.metrics import niqe as niqe_module

    monkeypatch.setattr(niqe_module, "niqe", lambda image, **kw: float(np.mean(image)))
    monkeypatch.setattr(fid_module, "load_inception", lambda *a, **kw: (lambda batch: batch.mean(dim=(2, 3))))
    lq, ref = tmp_path / "lq", tmp_path / "ref"
    write_image(lq / "a.png", pattern(0))
    write_image(lq / "b.png", pattern(1))  # FID needs 2 images per set
    shutil.copytree(hq, ref)
    (ref / "gone.png").symlink_to(tmp_path / "nothing.png")
    (ref / "up").symlink_to(tmp_path)
    result = run("--lq", lq, "-m", "brighten", "--ref-set", ref, "-o", tmp_path / "report", "-q")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: --ref-set: skipped {ref / 'up'}: links to {tmp_path}, which holds {ref}: following it would search "
                        f"outside {ref} and loop back into it (link to the folders you want instead)",
                        f"warning: --ref-set: skipped {ref / 'gone.png'}: is a broken link (its target does not exist)"], result.output


def test_a_ref_set_folder_is_walked_and_read_once_for_every_row_and_set(hq, tmp_path, monkeypatch):
    """The --ref-set folder was listed by the check, again for the run's warnings and again by FID for
    each row of each set, and its images went through the feature net each time: with input + 2
    methods in 2 tables, a folder of 70 000 FFHQ faces was listed 8 times and read 6. Now once each."""
    from facerestore import image_io
    from facerestore.evaluation import runner as runner_module
    from facerestore.metrics import fid as fid_module

    ref = tmp_path / "ref"
    for i in range(3):
        write_image(ref / f"r{i}.png", pattern(10 + i, 64))  # 64x64: told apart from the 512 crops below
    walks, reference_reads = [], []
    real_list = image_io.list_images

    def listing(inputs, *args, **kwargs):
        walks.extend(p for p in map(Path, inputs) if p == ref)
        return real_list(inputs, *args, **kwargs)

    def extractor(batch):
        reference_reads.extend([1] * len(batch) if batch.shape[-1] == 64 else [])
        return batch.mean(dim=(2, 3))

    monkeypatch.setattr(image_io, "list_images", listing)
    monkeypatch.setattr(runner_module, "list_images", listing)
    monkeypatch.setattr(fid_module, "load_inception", lambda *a, **kw: extractor)
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity,brighten", "--degrade", "mild,medium", "--metrics", "psnr", "--ref-set", ref, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert len(walks) == 1 and len(reference_reads) == 3
    data = results(out)
    for preset in ("mild", "medium"):
        for label, folder in (("input", out / "inputs" / preset), ("brighten", out / "restored" / "brighten" / preset)):
            expected = fid_module.fid(folder, ref, extractor=lambda b: b.mean(dim=(2, 3)))
            assert row(data, preset, label)["metrics"]["fid"]["value"] == pytest.approx(expected, rel=1e-9)


def test_lq_given_as_a_relative_path_links_and_lists_files_that_exist(hq, tmp_path, monkeypatch):
    from facerestore.metrics import niqe as niqe_module

    monkeypatch.setattr(niqe_module, "niqe", lambda image, **kw: float(np.mean(image)))
    write_image(tmp_path / "lq" / "a.png", pattern(0))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report"
    result = run("--lq", "lq", "-m", "identity", "-o", "report", "-q")
    assert result.exit_code == 0, result.output
    (image,) = results(out)["sets"][0]["images"]
    for file in image["files"].values():  # absolute, or relative to the report folder
        assert Path(file).is_absolute() or (out / file).is_file(), image["files"]
    assert Path(image["files"]["input"]) == (tmp_path / "lq" / "a.png").resolve()
    links = re.findall(r'href="([^"]+)"', (out / "index.html").read_text())
    assert links and all((out / html.unescape(link)).is_file() for link in links), links


def test_html_links_of_names_with_url_characters_reach_their_files(tmp_path):
    hq = tmp_path / "hq"
    for i, name in enumerate(("face #1", "50% off?", "é & <b>")):
        write_image(hq / f"{name}.png", pattern(i))
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    links = re.findall(r'(?:href|src)="([^"]+)"', (out / "index.html").read_text())
    assert len(links) >= 6
    for link in links:  # what a browser does: split off '?' and '#', then percent-decode
        path = urllib.parse.unquote(urllib.parse.urlsplit(html.unescape(link)).path)
        assert (out / path).is_file(), link


# ------------------------------------------------------------------ real faces (../shared)


@pytest.mark.shared
def test_real_faces_are_resized_and_landmarks_found(shared_data, tmp_path, tiny_baseline):
    hq = tmp_path / "hq"
    hq.mkdir()
    source = sorted((shared_data / "faces-hq" / "celeba-hq").glob("*.jpg"))[0]
    (hq / source.name).write_bytes(source.read_bytes())
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "baseline", "--weights", tiny_baseline, "--degrade", "mild", "--metrics", "psnr,lmd", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    data = results(out)
    assert row(data, "mild", "baseline")["metrics"]["lmd"]["status"] == "ok"
    assert row(data, "mild", "input")["metrics"]["lmd"]["mean"] < 20.0  # mild blur barely moves the landmarks
    assert "resized from 1024x1024 to 512x512 (area)" in data["sets"][0]["images"][0]["notes"][0]
    assert "1 of 1 image was not 512x512 and was resized" in data["notes"][0]


# ------------------------------------------------------------------ options


def test_every_evaluate_option_has_help_text():
    import inspect
    from typing import get_type_hints

    from facerestore.cli.evaluate import evaluate_command

    hints = get_type_hints(evaluate_command, include_extras=True)
    for name in inspect.signature(evaluate_command).parameters:
        assert hints[name].__metadata__[0].help, f"--{name} has no help"
    result = runner.invoke(app, ["evaluate", "-h"])
    assert result.exit_code == 0 and "--authenticity" in result.output


def test_default_metrics_per_mode(tmp_path):
    from facerestore.evaluation.runner import EvalSpec, resolve_spec

    for i in range(2):  # --ref-set is checked: it must hold 2 images
        write_image(tmp_path / f"face{i}.png", pattern(i, 32))

    hq = resolve_spec(EvalSpec(methods=("baseline",), hq=tmp_path))
    assert hq.metrics == ("psnr", "ssim", "lpips", "identity", "lmd") and hq.degradations == ("medium",)
    assert resolve_spec(EvalSpec(methods=("baseline",), lq=tmp_path, ref_set=tmp_path)).metrics == ("niqe", "fid")
    assert resolve_spec(EvalSpec(methods=("baseline",), hq=tmp_path, authenticity=True)).degradations == ()
    assert resolve_spec(EvalSpec(methods=("baseline",), hq=tmp_path, metrics=("psnr",), ref_set=tmp_path)).metrics == ("psnr", "fid")


def test_weights_go_to_the_method_they_name():
    from facerestore.cli.evaluate import method_weights
    from facerestore.errors import UsageError

    assert method_weights(["baseline"], ["/a/b.safetensors"]) == {"baseline": "/a/b.safetensors"}
    assert method_weights(["baseline", "difface"], ["difface:prior=p.pth,swinir=s.pth", "baseline:C:/w.st"]) == {
        "difface": "prior=p.pth,swinir=s.pth",
        "baseline": "C:/w.st",
    }
    with pytest.raises(UsageError, match="twice"):
        method_weights(["baseline"], ["a", "baseline:b"])


def test_weights_for_a_method_that_is_not_evaluated_say_so(hq, tmp_path, monkeypatch):
    """`-m codeformer --weights dr2:FILE` read 'dr2:FILE' as a path ("no such file"), and `-m dr2,codeformer
    --weights idm:FILE` asked for METHOD:FILE, which is what was written. A file whose name starts with
    a method's name and a colon is still a file."""
    from facerestore.cli.evaluate import method_weights
    from facerestore.errors import UsageError

    for methods, value in ((["codeformer"], "dr2:/w/x.pth"), (["dr2", "codeformer"], "idm:/w/x.pth")):
        with pytest.raises(UsageError) as caught:
            method_weights(methods, [value])
        assert str(caught.value) == f"--weights {value}: {value.partition(':')[0]} is not among the evaluated methods ({', '.join(methods)})"
        assert caught.value.hint.startswith(f"add {value.partition(':')[0]} to --method")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "idm:old.safetensors").write_bytes(b"x")
    assert method_weights(["baseline"], ["idm:old.safetensors"]) == {"baseline": "idm:old.safetensors"}
    assert method_weights(["baseline"], ["C:/w.st"]) == {"baseline": "C:/w.st"}
    result = run("--hq", hq, "-m", "baseline", "--weights", "dr2:/w/x.pth", "-o", tmp_path / "r")
    assert result.exit_code == 2 and "--weights dr2:/w/x.pth: dr2 is not among the evaluated methods (baseline)" in result.output


def test_a_link_to_a_folder_above_the_inputs_is_named_and_not_evaluated(hq, tmp_path):
    """hq/up -> .. made evaluate read every image beside --hq (an earlier report's grids included) as inputs."""
    write_image(tmp_path / "beside" / "x.png", np.zeros((512, 512, 3), np.float32))
    (hq / "up").symlink_to("..")
    out = tmp_path / "report"
    result = run("--hq", hq, "-m", "identity", "--metrics", "psnr", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith(f"warning: skipped {hq / 'up'}: links to {tmp_path.resolve()}, which holds {hq}:")
    data = results(out)
    assert all(s["images_total"] == 2 for s in data["sets"]) and not any("up/" in i["key"] for s in data["sets"] for i in s["images"])


def test_the_report_states_the_method_options_that_ran(hq, tmp_path, monkeypatch):
    """`-m difface --steps 1` wrote "then 100 DDIM steps (eta 0.5)" (INFO.summary's defaults) and no
    options; results.json and index.md now say what ran, defaults filled in."""
    from facerestore.methods.difface import DifFaceMethod, DifFaceNets
    from helpers import StandInLearnedRange, StandInResidual

    from facerestore.methods import registry

    built = registry.build_method
    monkeypatch.setattr(registry, "build_method", lambda name, options: DifFaceMethod(
        options, nets=DifFaceNets(StandInLearnedRange(), StandInResidual(), size=64)) if name == "difface" else built(name, options))
    out = tmp_path / "r"
    result = run("--hq", hq, "-m", "difface", "--steps", "1", "--metrics", FAST, "--limit", "1", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    methods = results(out)["methods"]
    assert methods["difface"]["summary"] == "DifFace (Yue & Loy 2024): SwinIR estimate diffused to t=400, then 1 DDIM step (eta 0.5) of a 512 FFHQ diffusion prior"
    assert methods["difface"]["options"] == {"steps": 1, "eta": 0.5, "start": 400, "precision": "fp32"}
    line = next(line for line in (out / "index.md").read_text().splitlines() if line.startswith("- **difface**"))
    assert "then 1 DDIM step (eta 0.5) of" in line and "; options: steps 1, eta 0.5, start 400, precision fp32" in line


def test_each_method_says_the_options_it_runs_with():
    """What `methods.NAME.options` records: the values the plan holds, defaults filled in."""
    from facerestore.methods.base import MethodOptions, run_options, run_summary
    from facerestore.methods.codeformer import CodeFormerMethod
    from facerestore.methods.idm import IDMMethod
    from test_dr2 import stand_in as dr2

    assert run_options(dr2()) == {"preset": "medium", "n": 8, "tau": 35, "enhancer": True}
    assert run_options(dr2(dr2_preset="mild", no_enhancer=True)) == {"preset": "mild", "n": 4, "tau": 22, "enhancer": False}
    assert run_options(dr2(dr2_tau=30)) == {"preset": None, "n": 8, "tau": 30, "enhancer": True}
    assert run_options(dr2(dr2_auto=True))["candidates"] == [[4, 22], [8, 35], [16, 35]]
    codeformer = object.__new__(CodeFormerMethod)  # the net is not what is asked about
    codeformer.fidelity = 0.7
    assert run_options(codeformer) == {"fidelity": 0.7}
    idm = IDMMethod(MethodOptions(steps=4))  # the bundled model
    assert run_options(idm) == {"steps": 4} and run_summary(idm).endswith("x0 regression, 4 DDPM steps")


def test_every_method_option_goes_to_the_evaluated_methods_that_take_it(hq, tmp_path, monkeypatch):
    """evaluate took only --steps and -w: `-m difface --eta 0.2` was "No such option", and dr2 ran
    only at its medium preset. Each option now reaches the methods whose knobs list it, and no other."""
    from facerestore.methods import registry

    seen = {}

    def capture(name, options):
        seen[name] = options
        return Identity()

    monkeypatch.setattr(registry, "build_method", capture)
    result = run("--hq", hq, "-m", "difface,dr2,codeformer", "--eta", "0.2", "--start", "300", "--dr2-preset", "severe", "--no-enhancer",
                 "-w", "0.7", "--steps", "3", "--metrics", FAST, "--limit", "1", "-o", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output
    picked = {name: {k: v for k, v in vars(o).items() if k in registry.METHOD_SPECIFIC and v not in (None, False)} for name, o in seen.items()}
    assert picked == {"difface": {"eta": 0.2, "start": 300, "steps": 3}, "dr2": {"dr2_preset": "severe", "no_enhancer": True}, "codeformer": {"fidelity": 0.7}}


def test_a_method_option_no_evaluated_method_takes_is_refused_before_any_model_loads(hq, tmp_path, monkeypatch):
    from facerestore.cli.evaluate import route_method_options
    from facerestore.cli.method_options import method_knobs
    from facerestore.errors import UsageError
    from facerestore.methods import registry

    monkeypatch.setattr(registry, "build_method", lambda name, options: pytest.fail("a model loaded before the options were checked"))
    for flag, value in (("--eta", "0.2"), ("--start", "300"), ("--dr2-n", "4"), ("--dr2-tau", "20"), ("--dr2-auto", None), ("--no-enhancer", None)):
        result = run("--hq", hq, "-m", "codeformer", flag, *([value] if value else []), "-o", tmp_path / "r")
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [f"error: {flag} is not used by codeformer; it is an option of {'difface' if flag in ('--eta', '--start') else 'dr2'}; "
                                                      f"drop {flag}, or add --method {'difface' if flag in ('--eta', '--start') else 'dr2'}"]
    none = dict.fromkeys(("steps", "fidelity", "eta", "start", "dr2_n", "dr2_tau", "dr2_preset"))
    knobs = method_knobs(**none, dr2_auto=False, no_enhancer=False)
    assert route_method_options(["idm", "dr2"], knobs | {"steps": 4, "dr2_auto": True}) == {"idm": {"steps": 4}, "dr2": {"dr2_auto": True}}
    with pytest.raises(UsageError, match="--steps is not used by dr2, codeformer; it is an option of idm, difface"):
        route_method_options(["dr2", "codeformer"], knobs | {"steps": 4})


def test_the_report_records_the_difface_and_dr2_options_given(hq, tmp_path, monkeypatch):
    """What `methods.NAME.options` says is what ran with --eta/--start and --dr2-preset/--no-enhancer."""
    from facerestore.methods import registry
    from facerestore.methods.difface import DifFaceMethod, DifFaceNets
    from test_dr2 import stand_in as dr2
    from helpers import StandInLearnedRange, StandInResidual

    def stand_ins(name, options):
        if name == "difface":
            return DifFaceMethod(options, nets=DifFaceNets(StandInLearnedRange(), StandInResidual(), size=64))
        return dr2(**{k: getattr(options, k) for k in ("dr2_preset", "no_enhancer")})

    monkeypatch.setattr(registry, "build_method", stand_ins)
    out = tmp_path / "r"
    result = run("--hq", hq, "-m", "difface", "-m", "dr2", "--eta", "0.2", "--start", "300", "--steps", "1", "--dr2-preset", "severe", "--no-enhancer",
                 "--metrics", FAST, "--limit", "1", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    methods = results(out)["methods"]
    assert methods["difface"]["options"] == {"steps": 1, "eta": 0.2, "start": 300, "precision": "fp32"}
    assert methods["dr2"]["options"] == {"preset": "severe", "n": 16, "tau": 35, "enhancer": False, "precision": "fp32"}


def test_a_bad_option_value_of_any_method_is_refused_before_the_first_method_loads(hq, tmp_path, monkeypatch):
    """Each method checked its values while it was built, one after another: `-m codeformer,idm --steps 0`
    stopped at codeformer's missing weights (exit 1), and `-m difface,dr2 --dr2-preset nope` said the
    bad preset only after difface had loaded. Every method's rules now run before any of them loads."""
    from facerestore.methods import registry

    monkeypatch.setattr(registry, "build_method", lambda name, options: pytest.fail(f"{name} loaded before the options were checked"))
    for args, line in (
        (("-m", "codeformer,idm", "--steps", "0"), "error: --steps must be between 1 and 1000 for idm (the paper uses 10), got 0"),
        (("-m", "difface,dr2", "--dr2-preset", "nope"), "error: --dr2-preset 'nope' is not a preset; use one of mild, medium, severe"),
        (("-m", "dr2,difface", "--steps", "7"), "error: --steps 7 does not divide --start 400"),
        (("-m", "idm,codeformer", "-w", "2"), "error: --fidelity must be in [0,1], got 2.0"),
    ):
        result = run("--hq", hq, *args, "-o", tmp_path / "r")
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[0].startswith(line), result.output
        assert not (tmp_path / "r").exists()


def test_a_refused_method_option_is_refused_before_the_ref_set_folder_is_read(hq, tmp_path, monkeypatch):
    """`resolve_spec` lists a --ref-set folder (70 000 faces for FFHQ) before the refusal of an option no
    evaluated method takes, or of a bad value, which needs no folder: both now come first."""
    from facerestore.evaluation import runner

    monkeypatch.setattr(runner, "list_ref_set", lambda folder: pytest.fail("--ref-set was read before the method options were checked"))
    for args, line in (
        (("-m", "codeformer", "--eta", "0.2"), "error: --eta is not used by codeformer; it is an option of difface"),
        (("-m", "idm", "--steps", "0"), "error: --steps must be between 1 and 1000 for idm"),
    ):
        result = run("--hq", hq, *args, "--ref-set", hq, "-o", tmp_path / "r")
        assert result.exit_code == 2, result.output
        assert result.output.startswith(line), result.output


def test_an_enhancer_file_with_no_enhancer_and_a_bad_precision_are_refused_before_any_method_loads(hq, tmp_path, monkeypatch):
    """DR2's enhancer= file beside --no-enhancer was refused while dr2's nets loaded, and a --precision the
    device cannot run while its method was built: both after the methods before it had loaded. Both are
    now refused with the other option checks, before any method loads, the precision before --ref-set is
    read too, on the device the run resolves (--device auto is the CPU here)."""
    from facerestore.evaluation import runner as eval_runner
    from facerestore.methods import registry

    monkeypatch.setattr(registry, "build_method", lambda name, options: pytest.fail(f"{name} loaded before the options were checked"))
    monkeypatch.setattr(eval_runner, "list_ref_set", lambda folder: pytest.fail("--ref-set was read before the method options were checked"))
    assert not torch.cuda.is_available()
    result = run("--hq", hq, "-m", "idm,dr2", "--no-enhancer", "--weights", "dr2:enhancer=x.pth", "-o", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --weights names an enhancer= file, but --no-enhancer skips the enhancer"), result.output
    for args, line in (
        (("-m", "idm,codeformer", "--precision", "fp16"), "error: --precision fp16 needs a CUDA GPU"),
        (("-m", "baseline", "--precision", "fp16", "--device", "cpu"), "error: --precision fp16 needs a CUDA GPU"),
        (("-m", "idm", "--precision", "fp64"), "error: --precision 'fp64' is not a precision"),
    ):
        result = run("--hq", hq, *args, "--ref-set", hq, "-o", tmp_path / "r")
        assert result.exit_code == 2, result.output
        assert result.output.startswith(line), result.output


def test_a_bad_weights_list_is_refused_before_the_ref_set_folder_is_read(hq, tmp_path, monkeypatch):
    """--weights was split by method and its ROLE= lists checked after `resolve_spec` had listed the
    --ref-set folder (70 000 faces for FFHQ); neither reads a weights file, so both now come first."""
    from facerestore.evaluation import runner as eval_runner
    from facerestore.methods import registry

    monkeypatch.setattr(registry, "build_method", lambda name, options: pytest.fail(f"{name} loaded before --weights was checked"))
    monkeypatch.setattr(eval_runner, "list_ref_set", lambda folder: pytest.fail("--ref-set was read before --weights was checked"))
    for args, line in (
        (("-m", "idm,dr2", "--weights", "x.pth"), "error: --weights 'x.pth': with several --method, say which one it is for"),
        (("-m", "idm", "--weights", "dr2:x.pth"), "error: --weights dr2:x.pth: dr2 is not among the evaluated methods (idm)"),
        (("-m", "difface", "--weights", "nope=x.pth"), "error: --weights 'nope=x.pth': unknown role 'nope'"),
        (("-m", "codeformer", "--weights", "prior=x.pth"), "error: --weights prior=x.pth: method 'codeformer' has no weights role 'prior'"),
        (("-m", "idm,dr2", "--no-enhancer", "--weights", "dr2:enhancer=x.pth"), "error: --weights names an enhancer= file, but --no-enhancer skips the enhancer"),
    ):
        result = run("--hq", hq, *args, "--ref-set", hq, "-o", tmp_path / "r")
        assert result.exit_code == 2, result.output
        assert result.output.startswith(line), result.output


def test_the_dr2_summary_says_the_settings_that_ran(hq, tmp_path, monkeypatch):
    """With --no-enhancer, `methods.dr2.summary` said "then SPARNetHD enhances to 512" (INFO.summary's fixed
    text) and never named N, tau or --dr2-auto; DR2Method.describe() now says what ran."""
    from facerestore.methods import registry
    from facerestore.methods.base import run_summary
    from test_dr2 import stand_in as dr2

    assert run_summary(dr2()) == ("DR2 (Wang et al. 2023): a 64 DDPM removes degradation (low-pass N=8, 26 DDPM steps from t=605, "
                                  "stopped early at tau=35, t=353), then SPARNetHD enhances to 128")
    auto = run_summary(dr2(dr2_auto=True))
    assert "chosen per face among (4, 22), (8, 35), (16, 35)" in auto and "(--dr2-auto)" in auto

    monkeypatch.setattr(registry, "build_method", lambda name, options: dr2(**{k: getattr(options, k) for k in ("dr2_preset", "dr2_tau", "no_enhancer")}))
    out = tmp_path / "r"
    result = run("--hq", hq, "-m", "dr2", "--dr2-preset", "mild", "--dr2-tau", "30", "--no-enhancer", "--metrics", FAST, "--limit", "1", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    summary = results(out)["methods"]["dr2"]["summary"]
    assert summary == ("DR2 (Wang et al. 2023): a 64 DDPM removes degradation (low-pass N=4, 21 DDPM steps from t=505, "
                       "stopped early at tau=30, t=303), then upsampled to 128 without the SPARNetHD enhancer")
    for page in ("index.md", "index.html"):
        text = (out / page).read_text()
        assert "without the SPARNetHD enhancer" in text and "SPARNetHD enhances" not in text, page
