"""`facerestore train` under torchrun: 2 CPU processes (gloo) give the single-process run's losses and
the same checkpoint format; rank 0 alone writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.image_io import write_image
from helpers import assert_all_ranks_stopped_with, torchrun

register()
ARGS = ["--size", "32", "--model", "tiny", "--steps", "3", "--batch-size", "4", "--save-every", "2", "--workers", "0", "--device", "cpu", "-q"]


def face(i: int, size: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return np.clip(np.stack([0.5 + 0.35 * np.sin(7 * x + i), 0.5 + 0.3 * np.cos(5 * y - i), 0.4 + 0.3 * x * y], -1), 0, 1)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tmp_path):
    data = tmp_path / "faces"
    for i in range(6):
        write_image(data / f"{i}.png", face(i))
    ddp = tmp_path / "ddp"
    done = torchrun(["train", data, "--out", ddp, *ARGS], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("step 3 of 3") == 1  # only rank 0 reports

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = tmp_path / "single"
        result = CliRunner().invoke(app, ["train", str(data), "--out", str(single), *ARGS], catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output

    # the global batch is split, every sample is the same, DDP averages: the same run up to float sums
    np.testing.assert_allclose(losses(ddp), losses(single), rtol=1e-5)
    assert len(losses(ddp)) == 3
    files = lambda run: sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())  # noqa: E731
    assert files(ddp) == files(single)
    for name in ("model", "ema", "optimizer"):
        with safe_open(str(ddp / "checkpoints" / "step_0000003" / f"{name}.safetensors"), "pt") as a, \
                safe_open(str(single / "checkpoints" / "step_0000003" / f"{name}.safetensors"), "pt") as b:
            assert sorted(a.keys()) == sorted(b.keys())
            for key in a.keys():
                torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=1e-4, atol=1e-5)

    # a time limit is voted on by every rank, so both stop after the same step (none waits forever)
    done = torchrun(["train", "--out", ddp, "--resume", "--steps", "6", "--time-limit", "0.001s", "--workers", "0", "-q"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("step 4 of 6") == 1 and len(losses(ddp)) == 4
    assert (ddp / "checkpoints" / "step_0000004").is_dir()


@pytest.mark.slow
def test_an_error_on_every_rank_or_on_rank_0_alone_stops_all_ranks_with_its_code_and_one_line(tmp_path):
    data, empty = tmp_path / "faces", tmp_path / "no-faces"
    for i in range(4):
        write_image(data / f"{i}.png", face(i))
    empty.mkdir()
    (empty / "notes.txt").write_text("not a face")

    # every rank checks --val (rank 0 alone used to, and rank 1 died at the first barrier with gloo's traceback)
    done = torchrun(["train", data, "--out", tmp_path / "r1", *ARGS, "--val", empty], tmp_path)
    assert_all_ranks_stopped_with(done, 2, f"--val {empty}")
    assert not (tmp_path / "r1").exists()

    # a global batch the 2 processes cannot split: refused before the run folder is written
    done = torchrun(["train", data, "--out", tmp_path / "r2", *ARGS, "--batch-size", "3"], tmp_path)
    assert_all_ranks_stopped_with(done, 2, "--batch-size 3 is the global batch and must be divisible by the 2 processes")
    assert not (tmp_path / "r2").exists()

    # rank 0 alone fails while rank 1 waits at a barrier: rank 1 leaves quietly, with rank 0's code
    (tmp_path / "r3" / "files.json").mkdir(parents=True)  # the run's file list cannot be written
    done = torchrun(["train", data, "--out", tmp_path / "r3", *ARGS], tmp_path)
    assert_all_ranks_stopped_with(done, 1, "cannot write")
    (tmp_path / "r4").mkdir()
    (tmp_path / "r4" / "checkpoints").write_text("a file where the checkpoints folder goes")  # as a full disk at the first save
    done = torchrun(["train", data, "--out", tmp_path / "r4", *ARGS], tmp_path)
    assert_all_ranks_stopped_with(done, 1, "cannot write checkpoint")


@pytest.mark.slow
def test_torchrun_into_a_run_folder_in_use_is_refused_and_writes_nothing(tmp_path):
    """Rank 0 speaks for the run's lock (training/out_lock); a second run's rank 0 is refused (exit 2) and its rank 1 writes nothing."""
    from facerestore.training.out_lock import output_lock

    data, run = tmp_path / "faces", tmp_path / "run"
    for i in range(4):
        write_image(data / f"{i}.png", face(i))
    with output_lock(run):
        done = torchrun(["train", data, "--out", run, *ARGS], tmp_path)
        assert sorted(p.name for p in run.rglob("*")) == [".facerestore.lock"]
    assert_all_ranks_stopped_with(done, 2, f"error: {run} is being written by another run (pid {os.getpid()}); wait for it to end, or choose another --out")
