"""`facerestore clean-dataset`: same tree and formats out, resumable after kill -9 with no partial file,
per-file seeds (so batching and sharding do not change results), torchrun shards, --check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.image_io import read_image, write_image
from facerestore.methods import idm as idm_module
from facerestore.methods.idm import save_model
from facerestore.nets.idm_unet import IDMUNet, idm_unet_config
from facerestore.training.clean_dataset import STATE_DIR
from helpers import assert_all_ranks_stopped_with, torchrun

pytestmark = pytest.mark.usefixtures("one_thread")

register()
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = IDMUNet(idm_unet_config("tiny", 32))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.03)
    return save_model(net, tmp_path_factory.mktemp("idm") / "idm.safetensors", 32)


def face(i: int, h: int, w: int | None = None) -> np.ndarray:
    w = w or h
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    return np.clip(np.stack([0.5 + 0.35 * np.sin(7 * x + i), 0.5 + 0.3 * np.cos(5 * y - i), 0.4 + 0.3 * x * y], -1), 0, 1).astype(np.float32)


@pytest.fixture
def dataset(tmp_path) -> Path:
    src = tmp_path / "src"
    write_image(src / "a.png", face(0, 48))
    write_image(src / "sub" / "b.jpg", face(1, 40, 41))  # a pixel off square: rounding, still an aligned crop
    write_image(src / "sub" / "gray.png", face(2, 36), gray=True)
    write_image(src / "deep" / "c16.png", face(3, 32), bit_depth=16)
    write_image(src / "deep" / "alpha.png", face(4, 32), alpha=np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32))
    return src


def clean(*args, check_exit: int | None = 0):
    result = runner.invoke(app, ["clean-dataset", *[str(a) for a in args]], catch_exceptions=False)
    if check_exit is not None:
        assert result.exit_code == check_exit, result.output
    return result


def summary(*args) -> dict:
    return json.loads(clean(*args, "--json").stdout)


def manifest(out: Path) -> list[dict]:
    """The manifests' records; a line still being written (read while the run appends) is not one yet."""
    lines = []
    for path in sorted((out / STATE_DIR).glob("done-rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def visible_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def test_every_image_is_restored_into_the_same_tree_and_format(dataset, tmp_path, model):
    out = tmp_path / "out"
    s = summary(dataset, "--out", out, "--weights", model, "--steps", "2", "--check", "--device", "cpu")
    assert (s["total"], s["done"], s["failed"], s["skipped"], s["complete"]) == (5, 5, 0, 0, 5)
    assert visible_files(out) == visible_files(dataset)
    for rel in visible_files(dataset):
        before, after = read_image(dataset / rel), read_image(out / rel)
        assert after.rgb.shape == before.rgb.shape
        assert (after.gray, after.bit_depth, after.alpha is None) == (before.gray, before.bit_depth, before.alpha is None)
        assert not np.array_equal(after.rgb, before.rgb)  # it was restored, not copied
    np.testing.assert_allclose(read_image(out / "deep" / "alpha.png").alpha, read_image(dataset / "deep" / "alpha.png").alpha, atol=1 / 255)
    entries = manifest(out)
    assert sorted(e["path"] for e in entries) == visible_files(dataset) and all(e["status"] == "ok" for e in entries)
    c = s["check"]
    assert c["count"] == 5 and c["worst_psnr"] <= c["mean_psnr"] < 99 and c["worst_path"] in visible_files(dataset)
    expected = min(entries, key=lambda e: e["psnr"])
    assert c["worst_path"] == expected["path"]
    text = clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--check", "--device", "cpu")
    assert "0 restored, 0 failed, 5 already done" in text.output and "authenticity" in text.output


def test_results_depend_only_on_each_file_and_the_seed(dataset, tmp_path, model):
    """Batching and order do not change a file's output: what makes sharding and resuming safe."""
    one, three = tmp_path / "one", tmp_path / "three"
    clean(dataset, "--out", one, "--weights", model, "--steps", "2", "-b", "1", "--device", "cpu", "-q")
    clean(dataset, "--out", three, "--weights", model, "--steps", "2", "-b", "3", "--limit", "2", "--device", "cpu", "-q")
    s = summary(dataset, "--out", three, "--weights", model, "--steps", "2", "-b", "3", "--device", "cpu")
    assert (s["done"], s["skipped"]) == (3, 2)
    for rel in visible_files(dataset):
        a, b = read_image(one / rel).rgb, read_image(three / rel).rgb
        assert np.abs(a - b).max() <= 1 / 255 + 1e-6, rel  # equal up to the last 8-bit level (float sums differ by batch)
    other = tmp_path / "seed1"
    clean(dataset, "--out", other, "--weights", model, "--steps", "2", "--seed", "1", "--device", "cpu", "-q")
    assert any(not np.array_equal(read_image(one / r).rgb, read_image(other / r).rgb) for r in visible_files(dataset))


def test_bad_files_fail_one_line_each_and_are_retried(dataset, tmp_path, model):
    (dataset / "broken.png").write_bytes(b"junk")
    out = tmp_path / "out"
    result = clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu", check_exit=1)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert "5 restored, 1 failed" in result.output
    again = clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu", check_exit=1)
    assert "0 restored, 1 failed, 5 already done" in again.output
    done = sorted(p for p in out.rglob("*.png"))[0]
    done.unlink()  # listed as done, deleted since: redone, not counted as complete
    third = clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu", check_exit=1)
    assert "1 restored, 1 failed, 4 already done" in third.output and done.is_file()


def test_outputs_whose_source_is_gone_are_kept_and_said(dataset, tmp_path, model):
    """A source moved out of SRC left its output in DST without a word ('4 of 4 complete'); it is
    never deleted (it may be all that is left of it), but the summary counts it, names one, and --json lists them."""
    out = tmp_path / "out"
    args = ("--out", out, "--weights", model, "--steps", "2", "--device", "cpu")
    clean(dataset, *args)
    (dataset / "sub" / "b.jpg").rename(tmp_path / "b.jpg")
    (dataset / "a.png").unlink()
    again = clean(dataset, *args)
    assert "0 restored, 0 failed, 3 already done; 3 of 3 complete" in again.output
    assert f"2 outputs in {out} have no source any more (e.g. {out / 'a.png'}); they are kept" in again.output
    assert (out / "a.png").is_file() and (out / "sub" / "b.jpg").is_file()
    (out / "a.png").unlink()  # what the user removed is not counted
    assert summary(dataset, *args)["no_source"] == ["sub/b.jpg"]
    one = clean(dataset, *args)
    assert f"1 output in {out} has no source any more ({out / 'sub' / 'b.jpg'}); it is kept" in one.output
    limited = summary(dataset, *args, "--limit", "1")  # --limit leaves files out of this run, not out of SRC
    assert limited["no_source"] == ["sub/b.jpg"]


def write_manifest(path: Path, entries: list[dict], torn: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + torn)


def test_manifests_merge_by_recency_not_by_rank_file(tmp_path):
    """Rank files are read in rank order, which says nothing about which entry is newer."""
    from facerestore.training.clean_dataset import _read_manifests

    write_manifest(tmp_path / "done-rank0.jsonl", [
        {"path": "old", "status": "ok"}, {"path": "old-retry", "status": "failed"},  # written before runs were numbered
        {"path": "newer-here", "status": "ok", "run": 2}, {"path": "older-here", "status": "ok", "run": 1},
        {"path": "same-file", "status": "ok", "run": 1}, {"path": "same-file", "status": "failed", "run": 1},
    ])
    write_manifest(tmp_path / "done-rank1.jsonl", [
        {"path": "old", "status": "failed"}, {"path": "old-retry", "status": "ok"},
        {"path": "newer-here", "status": "failed", "run": 1}, {"path": "older-here", "status": "failed", "run": 2},
    ], torn='{"path": "old", "stat')
    merged = {p: e["status"] for p, e in _read_manifests(tmp_path).items()}
    assert merged == {"old": "ok", "old-retry": "ok", "newer-here": "ok", "older-here": "failed", "same-file": "failed"}


def test_a_file_failed_on_another_rank_and_restored_by_a_rerun_stays_done(dataset, tmp_path, model):
    """A 2-process run failed sub/b.jpg on rank 1; the rerun with 1 process restores it into rank 0's
    manifest, which is read before rank 1's: the file must count as done, and not be redone again."""
    out = tmp_path / "out"
    write_manifest(out / STATE_DIR / "done-rank1.jsonl", [{"path": "sub/b.jpg", "status": "failed", "seconds": 0.1, "error": "cut file"}])
    args = (dataset, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu")
    first = summary(*args)
    assert (first["done"], first["skipped"], first["complete"]) == (5, 0, 5)
    again = summary(*args)
    assert (again["done"], again["skipped"], again["complete"]) == (0, 5, 5)
    assert [e["run"] for e in manifest(out) if "run" in e] == [1] * 5  # each entry says which run wrote it


def test_a_mistyped_option_does_not_lock_the_folder_to_its_settings(dataset, tmp_path, model):
    out = tmp_path / "out"
    assert "unknown method" in clean(dataset, "--out", out, "--method", "nope", check_exit=2).output
    clean(dataset, "--out", out, "--weights", tmp_path / "typo.safetensors", "--steps", "2", check_exit=2)  # a missing weights file is a usage error
    clean(dataset, "--out", out, "--weights", model, "--steps", "0", check_exit=2)
    clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu", "--limit", "1", "-q")  # the corrected run


def test_a_non_square_image_is_not_an_aligned_face(dataset, tmp_path, model):
    """Stretching a 4:3 photo to 512x512 and back restores a distorted face; --detect is the mode for photos."""
    write_image(dataset / "photo.png", face(5, 30, 40))
    out = tmp_path / "out"
    result = clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu", check_exit=1)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "photo.png: 40x30 is not a square aligned face crop" in errors[0] and "--detect" in errors[0]
    assert "5 restored, 1 failed" in result.output and not (out / "photo.png").exists()


def test_usage_errors(dataset, tmp_path, model, monkeypatch):
    out = tmp_path / "out"
    clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--limit", "1", "--device", "cpu", "-q")
    other = clean(dataset, "--out", out, "--weights", model, "--steps", "3", "--device", "cpu", check_exit=2)
    assert "other settings" in other.output and "steps: 2 -> 3" in other.output
    retrained = tmp_path / "retrained.safetensors"  # the same file name and size, other weights
    retrained.write_bytes(Path(model).read_bytes())
    clean(dataset, "--out", tmp_path / "r", "--weights", retrained, "--steps", "2", "--limit", "1", "--device", "cpu", "-q")
    data = bytearray(retrained.read_bytes())
    data[-2] ^= 0x01
    retrained.write_bytes(bytes(data))
    mixed = clean(dataset, "--out", tmp_path / "r", "--weights", retrained, "--steps", "2", "--device", "cpu", check_exit=2)
    assert "other settings (weights: " in mixed.output and "(sha256 " in mixed.output
    assert "inside" in clean(dataset, "--out", dataset / "clean", "--weights", model, check_exit=2).output
    assert "is used only with --detect" in clean(dataset, "--out", tmp_path / "d", "--detector", "bundled", check_exit=2).output
    assert "does not exist" in clean(tmp_path / "nowhere", "--out", out, check_exit=2).output
    (tmp_path / "empty").mkdir()
    assert "holds no images" in clean(tmp_path / "empty", "--out", tmp_path / "o", check_exit=2).output
    monkeypatch.setattr(idm_module, "bundled_weights", lambda: tmp_path / "idm.safetensors")  # an install without the bundled model
    missing = clean(dataset, "--out", tmp_path / "o2", "--device", "cpu", check_exit=1)
    assert "facerestore train" in missing.output and len([l for l in missing.output.splitlines() if l.startswith("error:")]) == 1


def test_an_out_that_holds_the_dataset_is_refused_before_the_model_loads(dataset, tmp_path):
    """DST/<relative path> with DST above SRC lands beside SRC: SRC/a.png would replace the user's
    own a.png there. One line, exit 2, before the (missing) weights are even looked at."""
    mine = write_image(tmp_path / "a.png", face(9, 48))
    before = mine.read_bytes()
    refused = clean(dataset, "--out", tmp_path, "--weights", tmp_path / "nosuch.safetensors", check_exit=2)
    assert f"--out {tmp_path} holds the dataset {dataset}" in refused.output
    assert len([line for line in refused.output.splitlines() if line.strip()]) == 1
    assert mine.read_bytes() == before and not (tmp_path / STATE_DIR).exists() and not (tmp_path / "sub").exists()


def test_an_out_that_is_the_dataset_says_so(dataset, tmp_path):
    """`-o ds` for the dataset ds said '--out ds lies inside the dataset ds'."""
    same = clean(dataset, "--out", dataset, "--weights", tmp_path / "nosuch.safetensors", check_exit=2)
    assert f"--out {dataset} is the dataset {dataset};" in same.output
    inside = clean(dataset, "--out", dataset / "cl", "--weights", tmp_path / "nosuch.safetensors", check_exit=2)
    assert f"--out {dataset / 'cl'} lies inside the dataset {dataset};" in inside.output


def test_detect_mode_copies_photos_without_faces_through(tmp_path, tiny_baseline):
    src = tmp_path / "photos"
    wall = face(5, 96, 128)
    write_image(src / "wall.jpg", wall, jpeg_quality=70)
    s = summary(src, "--out", tmp_path / "out", "--detect", "--method", "baseline", "--weights", tiny_baseline, "--check", "--device", "cpu")
    assert (s["done"], s["no_face"], s["failed"]) == (1, 1, 0)
    assert (tmp_path / "out" / "wall.jpg").read_bytes() == (src / "wall.jpg").read_bytes()  # copied, not re-encoded
    assert manifest(tmp_path / "out")[0]["status"] == "no-face"
    assert s["check"] is None or s["check"]["count"] == s["done"] - s["no_face"]  # a photo copied through is not scored
    line = clean(src, "--out", tmp_path / "again", "--detect", "--method", "baseline", "--weights", tiny_baseline, "--device", "cpu").output
    assert "0 restored, 0 failed" in line and "1 photo without a face copied through" in line


def test_a_file_read_only_in_part_gets_one_warning_line_and_its_manifest_entry_keeps_it(tmp_path, model, tiny_baseline):
    """restore and degrade warned about an animation's other frames and an unusable CMYK profile;
    clean-dataset restored such files without a word. Now it prints the same line and keeps it in the
    file's manifest entry; a photo copied through unchanged (no face) has nothing to warn about."""
    from PIL import Image

    src = tmp_path / "src"
    frames = [Image.fromarray((face(i, 32) * 255).astype(np.uint8)) for i in range(3)]
    src.mkdir()
    frames[0].save(src / "pages.tif", save_all=True, append_images=frames[1:])  # GIF is not a dataset format
    frames[0].convert("CMYK").save(src / "print.jpg", icc_profile=b"not a profile" * 20)
    result = clean(src, "--out", tmp_path / "out", "--weights", model, "--steps", "2", "--device", "cpu", "-q")
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.output
    assert f"{src / 'pages.tif'} holds 3 frames; only the first is restored" in warnings[0]
    assert f"{src / 'print.jpg'}: the colour profile of its CMYK pixels cannot be used" in " ".join(result.output.split())
    entries = {e["path"]: e for e in manifest(tmp_path / "out")}
    assert [len(entries[name].get("warnings", [])) for name in ("pages.tif", "print.jpg")] == [1, 1]
    assert read_image(tmp_path / "out" / "pages.tif").frames == 1

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray((face(5, 96, 128) * 255).astype(np.uint8)).save(photos / "wall.tif", save_all=True, append_images=[f.resize((128, 96)) for f in frames[1:]])
    walls = clean(photos, "--out", tmp_path / "walls", "--detect", "--method", "baseline", "--weights", tiny_baseline, "--device", "cpu", "-q")
    assert "warning:" not in walls.output and (tmp_path / "walls" / "wall.tif").read_bytes() == (photos / "wall.tif").read_bytes()


def test_ctrl_c_says_how_to_go_on(dataset, tmp_path, monkeypatch):
    from facerestore.training import clean_dataset as module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "clean_dataset", interrupted)
    result = clean(dataset, "--out", tmp_path / "out", check_exit=130)
    assert result.output.strip() == "interrupted; the files finished so far are kept: rerun the same command to do the rest"


def run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "facerestore", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_kill_9_leaves_no_partial_file_and_a_rerun_does_only_the_rest(tmp_path, model):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(14):
        write_image(src / f"{i:02d}.png", face(i, 32 + 2 * i))
    args = ["clean-dataset", str(src), "--out", str(out), "--weights", str(model), "--steps", "10", "-b", "1", "--device", "cpu", "-q"]
    proc = run_cli(args)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / STATE_DIR).is_dir() and len(manifest(out)) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.communicate()[1]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = {e["path"] for e in manifest(out)}
    assert 3 <= len(done_at_kill) < 14
    for rel in visible_files(out):  # every visible image is complete (atomic writes)
        assert read_image(out / rel).rgb.shape[:2] == read_image(src / rel).rgb.shape[:2]

    rerun = run_cli([*args[:-1], "--json"])
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    s = json.loads(stdout)
    assert (s["skipped"], s["done"], s["complete"], s["failed"]) == (len(done_at_kill), 14 - len(done_at_kill), 14, 0)
    assert visible_files(out) == visible_files(src)
    assert not list(out.rglob("*.tmp"))  # stale temporary files were removed
    listed = [e["path"] for e in manifest(out)]
    assert set(listed) == set(visible_files(src))
    assert all(listed.count(p) == 1 for p in done_at_kill)  # nothing finished before the kill was redone


@pytest.mark.slow
def test_torchrun_ranks_share_the_files_and_match_one_process(tmp_path, model):
    src = tmp_path / "src"
    for i in range(5):
        write_image(src / f"{i}.png", face(i, 32))
    args = ["--weights", str(model), "--steps", "2", "--device", "cpu", "-q"]
    done = torchrun(["clean-dataset", src, "--out", tmp_path / "ddp", *args], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    per_rank = {p.name: [json.loads(l)["path"] for l in p.read_text().splitlines()] for p in (tmp_path / "ddp" / STATE_DIR).glob("done-rank*.jsonl")}
    assert per_rank == {"done-rank0.jsonl": ["0.png", "2.png", "4.png"], "done-rank1.jsonl": ["1.png", "3.png"]}
    clean(src, "--out", tmp_path / "single", *args)
    for rel in visible_files(src):
        a, b = read_image(tmp_path / "ddp" / rel).rgb, read_image(tmp_path / "single" / rel).rgb
        assert np.abs(a - b).max() <= 1 / 255 + 1e-6


@pytest.mark.slow
def test_torchrun_json_lists_every_ranks_failures_and_a_rerun_with_one_process_completes(tmp_path, model):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(5):
        write_image(src / f"{i}.png", face(i, 32))
    for name in ("1.png", "2.png"):  # one file of each rank fails
        (src / name).write_bytes(b"junk")
    args = ["--out", str(out), "--weights", str(model), "--steps", "2", "--device", "cpu"]
    done = torchrun(["clean-dataset", src, *args, "--json"], tmp_path)
    s = json.loads(done.stdout)  # rank 0 alone prints the summary
    assert (s["done"], s["failed"], s["complete"]) == (3, 2, 3)
    assert [path for path, _ in s["failures"]] == ["1.png", "2.png"], s["failures"]
    assert all("1.png" in error or "2.png" in error for _, error in s["failures"])

    # fixed, and redone by one process: rank 1's failure of 1.png is older than rank 0's success
    for name in ("1.png", "2.png"):
        write_image(src / name, face(int(name[0]), 32))
    s = summary(src, *args)
    assert (s["done"], s["skipped"], s["failed"], s["complete"]) == (2, 3, 0, 5)
    s = summary(src, *args)
    assert (s["done"], s["skipped"], s["failures"]) == (0, 5, [])


def test_a_full_disk_is_one_line_saying_how_to_go_on(dataset, tmp_path, monkeypatch):
    """An OSError while the manifest or the summary is written was a traceback."""
    import errno

    import facerestore.training.clean_dataset as module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / ".facerestore-clean" / "done-rank0.jsonl"))

    monkeypatch.setattr(module, "clean_dataset", full)
    result = clean(dataset, "--out", tmp_path / "out", check_exit=1)
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: cannot write ") and "done-rank0.jsonl (No space left on device)" in line
    assert "rerun the same command to do the rest" in line


def test_a_link_in_out_to_a_source_file_is_never_written_through(dataset, tmp_path, model):
    """The refusal names what clean-dataset has (--out), not restore's --suffix."""
    out = tmp_path / "out"
    out.mkdir()
    rel = visible_files(dataset)[0]
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).symlink_to(dataset / rel)
    before = (dataset / rel).read_bytes()
    result = clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu", "-q", check_exit=1)
    assert (dataset / rel).read_bytes() == before
    line = next(li for li in result.output.splitlines() if "would overwrite the input" in li)
    assert line.endswith("choose another --out folder") and "--suffix" not in line


def test_a_source_replaced_at_the_same_path_is_restored_again_and_only_it(dataset, tmp_path, model):
    """A rerun kept the output of the image that used to be at a.png as done."""
    out = tmp_path / "out"
    args = ("--weights", model, "--steps", "2", "--device", "cpu")
    first = summary(dataset, "--out", out, *args)
    assert first["done"] == 5
    old_output = (out / "a.png").read_bytes()
    write_image(dataset / "a.png", face(7, 48))  # another image at the same path
    stat = (dataset / "sub" / "b.jpg").stat()
    os.utime(dataset / "sub" / "b.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: not a change
    line = clean(dataset, "--out", out, *args).output
    assert "1 restored, 0 failed, 4 already done, 1 changed file redone; 5 of 5 complete" in line
    assert [e["path"] for e in manifest(out)].count("a.png") == 2 and [e["path"] for e in manifest(out)].count("sub/b.jpg") == 1
    clean(dataset, "--out", tmp_path / "fresh", *args, "-q")
    assert (out / "a.png").read_bytes() == (tmp_path / "fresh" / "a.png").read_bytes() != old_output
    again = summary(dataset, "--out", out, *args)
    assert (again["done"], again["skipped"], again["changed"]) == (0, 5, 0)  # the redone file is recorded with its new source

    # manifests written before sources were recorded are still read, and their files trusted
    for path in (out / STATE_DIR).glob("done-rank*.jsonl"):
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in e.items() if not k.startswith("source_")}) + "\n" for e in entries))
    write_image(dataset / "a.png", face(8, 48))
    trusted = summary(dataset, "--out", out, *args)
    assert (trusted["done"], trusted["skipped"], trusted["changed"]) == (0, 5, 0)


def test_a_second_run_into_a_folder_in_use_is_refused_and_leaves_the_first_runs_temp_files(dataset, tmp_path, model):
    """Both runs wrote, and the second one's cleanup deleted the temp file the first was writing."""
    from facerestore.training.out_lock import output_lock

    out = tmp_path / "out"
    live = out / ".a.png.k3x9q2zw.tmp"  # what the running one is writing
    with output_lock(out):
        live.write_bytes(b"half written")
        result = clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu", check_exit=2)
        assert live.read_bytes() == b"half written"
    assert result.output.strip() == f"error: {out} is being written by another run (pid {os.getpid()}); wait for it to end, or choose another --out"
    assert sorted(p.name for p in out.rglob("*")) == [live.name]  # no settings, manifest or image written


def test_clean_dataset_releases_its_lock_however_it_ends(dataset, tmp_path, model, monkeypatch):
    from facerestore.training import clean_dataset as module
    from facerestore.training.out_lock import LOCK_NAME, output_lock

    def released(out: Path) -> bool:
        with output_lock(out):
            pass
        return not (out / LOCK_NAME).exists()

    out = tmp_path / "out"
    args = ("--weights", model, "--steps", "2", "--device", "cpu", "-q")
    clean(dataset, "--out", out, *args, "--limit", "1")
    assert released(out)
    clean(dataset, "--out", out, "--weights", model, "--steps", "3", "--device", "cpu", check_exit=2)  # other settings: refused under the lock
    assert released(out)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "_clean_faces", interrupted)
    clean(dataset, "--out", out, *args, check_exit=130)
    assert released(out)


@pytest.mark.slow
def test_torchrun_into_a_folder_in_use_is_refused_on_every_rank(tmp_path, model):
    """Rank 0 holds the lock for its run; a second run's rank 0 is refused (exit 2), and its rank 1 writes nothing and exits 2 too."""
    from facerestore.training.out_lock import output_lock

    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(3):
        write_image(src / f"{i}.png", face(i, 32))
    with output_lock(out):
        done = torchrun(["clean-dataset", src, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu", "-q"], tmp_path)
        assert sorted(p.name for p in out.rglob("*")) == [".facerestore.lock"]
    assert_all_ranks_stopped_with(done, 2, f"error: {out} is being written by another run (pid {os.getpid()}); wait for it to end, or choose another --out")


def test_a_rerun_says_how_many_temp_files_it_removed_in_good_english(dataset, tmp_path, model):
    out = tmp_path / "out"
    stale = out / ".a.png.k3x9q2zw.tmp"  # a write that kill -9 cut
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    result = clean(dataset, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu")
    assert "removed 1 unfinished temporary file of an earlier run" in result.output and not stale.exists()


def test_a_broken_link_in_the_dataset_is_named_not_skipped_silently(tmp_path, model):
    src, out = tmp_path / "src", tmp_path / "out"
    write_image(src / "a.png", face(0, 32))
    (src / "gone.png").symlink_to(tmp_path / "missing.png")
    result = clean(src, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu")
    assert f"warning: skipped {src / 'gone.png'}: is a broken link (its target does not exist)" in result.output
    assert (out / "a.png").is_file() and not (out / "gone.png").exists()


def test_a_stale_output_that_cannot_be_removed_is_one_line(dataset, tmp_path, model, monkeypatch):
    out = tmp_path / "out"
    args = ("--weights", model, "--steps", "2", "--device", "cpu")
    clean(dataset, "--out", out, *args, "-q")
    write_image(dataset / "a.png", face(7, 48))  # changed: its old output must go first
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self == out / "a.png":
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    result = clean(dataset, "--out", out, *args, check_exit=1)
    assert result.output.strip().splitlines()[-1] == f"error: cannot remove {out / 'a.png'} (Permission denied); check the permissions of --out"


def test_a_link_up_or_to_dst_is_not_followed_so_a_rerun_never_cleans_its_own_outputs(tmp_path, model):
    """SRC/up -> .. led the walk out of SRC into DST beside it: the rerun restored its own outputs
    (DST/up/out/a.png), what "DST must not hold SRC" exists to prevent. The link is named and left out;
    DST is never walked, also not through a link to it."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_image(src / "a.png", face(0, 32))
    write_image(tmp_path / "beside" / "x.png", face(1, 32))
    (src / "up").symlink_to("..")
    (src / "cleaned").symlink_to(out)
    args = ("--out", out, "--weights", model, "--steps", "2", "--device", "cpu")
    first = clean(src, *args)
    assert f"warning: skipped {src / 'up'}: links to {tmp_path.resolve()}, which holds {src}: following it would search outside {src}" in first.output
    again = clean(src, *args, "--json")
    summary = json.loads(again.stdout)
    assert (summary["total"], summary["done"], summary["skipped"]) == (1, 0, 1)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png"]


@pytest.mark.parametrize("flag", ["-q", "--json"])
def test_what_the_walk_leaves_out_is_named_also_with_quiet_or_json(tmp_path, model, flag):
    """The "skipped" warnings went through the progress messages, which -q and --json silence: a
    broken link was then left out without a word (restore and degrade name it whatever the flags)."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_image(src / "a.png", face(0, 32))
    (src / "gone.png").symlink_to(tmp_path / "missing.png")
    result = clean(src, "--out", out, "--weights", model, "--steps", "2", "--device", "cpu", flag)
    assert f"warning: skipped {src / 'gone.png'}: is a broken link (its target does not exist)" in result.stderr


def test_a_batch_that_does_not_fit_in_memory_is_split_with_one_warning_and_the_same_outputs(dataset, tmp_path, model, monkeypatch):
    """Each face has its own seed, so a split batch restores every face as the whole batch would (up to
    the rounding of batched convolutions, which a 16-bit PNG shows: within one 8-bit level)."""
    from facerestore.methods import registry

    args = ("--weights", model, "--steps", "2", "--device", "cpu", "-b", "4", "-q")
    clean(dataset, "--out", tmp_path / "whole", *args)
    real_build = registry.build_method

    def small_gpu(name, options):
        method = real_build(name, options)
        real = method.restore_seeded

        def restore_seeded(batch, seeds):
            if batch.shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 3.81 GiB of which 1.10 GiB is free.")
            return real(batch, seeds)

        method.restore_seeded = restore_seeded
        return method

    monkeypatch.setattr(registry, "build_method", small_gpu)
    result = clean(dataset, "--out", tmp_path / "split", *args)
    assert [line for line in result.output.splitlines() if line.startswith(("warning:", "error:"))] == [
        "warning: out of memory restoring 4 faces at once; going on with 2 at a time (pass --batch-size 2 to start there)",
        "warning: out of memory restoring 2 faces at once; going on with 1 at a time (pass --batch-size 1 to start there)"], result.output
    for rel in visible_files(dataset):
        assert np.abs(read_image(tmp_path / "whole" / rel).rgb - read_image(tmp_path / "split" / rel).rgb).max() <= 1 / 255 + 1e-6, rel


# ------------------------------------------------------------------ what settings.json records of the model


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _settings_json(out: Path) -> dict:
    return json.loads((out / STATE_DIR / "settings.json").read_text())


@pytest.fixture(scope="module")
def difface_states():
    from test_difface import GuidedUNet, TINY_PRIOR, TINY_SWINIR, build_swinir, seeded_state

    return {"prior": seeded_state(GuidedUNet(TINY_PRIOR), 0), "swinir": seeded_state(build_swinir(TINY_SWINIR), 1),
            "other_prior": seeded_state(GuidedUNet(TINY_PRIOR), 5)}


def test_catalogue_weights_are_recorded_by_sha256_and_a_replaced_one_is_refused(dataset, tmp_path, monkeypatch, difface_states):
    """No --weights: the catalogue's copies in FACERESTORE_WEIGHTS (converted in the cache) are what ran;
    settings.json used to say "weights": null, and a rerun after the prior was replaced mixed two models."""
    from helpers import pin_catalogue_hashes
    from test_difface import save_official

    names = {"prior": "difface_prior", "swinir": "difface_swinir"}
    paths = save_official(difface_states, tmp_path / "weights")
    pin_catalogue_hashes(monkeypatch, paths, names)
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tmp_path / "weights"))
    out, args = tmp_path / "out", ("-m", "difface", "--steps", "1", "--device", "cpu", "--limit", "1", "-q")
    clean(dataset, "--out", out, *args)
    files = _settings_json(out)["files"]
    assert {role: r["sha256"] for role, r in files.items()} == {"prior": _sha(paths["prior"]), "swinir": _sha(paths["swinir"])}
    assert all(str(paths[role]) in r["path"] for role, r in files.items()) and _settings_json(out)["precision"] == "fp32"

    old = _sha(paths["prior"])
    torch.save(difface_states["other_prior"], paths["prior"])  # a new version of the catalogue's prior
    pin_catalogue_hashes(monkeypatch, paths, names)
    refused = clean(dataset, "--out", out, *args[:-3], check_exit=2)
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {out} holds a cleaning run made with other settings (weights prior: "), refused.output
    assert f"(sha256 {old[:12]}) -> " in lines[0] and f"(sha256 {_sha(paths['prior'])[:12]}))" in lines[0] and "swinir" not in lines[0]
    assert len(manifest(out)) == 1  # nothing restored with the other prior


def test_each_role_file_and_the_precision_are_recorded_and_a_change_is_refused(dataset, tmp_path, difface_states):
    """`--weights prior=A,swinir=B` was recorded as the bare string: replacing A was accepted ("1 restored
    ... 1 already done"); and --precision bf16 went into an fp32 tree."""
    from test_difface import save_official

    paths = save_official(difface_states, tmp_path / "weights")
    spec = f"prior={paths['prior']},swinir={paths['swinir']}"
    out, args = tmp_path / "out", ("-m", "difface", "--weights", spec, "--steps", "1", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--limit", "1", "-q")
    recorded = _settings_json(out)
    assert recorded["files"] == {role: {"path": str(paths[role].resolve()), "sha256": _sha(paths[role])} for role in ("prior", "swinir")}
    assert recorded["precision"] == "fp32"

    bf16 = clean(dataset, "--out", out, *args, "--precision", "bf16", check_exit=2)
    assert "other settings (precision: 'fp32' -> 'bf16')" in bf16.output

    torch.save(difface_states["other_prior"], paths["prior"])
    mixed = clean(dataset, "--out", out, *args, check_exit=2)
    assert f"other settings (weights prior: {paths['prior'].resolve()} (sha256 {recorded['files']['prior']['sha256'][:12]}) -> " in mixed.output
    assert len(manifest(out)) == 1


def test_a_tree_from_before_files_were_recorded_resumes_and_records_them(dataset, tmp_path, model):
    """A settings.json without "files" and "precision" (the previous version's) is trusted on those, as
    that version did, so a finished half of a tree is not refused after an upgrade; the rerun then
    records them, and from then on a changed file is refused."""
    out, args = tmp_path / "out", ("--weights", model, "--steps", "2", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--limit", "2", "-q")
    settings = out / STATE_DIR / "settings.json"
    old = {k: v for k, v in _settings_json(out).items() if k not in ("files", "precision", "options")} | {"steps": 2}  # as given, at the top
    settings.write_text(json.dumps(old, indent=1) + "\n")

    resumed = summary(dataset, "--out", out, *args)
    assert (resumed["skipped"], resumed["done"], resumed["complete"]) == (2, 3, 5)
    assert _settings_json(out) == old | {"files": {"weights": {"path": str(Path(model).resolve()), "sha256": _sha(model)}}, "precision": "fp32",
                                         "options": {"steps": 2}}
    assert "precision: 'fp32' -> 'bf16'" in clean(dataset, "--out", out, *args, "--precision", "bf16", check_exit=2).output


def test_the_bundled_model_is_recorded_as_the_file_inside_the_package(dataset, tmp_path, monkeypatch, model):
    """No --weights with idm: the bundled file runs; its sha256 is what a rerun compares (a reinstall
    with a retrained bundled model must not finish a tree the old one began)."""
    monkeypatch.setattr(idm_module, "bundled_weights", lambda: Path(model))  # the bundled model, small
    out = tmp_path / "out"
    clean(dataset, "--out", out, "--steps", "2", "--device", "cpu", "--limit", "1", "-q")
    recorded = _settings_json(out)
    assert recorded["weights"] is None and recorded["files"] == {"weights": {"path": str(Path(model).resolve()), "sha256": _sha(model)}}


# ------------------------------------------------------------------ the method options of restore


@pytest.fixture
def dr2_stand_in(monkeypatch, request):
    """dr2 on stand-in nets (DR2 at 64, the enhancer at 128): its options and run_options are the real ones."""
    from facerestore.methods import registry
    from facerestore.methods.dr2 import DR2Method, DR2Nets
    from helpers import StandInLearnedRange, StandInResidual

    real = registry.build_method
    files = request.getfixturevalue("dr2_stand_in_files") if "dr2_stand_in_files" in request.fixturenames else {}

    def build(name, options):
        if name != "dr2":
            return real(name, options)
        registry.check_method_options(registry.method_info(name), options)
        torch.manual_seed(0)
        return DR2Method(options, nets=DR2Nets(StandInLearnedRange(), StandInResidual(), size=64, enhancer_size=128, files=files))

    monkeypatch.setattr(registry, "build_method", build)
    return files


@pytest.fixture
def dr2_stand_in_files(tmp_path):
    """Two files for the stand-in nets to say they were read from (their sha256 is what is recorded)."""
    files = {"ddpm": tmp_path / "DR2_FFHQ.pkl", "enhancer": tmp_path / "SPARNetHD_FFHQ_DR2aug.pth"}
    for role, path in files.items():
        path.write_bytes(role.encode())
    return files


def test_a_dr2_preset_is_recorded_and_a_rerun_with_another_is_refused_naming_it(dataset, tmp_path, dr2_stand_in):
    """clean-dataset took only --steps: dr2 always ran at its medium preset. The options now reach the
    method, settings.json records what it ran with, and a tree never mixes two presets."""
    out, args = tmp_path / "out", ("-m", "dr2", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--dr2-preset", "severe", "--limit", "1", "-q")
    assert _settings_json(out)["options"] == {"preset": "severe", "n": 16, "tau": 35, "enhancer": True}

    refused = clean(dataset, "--out", out, *args, "--dr2-preset", "medium", check_exit=2)
    assert refused.output.strip().splitlines() == [
        f"error: {out} holds a cleaning run made with other settings (--dr2-preset: 'severe' -> 'medium', --dr2-n: 16 -> 8); "
        f"rerun with the options it was made with, choose another --out, or delete {out / STATE_DIR} to start over"]
    assert "(--no-enhancer: not set -> set)" in clean(dataset, "--out", out, *args, "--dr2-preset", "severe", "--no-enhancer", check_exit=2).output
    assert "--dr2-preset: 'severe' -> none, --dr2-tau: 35 -> 30" in clean(dataset, "--out", out, *args, "--dr2-n", "16", "--dr2-tau", "30", check_exit=2).output
    assert len(manifest(out)) == 1  # nothing restored with other options
    # the same (N, tau) however it is spelled is the same run
    resumed = summary(dataset, "--out", out, *args, "--dr2-n", "16", "--dr2-tau", "35", "--limit", "2")
    assert (resumed["skipped"], resumed["done"]) == (1, 1)


def test_difface_eta_and_start_are_recorded_and_another_eta_is_refused(dataset, tmp_path, difface_states):
    from test_difface import save_official

    paths = save_official(difface_states, tmp_path / "weights")
    out = tmp_path / "out"
    args = ("-m", "difface", "--weights", f"prior={paths['prior']},swinir={paths['swinir']}", "--steps", "1", "--start", "300", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--eta", "0.2", "--limit", "1", "-q")
    assert _settings_json(out)["options"] == {"steps": 1, "eta": 0.2, "start": 300}
    refused = clean(dataset, "--out", out, *args, check_exit=2)
    assert f"error: {out} holds a cleaning run made with other settings (--eta: 0.2 -> 0.5); " in refused.output
    assert "other settings (--steps: 1 -> 2)" in clean(dataset, "--out", out, *args[:-4], "--steps", "2", "--start", "300", "--eta", "0.2", "--device", "cpu", check_exit=2).output
    assert len(manifest(out)) == 1


def test_a_tree_from_before_method_options_were_recorded_resumes_at_the_defaults_and_records_them(dataset, tmp_path, dr2_stand_in):
    """A settings.json without "options" was written by a version that ran every method option but
    --steps at its default: a rerun that keeps them resumes and records them; one that sets another is
    refused before anything is restored, not mixed in and recorded as if it had made the whole tree."""
    out, args = tmp_path / "out", ("-m", "dr2", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--limit", "1", "-q")
    settings = out / STATE_DIR / "settings.json"
    old = {k: v for k, v in _settings_json(out).items() if k != "options"} | {"steps": None}  # as given, at the top
    settings.write_text(json.dumps(old, indent=1) + "\n")

    refused = clean(dataset, "--out", out, *args, "--dr2-preset", "severe", "--no-enhancer", check_exit=2)
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {out} holds a cleaning run made with other settings (--dr2-preset: 'medium' -> 'severe', --dr2-n: 8 -> 16, --no-enhancer: not set -> set); "
        "the earlier facerestore that began it ran every dr2 option but --steps at its default: drop the others to resume it"), refused.output
    assert _settings_json(out) == old and len(manifest(out)) == 1

    resumed = summary(dataset, "--out", out, *args, "--limit", "2")
    assert (resumed["skipped"], resumed["done"]) == (1, 1)
    assert _settings_json(out) == old | {"options": {"preset": "medium", "n": 8, "tau": 35, "enhancer": True}}
    assert "--dr2-preset: 'medium' -> 'severe'" in clean(dataset, "--out", out, *args, "--dr2-preset", "severe", check_exit=2).output


def test_a_method_option_the_method_does_not_take_is_refused_before_anything_is_recorded(dataset, tmp_path, model):
    out = tmp_path / "out"
    refused = clean(dataset, "--out", out, "--weights", model, "--eta", "0.2", "--device", "cpu", check_exit=2)
    assert "--eta is not used by method 'idm'; it is an option of difface" in refused.output
    assert not (out / STATE_DIR / "settings.json").exists()


def test_steps_typed_at_the_default_is_the_same_run(dataset, tmp_path, model, difface_states):
    """`--steps 10` (idm's default) after a run without it was refused (steps: default -> 10), though
    settings.json recorded options.steps 10; so was difface's --steps 75 at --start 300 (start/4)."""
    from test_difface import save_official

    out, args = tmp_path / "out", ("--weights", model, "--device", "cpu")
    clean(dataset, "--out", out, *args, "--limit", "1", "-q")
    assert _settings_json(out)["options"] == {"steps": 10} and "steps" not in _settings_json(out)
    resumed = summary(dataset, "--out", out, *args, "--steps", "10", "--limit", "2")
    assert (resumed["skipped"], resumed["done"]) == (1, 1)
    assert "(--steps: 10 -> 2)" in clean(dataset, "--out", out, *args, "--steps", "2", check_exit=2).output

    paths = save_official(difface_states, tmp_path / "weights")
    out, args = tmp_path / "out-difface", ("-m", "difface", "--weights", f"prior={paths['prior']},swinir={paths['swinir']}", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--start", "8", "--limit", "1", "-q")
    assert _settings_json(out)["options"] == {"steps": 2, "eta": 0.5, "start": 8}
    assert summary(dataset, "--out", out, *args, "--steps", "2", "--start", "8", "--limit", "1")["skipped"] == 1


def test_a_tree_recorded_with_top_level_steps_resumes_and_compares_the_steps_as_they_ran(dataset, tmp_path, model):
    """A tree with "steps" as given at the top level (an older version's, with or without "options"):
    --steps at the default it ran resumes it; other steps are refused, named by the flag."""
    out, args = tmp_path / "out", ("--weights", model, "--device", "cpu")
    clean(dataset, "--out", out, *args, "--limit", "1", "-q")
    settings = out / STATE_DIR / "settings.json"
    for old in (_settings_json(out) | {"steps": None}, {k: v for k, v in _settings_json(out).items() if k not in ("files", "precision", "options")} | {"steps": None}):
        settings.write_text(json.dumps(old, indent=1) + "\n")
        assert summary(dataset, "--out", out, *args, "--steps", "10", "--limit", "1")["skipped"] == 1
        settings.write_text(json.dumps(old, indent=1) + "\n")
        assert "(--steps: 10 -> 2)" in clean(dataset, "--out", out, *args, "--steps", "2", check_exit=2).output


def test_a_tree_from_before_method_options_were_recorded_takes_options_typed_at_their_defaults(dataset, tmp_path, dr2_stand_in):
    """Such a tree ran dr2 at its defaults: --dr2-preset medium, or --dr2-n 8 (the medium preset's N),
    is that run and resumes it; they were refused as "set at all"."""
    out, args = tmp_path / "out", ("-m", "dr2", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--limit", "1", "-q")
    settings = out / STATE_DIR / "settings.json"
    old = {k: v for k, v in _settings_json(out).items() if k != "options"} | {"steps": None}
    for typed in (("--dr2-preset", "medium"), ("--dr2-n", "8", "--dr2-tau", "35")):
        settings.write_text(json.dumps(old, indent=1) + "\n")
        assert summary(dataset, "--out", out, *args, *typed, "--limit", "1")["skipped"] == 1
        assert _settings_json(out)["options"] == {"preset": "medium", "n": 8, "tau": 35, "enhancer": True}


def test_a_rerun_with_no_enhancer_is_refused_naming_the_flag_not_the_enhancers_file(dataset, tmp_path, dr2_stand_in, dr2_stand_in_files):
    out, args = tmp_path / "out", ("-m", "dr2", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--limit", "1", "-q")
    assert set(_settings_json(out)["files"]) == {"ddpm", "enhancer"}
    refused = clean(dataset, "--out", out, *args, "--no-enhancer", check_exit=2)
    assert refused.output.strip().splitlines() == [
        f"error: {out} holds a cleaning run made with other settings (--no-enhancer: not set -> set); "
        f"rerun with the options it was made with, choose another --out, or delete {out / STATE_DIR} to start over"]


def test_a_rerun_with_other_options_and_another_seed_is_refused_naming_both(dataset, tmp_path, dr2_stand_in, dr2_stand_in_files):
    """With the method options and another setting both changed, the refusal named the setting alone
    (seed: 0 -> 1); the options were said only by the next rerun, once the seed was put back. One line
    now names every difference, the options by their flags."""
    out, args = tmp_path / "out", ("-m", "dr2", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--limit", "1", "-q")
    refused = clean(dataset, "--out", out, *args, "--seed", "1", "--dr2-preset", "severe", "--no-enhancer", check_exit=2)
    assert refused.output.strip().splitlines() == [
        f"error: {out} holds a cleaning run made with other settings (seed: 0 -> 1, --dr2-preset: 'medium' -> 'severe', --dr2-n: 8 -> 16, "
        f"--no-enhancer: not set -> set); rerun with the settings it was made with, choose another --out, or delete {out / STATE_DIR} to start over"]
    assert len(manifest(out)) == 1


def test_every_run_option_is_named_by_a_flag_clean_dataset_takes():
    from facerestore.methods.base import MethodOptions
    from facerestore.methods.registry import planned_run_options
    from facerestore.training.clean_dataset import RUN_OPTION_FLAGS

    keys = {*planned_run_options("idm", MethodOptions()), *planned_run_options("difface", MethodOptions()), *planned_run_options("codeformer", MethodOptions()),
            *planned_run_options("dr2", MethodOptions()), *planned_run_options("dr2", MethodOptions(dr2_auto=True))}
    assert keys == set(RUN_OPTION_FLAGS)
    usage = clean("--help").output
    assert all(part in usage for flag in RUN_OPTION_FLAGS.values() for part in flag.split("/"))


def test_the_same_weights_files_by_a_relative_path_resume_the_tree(dataset, tmp_path, monkeypatch, difface_states):
    """--weights ROLE=FILE,... was compared as written: the same files by a relative path were refused."""
    from test_difface import save_official

    paths = save_official(difface_states, tmp_path / "weights")
    out, args = tmp_path / "out", ("-m", "difface", "--steps", "1", "--device", "cpu")
    clean(dataset, "--out", out, *args, "--weights", f"prior={paths['prior']},swinir={paths['swinir']}", "--limit", "1", "-q")
    monkeypatch.chdir(tmp_path / "weights")
    relative = f"prior={paths['prior'].name},swinir={paths['swinir'].name}"
    assert summary(dataset, "--out", out, *args, "--weights", relative, "--limit", "1")["skipped"] == 1
    torch.save(difface_states["other_prior"], paths["prior"])  # what was loaded still counts: another file is refused
    assert "other settings (weights prior: " in clean(dataset, "--out", out, *args, "--weights", relative, check_exit=2).output
