"""The command line through typer's CliRunner: help, exit codes, bad inputs, outputs, JSON summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.image_io import read_image, write_image

register()
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def smooth(h: int = 96, w: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([0.5 + 0.3 * np.sin(x / 9), 0.5 + 0.3 * np.cos(y / 7), np.full_like(x, 0.4)], -1)


@pytest.fixture
def crops(tmp_path) -> Path:
    folder = tmp_path / "crops"
    write_image(folder / "face.png", cv2.resize(smooth(), (512, 512)))
    return folder


@pytest.mark.parametrize("command", [[], ["restore"], ["weights"], ["weights", "list"], ["weights", "pull"], ["weights", "import"], ["methods"]])
def test_every_command_has_help(command):
    result = run(*command, "-h")
    assert result.exit_code == 0 and "Usage" in result.output


def test_every_restore_option_has_help_text():
    from facerestore.cli.restore import restore_command

    import inspect
    from typing import get_type_hints

    hints = get_type_hints(restore_command, include_extras=True)
    for name in inspect.signature(restore_command).parameters:
        info = hints[name].__metadata__[0]
        assert info.help, f"--{name} has no help"


def test_each_method_option_help_names_every_method_that_takes_it():
    """`--steps` help spoke of difface alone, while idm takes it too (default 10)."""
    import typer

    from facerestore.methods.registry import METHOD_SPECIFIC, method_info, method_names

    params = typer.main.get_command(app).commands["restore"].params
    helps = {flag: p.help for p in params for flag in p.opts}
    for option, flag in METHOD_SPECIFIC.items():
        for name in method_names():
            if option in method_info(name).knobs:
                assert name in helps[flag], f"{flag}'s help does not name {name}: {helps[flag]}"
    assert "idm: 10" in helps["--steps"]


def test_restore_evaluate_and_clean_dataset_take_every_method_option_with_the_same_help():
    """evaluate took only --steps and -w, clean-dataset only --steps, each with its own help text."""
    import typer

    from facerestore.methods.registry import METHOD_SPECIFIC

    commands = typer.main.get_command(app).commands
    declared = {}
    for name in ("restore", "evaluate", "clean-dataset"):
        params = {p.name: p for p in commands[name].params if p.name in METHOD_SPECIFIC}
        assert set(params) == set(METHOD_SPECIFIC), name
        declared[name] = {option: (tuple(p.opts), p.help) for option, p in params.items()}
        assert all(METHOD_SPECIFIC[option] in opts for option, (opts, _) in declared[name].items()), name
    assert declared["restore"] == declared["evaluate"] == declared["clean-dataset"]
    assert declared["restore"]["fidelity"][0] == ("-w", "--fidelity")


def test_no_help_doubles_an_argument_ellipsis():
    """typer adds '...' to a list argument's metavar itself: train's metavar 'DATA_DIR...' showed as
    `[DATA_DIR...]...` in its usage line."""
    import typer

    def commands(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():  # groups (typer's own click)
            yield from commands(sub, [*path, name])

    visited = list(commands(typer.main.get_command(app), []))
    assert ["weights", "import"] in visited and ["finetune", "run"] in visited
    for path in visited:
        text = run(*path, "-h").output
        assert "...]..." not in text and "......" not in text, f"facerestore {' '.join(path)} -h:\n{text}"
    assert "[DATA_DIR]..." in run("train", "-h").output


def test_version():
    from facerestore import __version__

    result = run("--version")
    assert result.exit_code == 0 and result.output == f"facerestore {__version__}\n"


def test_the_summary_line_says_1_image_and_1_face(crops, tmp_path, tiny_baseline):
    result = run(crops, "--aligned", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline)
    assert result.exit_code == 0, result.output
    assert f"1 of 1 image restored, 1 face -> {tmp_path / 'out'}" in result.output
    write_image(crops / "second.png", read_image(crops / "face.png").rgb)
    again = run(crops, "--aligned", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline)
    assert f"2 of 2 images restored, 2 faces -> {tmp_path / 'out'}" in again.output


def test_aligned_crop_is_restored(crops, tmp_path, tiny_baseline):
    result = run(crops / "face.png", "--aligned", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "-q")
    assert result.exit_code == 0, result.output
    restored = read_image(tmp_path / "out" / "restored_faces" / "face.png")
    assert restored.rgb.shape == (512, 512, 3)
    # the pixels are the baseline net's on the crop (it moves them by up to 4 levels: not the input copied)
    import torch

    from facerestore.methods.base import MethodOptions
    from facerestore.methods.baseline import BaselineMethod

    crop = torch.from_numpy(read_image(crops / "face.png").rgb).permute(2, 0, 1)[None]
    expected = BaselineMethod(MethodOptions(weights=tiny_baseline)).restore(crop)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(restored.rgb, expected, rtol=0, atol=0.5 / 255 + 1e-6)  # rounded to 8 bits once
    assert (tmp_path / "out" / "cmp" / "face.png").is_file()
    assert not (tmp_path / "out" / "restored_imgs").exists()


def test_aligned_refuses_a_non_square_crop_and_restores_the_rest(crops, tmp_path, tiny_baseline):
    """A 4:3 photo given as an aligned crop would be stretched into a distorted face."""
    write_image(crops / "photo.png", smooth(384, 512))
    write_image(crops / "nearly.png", cv2.resize(smooth(), (512, 505)))  # within 2%: a crop trimmed by a few pixels
    result = run(crops, "--aligned", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline)
    assert result.exit_code == 1, result.output
    assert "photo.png: 512x384 is not a square aligned face crop" in result.output and "drop --aligned" in result.output
    done = sorted(p.name for p in (tmp_path / "out" / "restored_faces").iterdir())
    assert done == ["face.png", "nearly.png"]


def test_aligned_refuses_a_crop_too_small_to_hold_a_face(crops, tmp_path, tiny_baseline):
    """QA: a 1x1 and an 8x8 image given with --aligned were blown up to 512 and "restored", exit 0."""
    write_image(crops / "one.png", smooth(1, 1))
    write_image(crops / "eight.png", smooth(8, 8))
    write_image(crops / "sixteen.png", smooth(16, 16))  # the smallest taken
    result = run(crops, "--aligned", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline)
    assert result.exit_code == 1, result.output
    line = " ".join(result.output.split())
    for name, size in (("one.png", "1x1"), ("eight.png", "8x8")):
        assert f"{name}: {size} is too small to be an aligned face crop (at least 16 px a side); crop the face from a larger image" in line
    assert sorted(p.name for p in (tmp_path / "out" / "restored_faces").iterdir()) == ["face.png", "sixteen.png"]


def test_aligned_writes_the_restored_face_in_the_ext_format_and_refuses_upscale(crops, tmp_path, tiny_baseline):
    result = run(crops, "--aligned", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "--ext", ".JPG", "-q")
    assert result.exit_code == 0, result.output
    assert read_image(tmp_path / "out" / "restored_faces" / "face.jpg").rgb.shape == (512, 512, 3)
    assert (tmp_path / "out" / "cmp" / "face.png").is_file()  # the comparison stays lossless
    alpha = np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(256, 256)
    write_image(tmp_path / "cutout" / "face.png", cv2.resize(smooth(), (256, 256)), alpha=alpha)
    result = run(tmp_path / "cutout", "--aligned", "-o", tmp_path / "cut", "-m", "baseline", "--weights", tiny_baseline, "-q")
    assert result.exit_code == 0, result.output
    kept = read_image(tmp_path / "cut" / "restored_faces" / "face.png").alpha
    assert kept is not None and np.abs(kept - cv2.resize(alpha, (512, 512), interpolation=cv2.INTER_CUBIC).clip(0, 1)).max() < 2 / 255
    result = run(crops, "--aligned", "-o", tmp_path / "up", "-m", "baseline", "--weights", tiny_baseline, "--upscale", "2")
    assert result.exit_code == 2 and "--upscale does nothing with --aligned" in result.output
    assert not (tmp_path / "up").exists()
    result = run(crops, "--aligned", "-o", tmp_path / "up", "--parse", "--only-center-face")
    assert result.exit_code == 2 and "--parse, --only-center-face do nothing with --aligned" in result.output
    assert not (tmp_path / "up").exists()


def test_an_animation_is_restored_from_its_first_frame_with_a_warning(tmp_path, tiny_baseline):
    from PIL import Image

    frames = [Image.fromarray((smooth() * (0.5 + i / 4) * 255).clip(0, 255).astype(np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    result = run(tmp_path / "clip.gif", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "--json")
    assert result.exit_code == 0, result.output
    assert "clip.gif holds 3 frames; only the first is restored" in json.loads(result.stdout)["results"][0]["warnings"][0]
    first = read_image(tmp_path / "out" / "restored_imgs" / "clip.png").rgb
    assert first.shape == (192, 256, 3) and abs(first.mean() - np.asarray(frames[0]).mean() / 255) < 0.02
    degraded = run("degrade", tmp_path / "clip.gif", "-o", tmp_path / "deg", "-q")
    assert degraded.exit_code == 0 and "warning: " in degraded.output and "holds 3 frames; only the first is degraded" in degraded.output


def test_a_cmyk_photo_whose_profile_cannot_be_used_gets_one_warning_line_in_restore_and_degrade(tmp_path, tiny_baseline):
    from PIL import Image

    src = tmp_path / "print.jpg"
    Image.fromarray((smooth() * 255).astype(np.uint8)).convert("CMYK").save(src, icc_profile=b"not a profile" * 20)
    warning = (f"{src}: the colour profile of its CMYK pixels cannot be used (it is not an ICC profile); "
               "they were converted to RGB without it, so colours may be off")
    result = run(src, "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["warnings"] == [warning]
    degraded = run("degrade", src, "-o", tmp_path / "deg", "-q")
    assert degraded.exit_code == 0 and degraded.output.count("warning: ") == 1 and warning in " ".join(degraded.output.split())


def test_no_face_still_writes_the_photo_and_exits_0(tmp_path, tiny_baseline):
    write_image(tmp_path / "in" / "wall.jpg", smooth())
    result = run(tmp_path / "in", "--out", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "--upscale", "2")
    assert result.exit_code == 0, result.output
    assert "no face found" in result.output
    out = read_image(tmp_path / "out" / "restored_imgs" / "wall.jpg")
    assert out.rgb.shape == (192, 256, 3)
    # the photo itself, enlarged (Lanczos) with its channels in order; only the JPEG round trip differs
    source = read_image(tmp_path / "in" / "wall.jpg").rgb
    enlarged = cv2.resize(source, (256, 192), interpolation=cv2.INTER_LANCZOS4)
    assert np.abs(out.rgb - enlarged).mean() < 1 / 255 and np.abs(out.rgb - enlarged).max() < 8 / 255  # 0.77 and 4.7 levels


def test_a_low_detection_threshold_is_allowed_with_one_warning_line(tmp_path, tiny_baseline):
    """--detection-threshold 0 was taken silently and pasted 53 'faces' into a photo of one."""
    write_image(tmp_path / "in" / "a.png", smooth())
    write_image(tmp_path / "in" / "b.png", smooth())
    warning = ("warning: --detection-threshold 0.3 is below 0.5: detections that unsure are mostly not faces, "
               "and each one is restored and pasted into the photo; the default is 0.8")
    low = run(tmp_path / "in", "-o", tmp_path / "low", "-m", "baseline", "--weights", tiny_baseline, "--detection-threshold", "0.3", "-q")
    assert low.exit_code == 0, low.output
    assert low.output.splitlines().count(warning) == 1, low.output  # once per run, not per photo
    usual = run(tmp_path / "in", "-o", tmp_path / "usual", "-m", "baseline", "--weights", tiny_baseline, "--detection-threshold", "0.5", "-q")
    assert usual.exit_code == 0 and "--detection-threshold" not in usual.output, usual.output


def test_a_large_photo_keeps_its_size_unless_upscale_is_given(tmp_path, tiny_baseline):
    write_image(tmp_path / "in" / "wide.png", smooth(400, 1600))  # no face; long side over 1500
    sizes = {}
    for name, extra in (("auto", []), ("two", ["--upscale", "2"])):
        result = run(tmp_path / "in", "-o", tmp_path / name, "-m", "baseline", "--weights", tiny_baseline, *extra)
        assert result.exit_code == 0, result.output
        sizes[name] = read_image(tmp_path / name / "restored_imgs" / "wide.png").rgb.shape[:2]
    assert sizes == {"auto": (400, 1600), "two": (800, 3200)}


OUTPUT_COMMANDS = [["restore", "IN", "-o"], ["clean-dataset", "IN", "--out"], ["degrade", "IN", "--out"], ["train", "IN", "--out"],
                   ["finetune", "--unpaired", "IN", "--out"], ["finetune", "pseudo-targets", "IN", "--out"], ["evaluate", "--hq", "IN", "-m", "identity", "-o"]]


@pytest.mark.parametrize("below", [False, True])
@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_an_output_folder_that_is_a_file_is_a_usage_error_before_any_work(tmp_path, command, below):
    """Also a folder below a file (`-o afile/out`): found before hours of restoring, not at every write."""
    write_image(tmp_path / "in" / "face.png", cv2.resize(smooth(), (64, 64)))
    (tmp_path / "taken").write_text("not a folder")
    out = tmp_path / "taken" / "out" if below else tmp_path / "taken"
    result = run(*[str(tmp_path / "in") if part == "IN" else part for part in command], out)
    assert result.exit_code == 2, result.output
    assert "taken is a file, not a folder" in result.output and "Traceback" not in result.output
    assert (tmp_path / "taken").read_text() == "not a folder"


@pytest.mark.parametrize("aligned", [False, True])
def test_a_file_where_an_output_folder_belongs_is_a_usage_error_before_any_work(tmp_path, crops, tiny_baseline, aligned):
    """`OUT/restored_faces` a file: every photo failed at its write with exit 1 and a hint about the
    output folder ("File exists"), after its faces were restored."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "restored_faces").write_text("mine")
    result = run(crops, "-o", out, "-m", "baseline", "--weights", tiny_baseline, *(["--aligned"] if aligned else []))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: -o {out}: {out / 'restored_faces'} is a file, not a folder, and this run writes its "
                                     "results into it; move that file away, or choose another -o")
    assert (out / "restored_faces").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["restored_faces"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize(("folder", "aligned", "code"), [("restored_imgs", False, 2), ("cmp", True, 2), ("restored_imgs", True, 0)])
def test_an_output_folder_this_run_writes_into_that_refuses_files_is_a_usage_error_before_any_work(tmp_path, crops, tiny_baseline, folder, aligned, code):
    """`OUT/restored_imgs` on a read-only mount: each photo was restored, then failed at its write, one
    line per photo, exit 1. A link to /proc stands in for the mount: it refuses new files even to root.
    --aligned writes no photo, so there a read-only restored_imgs/ is no obstacle."""
    out = tmp_path / "out"
    out.mkdir()
    (out / folder).symlink_to("/proc")
    result = run(crops, "-o", out, "-m", "baseline", "--weights", tiny_baseline, *(["--aligned"] if aligned else []))
    assert result.exit_code == code, result.output
    if code == 2:
        assert result.output.strip().startswith(f"error: -o {out}: {out / folder} cannot be written (")
        assert result.output.strip().endswith("and this run writes its results into it; make it writable, or choose another -o")
        assert sorted(p.name for p in out.iterdir()) == [folder]  # nothing restored, nothing written
    else:
        assert (out / "restored_faces" / "face.png").is_file()


def test_an_output_folder_this_run_writes_into_without_write_permission_is_a_usage_error(tmp_path, crops, tiny_baseline, monkeypatch):
    """Another user's folder: access() says no (faked, as root passes permission bits)."""
    import os

    import facerestore.image_io

    out = tmp_path / "out"
    (out / "restored_faces").mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(facerestore.image_io.os, "access", lambda p, mode: False if Path(p) == out / "restored_faces" else real(p, mode))
    result = run(crops, "-o", out, "-m", "baseline", "--weights", tiny_baseline)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: -o {out}: {out / 'restored_faces'} is not writable, and this run writes its results into it; "
                                     "make it writable, or choose another -o")


def test_a_broken_link_where_an_output_folder_belongs_is_a_usage_error(tmp_path, crops, tiny_baseline):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cmp").symlink_to(tmp_path / "gone")
    result = run(crops, "-o", out, "-m", "baseline", "--weights", tiny_baseline)
    assert result.exit_code == 2, result.output
    assert f"error: -o {out}: {out / 'cmp'} is a broken link" in result.output and not (tmp_path / "gone").exists()


def test_a_folder_where_an_output_file_belongs_fails_that_photo_with_what_is_in_the_way(tmp_path, crops, tiny_baseline):
    (tmp_path / "out" / "restored_faces" / "face.png").mkdir(parents=True)
    result = run(crops, "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "--aligned")
    assert result.exit_code == 1, result.output
    line = " ".join(result.output.split())
    assert f"cannot write {tmp_path / 'out' / 'restored_faces' / 'face.png'}: a folder of that name is in the way; move that folder away" in line
    assert "free space" not in line


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_an_output_folder_that_cannot_be_written_is_a_usage_error_before_any_work(tmp_path, command, monkeypatch):
    """A read-only place (a mount, another user's folder; root passes permission bits, so access is faked)."""
    import os

    import facerestore.image_io

    write_image(tmp_path / "in" / "face.png", cv2.resize(smooth(), (64, 64)))
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(facerestore.image_io.os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real(p, mode))
    result = run(*[str(tmp_path / "in") if part == "IN" else part for part in command], tmp_path / "ro" / "out")
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'ro'} is not writable" in result.output and not (tmp_path / "ro" / "out").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_an_output_folder_the_file_system_refuses_is_a_usage_error_even_for_root(tmp_path, command):
    """/proc passes access() for root, yet nothing can be made there: the folder is probed with a real file."""
    write_image(tmp_path / "in" / "face.png", cv2.resize(smooth(), (64, 64)))
    result = run(*[str(tmp_path / "in") if part == "IN" else part for part in command], "/proc/facerestore-out")
    assert result.exit_code == 2, result.output
    assert "/proc/facerestore-out cannot be written (/proc refuses new files" in result.output and "Traceback" not in result.output


def test_the_output_probe_leaves_nothing_behind(tmp_path):
    from facerestore.image_io import assert_output_folder

    assert_output_folder(tmp_path / "new" / "out")
    assert_output_folder(tmp_path)
    assert list(tmp_path.iterdir()) == []


def _library_entry_points():
    from facerestore.training.clean_dataset import CleanOptions, clean_dataset
    from facerestore.training.degrade_files import degrade_tree
    from facerestore.training.finetune.pseudo_targets import PseudoTargetOptions, generate_pseudo_targets
    from facerestore.training.finetune.run import resolve_config as finetune_config
    from facerestore.training.trainer import resolve_config as train_config

    return {
        "clean_dataset": lambda src, out: clean_dataset(CleanOptions(src=src, out=out, method="baseline", device="cpu")),
        "degrade_tree": lambda src, out: degrade_tree(src, out),
        "train": lambda src, out: train_config(out, resume=False, data=[src]),
        "finetune": lambda src, out: finetune_config(out, resume=False, lq=src),
        "pseudo_targets": lambda src, out: generate_pseudo_targets(PseudoTargetOptions(lq=src, out=out, device="cpu")),
    }


@pytest.mark.parametrize("entry", ["clean_dataset", "degrade_tree", "train", "finetune", "pseudo_targets"])
def test_library_entry_points_refuse_an_output_folder_that_is_a_file(tmp_path, entry):
    """Python callers get the CLI's usage error, not a traceback from deep inside a run."""
    from facerestore.errors import UsageError

    write_image(tmp_path / "in" / "face.png", smooth())
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(UsageError, match="taken is a file, not a folder"):
        _library_entry_points()[entry](tmp_path / "in", tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_a_gif_named_on_the_command_line_is_written_as_png(tmp_path, tiny_baseline):
    from PIL import Image

    Image.fromarray((smooth() * 255).astype(np.uint8)).save(tmp_path / "old.gif")  # read through Pillow, not writable
    result = run(tmp_path / "old.gif", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "--upscale", "1")
    assert result.exit_code == 0, result.output
    assert "no face found" in result.output  # so the photo is written untouched, lossless
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "restored_imgs" / "old.png").rgb, read_image(tmp_path / "old.gif").rgb)


def test_bad_inputs_fail_one_line_each_and_the_batch_goes_on(tmp_path, tiny_baseline):
    folder = tmp_path / "in"
    write_image(folder / "good.png", smooth())
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("hello")
    data = (folder / "good.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 3])
    write_image(folder / "photo.jpg", smooth())
    data = (folder / "photo.jpg").read_bytes()
    (folder / "photo.jpg").write_bytes(data[: len(data) // 2])
    result = run(folder, tmp_path / "missing.jpg", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "--upscale", "1")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 5, result.output
    for name in ("empty.png", "text.jpg", "cut.png", "photo.jpg", "missing.jpg"):
        assert sum(name in line for line in lines) == 1
    assert f"error: {folder / 'photo.jpg'} is truncated (the JPEG data ends early); re-copy or re-export the file" in lines
    assert (tmp_path / "out" / "restored_imgs" / "good.png").is_file()
    written = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["good.png"]  # no partial or zero-byte files for the bad inputs
    assert all(p.stat().st_size > 0 for p in (tmp_path / "out").rglob("*") if p.is_file())


def test_json_summary(tmp_path, tiny_baseline):
    write_image(tmp_path / "a.png", smooth())
    (tmp_path / "b.png").write_bytes(b"x")
    result = run(tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["images"] == 2 and summary["failed"] == 1
    assert [r["status"] for r in summary["results"]] == ["no-face", "failed"]


def test_docs_name_every_field_of_the_json_summary(crops, tmp_path, tiny_baseline):
    """docs/usage.md, "For scripts", has a row for every field the summary holds."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text(encoding="utf-8")
    section = docs.split("## For scripts", 1)[1]
    write_image(tmp_path / "photo.png", smooth())
    (tmp_path / "broken.png").write_bytes(b"x")
    summaries = [json.loads(run(*args, "-m", "baseline", "--weights", tiny_baseline, "--json").stdout) for args in (
        (crops / "face.png", "--aligned", "-o", tmp_path / "a"),
        (tmp_path / "photo.png", tmp_path / "broken.png", tmp_path / "gone.png", "-o", tmp_path / "b"),
    )]
    fields = {f"`{key}`" for summary in summaries for key in summary}
    for summary in summaries:
        for result in summary["results"]:
            fields |= {f"`{key}`" for key in result} | {f"`{stage}`" for stage in result["seconds"]}
            fields.add(f"`{result['status']}`")
        fields |= {f"`{key}`" for entry in summary["missing"] for key in entry}
    assert {"`read`", "`detect`", "`restore`", "`write`", "`no-face`", "`failed`", "`ok`"} <= fields
    assert [field for field in sorted(fields) if field not in section] == []


def test_json_stays_valid_utf8_for_file_names_that_are_not(tmp_path, tiny_baseline):
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"\xff\xfe.png")  # a Latin-1 name from an old disk
    write_image(folder / name, smooth())
    result = runner.invoke(app, [str(folder), "-o", str(tmp_path / "out"), "-m", "baseline", "--weights", str(tiny_baseline), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout_bytes.decode("utf-8"))
    assert summary["results"][0]["path"] == str(folder / name)


def test_inputs_are_never_overwritten(tmp_path, tiny_baseline):
    folder = tmp_path / "restored_imgs"
    source = write_image(folder / "x.png", smooth())
    before = source.read_bytes()
    result = run(source, "-o", tmp_path, "-m", "baseline", "--weights", tiny_baseline, "--upscale", "1")  # a file named on its own
    assert result.exit_code == 1 and "would overwrite the input" in result.output
    assert source.read_bytes() == before


@pytest.mark.parametrize("inside, extra", [("restored_imgs", ["--suffix", "x"]), ("restored_imgs/sub", ["--ext", "png"]),
                                           ("restored_faces", ["--aligned"]), ("cmp", ["--aligned"]), ("cropped_faces", [])])
def test_a_folder_input_inside_an_output_folder_the_run_writes_is_refused_before_any_work(tmp_path, inside, extra):
    """Its results would land among its inputs (beside them with --suffix or --ext), and a rerun would
    restore them again (x.png, x_x.png, x_x_x.png...): exit 2 before the (missing) weights are looked at."""
    out = tmp_path / "out"
    source = write_image(out / inside / "x.jpg", smooth())
    result = run(out / inside, "-o", out, "-m", "baseline", "--weights", tmp_path / "nosuch.safetensors", *extra)
    assert result.exit_code == 2, result.output
    where = "is" if "/" not in inside else f"lies inside {out / inside.split('/')[0]},"
    assert f"the input folder {out / inside} {where} where this run writes its results" in result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [source.relative_to(out).as_posix()]


def test_a_folder_input_elsewhere_in_the_output_is_restored_and_not_read_back(crops, tmp_path, tiny_baseline):
    """out/photos -o out writes only to out's four folders; the crops of an earlier run restored with
    --aligned into the same output do not touch cropped_faces/: both are allowed, and reruns read
    the same inputs."""
    out = tmp_path / "out"
    write_image(out / "photos" / "face.png", read_image(crops / "face.png").rgb)
    write_image(out / "cropped_faces" / "face_00.png", read_image(crops / "face.png").rgb)
    for folder in ("photos", "cropped_faces", "photos"):
        result = run(out / folder, "--aligned", "-o", out, "-m", "baseline", "--weights", tiny_baseline, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["images"] == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "cmp/face.png", "cmp/face_00.png", "cropped_faces/face_00.png", "photos/face.png", "restored_faces/face.png", "restored_faces/face_00.png"]


@pytest.mark.parametrize("method", ["codeformer", "baseline", "idm"])
def test_a_weights_role_of_another_method_is_refused_naming_the_methods_roles(tmp_path, method):
    """`-m codeformer --weights prior=x.pth` (a DifFace habit) was looked up as a file named
    'prior=x.pth': the line says the method has no such role, and which it has (none: one file)."""
    write_image(tmp_path / "a.png", smooth())
    result = run(tmp_path / "a.png", "-o", tmp_path / "out", "-m", method, "--weights", "prior=x.pth", "--offline")
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line == (f"error: --weights prior=x.pth: method '{method}' has no weights role 'prior'; it takes one checkpoint "
                    "and no ROLE= (roles are for difface: prior, swinir; dr2: ddpm, enhancer); pass --weights FILE"), line
    assert not (tmp_path / "out").exists()


def test_steps_with_the_default_method_points_to_the_bundled_idm_first(tmp_path):
    """`--steps 10` with baseline said 'choose --method difface', whose weights most users lack; idm ships
    with the package and takes --steps."""
    write_image(tmp_path / "a.png", smooth())
    result = run(tmp_path / "a.png", "-o", tmp_path / "out", "--steps", "10", "--offline")
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line == ("error: --steps is not used by method 'baseline'; it is an option of idm, difface; "
                    "drop --steps, or choose --method idm (its model ships with facerestore) or difface"), line


def test_a_weights_role_a_multi_file_method_lacks_lists_its_roles(tmp_path):
    write_image(tmp_path / "a.png", smooth())
    result = run(tmp_path / "a.png", "-o", tmp_path / "out", "-m", "dr2", "--weights", "prior=x.pth", "--offline")
    assert result.exit_code == 2 and "unknown role 'prior'; use ddpm=FILE, enhancer=FILE" in result.output, result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--upscale", "0"], "--upscale"),
        (["--batch-size", "0"], "--batch-size"),
        (["--method", "nope"], "unknown method"),
        (["--ext", "gif"], "--ext"),
        (["--device", "tpu"], "--device"),
        (["--fidelity", "2", "--method", "codeformer"], "fidelity"),
        (["--fidelity", "2"], "--fidelity is not used by method 'baseline'; it is an option of codeformer"),
        (["--fidelity", "0.7", "--method", "idm"], "--fidelity is not used by method 'idm'"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
        (["--precision", "half"], "not a precision"),
        (["--seed", "99999999999999999999"], "--seed must be between 0 and 2^63-1"),
        (["--seed", "-1"], "--seed must be between 0 and 2^63-1"),
        (["--max-pixels", "0"], "--max-pixels must be at least 1"),
        (["--detection-threshold", "-1"], "--detection-threshold is a confidence between 0 and 1"),
        (["--detection-threshold", "2"], "--detection-threshold is a confidence between 0 and 1"),
        (["--min-face", "-3"], "--min-face must be 0 or more"),
        (["--min-face", "inf"], "--min-face must be 0 or more"),  # no face is that large: every photo would be 'no face'
        (["--suffix", "../escaped"], "holds a path separator"),
        (["--suffix", "a\nb"], "--suffix 'a\\nb' holds a control character"),
        (["--suffix", "tab\t"], "holds a control character"),
    ],
)
def test_usage_errors_exit_2_before_any_work(tmp_path, args, message, tiny_baseline):
    write_image(tmp_path / "a.png", smooth())
    result = run(tmp_path / "a.png", "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, line",
    [
        (["--detection-threshold", "1.5"], "--detection-threshold is a confidence between 0 and 1, got 1.5; pass a value from 0 to 1 (default 0.8; facexlib uses 0.97)"),
        (["-s", "0"], "--upscale must be between 1 and 8, got 0.0; pass a scale from 1 to 8, or leave -s out (2, or 1 for photos over 1500 px)"),
        (["-b", "0"], "--batch-size must be at least 1, got 0; pass 1 or more faces (default 8)"),
        (["--seed", "-1"], "--seed must be between 0 and 2^63-1, got -1; pass a whole number from 0 to 2^63-1 (default 0)"),
        (["--max-pixels", "0"], "--max-pixels must be at least 1, got 0; pass a pixel count of 1 or more (default 64000000)"),
        (["--min-face", "-3"], "--min-face must be 0 or more pixels (a finite number), got -3.0; pass the smallest eye distance in pixels to keep, 0 or more (default 5)"),
    ],
)
def test_option_errors_say_what_to_pass(tmp_path, args, line):
    """These said only what was wrong ('--batch-size must be at least 1, got 0'); each now gives the range and the default."""
    write_image(tmp_path / "a.png", smooth())
    result = run(tmp_path / "a.png", "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {line}"], result.output


@pytest.mark.parametrize(("env", "printed"), [({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"RANK": "1", "LOCAL_RANK": "1"}, False),
                                             ({"RANK": "2", "LOCAL_RANK": "0"}, False), ({"LOCAL_RANK": "1"}, False), ({"RANK": "x"}, True)])
def test_under_torchrun_the_main_rank_alone_prints_an_error_and_every_rank_exits_with_its_code(tmp_path, monkeypatch, env, printed):
    """Each rank meets the same usage error: printed once per rank it would repeat itself N times."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run("train", "--out", tmp_path / "run")  # a command torchrun starts, here without its DATA_DIR
    assert result.exit_code == 2
    assert result.output == ("error: no DATA_DIR given; pass one or more folders of aligned face images\n" if printed else "")


def test_nothing_to_do_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(tmp_path / "empty", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "folder has no images" in result.output


def test_a_folder_holding_only_this_runs_results_says_so_and_what_to_pass(tmp_path):
    """`facerestore out -o out` after a run into out said "out: folder has no images", while the user
    can see images there: they are the run's own results, which are never read back as inputs."""
    out = tmp_path / "out"
    write_image(out / "restored_imgs" / "a.png", smooth())
    write_image(out / "cmp" / "a_00.png", smooth())
    (out / "restored_faces").mkdir()  # holds no image: not named
    result = run(out, "-o", out)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: {out} holds images only in this run's own output folders (restored_imgs/, cmp/), which are "
                                     "never read as inputs; pass another -o, or the folder of the original photos")
    result = run(tmp_path, "-o", out)  # OUT inside the input folder: named from there
    assert result.exit_code == 2 and "(out/restored_imgs/, out/cmp/)" in result.output, result.output
    (out / "restored_imgs" / "a.png").unlink()
    (out / "cmp" / "a_00.png").unlink()
    assert "folder has no images" in run(out, "-o", out).output


def test_a_missing_input_alone_is_one_line(tmp_path):
    result = run(tmp_path / "nope.png", "-o", tmp_path / "out")
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert "nope.png does not exist" in result.output and "pass image files" in result.output
    both = run(tmp_path / "nope.png", tmp_path / "gone.jpg", "-o", tmp_path / "out")
    lines = both.output.strip().splitlines()
    assert both.exit_code == 2 and len(lines) == 2, both.output
    assert lines[0] == f"error: {tmp_path / 'nope.png'} does not exist; check the path"
    assert lines[1].startswith(f"error: {tmp_path / 'gone.jpg'} does not exist; pass image files")


def test_missing_weights_offline_is_one_actionable_line(tmp_path):
    write_image(tmp_path / "a.png", smooth())
    result = run(tmp_path / "a.png", "-o", tmp_path / "out", "--method", "codeformer", "--offline")
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "codeformer.pth" in line and "facerestore weights import" in line and "1009e537" in line


def test_weights_commands(tmp_path):
    listing = run("weights", "list")
    assert listing.exit_code == 0 and "codeformer" in listing.output and "Baidu" in listing.output
    assert "\ndetection_mobilenet0.25_Final\tdetection_mobilenet0.25_Final.pth\t" in listing.output  # piped: whole names, one line each
    assert run("weights", "verify").exit_code == 0
    bogus = tmp_path / "codeformer.pth"
    bogus.write_bytes(b"not the real file")
    result = run("weights", "import", bogus)
    assert result.exit_code == 1 and "sha256" in result.output
    result = run("weights", "import", tmp_path / "nope.pth")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_weights_pull_with_unknown_names_exits_2_before_any_download(monkeypatch):
    """A typo among the names must not cost the others' downloads first (and exit 1 as a failed one)."""
    from facerestore.weights import store

    fetched = []
    monkeypatch.setattr(store, "resolve", lambda name, **kw: fetched.append(name))
    result = run("weights", "pull", "nosuch", "codeformer", "other")
    assert result.exit_code == 2 and fetched == [], result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: no weights named 'nosuch', 'other' in the catalogue") and "`facerestore weights list`" in line


def test_methods_lists_licenses_uncut(monkeypatch):
    result = run("methods")  # piped: tab-separated, whole
    assert result.exit_code == 0 and "codeformer" in result.output and "…" not in result.output
    rows = {line.split("\t")[0]: line.split("\t") for line in result.output.splitlines()}
    assert rows["codeformer"][4] == "no" and "docs/baseline-model.md" in rows["baseline (default)"][2]
    from rich.console import Console

    from facerestore.cli import methods as methods_cli

    monkeypatch.setattr(methods_cli, "out", Console(force_terminal=True, width=80, record=True))
    assert run("methods").exit_code == 0
    table = methods_cli.out.export_text()
    assert "…" not in table and "(non-commercial)" in table


def test_weights_list_says_non_commercial_once():
    line = next(line for line in run("weights", "list").output.splitlines() if line.startswith("arcface_w600k_mbf"))
    assert line.lower().count("non-commercial") == 1


def test_detection_on_a_real_photo(shared_data, tmp_path, tiny_baseline):
    photo = shared_data / "photos" / "degraded" / "Blake_Lively.jpg"
    result = run(photo, "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "--json", "--detector", "bundled")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["faces"] == 2
    names = sorted(p.name for p in (tmp_path / "out" / "restored_faces").iterdir())
    assert names == ["Blake_Lively_00.jpg".replace(".jpg", ".png"), "Blake_Lively_01.png"]
    whole = read_image(tmp_path / "out" / "restored_imgs" / "Blake_Lively.jpg")
    assert whole.rgb.shape[:2] == (464 * 2, 700 * 2)


def test_a_rerun_into_an_output_folder_inside_the_inputs_does_not_restore_its_own_results(crops, tmp_path, tiny_baseline):
    folder = tmp_path / "faces"
    write_image(folder / "face.png", read_image(crops / "face.png").rgb)
    for _ in range(2):
        result = run(folder, "--aligned", "-o", folder / "out", "-m", "baseline", "--weights", tiny_baseline, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["images"] == 1
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == ["face.png", "out/cmp/face.png", "out/restored_faces/face.png"]


def test_a_corrupt_file_gives_our_one_line_and_no_opencv_chatter(tmp_path, tiny_baseline):
    import subprocess
    import sys

    good = write_image(tmp_path / "in" / "good.png", smooth())
    (tmp_path / "in" / "cut.png").write_bytes(good.read_bytes()[:300])
    done = subprocess.run(
        [sys.executable, "-m", "facerestore", tmp_path / "in", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stderr
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert any(line.startswith("error:") and "cut.png" in line for line in errors), errors
    assert not any("WARN" in line for line in errors), errors


def test_bf16_precision_restores_like_float32(tmp_path, tiny_baseline):
    write_image(tmp_path / "face.png", smooth(128, 128))
    outputs = {}
    for precision in ("fp32", "bf16"):
        result = run(tmp_path / "face.png", "--aligned", "-o", tmp_path / precision, "-m", "baseline", "--weights", tiny_baseline,
                     "--device", "cpu", "--precision", precision, "-q")
        assert result.exit_code == 0, result.output
        outputs[precision] = read_image(tmp_path / precision / "restored_faces" / "face.png").rgb
    assert np.abs(outputs["bf16"] - outputs["fp32"]).max() <= 2 / 255  # a level or two where bf16 rounds


@pytest.mark.parametrize("native", [True, False])
def test_a_cpu_with_native_bf16_gets_one_tip_line_unless_a_precision_was_chosen(tmp_path, tiny_baseline, monkeypatch, native):
    import facerestore.devices

    monkeypatch.setattr(facerestore.devices, "cpu_has_native_bf16", lambda: native)
    write_image(tmp_path / "face.png", smooth(128, 128))
    common = [tmp_path / "face.png", "--aligned", "-m", "baseline", "--weights", tiny_baseline, "--device", "cpu"]
    write_image(tmp_path / "wall" / "wall.jpg", smooth())  # a photo without a face: nothing was restored
    runs = [run(*common, "-o", tmp_path / "auto"), run(*common, "-o", tmp_path / "fp32", "--precision", "fp32"),
            run(*common, "-o", tmp_path / "quiet", "-q"),
            run(tmp_path / "wall", "-m", "baseline", "--weights", tiny_baseline, "--device", "cpu", "-o", tmp_path / "no-face")]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    tips = [r.output.count("tip: this CPU runs bf16 natively; --precision bf16 made the bundled baseline model 3.4x faster") for r in runs]
    assert tips == ([1, 0, 0, 0] if native else [0, 0, 0, 0]), [r.output for r in runs]


WEIGHTS_OPTIONS = {  # the command line of each option that names a checkpoint, around WEIGHTS
    "--weights": lambda crops, out, w: [crops / "face.png", "--aligned", "-m", "idm", "--weights", w, "-o", out],
    "evaluate --weights": lambda crops, out, w: ["evaluate", "--hq", crops, "-m", "baseline", "--weights", w, "--metrics", "psnr", "-o", out],
    "clean-dataset --weights": lambda crops, out, w: ["clean-dataset", crops, "-o", out, "--weights", w],
    "--init-from": lambda crops, out, w: ["train", crops, "-o", out, "--init-from", w, "--size", "32", "--workers", "0", "--device", "cpu", "-q"],
    "--val-identity": lambda crops, out, w: ["train", crops, "-o", out, "--val", crops, "--val-identity", w, "--model", "tiny", "--size", "32",
                                             "--workers", "0", "--device", "cpu", "-q"],
    "finetune --base-weights": lambda crops, out, w: ["finetune", "run", "--unpaired", crops, "-o", out, "--base-weights", w, "--device", "cpu"],
    "finetune --prior-weights": lambda crops, out, w: ["finetune", "run", "--unpaired", crops, "-o", out, "--prior-weights", w, "--device", "cpu"],
    "pseudo-targets --base-weights": lambda crops, out, w: ["finetune", "pseudo-targets", crops, "-o", out, "--base-weights", w, "--device", "cpu"],
    "pseudo-targets --prior-weights": lambda crops, out, w: ["finetune", "pseudo-targets", crops, "-o", out, "--prior-weights", w, "--device", "cpu"],
}
DAMAGED_BASE = {  # a damaged --prior-weights is read after the base model: the bundled baseline, not codeformer's download
    "finetune --prior-weights": ["--base", "baseline", "--real", "REAL"], "pseudo-targets --prior-weights": ["--base", "baseline"],
}


@pytest.mark.parametrize("kind", ["missing", "folder", "unreadable", "damaged"])
@pytest.mark.parametrize("option", list(WEIGHTS_OPTIONS))
def test_a_weights_option_naming_no_usable_file_is_a_usage_error_in_every_command(crops, tmp_path, monkeypatch, option, kind):
    """A typo or a folder in --weights (or --init-from, --base-weights...) is a bad option value: exit 2
    and one line naming the option and the path, before anything is written or downloaded. So is a
    file that opens but is no checkpoint of that use (truncated, damaged, another model): it was exit
    1, as if an input had failed, though the command line is what must change (docs/usage.md)."""
    import os

    weights = tmp_path / "weights" / "model.pth"
    weights.parent.mkdir()
    if kind == "folder":
        weights = weights.parent
    elif kind == "unreadable":  # chmod 000 does not stop root, who runs some test machines
        weights.write_bytes(b"a checkpoint this user may not read")
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, target=weights, **kw: False if Path(path).resolve() == target and mode & os.R_OK else real(path, mode, **kw))
    elif kind == "damaged":  # an HTML error page saved under the checkpoint's name
        weights.write_bytes(b"<html>502 Bad Gateway</html>")
    out = tmp_path / "out"
    args = WEIGHTS_OPTIONS[option](crops, out, weights)
    if kind == "damaged" and option in DAMAGED_BASE:
        args += [crops if a == "REAL" else a for a in DAMAGED_BASE[option]]
    result = run(*args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    named = f"error: {option.split()[-1]}: " if kind == "damaged" else f"error: {option.split()[-1]} "
    assert len(lines) == 1 and lines[-1].startswith(named), result.output
    assert str(weights.resolve()) in lines[-1]
    said = {"missing": ("does not exist", "no such file"), "folder": ("is a folder", "holds no idm.safetensors"), "unreadable": ("permission denied",),
            "damaged": ("is not a PyTorch or safetensors checkpoint (a text file)", "cannot be loaded by onnxruntime")}[kind]
    assert any(words in lines[-1] for words in said), result.output
    assert not any(p.name.startswith((".out", "out")) for p in tmp_path.iterdir())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_damaged_file_of_the_users_own_says_to_check_or_export_it_again_not_to_pull_it(crops, tmp_path, tiny_baseline, suffix):
    """A file the user passed (a train run's export, a fine-tuned model) is nothing `weights pull`,
    `weights import` or `weights verify` can mend: the line says to check it or export it again."""
    import torch

    from facerestore.weights.checkpoint import read_state_dict

    mine = tmp_path / "my_run" / f"export{suffix}"
    mine.parent.mkdir()
    if suffix == ".pth":
        torch.save(read_state_dict(tiny_baseline), mine)
    else:
        mine.write_bytes(tiny_baseline.read_bytes())
    mine.write_bytes(mine.read_bytes()[:-200])
    result = run(crops / "face.png", "--aligned", "-m", "baseline", "--weights", mine, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: --weights: {mine} is ") and "export it again" in line, line
    assert "pull" not in line and "weights verify" not in line and "weights import" not in line, line


def test_damaged_weights_no_option_named_stay_exit_1(crops, tmp_path, monkeypatch):
    """Exit 2 is for a command line that must change; weights the command finds itself (here the bundled
    model) being damaged is the machine's problem: exit 1, and the line names no option."""
    from facerestore.methods import baseline

    junk = tmp_path / "baseline.safetensors"
    junk.write_bytes(b"\x00" * 64)
    monkeypatch.setattr(baseline, "bundled_weights", lambda: junk)
    result = run(crops / "face.png", "--aligned", "-m", "baseline", "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {junk} is truncated or damaged (not a readable safetensors file") and "--weights" not in line
    assert line.endswith("; the model bundled with facerestore is damaged: reinstall facerestore"), line


def test_no_path_option_is_checked_by_click():
    """typer's Path options default to readable=True, so click refused an unreadable path itself with its
    multi-line "Usage: ... Error: Invalid value" (an unreadable photo stopped the whole batch); our own
    checks give the one line. Every path parameter of every command leaves the checks to us."""
    import click
    import typer

    def walk(command):
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    def checks(param) -> tuple[bool, ...] | None:  # click's own path checks of a parameter; None: not a path
        described = getattr(param, "type_descriptor", None)  # typer >= 0.25 builds the click type when parsing
        if described is not None:
            if "Path" not in str(described.annotation):
                return None
            info = described.parameter_info
        elif isinstance(param.type, click.Path):
            info = param.type
        else:
            return None
        return (info.readable, info.exists, info.writable, not info.file_okay, not info.dir_okay)

    paths = {(command.name, param.name): checks(param) for command in walk(typer.main.get_command(app)) for param in command.params}
    paths = {key: value for key, value in paths.items() if value is not None}
    assert len(paths) >= 20 and ("train", "init_from") in paths and ("evaluate", "ref_set") in paths
    assert {key: value for key, value in paths.items() if any(value)} == {}


def test_an_unreadable_path_is_our_one_line(crops, tmp_path, monkeypatch):
    """root reads anything, so access() is faked (as the weights-option test does)."""
    import os

    faces = tmp_path / "faces"
    write_image(faces / "face.png", cv2.resize(smooth(), (64, 64)))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"an idm model this user may not read")
    locked = {model, crops, tmp_path / "mine.pth"}
    (tmp_path / "mine.pth").write_bytes(b"a checkpoint")
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) in locked and mode & os.R_OK else real(path, mode, **kw))
    cases = {
        ("train", faces, "-o", tmp_path / "run", "--init-from", model, "--size", "32", "--workers", "0", "--device", "cpu"):
            f"error: --init-from {model} cannot be read (permission denied); make it readable (chmod a+r), or copy it somewhere of yours and pass the copy",
        ("train", crops, "-o", tmp_path / "run", "--size", "32", "--workers", "0", "--device", "cpu"):
            f"error: data folder {crops} cannot be read (permission denied); make it readable (chmod a+rx), or pass a copy of yours",
        (crops, "-o", tmp_path / "out"): f"error: {crops} cannot be read (permission denied); pass image files",
        ("evaluate", "--hq", crops, "-m", "baseline", "-o", tmp_path / "report"): f"error: --hq {crops}: cannot be read (permission denied); pass a folder",
        ("weights", "import", tmp_path / "mine.pth", "--name", "mine"):
            f"error: {tmp_path / 'mine.pth'} cannot be read (permission denied); make it readable (chmod a+r), or copy it somewhere of yours and import the copy",
    }
    for args, line in cases.items():
        result = run(*args)
        assert result.exit_code == 2, result.output
        [said] = result.output.strip().splitlines()
        assert said.startswith(line), said
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("crops", "faces", "model.safetensors", "mine.pth")]


def test_a_face_that_does_not_fit_in_memory_fails_its_photo_with_one_line_naming_it(crops, tmp_path, tiny_baseline, monkeypatch):
    """torch's OutOfMemoryError was an "internal error ... report it" (not a bug: a GPU too small)."""
    from facerestore.methods import registry

    write_image(crops / "second.png", cv2.resize(smooth(), (512, 512)))
    real_build = registry.build_method

    def small_gpu(name, options):
        method = real_build(name, options)
        method.restore = lambda batch, generator=None: (_ for _ in ()).throw(torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 3.81 GiB of which 1.10 GiB is free. "
            "If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."))
        return method

    monkeypatch.setattr(registry, "build_method", small_gpu)
    result = run(crops, "--aligned", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline, "-q")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {crops / name}: out of memory restoring one face (Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 3.81 GiB "
                      "of which 1.10 GiB is free); close other programs that use the GPU, or run on the CPU with --device cpu"
                      for name in ("face.png", "second.png")], result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_ctrl_c_is_one_line_and_exit_130_while_loading_and_while_restoring(crops, tmp_path, tiny_baseline, monkeypatch):
    """It was click's 'Aborted!' with exit 1, which says neither what happened nor what was written."""
    from facerestore import pipeline
    from facerestore.methods import registry

    write_image(crops / "second.png", cv2.resize(smooth(), (512, 512)))
    real_build, real_restore = registry.build_method, pipeline.restore_file

    def loading(name, options):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "build_method", loading)
    out = tmp_path / "out"
    result = run(crops, "--aligned", "-o", out, "-m", "baseline", "--weights", tiny_baseline, "-q")
    assert result.exit_code == 130 and result.output.strip() == "interrupted before any image was restored; nothing was written"
    assert not out.exists()

    calls = []

    def second_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_restore(*args, **kwargs)

    monkeypatch.setattr(registry, "build_method", real_build)
    monkeypatch.setattr(pipeline, "restore_file", second_interrupted)
    result = run(crops, "--aligned", "-o", out, "-m", "baseline", "--weights", tiny_baseline, "-q")
    assert result.exit_code == 130, result.output
    assert result.output.strip() == f"interrupted; 1 of 2 images written to {out} (each file whole: none is half-written)"
    assert [p.name for p in (out / "restored_faces").iterdir()] == ["face.png"]

    calls.clear()  # --json: a script still learns which files were written (it printed nothing)
    result = run(crops, "--aligned", "-o", tmp_path / "json", "-m", "baseline", "--weights", tiny_baseline, "--json")
    assert result.exit_code == 130, result.output
    summary = json.loads(result.stdout)
    assert (summary["interrupted"], summary["images"], summary["failed"], len(summary["results"])) == (True, 1, 0, 1)
    assert [Path(f).name for f in summary["results"][0]["outputs"]] == ["face.png", "face.png"]


@pytest.mark.parametrize("command", ["train", "degrade", "finetune"])
def test_ctrl_c_before_a_command_begins_its_work_is_one_line_and_130(command, tmp_path, monkeypatch):
    """While a command imports torch (seconds) or checks its options, typer exited 130 without a word
    (QA: `timeout -s INT 3 facerestore degrade ...`)."""
    from facerestore.training import degrade_files, trainer
    from facerestore.training.finetune import run as finetune_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # the first thing each command does after its imports, outside the handler of its work
    target = {"train": (trainer, "resolve_config"), "degrade": (degrade_files, "degrade_tree"), "finetune": (finetune_run, "resolve_config")}[command]
    monkeypatch.setattr(*target, interrupted)
    args = {"train": ["train", tmp_path / "data", "--out", tmp_path / "run"], "degrade": ["degrade", tmp_path / "in", "--out", tmp_path / "out"],
            "finetune": ["finetune", "--unpaired", tmp_path / "lq", "--out", tmp_path / "ft"]}[command]
    result = run(*args)
    assert result.exit_code == 130, result.output
    assert result.output.strip() in ("interrupted before the command began its work; nothing was written",
                                     "interrupted before any copy was written; run the same command again")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ctrl_c_while_the_cli_libraries_import_is_one_line_and_130(monkeypatch, capsys):
    """The console script imports typer and rich (hundreds of ms on a loaded machine) under the light
    entry module's handler: a Ctrl-C there printed Python's traceback."""
    from facerestore.cli import entry

    class CtrlC:  # a finder that is asked for the CLI module and is "interrupted" while loading it
        def find_spec(self, name, path=None, target=None):
            if name == "facerestore.cli.app":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "facerestore.cli.app")
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    with pytest.raises(SystemExit) as stop:
        entry.main()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "interrupted before the command began its work; nothing was written\n"


def test_ctrl_c_while_typer_builds_the_command_line_is_one_line_and_130(monkeypatch, capsys):
    """typer inspects every command's annotations before click's own handler runs: a Ctrl-C there
    (QA: about 1 try in 3 at 0.3 s) printed typer's traceback and died of the signal."""
    from facerestore.cli import app as module

    def building(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "app", building)
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "interrupted before the command began its work; nothing was written\n"


@pytest.mark.parametrize("args, line", [
    (["restore", "x.png", "--bogus"], "error: no such option: --bogus; see `facerestore restore -h`"),
    (["restore", "x.png", "--upscle", "2"], "error: no such option: --upscle; did you mean --upscale? (`facerestore restore -h` lists the options)"),
    (["weights", "bogus"], "error: no such command 'bogus'; see `facerestore weights -h`"),
    (["degrade"], "error: missing argument 'SRC'; see `facerestore degrade -h`"),
    (["finetune", "--unpaired", "x", "--out", "y", "--limit", "1"], "error: no such option: --limit; see `facerestore finetune run -h`"),
    (["x.png", "--suffix"], "error: option '--suffix' requires an argument; see `facerestore restore -h`"),
    (["degrade", "src", "--out"], "error: option '--out' requires an argument; see `facerestore degrade -h`"),
    (["weights", "import", "f.pth", "--name"], "error: option '--name' requires an argument; see `facerestore weights import -h`"),
    (["finetune", "--unpaired"], "error: option '--unpaired' requires an argument; see `facerestore finetune run -h`"),
], ids=["unknown", "close", "command", "missing", "no-false-suggestion", "no-value", "no-value-degrade", "no-value-nested", "no-value-default-stage"])
def test_command_line_mistakes_are_one_error_line_and_exit_2(args, line, monkeypatch, capsys):
    """click printed the usage, a hint, a blank line and "Error: ..." (four lines), and suggested any
    option sharing a few letters (--out for --bogus, --l for --limit)."""
    from facerestore.cli.app import main

    monkeypatch.setattr(sys, "argv", ["facerestore", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == line


@pytest.mark.parametrize("args, where", [
    (["", "-o", "out"], "as an argument"),
    (["restore", "x.png", "-o", ""], "after -o"),
    (["restore", "x.png", "--out="], "for --out"),
    (["degrade", "", "--out", "y"], "as an argument"),
    (["train", "faces", "--out", "run", "--val", ""], "after --val"),
    (["--aligned", "", "-o", "out"], "as an argument"),
    (["clean-dataset", "src", "--detect", "", "--out", "dst"], "as an argument"),
], ids=["photo", "out", "out-equals", "degrade", "val", "after-a-flag", "after-a-subcommand-flag"])
def test_an_empty_argument_is_refused_not_taken_for_the_current_folder(args, where, tmp_path, monkeypatch, capsys):
    """Path("") is ".": `facerestore "$DIR" -o out` with DIR unset restored the whole current folder (QA)."""
    from facerestore.cli.app import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["facerestore", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: an empty value was given {where} (an unset shell variable?); pass a path or value, or leave it out"
    assert list(tmp_path.iterdir()) == []


def test_the_console_script_and_python_m_use_the_light_entry():
    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"facerestore": "facerestore.cli.entry:main"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import facerestore.cli.entry"], capture_output=True, text=True)
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "facerestore.cli.entry" in imported and not imported & {"typer", "rich", "click", "torch", "numpy"}


@pytest.mark.parametrize("word, command", [("restre", "restore"), ("tarin", "train"), ("wieghts", "weights")])
def test_a_mistyped_command_is_named_not_restored_as_a_photo(word, command, tmp_path, monkeypatch, capsys):
    from facerestore.cli.app import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["facerestore", word, "x.jpg"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: '{word}' is neither a command nor a file; did you mean "
                                               f"`facerestore {command}`? (`facerestore --help` lists the commands)")


def test_a_file_named_like_a_command_is_still_restored(tmp_path, monkeypatch):
    """Only a word that is no file is taken for a typo: a photo saved as 'restre' (no extension) is read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "restre").write_bytes(b"not an image")
    result = run("restre", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "restre" in result.output and "neither a command" not in result.output


def test_restore_never_follows_a_link_out_of_its_input_folder_nor_into_its_outputs(crops, tmp_path, tiny_baseline):
    """crops/up -> .. made `facerestore crops --aligned` restore the images beside crops/ (and, on a
    rerun, its own results under them). The link is named and left out, without failing the run; a
    link to an output folder is never walked."""
    write_image(tmp_path / "beside" / "x.png", cv2.resize(smooth(), (512, 512)))
    out = tmp_path / "out"
    (crops / "up").symlink_to("..")
    (crops / "results").symlink_to(out / "restored_faces")
    for _ in range(2):
        result = run(crops, "--aligned", "-o", out, "-m", "baseline", "--weights", tiny_baseline, "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert [Path(r["path"]) for r in summary["results"]] == [crops / "face.png"] and summary["missing"] == []
        assert (f"warning: skipped {crops / 'up'}: links to {tmp_path.resolve()}, which holds {crops}: following it would search outside {crops} "
                "and loop back into it (link to the folders you want instead)") in result.stderr


def test_every_error_line_of_restore_leads_with_its_input_and_no_colon_before_a_verb(tmp_path, tiny_baseline):
    """The lines said `error: in/gone.png: is a broken link`, `error: in/cut.png is truncated` and, for an
    output over its own input, `error: refusing to write out/restored_imgs/x.png: ...` (no input first:
    the input's name was found inside the output path, so it was not put in front), then
    `error: out/restored_imgs/x.png: refusing to write out/restored_imgs/x.png: ...` (the path twice)."""
    import os

    folder = tmp_path / "in"
    write_image(folder / "cut.png", smooth())
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:300])
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(folder / "pipe.png")
    out = tmp_path / "out"
    own = write_image(out / "restored_imgs" / "x.png", smooth())
    result = run(folder, own, "-o", out, "-m", "baseline", "--weights", tiny_baseline, "-q")
    assert result.exit_code == 1, result.output
    assert sorted(line for line in result.output.splitlines() if line.startswith("error:")) == sorted([
        f"error: {folder / 'gone.png'} is a broken link (its target does not exist); fix the link or remove it",
        f"error: {folder / 'pipe.png'} is not a regular file; pass image files (a pipe, socket or device is not read)",
        f"error: {folder / 'cut.png'} is truncated (the PNG ends before its last chunk); re-copy or re-export the file",
        f"error: {own} is an input, so writing an output there would overwrite the input; choose another output folder or --suffix",
    ])


def test_the_progress_bar_counts_the_inputs_that_gave_no_image_as_the_summary_does(crops, tmp_path, tiny_baseline, monkeypatch):
    """A broken link in a folder counts in the summary ("1 of 2 images restored") but the bar's total
    was only the files found (1/1)."""
    import rich.progress

    totals = []
    real_add_task = rich.progress.Progress.add_task

    def add_task(self, description, *args, **kwargs):
        totals.append((description, kwargs.get("total"), kwargs.get("completed", 0)))
        return real_add_task(self, description, *args, **kwargs)

    monkeypatch.setattr(rich.progress.Progress, "add_task", add_task)
    (crops / "gone.png").symlink_to(tmp_path / "missing.png")
    result = run(crops, "--aligned", "-o", tmp_path / "out", "-m", "baseline", "--weights", tiny_baseline)
    assert result.exit_code == 1 and "1 of 2 images restored" in result.output, result.output
    assert totals[0] == ("images", 2, 1)


@pytest.mark.parametrize("rank, world, waits", [("1", "2", True), ("0", "2", False), ("0", "1", False)])
def test_under_torchrun_a_rank_that_does_not_print_the_error_waits_for_the_one_that_does(rank, world, waits, monkeypatch, capsys):
    """torchrun stops every process as soon as one exits: rank 1, refusing the same --batch-size as rank 0,
    exited first and rank 0 died before it printed the line (CI: no error line at all)."""
    import typer

    from facerestore.cli import app as module
    from facerestore.errors import UsageError

    slept: list[float] = []
    monkeypatch.setattr(module.time, "sleep", slept.append)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(typer.Exit) as stop:
        module.fail(UsageError("--batch-size 3 is the global batch and must be divisible by the 2 processes"))
    assert stop.value.exit_code == 2
    assert slept == ([module.MAIN_RANK_GRACE_S] if waits else [])
    assert ("error: --batch-size 3" in capsys.readouterr().err) is (rank == "0")
