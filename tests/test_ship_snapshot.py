"""`python -m facerestore.training.ship_snapshot`: a run's chosen validation snapshot (of a
`train_bundled_idm` run, or a checkpoint of a `facerestore train` run) becomes the bundled IDM model
with a complete card, and bad requests leave the destination untouched."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from facerestore.errors import UsageError
from facerestore.image_io import write_image
from facerestore.methods.idm import load_model, save_model
from facerestore.nets.idm_unet import IDMUNet, UNetConfig
from facerestore.training.ship_snapshot import best_step, gains, main, ship
from facerestore.training.trainer import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=(1, 1), attention_levels=(), in_channels=6, out_channels=3,
                   num_head_channels=32)


def fake_run(root, steps=(250, 500, 750)):
    """A run folder as `train_bundled_idm` leaves it: one snapshot per validation, the latest card on top."""
    history = []
    for index, step in enumerate(steps):
        torch.manual_seed(index)
        net = IDMUNet(MICRO)
        history.append({"step": step, "severe": {"output_identity": 0.5 - index / 100}})
        card = {"name": "idm", "steps": step, "train_seconds": 100 * (index + 1), "history": list(history)}
        save_model(net, root / "steps" / f"idm-step{step}.safetensors", 64, dtype=torch.float16, card=card)
        save_model(net, root / "idm.safetensors", 64, dtype=torch.float16, card={**card, "sha256": "stale"})
    return root


def test_ships_the_chosen_step_with_the_whole_history_and_its_sha256(tmp_path):
    run = fake_run(tmp_path / "run")
    out = tmp_path / "models"
    path = ship(run, 500, "best severe identity", out)
    assert path.read_bytes() == (run / "steps" / "idm-step500.safetensors").read_bytes()
    card = json.loads((out / "idm.json").read_text())
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [h["step"] for h in card["history"]] == [250, 500, 750]  # the later steps too, not the snapshot's own history
    assert card["chosen_step"] == 500 and card["steps"] == 500 and card["choice"] == "best severe identity"
    assert card["train_seconds_to_step"] == 200 and card["run_seconds"] == 300 and "train_seconds" not in card
    model = load_model(path)
    reference = load_model(run / "steps" / "idm-step500.safetensors")
    for a, b in zip(model.net.state_dict().values(), reference.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not list(out.glob(".*.tmp"))


def test_a_step_the_run_did_not_validate_is_refused_and_nothing_is_written(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    out = tmp_path / "models"
    with pytest.raises(UsageError, match="idm-step600.safetensors does not exist"):
        ship(run, 600, "why", out)
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--step", "600", "--why", "x", "--out", str(out)])
    assert "pick a step the run validated: idm-step250, idm-step500, idm-step750" in str(exit_info.value)
    assert "\n" not in str(exit_info.value)
    with pytest.raises(UsageError, match="--why is empty"):
        ship(run, 500, "  ", out)
    assert not out.exists()


def test_a_damaged_card_is_one_clear_error(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "idm.json").write_text("{not json")
    with pytest.raises(UsageError, match="idm.json cannot be read as JSON"):
        ship(run, 500, "why", tmp_path / "models")


def trained_run(tmp_path, **changes):
    """(faces folder, run folder) of a `facerestore train` run that kept and validated every step."""
    faces = tmp_path / "faces"
    rng = torch.Generator().manual_seed(0)
    for i in range(4):
        write_image(faces / f"{i}.png", torch.rand(40, 40, 3, generator=rng).numpy())
    run = tmp_path / "run"
    train(TrainConfig(**{"data": (str(faces),), "out": str(run), "size": 32, "batch_size": 2, "save_every": 1, "keep": 0, "workers": 0,
                         "device": "cpu", "val": str(faces), "val_every": 1, "val_count": 2, "val_steps": 1, **changes}), unet=MICRO)
    return faces, run


def test_a_facerestore_train_checkpoint_ships_as_fp16_with_its_validation(tmp_path):
    faces, run = trained_run(tmp_path, steps=3)
    out = tmp_path / "models"
    path = ship(run, 2, "step 2", out)
    card = json.loads((out / "idm.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert card["step"] == 2 and card["samples"] == 4 and card["chosen_step"] == 2 and card["choice"] == "step 2"
    assert card["validation"] == {k: v for k, v in metrics[1].items() if k != "step"} and card["history"] == metrics
    assert card["recipe"]["batch_size"] == 2 and card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    shipped, ema = load_model(path), load_model(run / "checkpoints" / "step_0000002" / "ema.safetensors")
    for key, value in ema.net.state_dict().items():
        assert torch.equal(shipped.net.state_dict()[key], value.half().float())  # fp16, as the package ships
    assert path.stat().st_size < (run / "checkpoints" / "step_0000002" / "ema.safetensors").stat().st_size * 0.6
    assert not list(out.glob(".ship-*"))
    with pytest.raises(UsageError) as info:
        ship(run, 5, "why", out)
    assert "kept checkpoints: step_0000001, step_0000002, step_0000003; train with --keep 0" in info.value.one_line()
    with pytest.raises(UsageError, match="is not a training run folder"):
        ship(faces, 1, "why", out)


def row(psnr_in, psnr_out, id_in, id_out):
    return {"input_psnr": psnr_in, "output_psnr": psnr_out, "input_identity": id_in, "output_identity": id_out}


def test_best_step_beats_the_input_on_most_counts_then_keeps_identity_best(tmp_path):
    history = [
        {"step": 250, "mild": row(30, 30.1, 0.99, 0.991), "severe": row(23, 23.1, 0.49, 0.488), "clean": {"output_psnr": 50}},
        {"step": 500, "mild": row(30, 30.4, 0.99, 0.992), "severe": row(23, 23.3, 0.49, 0.491), "clean": {"output_psnr": 45}},
        {"step": 750, "mild": row(30, 30.5, 0.99, 0.993), "severe": row(23, 23.4, 0.49, 0.490 + 1e-9), "clean": {"output_psnr": 44}},
        {"step": 1000, "mild": row(30, 31.0, 0.99, 0.995), "severe": row(23, 23.6, 0.49, 0.45)},
    ]
    step, why = best_step(history, tmp_path)
    # 500 and 750 beat the input on all 4 counts; 500 keeps severe identity better (+0.001 vs +0.000)
    assert step == 500 and "4 of 4 counts" in why and "worst identity gain +0.0010" in why
    flat = [{"step": 1, **row(25, 25.5, 0.8, 0.79)}, {"step": 2, **row(25, 25.2, 0.8, 0.81)}]  # one preset: flat rows
    assert best_step(flat, tmp_path)[0] == 2
    with pytest.raises(UsageError, match="no validation with input and output numbers"):
        best_step([{"step": 1, "loss": 0.1}], tmp_path)


def test_ship_best_writes_the_chosen_step_and_the_reason(tmp_path):
    _, run = trained_run(tmp_path, steps=2, val_degrade=("mild", "severe"))
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected, _ = best_step(history, run)
    main([str(run), "--step", "best", "--out", str(tmp_path / "models")])
    card = json.loads((tmp_path / "models" / "idm.json").read_text())
    assert card["chosen_step"] == expected and card["choice"].startswith("--step best of 2 validations")
    with pytest.raises(SystemExit, match="neither a step number nor `best`"):
        main([str(run), "--step", "last", "--out", str(tmp_path / "models")])


def test_ship_best_without_identity_names_the_psnr_fallback(tmp_path):
    # a run validated without --val-identity scores PSNR only: the reason must not call PSNR "identity"
    _, run = trained_run(tmp_path, steps=2)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("identity" in key for entry in history for key in entry)
    step, _ = best_step(history, run)
    psnr = [value for metric, value in gains(next(e for e in history if e["step"] == step)) if metric == "psnr"]
    main([str(run), "--step", "best", "--out", str(tmp_path / "models")])
    choice = json.loads((tmp_path / "models" / "idm.json").read_text())["choice"]
    assert f"worst PSNR gain {min(psnr):+.3f} dB (no identity scores in the validation)" in choice
    assert f"mean PSNR gain {sum(psnr) / len(psnr):+.3f} dB" in choice
    assert "identity gain" not in choice
