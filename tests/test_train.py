"""`facerestore train`: loss goes down, exact resume after a crash, checkpoint format, data handling,
--init-from, and the command line's one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.errors import FaceRestoreError, UnsupportedCheckpoint, UsageError
from facerestore.image_io import read_image, write_image
from facerestore.methods.idm import load_model
from facerestore.nets.guided_unet import UNetConfig
from facerestore.nets.idm_unet import IDMUNet
from facerestore.training.checkpoints import latest_checkpoint, optimizer_from_tensors, optimizer_to_tensors
from facerestore.training.data import FaceDataset, StepBatches, load_file_list, scan_faces
from facerestore.training.degradations import preset
from facerestore.diffusion import NoiseSchedule
from facerestore.training.trainer import TrainConfig, parse_duration, resolve_config, train
from helpers import folders_without_usable_faces, lock_held

pytestmark = pytest.mark.usefixtures("one_thread")

register()
runner = CliRunner()
MICRO = UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=(1, 1), attention_levels=(), in_channels=6, out_channels=3, num_head_channels=32)


def face(i: int, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return np.clip(np.stack([0.5 + 0.35 * np.sin(7 * x + i), 0.5 + 0.3 * np.cos(5 * y - 0.7 * i), 0.35 + 0.3 * x * y + 0.05 * i], -1), 0, 1)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    for i in range(8):
        write_image(root / ("a" if i < 5 else "b") / f"{i:02d}.png", face(i, 40 + 3 * i))
    write_image(root / "b" / "small.png", face(0, 8))  # tiny: skipped
    (root / "b" / "broken.png").write_bytes(b"junk")  # unreadable: skipped
    return root


def config(faces: Path, out: Path, **changes) -> TrainConfig:
    base = dict(data=(str(faces),), out=str(out), size=32, steps=5, batch_size=2, lr=1e-3, save_every=2, workers=0, device="cpu")
    return TrainConfig(**(base | changes))


def log_losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


class Crash(Exception):
    pass


# ----------------------------------------------------------------- training


def test_thirty_steps_lower_the_loss_and_export_a_usable_model(faces, tmp_path):
    run = tmp_path / "run"
    notes: list[str] = []
    result = train(config(faces, run, steps=30, batch_size=2, lr=2e-3, save_every=30), unet=MICRO, on_message=notes.append)
    losses = [loss for _, loss in result.losses]
    assert len(losses) == 30 and result.step == 30
    assert np.mean(losses[-6:]) < 0.75 * np.mean(losses[:6])
    assert "8 training images, 1 unreadable skipped, 1 too small skipped" in notes[0]
    model = load_model(run / "idm.safetensors")  # the exported EMA loads as an IDM model
    assert model.image_size == 32 and model.net.config == MICRO
    card = json.loads((run / "idm.json").read_text())
    assert card["step"] == 30 and card["samples"] == 60 and card["recipe"]["lr"] == 2e-3


def test_resume_after_a_crash_repeats_the_uninterrupted_run_exactly(faces, tmp_path):
    straight = train(config(faces, tmp_path / "straight"), unet=MICRO)

    def crash_at_3(report):
        if report.step == 3:  # after the checkpoint of step 2: step 3 is lost and must be redone
            raise Crash

    with pytest.raises(Crash):
        train(config(faces, tmp_path / "crashed"), unet=MICRO, on_step=crash_at_3)
    assert latest_checkpoint(tmp_path / "crashed").name == "step_0000002"
    resumed = train(config(faces, tmp_path / "crashed"), unet=MICRO, resume=True)
    assert [s for s, _ in resumed.losses] == [3, 4, 5]
    assert log_losses(tmp_path / "crashed") == log_losses(tmp_path / "straight")  # bit-identical, the lost step 3 included
    assert [loss for _, loss in straight.losses][2:] == [loss for _, loss in resumed.losses]
    for name in ("model", "ema", "optimizer"):
        a = safe_open(str(tmp_path / "straight" / "checkpoints" / "step_0000005" / f"{name}.safetensors"), "pt")
        b = safe_open(str(tmp_path / "crashed" / "checkpoints" / "step_0000005" / f"{name}.safetensors"), "pt")
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys()), name


def test_amp_on_a_bf16_cpu_computes_in_bf16_keeps_float32_weights_and_resumes_exactly(faces, tmp_path, monkeypatch):
    import facerestore.devices

    monkeypatch.setattr(facerestore.devices, "cpu_has_native_bf16", lambda: True)
    seen: set[torch.dtype] = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.add(out.dtype) if isinstance(module, torch.nn.Conv2d) else None)
    try:
        notes: list[str] = []
        amp = train(config(faces, tmp_path / "amp", amp=True), unet=MICRO, on_message=notes.append)
    finally:
        hook.remove()
    assert seen == {torch.bfloat16} and not any("--amp" in n for n in notes)
    fp32 = train(config(faces, tmp_path / "fp32"), unet=MICRO)
    a, b = np.array([x for _, x in amp.losses]), np.array([x for _, x in fp32.losses])
    assert not np.array_equal(a, b) and np.allclose(a, b, rtol=0.03)  # bf16 layers, the same optimisation
    with safe_open(str(tmp_path / "amp" / "checkpoints" / "step_0000005" / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float32}

    def crash_at_3(report):
        if report.step == 3:
            raise Crash

    with pytest.raises(Crash):
        train(config(faces, tmp_path / "crashed", amp=True), unet=MICRO, on_step=crash_at_3)
    train(config(faces, tmp_path / "crashed", amp=True), unet=MICRO, resume=True)
    assert log_losses(tmp_path / "crashed") == log_losses(tmp_path / "amp")


def test_amp_on_a_cpu_without_bf16_says_so_and_trains_in_float32(faces, tmp_path, monkeypatch):
    import facerestore.devices

    monkeypatch.setattr(facerestore.devices, "cpu_has_native_bf16", lambda: False)
    notes: list[str] = []
    amp = train(config(faces, tmp_path / "amp", amp=True, steps=2), unet=MICRO, on_message=notes.append)
    assert sum("--amp has no effect on this CPU" in n for n in notes) == 1
    assert amp.losses == train(config(faces, tmp_path / "fp32", steps=2), unet=MICRO).losses


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(faces, tmp_path):
    straight = train(config(faces, tmp_path / "straight", steps=3, save_every=100), unet=MICRO)

    def interrupt_at_2(report):
        if report.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-run; the step ends, is saved, then it stops

    notes: list[str] = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(config(faces, tmp_path / "stopped", steps=3, save_every=100), unet=MICRO, on_step=interrupt_at_2, on_message=notes.append)
    assert latest_checkpoint(tmp_path / "stopped").name == "step_0000002"
    assert any("stopped by SIGINT after step 2" in n for n in notes)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    train(config(faces, tmp_path / "stopped", steps=3, save_every=100), unet=MICRO, resume=True)
    assert log_losses(tmp_path / "stopped") == [loss for _, loss in straight.losses]


def test_a_run_or_a_resume_into_a_run_folder_in_use_is_refused_before_it_writes(faces, tmp_path):
    """Two runs (or a run and a --resume of it) into one folder both wrote its log, checkpoints and model."""
    from facerestore.training.out_lock import LOCK_NAME, output_lock
    from test_out_lock import hold_in_another_process

    run = tmp_path / "run"
    train(config(faces, run, steps=1), unet=MICRO)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    in_use = f"{run} is being written by another run (pid {os.getpid()}); wait for it to end, or choose another --out"
    with output_lock(run):
        for resume in (True, False):  # the lock comes before the checks of what the folder holds: no "already holds a training run"
            with pytest.raises(UsageError) as refused:
                train(config(faces, run, steps=2), unet=MICRO, resume=resume)
            assert refused.value.exit_code == 2 and refused.value.one_line() == in_use
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing written, the lock file gone
    holder = hold_in_another_process(run)
    try:
        resumed = cli("--out", run, "--resume", "--steps", "2", "--workers", "0", "-q")
        fresh = cli(faces, "--out", tmp_path / "other", "--size", "32", "--model", "tiny", "--steps", "1", "--workers", "0", "-q")
    finally:
        holder.kill()
        holder.wait()
    assert resumed.exit_code == 2
    assert resumed.output.strip() == f"error: {run} is being written by another run (pid {holder.pid}); wait for it to end, or choose another --out"
    assert fresh.exit_code == 0, fresh.output  # another folder is free
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != LOCK_NAME} == before
    assert cli("--out", run, "--resume", "--steps", "2", "--workers", "0", "-q").exit_code == 0  # the lock of the killed holder is taken over
    assert len(log_losses(run)) == 2 and not (run / LOCK_NAME).exists()


def test_train_holds_its_lock_through_the_save_ctrl_c_asks_for_and_releases_it_however_it_ends(faces, tmp_path, monkeypatch):
    from facerestore.training import trainer
    from facerestore.training.out_lock import LOCK_NAME

    saves: list[tuple[int, bool]] = []
    save = trainer._save

    def watched(run, step, *args):
        saves.append((step, lock_held(run)))
        save(run, step, *args)

    monkeypatch.setattr(trainer, "_save", watched)

    def interrupt_at_2(report):
        if report.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the step ends and is saved under the lock, then it stops

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(faces, run, steps=3, save_every=100), unet=MICRO, on_step=interrupt_at_2)
    assert saves == [(2, True)] and not lock_held(run) and not (run / LOCK_NAME).exists()

    def crash(report):
        raise Crash

    with pytest.raises(Crash):
        train(config(faces, run, steps=3, save_every=100), unet=MICRO, resume=True, on_step=crash)
    assert not lock_held(run) and not (run / LOCK_NAME).exists()
    train(config(faces, run, steps=3, save_every=100), unet=MICRO, resume=True)
    assert saves[-1] == (3, True) and not lock_held(run) and not (run / LOCK_NAME).exists()
    with pytest.raises(UsageError, match="nothing to resume"):  # refused after the lock made the folder: none is left behind
        train(config(faces, tmp_path / "new", steps=3), unet=MICRO, resume=True)
    assert not (tmp_path / "new").exists()


def test_a_time_limit_stops_at_a_step_end_with_a_checkpoint_and_resumes_exactly(faces, tmp_path):
    straight = train(config(faces, tmp_path / "straight", steps=3, save_every=100), unet=MICRO)
    notes: list[str] = []
    # a limit shorter than one step: the first step ends, one more would overrun it, so the run stops there
    first = train(config(faces, tmp_path / "leased", steps=3, save_every=100, time_limit=1e-3), unet=MICRO, on_message=notes.append)
    assert first.stopped_at_time_limit and first.step == 1
    assert latest_checkpoint(tmp_path / "leased").name == "step_0000001" and (tmp_path / "leased" / "idm.safetensors").is_file()
    assert any("time limit of 0.001s reached after step 1" in n for n in notes)
    again = train(config(faces, tmp_path / "leased", steps=3, save_every=100), unet=MICRO, resume=True)
    assert not again.stopped_at_time_limit and again.step == 3
    assert log_losses(tmp_path / "leased") == [loss for _, loss in straight.losses]


def test_a_time_limit_is_not_part_of_the_run(faces, tmp_path):
    train(config(faces, tmp_path / "run", steps=1), unet=MICRO)  # as if started with a limit
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    stored["train"]["time_limit"] = 60.0
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    assert resolve_config(tmp_path / "run", resume=True).time_limit is None
    assert resolve_config(tmp_path / "run", resume=True, time_limit=30.0).time_limit == 30.0


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("1.5m", 90), ("0.5h", 1800)])
def test_time_limits_are_read_with_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["8", "", "m", "10 minutes", "-5m", "1m2h"])
def test_a_time_limit_without_a_unit_is_a_usage_error(text):
    with pytest.raises(UsageError, match="not a duration"):
        parse_duration(text)


def test_checkpoint_folder_holds_only_safetensors_and_json(faces, tmp_path):
    run = tmp_path / "run"
    train(config(faces, run, steps=2), unet=MICRO)
    ckpt = latest_checkpoint(run)
    assert sorted(p.name for p in ckpt.iterdir()) == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "state.json"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2 and state["samples"] == 4 and state["recipe"]["seed"] == 0
    with safe_open(str(ckpt / "optimizer.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert any(k.endswith(":exp_avg") for k in keys) and any(k.endswith(":exp_avg_sq") for k in keys) and any(k.endswith(":step") for k in keys)
    assert {p.name for p in run.iterdir()} >= {"config.json", "files.json", "log.jsonl", "idm.safetensors", "idm.json", "checkpoints"}
    # a checkpoint that was being written when the process died is never picked
    (run / "checkpoints" / ".tmp-step_0000009").mkdir()
    (run / "checkpoints" / "step_0000011").mkdir()  # no state.json: incomplete
    assert latest_checkpoint(run) == ckpt


def test_a_checkpoint_that_cannot_be_written_or_read_is_one_line_with_the_way_on(faces, tmp_path, monkeypatch):
    from facerestore.training import checkpoints

    run = tmp_path / "run"
    train(config(faces, run, steps=2), unet=MICRO)
    ckpt = latest_checkpoint(run)
    (ckpt / "ema.safetensors").write_bytes((ckpt / "ema.safetensors").read_bytes()[:100])
    with pytest.raises(UnsupportedCheckpoint) as damaged:
        checkpoints.load_checkpoint(ckpt)
    assert "ema.safetensors" in str(damaged.value) and damaged.value.hint == "delete this checkpoint folder to resume from the one before"

    def disk_full(state, path, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_safetensors", disk_full)
    with pytest.raises(FaceRestoreError, match="cannot write checkpoint .*step_0000002 \\(No space left on device\\)") as full:
        train(config(faces, tmp_path / "run2", steps=3), unet=MICRO)
    assert "--resume" in full.value.hint
    assert not list((tmp_path / "run2" / "checkpoints").glob(".tmp-*"))


def test_a_save_cut_short_by_a_kill_leaves_no_temporary_folder_after_resume(faces, tmp_path):
    run = tmp_path / "run"
    train(config(faces, run, steps=2), unet=MICRO)
    folder = run / "checkpoints"
    cut = folder / ".tmp-step_0000003"  # kill -9 while step 3 was being written
    cut.mkdir()
    (cut / "model.safetensors").write_bytes(b"half a file")
    (folder / ".tmp-notes").mkdir()  # not a checkpoint's temporary folder: left alone
    notes: list[str] = []
    train(config(faces, run, steps=3, save_every=100), unet=MICRO, resume=True, on_message=notes.append)
    assert not cut.exists() and "removed 1 unfinished checkpoint folder of a save cut short" in notes
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-notes", "step_0000002", "step_0000003"]


def test_saving_a_checkpoint_removes_temporary_folders_of_saves_cut_short(tmp_path):
    from facerestore.training.checkpoints import save_checkpoint

    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(net.parameters())
    folder = tmp_path / "checkpoints"
    for name in (".tmp-step_0000001", ".tmp-step_x", "step_0000001"):
        (folder / name).mkdir(parents=True)
    (folder / "step_0000001" / "state.json").write_text("{}")
    save_checkpoint(tmp_path, 2, model=net.state_dict(), ema=net.state_dict(), optimizer=optimizer, names=["weight", "bias"], state={},
                    metadata={}, keep=0)
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-step_x", "step_0000001", "step_0000002"]


def test_optimizer_state_round_trips_through_tensors():
    torch.manual_seed(0)
    net = IDMUNet(MICRO)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(2):
        net(torch.randn(1, 6, 8, 8), 0.5).square().mean().backward()
        opt.step()
    names = [n for n, _ in net.named_parameters()]
    tensors, data = optimizer_to_tensors(opt, names)
    json.dumps(data)  # the non-tensor part is plain JSON
    fresh = torch.optim.Adam(net.parameters(), lr=5.0)
    optimizer_from_tensors(fresh, names, tensors, data, "test")
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-3
    for i in a["state"]:
        for slot in a["state"][i]:
            assert torch.equal(a["state"][i][slot], b["state"][i][slot])
    with pytest.raises(UnsupportedCheckpoint):
        optimizer_from_tensors(fresh, list(reversed(names)), tensors, data, "test")


def test_a_run_is_not_overwritten_and_resume_keeps_the_recipe(faces, tmp_path):
    run = tmp_path / "run"
    train(config(faces, run, steps=2), unet=MICRO)
    with pytest.raises(UsageError, match="already holds a training run"):
        train(config(faces, run, steps=4), unet=MICRO)
    with pytest.raises(UsageError, match="--lr"):
        resolve_config(run, resume=True, lr=0.5)
    with pytest.raises(UsageError, match="nothing to resume"):
        resolve_config(tmp_path / "empty", resume=True)
    longer = resolve_config(run, resume=True, steps=3, workers=1)  # schedule options may change
    assert longer.steps == 3 and longer.workers == 1 and longer.lr == 1e-3
    result = train(longer, resume=True)  # step 3 is loaded by a worker process now
    reference = train(config(faces, tmp_path / "reference", steps=3), unet=MICRO)  # all in-process
    assert result.step == 3 and log_losses(run) == [loss for _, loss in reference.losses]
    with pytest.raises(UsageError, match="beyond --steps"):
        train(resolve_config(run, resume=True, steps=2), resume=True)
    data = json.loads((run / "config.json").read_text())
    data["train"]["model"] = None  # a run started without --model
    (run / "config.json").write_text(json.dumps(data))
    assert resolve_config(run, resume=True, model="base").model == "base"  # naming the default is no change
    with pytest.raises(UsageError, match="--model base -> small"):
        resolve_config(run, resume=True, model="small")


def test_init_from_is_stored_absolute_and_a_run_inside_val_is_refused(faces, tmp_path, monkeypatch):
    first = tmp_path / "first"
    train(config(faces, first, steps=1), unet=MICRO)
    monkeypatch.chdir(tmp_path)
    stored = resolve_config(tmp_path / "second", resume=False, data=(str(faces),), init_from="first")
    assert stored.init_from == str(first.resolve())
    assert resolve_config(tmp_path / "second", resume=False, data=(str(faces),), init_from="my-registered-name").init_from == "my-registered-name"
    with pytest.raises(UsageError, match="lies inside the validation faces"):
        train(config(faces, faces.parent / "val" / "run", val=str(faces.parent / "val")), unet=MICRO)


def test_a_run_folder_that_holds_its_data_or_val_folder_is_refused_before_writing(faces, tmp_path):
    """The run writes RUN/val/step_N.png: with --val RUN/val the grids would become validation faces on
    the next --resume, and a run folder above a data folder puts its files beside the user's. Refused
    like a run folder inside the data, before anything is written."""
    project = tmp_path / "project"
    for i in range(2):
        write_image(project / "faces" / f"{i}.png", face(i, 40))
    with pytest.raises(UsageError, match=f"--out {project} holds the training data {project / 'faces'}"):
        train(config(project / "faces", project), unet=MICRO)
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == ["faces", "faces/0.png", "faces/1.png"]
    run = tmp_path / "run"
    for i in range(2):
        write_image(run / "val" / f"{i}.png", face(i, 40))
    with pytest.raises(UsageError, match=f"--out {run} holds the validation faces {run / 'val'}"):
        train(config(faces, run, val=str(run / "val"), val_every=2), unet=MICRO)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == ["val", "val/0.png", "val/1.png"]


def test_a_folder_with_a_config_or_inside_the_data_is_not_a_new_run(faces, tmp_path):
    """A run stopped before its first checkpoint, a user's own config.json, or the data folder
    itself: a new run refuses before writing, so nothing of theirs is replaced."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": 1}')
    with pytest.raises(UsageError, match="already holds a config.json"):
        train(config(faces, mine), unet=MICRO)
    assert (mine / "config.json").read_text() == '{"my": 1}' and sorted(p.name for p in mine.iterdir()) == ["config.json"]
    for out, relation in ((faces, "is"), (faces / "run", "lies inside")):
        with pytest.raises(UsageError, match=f"{relation} the training data"):
            train(config(faces, out), unet=MICRO)
    assert not (faces / "run").exists() and not (faces / "log.jsonl").exists()
    with pytest.raises(UsageError):  # a bad --val stops the run before it writes its config
        train(config(faces, tmp_path / "badval", val=str(tmp_path / "nosuch")), unet=MICRO)
    assert not (tmp_path / "badval").exists()
    run = tmp_path / "run"
    train(config(faces, run, steps=1), unet=MICRO)
    with pytest.raises(UsageError, match="--init-from"):  # part of the recipe: --resume cannot swap the start
        resolve_config(run, resume=True, init_from=str(tmp_path / "other"))


def test_init_from_starts_from_the_earlier_model(faces, tmp_path):
    first = tmp_path / "first"
    train(config(faces, first, steps=2), unet=MICRO)
    second = tmp_path / "second"
    notes: list[str] = []
    result = train(config(faces, second, steps=1, lr=1e-12, init_from=str(first)), on_message=notes.append)
    assert any("initialised from" in n for n in notes)
    before = load_model(first / "idm.safetensors").net.state_dict()
    after = load_model(second / "idm.safetensors").net.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # lr ~ 0: the weights it started from
    assert result.step == 1 and json.loads((second / "config.json").read_text())["unet"]["channel_mult"] == [1, 1]
    with pytest.raises(UsageError, match="another architecture"):
        train(config(faces, tmp_path / "third", steps=1, model="tiny", init_from=str(first)))
    # a --model that does not take --size either: the conflict first, where following '--size 64' led to it
    with pytest.raises(UsageError, match="another architecture than --model small"):
        train(config(faces, tmp_path / "third", steps=1, model="small", init_from=str(first)))


def test_init_from_with_its_own_model_at_a_size_it_does_not_take_asks_for_another_size(faces, tmp_path):
    from facerestore.nets.idm_unet import size_multiple

    first = tmp_path / "first"
    train(config(faces, first, steps=1, model="tiny"))
    odd = 32 + size_multiple("tiny") // 2  # 34
    with pytest.raises(UsageError, match="tiny model needs an image size divisible by") as info:
        train(config(faces, tmp_path / "second", steps=1, size=odd, model="tiny", init_from=str(first)))
    assert "--size" in info.value.hint


def test_a_model_started_from_init_from_names_its_preset_in_its_card(faces, tmp_path):
    """The card said 'from --init-from' instead of the net (the architecture comes from the checkpoint)."""
    from facerestore.nets.idm_unet import idm_unet_config, preset_of

    first, second = tmp_path / "first", tmp_path / "second"
    train(config(faces, first, steps=1, model="tiny"))
    train(config(faces, second, steps=1, init_from=str(first)))
    assert json.loads((second / "idm.json").read_text())["preset"] == "tiny"
    assert preset_of(idm_unet_config("small", 64), 64) == "small" and preset_of(MICRO, 32) is None


def test_a_run_started_from_init_from_records_the_preset_of_that_model(faces, tmp_path):
    """config.json said "model": null for a run whose net came from --init-from, so `--resume --model
    tiny` was refused as a change; a run folder written so still resumes, and names the preset now."""
    first, second = tmp_path / "first", tmp_path / "second"
    train(config(faces, first, steps=1, model="tiny"))
    train(config(faces, second, steps=1, init_from=str(first)))
    stored = json.loads((second / "config.json").read_text())
    assert stored["train"]["model"] == "tiny"
    stored["train"]["model"] = None  # as written before
    (second / "config.json").write_text(json.dumps(stored))
    resumed = cli("--out", second, "--resume", "--steps", "2", "--model", "tiny", "--workers", "0", "-q")
    assert resumed.exit_code == 0, resumed.output
    assert "step 2 of 2" in resumed.output and len(log_losses(second)) == 2
    third = tmp_path / "third"
    train(config(faces, third, steps=1, init_from=str(second / "idm.safetensors")))  # a model file names its preset too
    assert json.loads((third / "config.json").read_text())["train"]["model"] == "tiny"
    train(config(faces, first.with_name("micro"), steps=1), unet=MICRO)  # a net of no preset stays "custom"
    train(config(faces, tmp_path / "fourth", steps=1, init_from=str(first.with_name("micro"))))
    assert json.loads((tmp_path / "fourth" / "config.json").read_text())["train"]["model"] == "custom"


def test_init_from_takes_a_name_registered_with_weights_import(faces, tmp_path):
    """resolve_config keeps a registered name as a name, but the run refused anything that was not an
    existing path: `--init-from my-idm` failed with 'does not exist'. It now comes from the weights store."""
    from facerestore.errors import BadWeightsOption
    from facerestore.weights.store import cache_dir, import_file

    first = tmp_path / "first"
    train(config(faces, first, steps=2), unet=MICRO)
    import_file(first / "idm.safetensors", name="my-idm")
    notes: list[str] = []
    result = train(config(faces, tmp_path / "second", steps=1, lr=1e-12, init_from="my-idm"), on_message=notes.append)
    assert f"initialised from {cache_dir() / 'my-idm.safetensors'} (trained at 32 px)" in notes
    assert result.step == 1 and json.loads((tmp_path / "second" / "config.json").read_text())["train"]["init_from"] == "my-idm"
    before = load_model(first / "idm.safetensors").net.state_dict()
    after = load_model(tmp_path / "second" / "idm.safetensors").net.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    with pytest.raises(BadWeightsOption) as unknown:  # neither a path nor a registered name: exit 2, naming both ways
        train(config(faces, tmp_path / "third", steps=1, init_from="my-idn"))
    assert unknown.value.exit_code == 2 and unknown.value.one_line() == (
        "--init-from my-idn does not exist; pass a `facerestore train` run folder, the idm.safetensors it wrote, "
        "or a name registered with `facerestore weights import FILE --name NAME`")
    with pytest.raises(BadWeightsOption, match="names the published checkpoint of another model"):
        train(config(faces, tmp_path / "fourth", steps=1, init_from="codeformer"))
    assert not (tmp_path / "third").exists() and not (tmp_path / "fourth").exists()


def test_init_from_another_architecture_is_one_line(faces, tmp_path, tiny_baseline):
    with pytest.raises(UnsupportedCheckpoint) as info:
        train(config(faces, tmp_path / "run", init_from=str(tiny_baseline)))
    assert "not an IDM model" in info.value.one_line()


def test_validation_writes_grids_and_metrics(faces, tmp_path):
    run = tmp_path / "run"
    result = train(config(faces, run, steps=2, val=str(faces / "a"), val_every=1, val_count=2, val_steps=2), unet=MICRO)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert {"input_psnr", "output_psnr", "clean_psnr", "clean_psnr_worst"} <= set(lines[0]) and lines[0]["faces"] == 2
    grid = read_image(run / "val" / "step_0000002.png").rgb
    assert grid.shape == (2 * 32, 4 * 32, 3)  # rows: faces; columns: degraded | restored | clean | f(clean)
    assert result.metrics == {k: v for k, v in lines[-1].items() if k != "step"}
    # the clean column is the first two --val faces at 32 px, and the metrics are the PSNRs of the grid's columns
    from facerestore.image_io import to_uint8
    from facerestore.metrics.psnr import psnr
    from facerestore.training.data import load_face

    cells = [[grid[32 * r : 32 * r + 32, 32 * c : 32 * c + 32] for c in range(4)] for r in range(2)]
    for r, name in enumerate(("00.png", "01.png")):
        np.testing.assert_array_equal(to_uint8(cells[r][2]), to_uint8(load_face(str(faces / "a" / name), 32)))
    for key, column in (("input_psnr", 0), ("output_psnr", 1), ("clean_psnr", 3)):
        assert lines[-1][key] == pytest.approx(np.mean([psnr(row[column], row[2]) for row in cells]), abs=0.05), key


def test_validation_on_several_presets_reports_each_and_grids_them_side_by_side(faces, tmp_path):
    run = tmp_path / "run"
    notes: list[str] = []
    cfg = config(faces, run, steps=1, val=str(faces / "a"), val_every=1, val_count=2, val_steps=2, val_degrade=("mild", "severe"))
    result = train(cfg, unet=MICRO, on_message=notes.append)
    m = result.metrics
    assert set(m["mild"]) == set(m["severe"]) == {"input_psnr", "output_psnr"} and "clean_psnr" in m and "input_psnr" not in m
    assert m["mild"]["input_psnr"] > m["severe"]["input_psnr"] + 3  # the severities are what they say
    assert any(n.startswith("validation at step 1: mild ") and "; severe " in n for n in notes)
    assert any("(mild, severe)" in n for n in notes)
    grid = read_image(run / "val" / "step_0000001.png").rgb
    assert grid.shape == (2 * 32, 6 * 32, 3)  # mild in | out | severe in | out | clean | f(clean)
    # each preset's inputs do not depend on which others are validated
    alone = train(config(faces, tmp_path / "alone", steps=1, val=str(faces / "a"), val_every=1, val_count=2, val_steps=2,
                         val_degrade=("severe", "medium")), unet=MICRO).metrics
    assert alone["severe"]["input_psnr"] == m["severe"]["input_psnr"]
    with pytest.raises(UsageError, match="unknown --val-degrade 'worst'"):
        config(faces, run, val_degrade=("mild", "worst"))
    with pytest.raises(UsageError, match="twice"):
        config(faces, run, val_degrade=("mild", "mild"))


def test_validation_with_an_identity_metric_scores_input_output_and_clean_against_the_clean_face(faces):
    """The three identities are the metric's means over the faces, read back from the grid's columns."""
    from facerestore.training.validation import load_val_faces, validate

    val_faces = load_val_faces(faces / "a", 3, 32, {"eq11": preset("eq11")}, seed=0)
    torch.manual_seed(0)
    similarity = lambda image, reference: 1.0 - float(np.abs(image - reference).mean())  # noqa: E731
    metrics, grid = validate(IDMUNet(MICRO), val_faces, steps=2, identity=similarity)
    columns = [[grid[32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)] for j in range(4)] for i in range(3)]
    for name, column in (("input", 0), ("output", 1), ("clean", 3)):
        expected = np.mean([similarity(row[column], row[2]) for row in columns])
        assert metrics[f"{name}_identity"] == pytest.approx(expected, abs=1e-4)
    assert metrics["input_identity"] < 1.0 and metrics["clean_identity"] <= 1.0
    without, _ = validate(IDMUNet(MICRO), val_faces, steps=2)
    assert not any(k.endswith("_identity") for k in without)


def test_val_identity_is_checked_before_the_first_step(faces, tmp_path):
    with pytest.raises(UsageError, match="--val-identity needs --val"):
        config(faces, tmp_path / "run", val_identity="arcface_w600k_mbf")
    steps: list[int] = []
    with pytest.raises(FaceRestoreError, match="missing.onnx") as info:
        train(config(faces, tmp_path / "run", val=str(faces / "a"), val_identity=str(tmp_path / "missing.onnx")), unet=MICRO,
              on_step=lambda report: steps.append(report.step))
    assert steps == [] and "\n" not in info.value.one_line()


# ----------------------------------------------------------------- data


def test_scan_skips_unreadable_and_tiny_files_and_pairs_targets(faces, tmp_path):
    scan = scan_faces([faces], min_side=16)
    assert len(scan.files) == 8 and len(scan.unreadable) == 1 and len(scan.tiny) == 1
    assert all(f.source == f.target for f in scan.files)
    targets = tmp_path / "clean"
    for f in scan.files[:6]:
        rel = Path(f.source).relative_to(faces)
        write_image(targets / rel, face(0, 32))
    paired = scan_faces([faces], [targets], min_side=16)
    assert len(paired.files) == 6 and len(paired.missing_targets) == 2
    assert all(Path(f.target).is_relative_to(targets) for f in paired.files)
    with pytest.raises(UsageError):
        scan_faces([faces], [targets, targets])
    with pytest.raises(UsageError, match="does not exist"):
        scan_faces([tmp_path / "nowhere"])


def test_scan_counts_broken_links_and_second_paths_to_a_file(tmp_path):
    """A link to a missing image and a link to an image already listed were left out silently."""
    root = tmp_path / "faces"
    for name in ("a.png", "b.png"):
        write_image(root / name, face(0, 32))
    (root / "c.png").symlink_to(root / "a.png")  # the same file again
    (root / "d.png").symlink_to(tmp_path / "gone.png")
    (root / "e.png").symlink_to(tmp_path / "gone2.png")
    scan = scan_faces([root], min_side=16)
    assert [Path(f.source).name for f in scan.files] == ["a.png", "b.png"]
    assert scan.duplicates == [str(root / "c.png")] and scan.broken_links == [str(root / "d.png"), str(root / "e.png")]
    assert scan.skipped == 3
    assert scan.summary() == "2 training images, 2 broken links skipped, 1 duplicate (links to a file already listed) skipped"


def test_scan_counts_a_sub_folder_it_cannot_read(tmp_path, monkeypatch):
    """Its faces were left out of the training set without a word."""
    import os

    root = tmp_path / "faces"
    write_image(root / "a.png", face(0, 32))
    write_image(root / "locked" / "b.png", face(1, 32))
    real_scandir = os.scandir

    def scandir(path=".", *args):
        if Path(path) == root / "locked":  # root lists anything: simulate a folder this user may not open
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_faces([root], min_side=16)
    assert [Path(f.source).name for f in scan.files] == ["a.png"] and scan.skipped == 1
    assert scan.summary() == f"1 training image, 1 unreadable folder skipped ({root / 'locked'})"


def test_targets_are_the_cleaned_images_and_inputs_the_originals(tmp_path):
    """Extrinsic iteration: x_d = d(x) from the original, the target is x* from --targets."""
    originals, cleaned = tmp_path / "orig", tmp_path / "clean"
    for i in range(2):
        write_image(originals / f"{i}.png", face(i, 32))
        write_image(cleaned / f"{i}.png", np.full((32, 32, 3), 64 / 255, np.float32))
    files = scan_faces([originals], [cleaned], min_side=16).files
    ds = FaceDataset(files, size=32, seed=0, degradation=preset("none"), schedule=NoiseSchedule.named("linear"), flip=False)
    for n in range(2):
        sample = ds[n]
        assert torch.allclose(sample["hq"], torch.full((3, 32, 32), 2 * 64 / 255 - 1), atol=1e-6)
        source = Path(files[int(ds.order(0)[n])].source)
        expected = torch.from_numpy(read_image(source).rgb).permute(2, 0, 1) * 2 - 1
        assert torch.allclose(sample["lq"], expected, atol=1e-6)


def test_samples_are_a_function_of_their_number(faces, tmp_path):
    files = scan_faces([faces], min_side=16).files
    make = lambda: FaceDataset(files, size=32, seed=3, degradation=preset("eq11"), schedule=NoiseSchedule.named("linear"))  # noqa: E731
    a, b = make(), make()
    for n in (5, 0, 17, 5):  # any order, any instance (= any worker or process)
        x, y = a[n], b[n]
        for key in ("lq", "hq", "gamma", "noise"):
            assert torch.equal(x[key], y[key])
    assert not torch.equal(a[1]["noise"], a[2]["noise"])
    assert a[0]["lq"].shape == (3, 32, 32) and -1 <= float(a[0]["hq"].min()) and float(a[0]["hq"].max()) <= 1
    # every epoch visits every file once, in a seeded order
    hq = [a[n]["hq"] for n in range(8)]
    assert len({t.sum().item() for t in hq}) == 8


def test_input_perturbation_changes_only_the_noise_and_is_part_of_the_recipe(faces, tmp_path):
    files = scan_faces([faces], min_side=16).files
    make = lambda s: FaceDataset(files, size=32, seed=3, degradation=preset("eq11"), schedule=NoiseSchedule.named("linear"),  # noqa: E731
                                 input_perturbation=s)
    plain, perturbed = make(0.0)[4], make(0.3)[4]
    for key in ("lq", "hq", "gamma"):
        assert torch.equal(plain[key], perturbed[key])
    xi = (perturbed["noise"] - plain["noise"]) / 0.3  # the second normal, drawn after eps
    assert abs(float(xi.mean())) < 0.05 and float(xi.std()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(UsageError, match="input-perturbation"):
        TrainConfig(data=(str(faces),), out=str(tmp_path), input_perturbation=-1.0)
    run = tmp_path / "run"
    train(config(faces, run, steps=1, input_perturbation=0.2), unet=MICRO)
    with pytest.raises(UsageError, match="--input-perturbation"):
        resolve_config(run, resume=True, input_perturbation=0.0)
    stored = json.loads((run / "config.json").read_text())
    del stored["train"]["input_perturbation"]  # a run written before the option existed used 0
    (run / "config.json").write_text(json.dumps(stored))
    assert resolve_config(run, resume=True, input_perturbation=0.0).input_perturbation == 0.0


def test_a_file_that_fails_to_decode_is_replaced_and_counted(tmp_path):
    good = tmp_path / "faces"
    write_image(good / "ok.png", face(1, 40))
    data = (good / "cut.png")
    write_image(data, face(2, 40))
    data.write_bytes(data.read_bytes()[:60])  # the header survives, the pixels do not
    files = scan_faces([good], min_side=16).files
    assert len(files) == 2  # the header looked fine
    ds = FaceDataset(files, size=32, seed=0, degradation=preset("none"), schedule=NoiseSchedule.named("linear"))
    flags = [bool(ds[n]["substituted"]) for n in range(2)]
    assert sorted(flags) == [False, True]


def test_a_damaged_cleaned_target_is_named_not_its_source(tmp_path):
    """--targets: a target cut short was blamed on its (sound) source in the run's last warning, and
    a target with no readable header was counted as usable by the scan."""
    originals, cleaned = tmp_path / "orig", tmp_path / "clean"
    for i in range(3):
        write_image(originals / f"{i}.png", face(i, 40))
        write_image(cleaned / f"{i}.png", face(i + 3, 40))
    cut = cleaned / "1.png"
    cut.write_bytes(cut.read_bytes()[:60])  # the header survives, the pixels do not
    (cleaned / "2.png").write_bytes(b"junk")
    scan = scan_faces([originals], [cleaned], min_side=16)
    assert [Path(f.source).name for f in scan.files] == ["0.png", "1.png"]
    assert scan.unreadable_targets == [str(cleaned / "2.png")] and scan.skipped == 1 and not scan.unreadable
    assert scan.summary() == f"2 training images, 1 with an unreadable cleaned target skipped ({cleaned / '2.png'})"
    ds = FaceDataset(scan.files, size=32, seed=0, degradation=preset("none"), schedule=NoiseSchedule.named("linear"))
    named = {ds[n]["unreadable"] for n in range(2)}
    assert named == {"", str(cut)}
    refused = scan_faces([originals], [cleaned], min_side=16)
    refused.files.clear()
    assert "1 with an unreadable cleaned target in --targets" in str(refused.nothing_usable([originals], 32))


def test_ranks_split_each_global_batch():
    single = list(StepBatches(start_step=3, steps=5, global_batch=4))
    split = [list(StepBatches(start_step=3, steps=5, global_batch=4, rank=r, world=2)) for r in (0, 1)]
    assert single == [[12, 13, 14, 15], [16, 17, 18, 19]]
    assert [a + b for a, b in zip(*split)] == single
    with pytest.raises(UsageError, match="divisible"):
        StepBatches(start_step=0, steps=1, global_batch=3, world=2)


# ----------------------------------------------------------------- command line


def cli(*args):
    return runner.invoke(app, ["train", *[str(a) for a in args]], catch_exceptions=False)


def one_error(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_cli_trains_and_resumes(faces, tmp_path):
    run = tmp_path / "run"
    first = cli(faces, "--out", run, "--size", "32", "--model", "tiny", "--steps", "1", "-b", "2", "--workers", "0", "--device", "cpu", "-q")
    assert first.exit_code == 0, first.output
    assert "step 1 of 1" in first.output and (run / "idm.safetensors").is_file()
    again = cli("--out", run, "--resume", "--steps", "2", "--workers", "0", "-q")
    assert again.exit_code == 0, again.output
    assert len(log_losses(run)) == 2 and json.loads((run / "config.json").read_text())["train"]["model"] == "tiny"
    leased = cli("--out", run, "--resume", "--steps", "4", "--workers", "0", "-q", "--time-limit", "0.001s")
    assert leased.exit_code == 0, leased.output
    assert "step 3 of 4" in leased.output and "stopped at the time limit; continue with" in leased.output
    plain = cli("--out", run, "--resume", "--workers", "0", "-q")  # goes on to the 4 of the last --steps, not config.json's 1
    assert plain.exit_code == 0, plain.output
    assert "step 4 of 4" in plain.output and len(log_losses(run)) == 4
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 1 and json.loads((run / "steps.json").read_text()) == {"steps": 4}
    short = cli("--out", run, "--resume", "--steps", "3", "--workers", "0", "-q")
    assert short.exit_code == 2 and "already at step 4, beyond --steps 3" in short.output


def test_cli_errors_are_one_line_with_exit_codes(faces, tmp_path, tiny_baseline):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"no training images in {empty}" in one_error(r := cli(empty, "--out", tmp_path / "r1", "--size", "32", "--model", "tiny", "--steps", "1")) and r.exit_code == 2
    assert "does not exist" in one_error(r := cli(tmp_path / "nope", "--out", tmp_path / "r2")) and r.exit_code == 2
    assert "unknown --model" in one_error(r := cli(faces, "--out", tmp_path / "r3", "--model", "huge")) and r.exit_code == 2
    assert "nothing to resume" in one_error(r := cli("--out", tmp_path / "r4", "--resume")) and r.exit_code == 2
    assert "no DATA_DIR" in one_error(r := cli("--out", tmp_path / "r5")) and r.exit_code == 2
    line = one_error(r := cli(faces, "--out", tmp_path / "r6", "--model", "tiny", "--size", "30"))
    assert "divisible by 4" in line and line.endswith("use --size 32") and r.exit_code == 2  # the nearest size; tiny is the smallest model
    line = one_error(r := cli(faces, "--out", tmp_path / "r6", "--size", "96"))  # base: multiples of 64
    assert line.endswith("use --size 128, or --model tiny, which takes 96") and r.exit_code == 2
    line = one_error(r := cli(faces, "--out", tmp_path / "r7", "--size", "32", "--init-from", tiny_baseline, "--workers", "0"))
    assert r.exit_code == 2 and line.startswith(f"error: --init-from: {tiny_baseline}") and "not an IDM model" in line  # the option must change
    assert "not a duration" in one_error(r := cli(faces, "--out", tmp_path / "r10", "--time-limit", "8")) and r.exit_code == 2
    assert "--val-identity needs --val" in one_error(r := cli(faces, "--out", tmp_path / "r8", "--val-identity", "arcface_w600k_mbf")) and r.exit_code == 2
    assert "--val-degrade ',,' names no preset" in one_error(r := cli(faces, "--out", tmp_path / "r11", "--val-degrade", ",,")) and r.exit_code == 2
    line = one_error(r := cli(faces, "--out", tmp_path / "r9", "--size", "32", "--model", "tiny", "--workers", "0", "--val", faces / "a",
                              "--val-identity", tmp_path / "missing.onnx"))
    assert r.exit_code == 2 and "--val-identity" in line and "missing.onnx" in line and not (tmp_path / "r9" / "log.jsonl").is_file()


def test_a_negative_worker_count_is_refused_before_any_work(faces, tmp_path):
    """QA reported `--workers -1` as accepted silently; it is refused, new run or resume, before anything is written."""
    run = tmp_path / "run"
    line = one_error(r := cli(faces, "--out", run, "--size", "32", "--model", "tiny", "--steps", "1", "--workers", "-1", "--device", "cpu"))
    assert r.exit_code == 2 and line == "error: --workers must be >= 0, got -1" and not run.exists()
    assert cli(faces, "--out", run, "--size", "32", "--model", "tiny", "--steps", "1", "-b", "2", "--workers", "0", "--device", "cpu", "-q").exit_code == 0
    line = one_error(r := cli("--out", run, "--resume", "--steps", "2", "--workers", "-1"))
    assert r.exit_code == 2 and line == "error: --workers must be >= 0, got -1" and len(log_losses(run)) == 1


def test_data_without_a_usable_image_is_one_line_with_what_was_skipped_and_why(tmp_path):
    """A folder without images was reported as "1 unreadable folder skipped", and skipped files only by
    a count, with advice about their size whatever the reason they were skipped for."""
    empty, poor = folders_without_usable_faces(tmp_path)
    line = one_error(r := cli(empty, "--out", tmp_path / "r1", "--size", "32", "--model", "tiny", "--steps", "1"))
    assert r.exit_code == 2 and line == (f"error: no training images in {empty}: no jpg, jpeg, png, bmp, tif, tiff, webp file in it or below; "
                                         "pass folders of aligned face images")
    line = one_error(r := cli(poor, "--out", tmp_path / "r2", "--size", "256", "--model", "tiny", "--steps", "1"))
    assert r.exit_code == 2 and line == (f"error: no usable training images in {poor}: 3 files skipped (2 smaller than 32 px on the short side, 1 unreadable); "
                                         "use faces at least 32 px on the short side (or a smaller --size: at 256 faces below 32 px are skipped), "
                                         f"and re-export or remove the unreadable files ({poor / 'c.jpg'})")
    line = one_error(r := cli(poor, empty, "--out", tmp_path / "r3", "--size", "64", "--model", "tiny", "--steps", "1"))
    assert r.exit_code == 2 and line.startswith(f"error: no usable training images in {poor}, {empty}: 3 files skipped (2 smaller than 16 px")
    assert line.endswith("; use faces at least 16 px on the short side, and re-export or remove the unreadable files "
                         f"({poor / 'c.jpg'})")  # 16 px is the least any --size keeps: no advice to lower it
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3))
    write_image(tmp_path / "good" / "a.png", face(0, 40))  # beside usable data, a folder without images is named, not "unreadable"
    assert scan_faces([tmp_path / "good", empty]).summary() == f"1 training image, 1 folder without images ({empty})"


@pytest.mark.parametrize("edit, said", [
    (lambda text: "{" + text, " is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); fix the file, or"),
    (lambda text: text.replace('"size": 32', '"size": "big"'), ': train.size is "big", not an integer; fix train.size in the file, or'),
    (lambda text: text.replace(' "lr": 0.001,\n', ""), " has no key train.lr; fix train.lr in the file, or"),
    (lambda text: text.replace('"model": "custom"', '"model": "huge"'), ': train.model "huge" is invalid (unknown --model \'huge\'; choose one of: tiny, small, base, paper, compact); '
                                                                        "fix train.model in the file, or"),
    (lambda text: text.replace('"amp": false', '"amp": "no"'), ': train.amp is "no", not true or false; fix train.amp in the file, or'),
    (lambda text: text.replace('"unet": {', '"unet": {"depth": 3, ', 1), ": unet: unknown UNet config fields ['depth']; fix unet in the file, or"),
])
def test_a_hand_edited_run_config_is_one_line_naming_the_file_and_the_key(faces, tmp_path, edit, said):
    """A run's config.json that is no run config any more stopped --resume with a traceback (a TypeError
    for "size": "big", a missing key's KeyError) or ran on with a value silently defaulted."""
    run = tmp_path / "run"
    train(config(faces, run, steps=1), unet=MICRO)
    path = run / "config.json"
    path.write_text(edit(text := path.read_text()))
    assert path.read_text() != text
    result = cli("--out", run, "--resume", "--steps", "2", "--workers", "0", "-q")
    assert result.exit_code == 2 and one_error(result) == f"error: {path}{said} start a new run with another --out"
    assert len(log_losses(run)) == 1  # nothing trained


def test_resume_refusal_shows_values_as_the_command_line_writes_them(faces, tmp_path):
    """It showed Python reprs: DATA_DIR ('/data',) -> ('/val',), --amp False -> True, --init-from default -> '/r1'."""
    run, other, first = tmp_path / "run", tmp_path / "other", tmp_path / "r1"
    other.mkdir()
    first.mkdir()
    train(config(faces, run, steps=1), unet=MICRO)
    with pytest.raises(UsageError) as info:
        resolve_config(run, resume=True, data=(str(faces), str(other)), amp=True, init_from=str(first))
    assert str(info.value) == (f"--resume keeps the recipe of the run in {run}, but DATA_DIR {faces.resolve()} -> {faces.resolve()} {other.resolve()}, "
                               f"--amp off -> on, --init-from (none) -> {first.resolve()}")


def test_resume_refuses_a_recipe_other_than_its_checkpoints_and_allows_the_schedule_to_change(faces, tmp_path):
    """config.json edited after a checkpoint was written continued those weights under another recipe
    (the command line's options were compared with config.json only); each checkpoint records its
    recipe, and resume now compares the two. What may change stays allowed."""
    run = tmp_path / "run"
    train(config(faces, run, steps=2), unet=MICRO)
    path = run / "config.json"
    original = path.read_text()
    path.write_text(original.replace('"lr": 0.001', '"lr": 0.002').replace('"degradation": "eq11"', '"degradation": "mixed"'))
    edited = cli("--out", run, "--resume", "--steps", "3", "--workers", "0", "-q")
    assert edited.exit_code == 2 and one_error(edited) == (
        f'error: {path} differs from the recipe of its checkpoint step_0000002: lr 0.001 -> 0.002, degradation "eq11" -> "mixed"; '  # as config.json holds them
        "set them back in config.json (and resume with the same options), or start a new run with another --out")
    path.write_text(original)
    given = cli("--out", run, "--resume", "--steps", "3", "--lr", "0.5", "--batch-size", "4", "--workers", "0", "-q")
    assert given.exit_code == 2 and one_error(given) == (
        f"error: --resume keeps the recipe of the run in {run}, but --batch-size 2 -> 4, --lr 0.001 -> 0.5; "
        "drop these options or give the run's values, or start a new run with another --out")
    assert len(log_losses(run)) == 2  # neither trained
    allowed = cli("--out", run, "--resume", "--steps", "3", "--workers", "0", "--device", "cpu", "--save-every", "1", "--keep", "3",
                  "--val", faces / "a", "--val-every", "5", "--val-count", "1", "--time-limit", "1h", "-q")
    assert allowed.exit_code == 0, allowed.output
    assert "step 3 of 3" in allowed.output and latest_checkpoint(run).name == "step_0000003"
    state = run / "checkpoints" / "step_0000003" / "state.json"
    written = json.loads(state.read_text())
    assert written["recipe"]["lr"] == 1e-3 and written["recipe"]["model"] == "custom"
    written["recipe"]["model"] = None  # a checkpoint that did not record the preset, and one without a recipe: resumed as before
    state.write_text(json.dumps(written))
    assert cli("--out", run, "--resume", "--steps", "4", "--workers", "0", "-q").exit_code == 0
    state = run / "checkpoints" / "step_0000004" / "state.json"
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "recipe"}))
    assert cli("--out", run, "--resume", "--steps", "5", "--workers", "0", "-q").exit_code == 0 and len(log_losses(run)) == 5


def test_a_batch_the_processes_cannot_split_is_refused_before_the_run_is_written(faces, tmp_path, monkeypatch):
    """Found only when the data loader starts, the run folder would already hold -b 3 and refuse the corrected -b 4."""
    import torch.distributed

    def no_group(*args, **kwargs):
        raise AssertionError("checked before the process group starts")

    monkeypatch.setattr(torch.distributed, "init_process_group", no_group)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):  # rank 0 of `torchrun --nproc_per_node 2`
        monkeypatch.setenv(name, value)
    run = tmp_path / "run"
    args = ("--out", run, "--size", "32", "--model", "tiny", "--steps", "1", "--workers", "0", "--device", "cpu", "-q")
    line = one_error(r := cli(faces, *args, "-b", "3"))
    assert r.exit_code == 2 and "--batch-size 3 is the global batch and must be divisible by the 2 processes" in line and "--batch-size 4" in line
    assert not run.exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli(faces, *args, "-b", "4").exit_code == 0  # the corrected run starts in the same folder
    monkeypatch.setenv("WORLD_SIZE", "3")
    line = one_error(r := cli(*args, "--resume", "--steps", "2"))
    assert r.exit_code == 2 and "divisible by the 3 processes" in line and "resume with a number of processes that divides 4" in line


@pytest.mark.parametrize(("rank", "printed"), [(None, True), ("0", True), ("1", False)])
def test_ctrl_c_says_how_to_go_on_once(faces, tmp_path, monkeypatch, rank, printed):
    """Ctrl-C reaches every torchrun process; the way on is said by the main one."""
    from facerestore.training import trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    result = cli(faces, "--out", tmp_path / "run", "--size", "32")
    assert result.exit_code == 130
    assert result.output == (f"interrupted; continue with: facerestore train --out {tmp_path / 'run'} --resume\n" if printed else "")


def test_a_rank_that_fails_leaves_its_code_and_line_for_the_others():
    """What process_group does when one rank fails: the others read it from the group's store."""
    from facerestore.errors import PeerFailed
    from facerestore.training.distributed import Dist, peer_failure, record_failure

    store = torch.distributed.HashStore()
    ranks = [Dist(rank=r, world=3) for r in range(3)]
    assert peer_failure(store, ranks[1]) is None  # nobody failed: the broken collective is the rank's own error
    record_failure(store, ranks[2], RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"))
    record_failure(store, ranks[0], UsageError("--val v holds no readable image", hint="pass a folder of aligned face images"))
    peer = peer_failure(store, ranks[1])
    assert isinstance(peer, PeerFailed) and (peer.rank, peer.exit_code) == (0, 2)  # the lowest failed rank
    assert peer.one_line() == "rank 0: --val v holds no readable image; pass a folder of aligned face images"
    peer = peer_failure(store, ranks[0])  # its own record is not a peer's
    assert (peer.rank, peer.exit_code, str(peer)) == (2, 1, "rank 2: CUDA out of memory.")
    assert peer_failure(None, ranks[1]) is None  # no store (torch without it): the rank's own error stands


@pytest.mark.parametrize(("rank", "output"), [("1", ""), ("0", "error: rank 1: cannot write x (No space left on device)\n")])
def test_a_peers_failure_ends_this_rank_quietly_with_the_peers_code(faces, tmp_path, monkeypatch, rank, output):
    from facerestore.errors import PeerFailed
    from facerestore.training import trainer

    def peer_failed(*args, **kwargs):
        raise PeerFailed(1, 2, "cannot write x (No space left on device)")

    monkeypatch.setattr(trainer, "train", peer_failed)
    monkeypatch.setenv("RANK", rank)
    result = cli(faces, "--out", tmp_path / "run", "--size", "32")
    assert (result.exit_code, result.output) == (2, output)


def test_every_train_option_has_help_text():
    import inspect
    from typing import get_type_hints

    from facerestore.cli.train import train_command

    hints = get_type_hints(train_command, include_extras=True)
    for name in inspect.signature(train_command).parameters:
        assert hints[name].__metadata__[0].help, f"{name} has no help"
    assert cli("-h").exit_code == 0


def test_file_list_is_frozen_for_resume(tmp_path):
    data = tmp_path / "faces"
    for i in range(3):
        write_image(data / f"{i}.png", face(i, 36))
    run = tmp_path / "run"
    train(config(data, run, steps=1), unet=MICRO)
    write_image(data / "new.png", face(9, 36))  # the folder changes between the crash and the resume
    notes: list[str] = []
    train(config(data, run, steps=2), unet=MICRO, resume=True, on_message=notes.append)
    assert len(load_file_list(run / "files.json")) == 3 and "3 training images (file list of the run)" in notes[0]


@pytest.mark.parametrize("edit, said", [
    (lambda text: "{" + text, " is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    (lambda text: '{"files": ' + text + "}", " holds an object, not the run's list of [source, target] image paths"),
    (lambda text: "[]", " holds [], not the run's list of [source, target] image paths"),
    (lambda text: '[["a.png"]]', ': entry 0 is ["a.png"], not a [source, target] pair of image paths'),
    (None, " does not exist: the run's list of training images is gone; restore it"),
], ids=["json", "object", "empty", "pair", "deleted"])
def test_a_damaged_file_list_is_one_line_naming_it(tmp_path, edit, said):
    """--resume with a damaged RUN/files.json ended in a JSONDecodeError or a ValueError traceback."""
    data = tmp_path / "faces"
    for i in range(2):
        write_image(data / f"{i}.png", face(i, 36))
    run = tmp_path / "run"
    train(config(data, run, steps=1), unet=MICRO)
    path = run / "files.json"
    if edit is None:
        path.unlink()
    else:
        path.write_text(edit(path.read_text()))
    line = one_error(r := cli("--out", run, "--resume", "--steps", "2", "--workers", "0", "-q"))
    fix = "" if edit is None else "; fix the file"
    assert r.exit_code == 2 and line == f"error: {path}{said}{fix}, or start a new run with another --out"
    assert len(log_losses(run)) == 1


def test_val_on_training_faces_warns_naming_both_folders(faces, tmp_path):
    """--val that is, lies inside or holds a data or --targets folder validated on training faces without
    a word. A warning, not an error: a smoke test may do it on purpose."""
    args = ("--size", "32", "--model", "tiny", "--steps", "1", "-b", "2", "--workers", "0", "--device", "cpu", "--val-count", "1", "-q")
    for i, (data, val, relation) in enumerate([(faces, faces, "is"), (faces, faces / "a", "lies inside"), (faces / "b", faces, "holds")]):
        result = cli(data, "--out", tmp_path / f"run{i}", "--val", val, *args)
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
        assert warnings == [f"warning: --val {val} {relation} the training data folder {data}: validation scores faces the model trains on; "
                            "pass a folder of held-out faces for a fair score"]
    apart = tmp_path / "held-out"
    write_image(apart / "x.png", face(3, 40))
    result = cli(faces / "a", "--out", tmp_path / "apart", "--val", apart, *args)
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_what_val_passes_over_is_named_in_warnings_after_the_checks(faces, tmp_path):
    """A --val folder's broken link, folder link up to itself and undecodable image were passed over
    without a word: validation then scored fewer faces than --val-count asked for, and nobody knew why."""
    val = tmp_path / "val"
    write_image(val / "a.png", face(1, 40))
    (val / "b.png").write_bytes(b"junk")
    (val / "c.png").symlink_to(tmp_path / "gone.png")
    (val / "up").symlink_to(tmp_path)
    args = ("--size", "32", "--model", "tiny", "--steps", "1", "-b", "2", "--workers", "0", "--device", "cpu", "--val-count", "4", "-q")
    result = cli(faces / "a", "--out", tmp_path / "run", "--val", val, *args)
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("warning:")] == [
        f"warning: --val: skipped {val / 'up'}: links to {tmp_path}, which holds {val}: following it would search outside {val} "
        "and loop back into it (link to the folders you want instead)",
        f"warning: --val: skipped {val / 'c.png'}: is a broken link (its target does not exist)",
        f"warning: --val: skipped {val / 'b.png'}: is not an image file (or is corrupt)"]
    # a refused run says only why: the warnings come once every check has passed
    result = cli(faces / "a", "--out", tmp_path / "run", "--val", val, *args)
    assert result.exit_code == 2 and "warning" not in result.output, result.output


def test_cli_warns_about_files_that_failed_to_decode(faces, tmp_path):
    data = tmp_path / "data"
    good = write_image(data / "good.png", face(1, 40))
    (data / "cut.png").write_bytes(good.read_bytes()[:200])  # a valid header, then nothing: passes the scan
    result = cli(data, "--out", tmp_path / "run", "--size", "32", "--model", "tiny", "--steps", "1", "-b", "4", "--workers", "0", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    substituted = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])["substituted"]
    assert 0 < substituted < 4
    assert (f"warning: {substituted} samples came from 1 file that could not be read ({data / 'cut.png'}) and were replaced by the next "
            f"readable one (the per-step counts are in {tmp_path / 'run' / 'log.jsonl'}); re-export or remove it") in result.output


def test_data_that_passes_the_scan_but_never_decodes_is_refused_before_the_run_folder_is_written(tmp_path):
    """Files cut short pass the header-only scan: the run wrote config.json, files.json and log.jsonl and
    only then stopped with "none of the training images can be decoded", naming no file; the same command
    then said "already holds a config.json", and --resume failed for ever on the frozen file list."""
    data = tmp_path / "data"
    for name in ("a.png", "b.png"):
        whole = write_image(data / name, face(1, 40))
        whole.write_bytes(whole.read_bytes()[:200])
    run = tmp_path / "run"
    args = (data, "--out", run, "--size", "32", "--model", "tiny", "--steps", "1", "-b", "2", "--workers", "0", "--device", "cpu", "-q")
    line = one_error(r := cli(*args))
    assert r.exit_code == 2 and line == (f"error: none of the training images in {data} can be decoded: {data / 'a.png'} is truncated "
                                         "(the PNG ends before its last chunk), and 1 other fails too; re-export or remove the files that fail to decode, "
                                         "or add images that decode, then run the same command again")
    assert not run.exists()
    write_image(data / "c.png", face(2, 40))
    again = cli(*args)
    assert again.exit_code == 0, again.output


def test_a_frozen_file_list_that_no_longer_decodes_names_its_first_file(tmp_path):
    data = tmp_path / "faces"
    for i in range(2):
        write_image(data / f"{i}.png", face(i, 36))
    run = tmp_path / "run"
    train(config(data, run, steps=1), unet=MICRO)
    for i in range(2):
        path = data / f"{i}.png"
        path.write_bytes(path.read_bytes()[:200])  # damaged after the run started: files.json still lists them
    with pytest.raises(UsageError, match=rf"none of the training images can be decoded: {re.escape(str(data))}/[01]\.png is truncated .*, and 1 other fails too$"):
        train(config(data, run, steps=2), unet=MICRO, resume=True)


def test_a_missing_init_from_or_val_identity_is_a_usage_error_naming_its_option(faces, tmp_path):
    missing = cli(faces, "--out", tmp_path / "a", "--size", "32", "--init-from", tmp_path / "nowhere")
    assert missing.exit_code == 2 and one_error(missing).startswith(f"error: --init-from {tmp_path / 'nowhere'} does not exist")
    (tmp_path / "picture.txt").write_text("not a model")
    wrong = cli(faces, "--out", tmp_path / "b", "--size", "32", "--init-from", tmp_path / "picture.txt")
    assert wrong.exit_code == 2 and one_error(wrong).startswith(f"error: --init-from: {tmp_path / 'picture.txt'} is not a PyTorch or safetensors checkpoint (a text file)")
    (tmp_path / "arcface.onnx").write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x032.1" + bytes(range(256)))  # an ONNX model's first bytes
    onnx = cli(faces, "--out", tmp_path / "d", "--size", "32", "--init-from", tmp_path / "arcface.onnx")
    assert onnx.exit_code == 2 and one_error(onnx).startswith(f"error: --init-from: {tmp_path / 'arcface.onnx'} is not a PyTorch or safetensors checkpoint (an ONNX model)")
    assert "pickled" not in onnx.output and "unpickler" not in onnx.output
    arcface = cli(faces, "--out", tmp_path / "c", "--size", "32", "--val", faces, "--val-identity", tmp_path / "none.onnx")
    assert arcface.exit_code == 2 and "--val-identity" in one_error(arcface) and "--weights" not in arcface.output
    assert arcface.output.strip() == one_error(arcface)  # alone: "N validation faces from ..." came first (QA)
    if importlib.util.find_spec("onnxruntime") is not None:  # a file that is no ONNX model: one line, not onnxruntime's traceback
        (tmp_path / "junk.onnx").write_text("<html>not found</html>")
        junk = cli(faces, "--out", tmp_path / "e", "--size", "32", "--val", faces, "--val-identity", tmp_path / "junk.onnx", "-q")
        assert junk.exit_code == 2 and one_error(junk).startswith(f"error: --val-identity: {tmp_path / 'junk.onnx'} cannot be loaded by onnxruntime")
    targets = cli(faces, "--out", tmp_path / "d", "--size", "32", "--targets", tmp_path / "cleaned")
    assert targets.exit_code == 2 and f"--targets folder {tmp_path / 'cleaned'} does not exist" in one_error(targets)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_targets_count_mismatch_counts_in_words_and_says_to_repeat_the_option(faces, tmp_path):
    """`--targets A B` gives B to DATA_DIR (each --targets takes one folder): the line must count right
    ('1 --targets folder', not '1 --targets folders') and say how to pass several."""
    cleaned = tmp_path / "cleaned"
    cleaned.mkdir()
    result = cli(faces, "--out", tmp_path / "run", "--size", "32", "--targets", cleaned, cleaned)
    assert result.exit_code == 2
    assert one_error(result) == ("error: 1 --targets folder for 2 data folders; give one cleaned folder per DATA_DIR, "
                                 "in the same order, each after its own --targets (--targets A --targets B)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("how", ["ctrl-c", "time limit"])
def test_a_stopped_run_says_how_to_go_on_once_and_names_its_checkpoints(faces, tmp_path, monkeypatch, how):
    """The trainer's note and the command's line both said 'continue with --resume'; and 'checkpoint
    at step N: RUN/checkpoints' named the folder of all checkpoints, not the one just written."""
    from facerestore.training import loop

    if how == "ctrl-c":  # as if Ctrl-C came during the first step
        init = loop.StopAtStepEnd.__init__

        def asked(self, enabled):
            init(self, enabled)
            self.requested = "SIGINT"

        monkeypatch.setattr(loop.StopAtStepEnd, "__init__", asked)
    run = tmp_path / "run"
    limit = ["--time-limit", "0.001s"] if how == "time limit" else []
    result = cli(faces, "--out", run, "--size", "32", "--model", "tiny", "--steps", "3", "-b", "2", "--workers", "0", "--device", "cpu", *limit)
    assert result.exit_code == (130 if how == "ctrl-c" else 0), result.output
    lines = result.output.splitlines()
    assert f"checkpoint at step 1: {run / 'checkpoints' / 'step_0000001'}" in lines
    assert [line for line in lines if "--resume" in line] == [
        f"{'interrupted' if how == 'ctrl-c' else 'stopped at the time limit'}; continue with: facerestore train --out {run} --resume"]
    assert ("stopped by SIGINT after step 1 (checkpoint saved)" in lines) == (how == "ctrl-c")
    assert ("time limit of 0.001s reached after step 1" in lines) == (how == "time limit")


def test_the_final_line_gives_a_weights_option_that_pastes_into_a_shell(faces, tmp_path):
    """'(use --weights RUN --method idm)' is meant to be pasted; a run folder with a space broke it."""
    import shlex

    run = tmp_path / "my runs" / "idm 1"
    result = cli(faces, "--out", run, "--size", "32", "--model", "tiny", "--steps", "1", "-b", "2", "--workers", "0", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    advice = result.output.split("(use ", 1)[1].split(")\n", 1)[0]
    assert shlex.split(advice) == ["--weights", str(run), "--method", "idm"]


def test_scan_counts_a_link_up_and_a_pipe_and_never_enters_the_run_folder(tmp_path):
    """faces/up -> .. put every image beside the data folder (the run's val/step_N.png grids among them)
    into the training set; a pipe named x.png was left out without a word."""
    import os

    root, run = tmp_path / "faces", tmp_path / "run"
    write_image(root / "a.png", face(0, 32))
    write_image(run / "val" / "step_0000100.png", face(1, 32))
    (root / "up").symlink_to("..")
    (root / "grids").symlink_to(run / "val")
    os.mkfifo(root / "pipe.png")
    scan = scan_faces([root], min_side=16, exclude=[run])
    assert [Path(f.source).name for f in scan.files] == ["a.png"] and scan.links_up == [str(root / "up")]
    assert scan.unreadable == [str(root / "pipe.png")]
    assert scan.summary() == f"1 training image, 1 unreadable skipped, 1 link to a folder above not followed ({root / 'up'})"


def test_a_step_that_runs_out_of_memory_is_one_line_naming_the_batch_and_what_to_change(faces, tmp_path, monkeypatch):
    """A GPU too small for the batch gave torch's traceback, with its advice about the allocator."""
    import torch

    from facerestore.training import trainer

    real = trainer.x0_regression_loss
    calls = []

    def second_step_too_big(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB of which "
                                         "1.10 GiB is free. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "x0_regression_loss", second_step_too_big)
    result = cli(faces / "a", "--out", tmp_path / "run", "--size", "32", "--model", "tiny", "--steps", "3", "-b", "2", "--workers", "0", "--device", "cpu", "-q")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "error: out of memory in training step 2 with --batch-size 2 at --size 32 (Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
        "7.79 GiB of which 1.10 GiB is free); start a new run with a smaller --batch-size or --size, or --amp, or train on a GPU with more "
        "memory (a resumed run keeps its --batch-size and --size)")
