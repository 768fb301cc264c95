"""`train`'s memory check before the first step: the traced activations equal those of a real
forward, grow linearly in the batch, and a step too large for the memory is refused with one line
(exit 2) before the run folder is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.diffusion.denoiser import ConcatCondition
from facerestore.diffusion.losses import x0_regression_loss
from facerestore.errors import UsageError
from facerestore.image_io import write_image
from facerestore.nets.guided_unet import UNetConfig
from facerestore.nets.idm_unet import IDMUNet, idm_unet_config, parameter_count
from facerestore.training import step_memory as sm
from facerestore.training.trainer import TrainConfig, train
from helpers import real_saved_bytes as saved_bytes_of

pytestmark = pytest.mark.usefixtures("one_thread")

register()
runner = CliRunner()
MICRO = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_levels=(1,), in_channels=6, out_channels=3, num_head_channels=32)
TINY = ["--size", "32", "--model", "tiny", "--steps", "1", "--workers", "0", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    y, x = np.mgrid[0:40, 0:40].astype(np.float32) / 40
    for i in range(4):
        write_image(root / f"{i}.png", np.clip(np.stack([0.5 + 0.3 * np.sin(7 * x + i), 0.5 + 0.3 * np.cos(5 * y), 0.4 + 0.3 * x * y], -1), 0, 1))
    return root


def real_saved_bytes(unet: UNetConfig, size: int, batch: int, amp_dtype: torch.dtype | None = None) -> int:
    """What a real forward on the CPU saves for backward."""
    torch.manual_seed(0)
    net = IDMUNet(unet)
    hq = torch.rand(batch, 3, size, size) * 2 - 1
    lq, noise, gamma = hq * 0.5, torch.randn_like(hq), torch.rand(batch) * 0.9 + 0.05

    def forward():
        with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            return x0_regression_loss(ConcatCondition(net, lq), hq, gamma, noise, p=1)[0]

    return saved_bytes_of(forward, [*net.parameters(), hq, lq, noise, gamma])


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_traced_activations_are_those_a_real_forward_saves(amp_dtype):
    # under --amp autocast decides what is kept in 16 bits and what is cast back to float32: the trace
    # runs it too, so it counts the same bytes as the real step, not the float32 ones
    assert sm.saved_bytes(MICRO, 16, 2, amp_dtype) == real_saved_bytes(MICRO, 16, 2, amp_dtype)


def test_saved_activations_grow_linearly_in_the_batch():
    one = sm.saved_bytes(MICRO, 16, 1)
    assert one > 0
    assert [sm.saved_bytes(MICRO, 16, b) for b in (2, 3, 5)] == [2 * one, 3 * one, 5 * one]
    # under autocast the 16-bit copies of the weights are saved once whatever the batch: the batch-1
    # trace counts them once per sample, a slight overestimate
    tiny = idm_unet_config("tiny", 64)
    one, two, three = (sm.saved_bytes(tiny, 64, b, torch.bfloat16) for b in (1, 2, 3))
    copies = 2 * one - two
    assert three - two == two - one and 0 < copies <= 2 * parameter_count(tiny)


def test_step_memory_adds_weights_gradients_adam_ema_and_the_loader_batches():
    activations = sm.saved_bytes(MICRO, 16, 1)
    params = parameter_count(MICRO)
    cpu = sm.step_memory(MICRO, 16, None, ema=True, workers=2, device="cpu")
    batch_bytes = 3 * 3 * 16 * 16 * 4  # lq, hq, noise
    assert cpu.per_sample == int(np.ceil(activations * (1 + sm.TRANSIENT))) + batch_bytes * (1 + 2 * 3)
    assert cpu.fixed == params * 4 * 5 + sm.BASE
    gpu = sm.step_memory(MICRO, 16, None, ema=False, workers=2, device="cuda")  # the least: nothing added
    assert (gpu.per_sample, gpu.fixed) == (activations + batch_bytes, params * 4 * 4)
    assert cpu.needs(7) == 7 * cpu.per_sample + cpu.fixed
    assert cpu.largest_batch(cpu.needs(7)) == 7 and cpu.largest_batch(cpu.needs(7) - 1) == 6 and cpu.largest_batch(cpu.fixed) == 0
    # under autocast the weights' 16-bit copies are saved once a step, not once a sample
    one, two = sm.saved_bytes(MICRO, 16, 1, torch.bfloat16), sm.saved_bytes(MICRO, 16, 2, torch.bfloat16)
    amp = sm.step_memory(MICRO, 16, torch.bfloat16, ema=False, workers=0, device="cuda")
    assert (amp.per_sample, amp.fixed) == (two - one + batch_bytes, 2 * one - two + params * 4 * 4)


def test_available_memory_is_meminfo_or_less_under_a_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683772 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n")
    assert sm._mem_available(meminfo) == 20000000 * 1024
    assert sm._mem_available(tmp_path / "missing") is None

    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text("1000000\n")  # the parent's limit binds
    (v2 / "job" / "memory.current").write_text("600000\n")
    (v2 / "job" / "memory.stat").write_text("anon 400000\ninactive_file 100000\n")
    (v2 / "job" / "step" / "memory.max").write_text("max\n")
    (v2 / "job" / "step" / "memory.current").write_text("500000\n")
    (tmp_path / "cg2").write_text("0::/job/step\n")
    assert sm._cgroup_headroom(tmp_path / "cg2", v2) == 1000000 - (600000 - 100000)

    v1 = tmp_path / "v1" / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("8000000\n")
    (v1 / "memory.usage_in_bytes").write_text("3000000\n")
    (v1 / "memory.stat").write_text("cache 2000000\ntotal_inactive_file 1000000\n")
    (v1.parent / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    (v1.parent / "memory.usage_in_bytes").write_text("9000000\n")
    (tmp_path / "cg1").write_text("9:pids:/docker/abc\n4:memory:/docker/abc\n")
    assert sm._cgroup_headroom(tmp_path / "cg1", tmp_path / "v1") == 8000000 - (3000000 - 1000000)

    (tmp_path / "free").write_text("0::/\n")
    assert sm._cgroup_headroom(tmp_path / "free", tmp_path / "none") is None


def available(monkeypatch, value: int) -> None:
    monkeypatch.setattr(sm, "available_bytes", lambda device: value)


def tiny_step(batch: int, workers: int = 0) -> int:
    return sm.step_memory(idm_unet_config("tiny", 32), 32, None, ema=True, workers=workers).needs(batch)


def test_a_step_too_large_is_refused_with_one_line_and_nothing_written(faces, tmp_path, monkeypatch):
    run = tmp_path / "run"
    available(monkeypatch, tiny_step(2) + 1)  # batch 2 fits, 4 does not
    r = runner.invoke(app, ["train", str(faces), "--out", str(run), "-b", "4", *TINY], catch_exceptions=False)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output
    line = lines[0]
    assert line.startswith("error: a step of the tiny model at --size 32 with --batch-size 4 needs about ")
    assert f"but this machine has {sm.gigabytes(tiny_step(2) + 1)} available; use --batch-size 2 or less" in line
    assert line.endswith("or train on a GPU or a machine with more memory")
    assert not (run / "config.json").exists() and not (run / "checkpoints").exists()
    # the advised batch trains in the same folder; --skip-memory-check trains the refused one
    r = runner.invoke(app, ["train", str(faces), "--out", str(run), "-b", "2", *TINY], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", str(faces), "--out", str(tmp_path / "anyway"), "-b", "4", "--skip-memory-check", *TINY], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "anyway" / "idm.safetensors").is_file()


def test_the_advice_is_a_smaller_batch_size_or_model(monkeypatch):
    config = TrainConfig(data=("faces",), out="run", model="base", size=128, batch_size=4, device="cpu")
    base = idm_unet_config("base", 128)
    room = sm.step_memory(idm_unet_config("base", 64), 64, None, ema=True, workers=2).needs(4)
    available(monkeypatch, room)
    largest = sm.step_memory(base, 128, None, ema=True, workers=2).largest_batch(room)
    assert 1 <= largest < 4
    with pytest.raises(UsageError) as refused:
        sm.check_step_memory(config, base, torch.device("cpu"))
    assert refused.value.hint == f"use --batch-size {largest} or less (or --size 64, or --model compact), or train on a GPU or a machine with more memory"
    available(monkeypatch, sm.step_memory(idm_unet_config("base", 64), 64, None, ema=True, workers=2).needs(1))  # not even one sample at 128
    with pytest.raises(UsageError) as refused:
        sm.check_step_memory(dataclasses.replace(config, batch_size=1), base, torch.device("cpu"))
    assert refused.value.hint == "use --size 64 or --model small, or train on a GPU or a machine with more memory"
    available(monkeypatch, 1)
    with pytest.raises(UsageError) as refused:
        sm.check_step_memory(config, base, torch.device("cpu"))
    assert refused.value.hint == "train on a GPU or a machine with more memory"


def test_torchrun_processes_split_the_batch_and_share_the_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    unet = idm_unet_config("tiny", 32)
    config = TrainConfig(data=("faces",), out="run", model="tiny", size=32, batch_size=8, workers=0, device="cpu")
    available(monkeypatch, 2 * tiny_step(3))  # 3 per process fit: a global batch of 6
    with pytest.raises(UsageError) as refused:
        sm.check_step_memory(config, unet, torch.device("cpu"), 2)
    line = refused.value.one_line()
    assert f"with --batch-size 8 (4 in each of 2 processes) needs about {sm.gigabytes(2 * tiny_step(4))} for the 2 processes on this machine" in line
    assert "use --batch-size 6 or less" in line
    available(monkeypatch, 2 * tiny_step(4))
    sm.check_step_memory(config, unet, torch.device("cpu"), 2)  # fits: no error


def test_a_resumed_run_that_no_longer_fits_is_told_to_move(faces, tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = TrainConfig(data=(str(faces),), out=str(run), size=32, steps=1, batch_size=2, workers=0, device="cpu")
    train(config, unet=MICRO)
    available(monkeypatch, 1)
    with pytest.raises(UsageError) as refused:
        train(TrainConfig(data=(str(faces),), out=str(run), size=32, steps=2, batch_size=2, workers=0, device="cpu"), resume=True)
    assert "a resumed run keeps its --batch-size, --size and --model: resume it on a GPU or a machine with more memory" in refused.value.one_line()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000001"]


def test_on_a_gpu_the_least_a_step_needs_is_checked_and_amp_advised(monkeypatch):
    config = TrainConfig(data=("faces",), out="run", model="tiny", size=64, batch_size=8, workers=2, device="cuda")
    unet = idm_unet_config("tiny", 64)
    with_amp = sm.step_memory(unet, 64, torch.bfloat16, ema=True, workers=2, device="cuda")
    available(monkeypatch, with_amp.needs(8))  # fits in bf16, not in float32
    with pytest.raises(UsageError) as refused:
        sm.check_step_memory(config, unet, torch.device("cuda", 1))
    need = sm.step_memory(unet, 64, None, ema=True, workers=2, device="cuda")
    assert str(refused.value) == (f"a step of the tiny model at --size 64 with --batch-size 8 needs at least {sm.gigabytes(need.needs(8))}, "
                                  f"but GPU 1 has {sm.gigabytes(with_amp.needs(8))} free")
    assert refused.value.hint == (f"use --batch-size {need.largest_batch(with_amp.needs(8))} or less (or --size 32, or --amp), "
                                  "or train on a GPU with more memory (or on more GPUs with torchrun)")
