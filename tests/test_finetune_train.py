"""Unpaired fine-tuning, stage 2: CodeFormer's code-level recipe (frozen parts, target codes from the
frozen pre-trained copy, losses, EMA, LR schedule, exact resume, export) and the generic
L1 + LPIPS + GAN path (LPIPS missing offline: one warning, L1 still goes down; exact resume with the
discriminator). Tiny nets at 64 px; pairs are synthetic faces and smoothed copies as "targets"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_finetune as shared
import torch
import torch.nn.functional as F
from safetensors import safe_open
from test_finetune import face, truncate

from facerestore.errors import UsageError
from facerestore.image_io import write_image
from facerestore.methods.base import MethodOptions
from facerestore.methods.registry import build_method
from facerestore.training import distributed
from facerestore.training.checkpoints import latest_checkpoint
from facerestore.training.finetune.data import Pair, PairDataset
from facerestore.training.finetune.objectives import (
    CODEFORMER_FROZEN,
    CodeObjective,
    UNetDiscriminatorSN,
    load_base_net,
)
from facerestore.training.finetune.trainer import (
    TrainSettings,
    lr_at,
    milestones_for,
    train_pairs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = distributed.Dist()

weights = shared.weights  # the shared fixture


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> list[Pair]:
    """Four (input, target) pairs at 64 px; the targets (stand-ins for pseudo-targets) are smoothed, brighter inputs."""
    root = tmp_path_factory.mktemp("pairs")
    out = []
    for i in range(4):
        lq = face(i)
        write_image(root / "lq" / f"{i}.png", lq)
        write_image(root / "targets" / f"{i}.png", clean(lq))
        out.append(Pair(str(root / "lq" / f"{i}.png"), str(root / "targets" / f"{i}.png")))
    return out


def clean(img: np.ndarray) -> np.ndarray:
    import cv2

    return np.clip(0.6 * cv2.GaussianBlur(img, (5, 5), 1.5) + 0.35, 0, 1)


@pytest.fixture(scope="module")
def real_faces(tmp_path_factory) -> list[str]:
    """'Real high-quality faces' for the discriminator: other faces, as clean as the targets."""
    root = tmp_path_factory.mktemp("real")
    for i in range(3):
        write_image(root / f"{i}.png", clean(face(10 + i, 80)))
    return [str(p) for p in sorted(root.glob("*.png"))]


def code_settings(**changes) -> TrainSettings:
    base = dict(base="codeformer", steps=5, batch_size=2, lr=1e-3, ema=0.9, size=64, save_every=2, workers=0)
    return TrainSettings(**(base | changes))


def image_settings(**changes) -> TrainSettings:
    base = dict(base="baseline", steps=5, batch_size=2, lr=2e-3, ema=0.9, size=64, save_every=2, workers=0, disc_channels=8)
    return TrainSettings(**(base | changes))


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


class Crash(Exception):
    pass


# ----------------------------------------------------------------- CodeFormer, code level


def batch_of(pairs, n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    items = [PairDataset(pairs, size=64, seed=seed)[i] for i in range(n)]
    return {k: torch.stack([item[k] for item in items]) for k in ("lq", "target")}


def test_frozen_parts_stay_trained_parts_move_and_targets_come_from_the_frozen_copy(weights, pairs):
    import contextlib

    net = load_base_net("codeformer", weights["codeformer"])
    reference = load_base_net("codeformer", weights["codeformer"])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    objective = CodeObjective(net, reference, device=torch.device("cpu"), distributed=False, lr=1e-2)
    assert objective.reference is not objective.model
    trained = set(objective.names)
    assert trained == {n for n, _ in net.named_parameters() if not n.startswith(CODEFORMER_FROZEN)}
    assert {n.split(".")[0] for n in trained} == {"position_emb", "encoder", "feat_emb", "ft_layers", "idx_pred_layer"}
    batch = batch_of(pairs)
    for _ in range(3):
        objective.step(batch, contextlib.nullcontext)
    after = net.state_dict()
    for key, value in before.items():
        if key.startswith(CODEFORMER_FROZEN):
            assert torch.equal(after[key], value), f"{key} changed"
        else:
            assert not torch.equal(after[key], value), f"{key} did not change"
    for key, value in reference.state_dict().items():  # the frozen copy is still the pre-trained net, all of it
        assert torch.equal(value, before[key]), key

    # target codes: nearest codes of the PRE-TRAINED encoder's features of the pseudo-target
    pretrained = load_base_net("codeformer", weights["codeformer"]).eval()
    with torch.no_grad():
        expected = pretrained.nearest_codes(pretrained.encode(batch["target"]))
        drifted = net.nearest_codes(net.encode(batch["target"]))
    assert torch.equal(objective.target_codes(batch["target"]), expected)
    assert not torch.equal(drifted, expected)  # the trained encoder moved: using it would be wrong
    # DT-BFR's losses: mean squared error to the codebook vectors (x1.0) + 0.5 cross-entropy on the logits
    parts = objective.losses(batch["lq"], batch["target"], contextlib.nullcontext)
    logits, lq_feat = net.code_forward(batch["lq"])
    quant = net.quantize.embedding.weight[expected].reshape(2, 16, 16, 16).permute(0, 3, 1, 2)
    torch.testing.assert_close(parts["feat"], F.mse_loss(lq_feat, quant))
    torch.testing.assert_close(parts["ce"], 0.5 * F.cross_entropy(logits.reshape(-1, 64), expected.reshape(-1)))


def test_short_run_lowers_the_code_loss_ema_follows_the_formula_and_the_export_loads(weights, pairs, tmp_path):
    from facerestore.weights.store import import_file

    run = tmp_path / "run"
    run.mkdir()
    result = train_pairs(run, code_settings(steps=15, save_every=1, keep=0, lr=2e-3, ema=0.9), pairs, weights["codeformer"], CPU)
    losses = [loss for _, loss in result.losses]
    assert len(losses) == 15
    assert np.mean(losses[-4:]) < 0.75 * np.mean(losses[:4])
    rows = log(run)
    assert {"loss", "feat", "ce", "lr", "seconds"} <= set(rows[0]) and rows[-1]["step"] == 15
    assert [r["lr"] for r in rows] == [lr_at(s, 2e-3, milestones_for(15)) for s in range(15)]

    pretrained = load_base_net("codeformer", weights["codeformer"]).state_dict()
    with safe_open(str(run / "checkpoints" / "step_0000001" / "model.safetensors"), "pt") as m, \
            safe_open(str(run / "checkpoints" / "step_0000001" / "ema.safetensors"), "pt") as e:
        for key in ("encoder.blocks.0.weight", "ft_layers.0.linear1.weight", "quantize.embedding.weight"):
            # basicsr model_ema: ema = decay * ema + (1 - decay) * p, from the pre-trained weights, no warm-up
            torch.testing.assert_close(e.get_tensor(key), 0.9 * pretrained[key] + 0.1 * m.get_tensor(key), rtol=0, atol=1e-6)

    # the export is the last EMA, every key (frozen ones included), and loads with --method codeformer --weights
    assert result.model == run / "codeformer-finetuned.safetensors"
    with safe_open(str(result.model), "pt") as handle:
        exported = {k: handle.get_tensor(k) for k in handle.keys()}
        assert handle.metadata()["format"] == "facerestore-codeformer" and handle.metadata()["step"] == "15"
    with safe_open(str(run / "checkpoints" / "step_0000015" / "ema.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(exported) == set(pretrained)
        assert all(torch.equal(exported[k], handle.get_tensor(k)) for k in handle.keys())
    import_file(result.model, name="codeformer-ft-test")
    for value in (result.model, "codeformer-ft-test"):
        method = build_method("codeformer", MethodOptions(weights=value, fidelity=0.5))
        for key, tensor in method.net.state_dict().items():
            assert torch.equal(tensor, exported[key]), key
    out = method.restore(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_lr_schedule_is_torch_multisteplr():
    assert milestones_for(40_000) == (35_000, 38_000)  # DT-BFR's milestones
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[7, 9], gamma=0.5)
    for step in range(12):
        assert lr_at(step, 1e-4, (7, 9)) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        scheduler.step()


def _straight_and_crashed_at_3(tmp_path: Path, weights, pairs) -> tuple[Path, Path]:
    """A 5-step run left whole, and the same run stopped by a crash during step 3 (checkpoint at 2)."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    straight.mkdir()
    crashed.mkdir()
    train_pairs(straight, code_settings(), pairs, weights["codeformer"], CPU)

    def crash_at_3(report):
        if report.step == 3:
            raise Crash

    with pytest.raises(Crash):
        train_pairs(crashed, code_settings(), pairs, weights["codeformer"], CPU, on_step=crash_at_3)
    return straight, crashed


def test_exact_resume_code_level(weights, pairs, tmp_path):
    straight, crashed = _straight_and_crashed_at_3(tmp_path, weights, pairs)
    assert latest_checkpoint(crashed).name == "step_0000002"
    resumed = train_pairs(crashed, code_settings(), pairs, weights["codeformer"], CPU)
    assert [s for s, _ in resumed.losses] == [3, 4, 5]
    assert [r["loss"] for r in log(crashed)] == [r["loss"] for r in log(straight)]  # the lost step 3 redone identically
    _same_checkpoints(straight, crashed, 5, ("model", "ema", "optimizer"))
    a, b = (run / "codeformer-finetuned.safetensors" for run in (straight, crashed))
    _same_files(a, b)


def test_extending_a_run_keeps_the_lr_of_its_original_length(weights, pairs, tmp_path):
    """A 5-step run interrupted at step 3 and resumed with steps=8 (as `--resume --steps 8`, which passes the
    milestones the run config keeps): steps 1-5 get the rates and losses of the uninterrupted 5-step run, the
    extra steps its last rate. milestones_for(8) = (7, 8) would have left step 5 undecayed."""
    straight, extended = _straight_and_crashed_at_3(tmp_path, weights, pairs)
    original = milestones_for(5)
    assert original == (4, 5)
    resumed = train_pairs(extended, code_settings(steps=8, milestones=original), pairs, weights["codeformer"], CPU)
    assert resumed.step == 8
    rows, reference = log(extended), log(straight)
    assert [r["lr"] for r in rows[:5]] == [r["lr"] for r in reference] == [1e-3, 1e-3, 1e-3, 1e-3, 5e-4]
    assert [r["loss"] for r in rows[:5]] == [r["loss"] for r in reference]
    assert [r["lr"] for r in rows[5:]] == [2.5e-4] * 3


def _same_checkpoints(a: Path, b: Path, step: int, names) -> None:
    for name in names:
        with safe_open(str(a / "checkpoints" / f"step_{step:07d}" / f"{name}.safetensors"), "pt") as x, \
                safe_open(str(b / "checkpoints" / f"step_{step:07d}" / f"{name}.safetensors"), "pt") as y:
            assert set(x.keys()) == set(y.keys())
            assert all(torch.equal(x.get_tensor(k), y.get_tensor(k)) for k in x.keys()), name


def _same_files(a: Path, b: Path) -> None:
    with safe_open(str(a), "pt") as x, safe_open(str(b), "pt") as y:
        assert set(x.keys()) == set(y.keys()) and all(torch.equal(x.get_tensor(k), y.get_tensor(k)) for k in x.keys())


# ----------------------------------------------------------------- generic: L1 + LPIPS + GAN


def test_generic_path_without_lpips_warns_once_and_lowers_l1(tiny_baseline, pairs, real_faces, tmp_path):
    notes: list[str] = []
    run = tmp_path / "run"
    run.mkdir()
    result = train_pairs(run, image_settings(steps=30, save_every=30, lr=1e-3), pairs, tiny_baseline, CPU, real=real_faces, on_message=notes.append)
    warnings = [n for n in notes if "LPIPS" in n]
    assert len(warnings) == 1 and warnings[0].startswith("warning: LPIPS is unavailable, fine-tuning with L1 + GAN only")
    assert "vgg16-397923af.pth" in warnings[0] and "facerestore weights import" in warnings[0] and "\n" not in warnings[0]
    assert not result.lpips_used
    rows = log(run)
    assert all("lpips" not in r and {"l1", "gan", "d_real", "d_fake"} <= set(r) for r in rows)
    l1 = [r["l1"] for r in rows]
    assert np.mean(l1[-5:]) < 0.85 * np.mean(l1[:5])
    files = {p.name for p in (run / "checkpoints" / "step_0000030").iterdir()}
    assert files == {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "discriminator.safetensors", "optimizer_d.safetensors", "state.json"}
    method = build_method("baseline", MethodOptions(weights=result.model))  # the export loads as the baseline method
    with safe_open(str(run / "checkpoints" / "step_0000030" / "ema.safetensors"), "pt") as handle:  # the export is the last EMA
        for key, tensor in method.net.state_dict().items():
            assert torch.equal(tensor, handle.get_tensor(key)), key
    assert method.restore(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_generic_path_uses_lpips_when_available(tiny_baseline, pairs, monkeypatch, tmp_path):
    """With a (stand-in) LPIPS module the loss has the 0.1-weighted LPIPS term and no warning."""
    from facerestore.training.finetune import trainer

    class FakeLPIPS(torch.nn.Module):
        def forward(self, a, b, normalize=False):
            assert not normalize and a.min() >= -1.5
            return ((a - b) ** 2).mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setattr(trainer, "load_lpips_for_training", lambda device, offline, warn: FakeLPIPS())
    notes: list[str] = []
    run = tmp_path / "run"
    run.mkdir()
    result = train_pairs(run, image_settings(steps=2, gan_weight=0.0), pairs, tiny_baseline, CPU, on_message=notes.append)
    rows = log(run)
    assert result.lpips_used and not notes
    assert all(set(r) >= {"l1", "lpips"} and "gan" not in r for r in rows)
    assert rows[0]["loss"] == pytest.approx(rows[0]["l1"] + rows[0]["lpips"], rel=1e-5)


def test_exact_resume_with_the_discriminator(tiny_baseline, pairs, real_faces, tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    train_pairs(straight, image_settings(), pairs, tiny_baseline, CPU, real=real_faces)

    def crash_at_3(report):
        if report.step == 3:
            raise Crash

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    with pytest.raises(Crash):
        train_pairs(crashed, image_settings(), pairs, tiny_baseline, CPU, real=real_faces, on_step=crash_at_3)
    train_pairs(crashed, image_settings(), pairs, tiny_baseline, CPU, real=real_faces)
    assert log(crashed) and [{k: v for k, v in r.items() if k != "seconds"} for r in log(crashed)] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in log(straight)]
    _same_checkpoints(straight, crashed, 5, ("model", "ema", "optimizer", "discriminator", "optimizer_d"))


def test_gan_needs_real_faces(tiny_baseline, pairs, tmp_path):
    with pytest.raises(UsageError, match="needs real high-quality faces"):
        train_pairs(tmp_path, image_settings(), pairs, tiny_baseline, CPU)


def test_discriminator_shapes_and_spectral_norm():
    disc = UNetDiscriminatorSN(8)
    out = disc(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out.shape == (2, 1, 32, 32)
    names = set(disc.state_dict())
    assert sum(1 for n in names if n.endswith("parametrizations.weight.original")) == 8  # all but the first conv and the head
    with pytest.raises(ValueError, match="divisible by 8"):
        disc(torch.zeros(1, 3, 30, 30))


def test_pairs_are_a_function_of_the_sample_number(pairs, real_faces):
    a = PairDataset(pairs, size=64, seed=3, real=real_faces)
    b = PairDataset(pairs, size=64, seed=3, real=real_faces)
    for n in (0, 5, 17):
        x, y = a[n], b[n]
        assert all(torch.equal(x[k], y[k]) for k in ("lq", "target", "real"))
    flips = [bool(torch.equal(a[n]["lq"], a[n]["lq"].flip(-1))) for n in range(8)]
    assert not any(flips)  # non-symmetric faces: a flip is visible, and input and target flip together:
    for n in range(8):
        item = a[n]
        direct = PairDataset(pairs, size=64, seed=3, flip=False)[n]
        flipped = torch.equal(item["lq"], direct["lq"].flip(-1))
        assert flipped or torch.equal(item["lq"], direct["lq"])
        assert torch.equal(item["target"], direct["target"].flip(-1) if flipped else direct["target"])


def test_a_pair_or_real_face_that_fails_to_decode_is_replaced_by_the_next_and_flagged(pairs, real_faces, tmp_path):
    """A truncated input, pseudo-target or --real face passes the header-only scans; the sample that
    draws it takes the next pair (real face) of the same epoch's order instead, still a function of n."""
    import shutil

    cut = []
    for i, pair in enumerate(pairs):
        lq, target = tmp_path / f"lq{i}.png", tmp_path / f"t{i}.png"
        shutil.copy(pair.lq, lq)
        shutil.copy(pair.target, target)
        cut.append(Pair(str(lq), str(target)))
    truncate(Path(cut[1].lq))
    truncate(Path(cut[2].target))
    reals = [str(shutil.copy(r, tmp_path / f"real{i}.png")) for i, r in enumerate(real_faces)]
    truncate(Path(reals[0]))
    damaged = PairDataset(cut, size=64, seed=3, flip=False, real=reals)
    intact = PairDataset(pairs, size=64, seed=3, flip=False, real=real_faces)
    flags, named = [], set()
    for n in range(8):  # two epochs of pairs
        item, reference = damaged[n], intact[n]
        flags.append(bool(item["substituted"]))
        named.add(item["unreadable"])
        for key in ("lq", "target", "real"):
            matches = [m for m in range(12) if torch.equal(item[key], intact[m][key])]
            assert matches, (n, key)  # always a real sample of the intact set, never a crash
        replaced = not torch.equal(item["lq"], reference["lq"]) or not torch.equal(item["real"], reference["real"])
        assert bool(item["substituted"]) == replaced, n
        assert torch.equal(item["lq"], damaged[n]["lq"])  # deterministic
    assert 0 < sum(flags) < 8
    # the file that failed is named, the pseudo-target too: not the input beside it, which is fine
    assert cut[2].target in named and named <= {"", cut[1].lq, cut[2].target, reals[0]}


def test_training_on_pairs_with_a_truncated_file_runs_and_counts_the_replacements(weights, pairs, tmp_path):
    import shutil

    root = tmp_path / "pairs"
    root.mkdir()
    cut = []
    for i, pair in enumerate(pairs):
        cut.append(Pair(str(shutil.copy(pair.lq, root / f"lq{i}.png")), str(shutil.copy(pair.target, root / f"t{i}.png"))))
    truncate(Path(cut[0].lq))
    run = tmp_path / "run"
    run.mkdir()
    result = train_pairs(run, code_settings(steps=2, save_every=2), cut, weights["codeformer"], CPU)  # one epoch: 4 samples
    assert result.step == 2 and result.substituted == 1 and result.unreadable == [cut[0].lq]  # named in the run's last warning
    assert sum(r.get("substituted", 0) for r in log(run)) == 1
