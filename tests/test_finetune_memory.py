"""`finetune`'s memory check before stage 1: the traced activations of a CodeFormer code-level step
equal those a real forward saves, grow linearly in the batch, and a step too large is refused with
one line (exit 2) before anything is written."""

from __future__ import annotations

import contextlib

import pytest
import test_finetune as shared
import torch
import torch.nn.functional as F
from test_finetune import FAST, TINY_CF
from typer.testing import CliRunner

from facerestore.cli.app import app, register
from facerestore.errors import UsageError
from facerestore.nets.codeformer import CodeFormer
from facerestore.training import step_memory as sm
from facerestore.training.finetune import step_memory as fsm
from facerestore.training.finetune.objectives import freeze_codeformer
from helpers import real_saved_bytes as saved_bytes_of

pytestmark = pytest.mark.usefixtures("one_thread")

register()
runner = CliRunner()
lq = shared.lq  # the shared fixtures
weights = shared.weights
SIZE = TINY_CF.img_size


def real_saved_bytes(batch: int, fused_attention: bool = False) -> int:
    """What a real code-level forward on the CPU saves for backward, with the math attention of the meta
    trace unless `fused_attention` (torch's default kernel, which keeps no attention matrix)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    net = CodeFormer(TINY_CF).train()
    freeze_codeformer(net)
    x = torch.rand(batch, 3, SIZE, SIZE) * 2 - 1
    codes = torch.randint(0, TINY_CF.codebook_size, (batch, TINY_CF.latent_size))

    def forward():
        with contextlib.nullcontext() if fused_attention else sdpa_kernel(SDPBackend.MATH):
            logits, feat = net.code_forward(x)
        return torch.mean((net.codebook_features(codes).detach() - feat.float()) ** 2) + F.cross_entropy(logits.float().permute(0, 2, 1), codes)

    return saved_bytes_of(forward, [*net.parameters(), *net.buffers(), x, codes])


def test_traced_activations_are_those_a_real_forward_saves_and_grow_linearly():
    traced = {b: fsm.code_step_memory(TINY_CF, SIZE, None, ema=False, device="cuda").per_sample * b for b in (1, 3)}
    real = {b: real_saved_bytes(b) for b in (1, 3)}
    inputs = 2 * 3 * SIZE * SIZE * 4  # lq and target, per sample
    assert traced[1] - inputs == pytest.approx(real[1], abs=16)  # the loss's few scalars are saved once a step
    assert traced[3] - 3 * inputs == pytest.approx(real[3], abs=16)  # linear, but for the loss's few scalars (saved once a step)
    # torch's fused attention saves less than the math path the meta device runs: the trace errs on the safe side
    assert real_saved_bytes(1, fused_attention=True) < real[1]


def test_the_step_adds_both_nets_the_trained_parts_adam_ema_and_on_the_cpu_a_margin():
    net = CodeFormer(TINY_CF)
    trained_names = set(freeze_codeformer(net))
    total = sum(p.numel() for p in net.parameters())
    trained = sum(p.numel() for n, p in net.named_parameters() if n in trained_names)
    gpu = fsm.code_step_memory(TINY_CF, SIZE, None, ema=True, device="cuda")
    assert gpu.fixed == pytest.approx(total * 4 * 2 + trained * 4 * 4, abs=64)  # net + frozen copy; gradients, Adam's 2 moments, EMA of the trained
    assert fsm.code_step_memory(TINY_CF, SIZE, None, ema=False, device="cuda").fixed == gpu.fixed - trained * 4
    cpu = fsm.code_step_memory(TINY_CF, SIZE, None, ema=True, workers=2, device="cpu")
    inputs = 2 * 3 * SIZE * SIZE * 4
    assert cpu.fixed == gpu.fixed + sm.BASE
    assert cpu.per_sample == pytest.approx((gpu.per_sample - inputs) * (1 + fsm.TRANSIENT_CODE) + inputs * (1 + 2 * (sm.PREFETCH + 1)), abs=1)


def test_a_step_too_large_is_refused_before_stage_1_with_one_line(weights, lq, tmp_path, monkeypatch):
    need = fsm.code_step_memory(TINY_CF, SIZE, None, ema=True, workers=0, device="cpu")
    monkeypatch.setattr(fsm, "available_bytes", lambda device: need.needs(2) + 1)  # 2 faces fit, 4 do not
    out = tmp_path / "ft"
    args = ["finetune", "--unpaired", lq, "--out", out, "--base-weights", weights["codeformer"], "--prior-weights", weights["prior"],
            "--size", str(SIZE), *FAST, "--holdout", "2", "--steps", "1", "--save-every", "1", "--workers", "0", "--device", "cpu", "-q"]
    result = runner.invoke(app, [str(a) for a in args] + ["--batch-size", "4"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: a fine-tuning step of CodeFormer at --size {SIZE} with --batch-size 4 needs about "
                                     f"{sm.gigabytes(need.needs(4))}, but this machine has {sm.gigabytes(need.needs(2) + 1)} available; "
                                     "use --batch-size 2 or less, or fine-tune on a GPU or a machine with more memory")
    assert not out.exists() or not any(out.iterdir())  # no config.json, no pseudo-targets
    result = runner.invoke(app, [str(a) for a in args] + ["--batch-size", "4", "--skip-memory-check"], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_on_a_gpu_the_least_a_step_needs_is_checked_per_process_and_amp_advised(monkeypatch):
    need = fsm.code_step_memory(TINY_CF, SIZE, None, ema=True, device="cuda")
    monkeypatch.setattr(fsm, "available_bytes", lambda device: need.needs(2) + 1)
    monkeypatch.setattr(fsm, "training_amp_dtype", lambda device, amp, **kw: (None, None))  # this CPU-only machine has no bf16 GPU to ask
    with pytest.raises(UsageError) as info:
        fsm.check_finetune_memory("codeformer", TINY_CF, size=SIZE, batch_size=8, amp=False, workers=2, device=torch.device("cuda", 0), world=2)
    assert info.value.one_line() == (f"a fine-tuning step of CodeFormer at --size {SIZE} with --batch-size 8 (4 in each of 2 processes) needs at least "
                                     f"{sm.gigabytes(need.needs(4))}, but GPU 0 has {sm.gigabytes(need.needs(2) + 1)} free; use --batch-size 4 or less "
                                     "(or --amp), or fine-tune on a GPU with more memory (or on more GPUs with torchrun)")
    fsm.check_finetune_memory("codeformer", TINY_CF, size=SIZE, batch_size=4, amp=False, workers=2, device=torch.device("cuda", 0), world=2)  # fits: no word


def test_image_level_trace_is_what_a_real_restorer_lpips_and_discriminator_forward_saves():
    """The image-level step: the restorer, LPIPS on its output, the (frozen for this term) discriminator
    on its output, one graph; the trace counts what a real forward saves, per sample."""
    from facerestore.nets.baseline_unet import BaselineUNet, BaselineUNetConfig
    from facerestore.training.finetune.objectives import UNetDiscriminatorSN

    config = BaselineUNetConfig(channels=(8, 16), blocks=1)
    torch.manual_seed(0)
    net = BaselineUNet(config).train()
    perceptual = fsm._lpips_net("cpu")
    disc = UNetDiscriminatorSN(8).train().requires_grad_(False)
    x, target = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 3, SIZE, SIZE)

    def forward():
        out = net(x).float()
        logits = disc(out).float()
        return (out - target).abs().mean() + perceptual(out, target, normalize=False).mean() + F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    real = saved_bytes_of(forward, [t for m in (net, perceptual, disc) for t in (*m.parameters(), *m.buffers())] + [x, target])
    need = fsm.image_step_memory(config, SIZE, None, lpips=True, gan=True, disc_width=8, ema=True, device="cuda")
    trained = sum(p.numel() for p in net.parameters()) + sum(p.numel() for p in disc.parameters())  # the discriminator has its own Adam
    inputs = 3 * 3 * SIZE * SIZE * 4  # lq, target and a real face per sample
    once = need.fixed - (trained * 4 * 4 + sum(p.numel() for p in perceptual.parameters()) * 4 + sum(p.numel() for p in net.parameters()) * 4)
    assert (need.per_sample - inputs) * 2 + once == real
    assert 0 < once < need.per_sample / 10  # saved once a step: the discriminator's normalised weights


def test_a_baseline_step_too_large_is_refused_naming_the_baseline(monkeypatch):
    from facerestore.nets.baseline_unet import BaselineUNetConfig

    config = BaselineUNetConfig(channels=(8, 16), blocks=1)
    need = fsm.image_step_memory(config, SIZE, None, lpips=True, gan=True, disc_width=8, ema=True, workers=0, device="cpu")
    monkeypatch.setattr(fsm, "available_bytes", lambda device: need.needs(3) + 1)
    with pytest.raises(UsageError) as info:
        fsm.check_finetune_memory("baseline", config, size=SIZE, batch_size=8, amp=False, workers=0, device=torch.device("cpu"),
                                  lpips=True, gan=True, disc_width=8)
    assert info.value.one_line() == (f"a fine-tuning step of the baseline at --size {SIZE} with --batch-size 8 needs about {sm.gigabytes(need.needs(8))}, "
                                     f"but this machine has {sm.gigabytes(need.needs(3) + 1)} available; use --batch-size 3 or less, "
                                     "or fine-tune on a GPU or a machine with more memory")
