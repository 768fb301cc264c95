"""Does one fine-tuning step of CodeFormer fit in memory? Asked before stage 1, so a batch too large
for the machine stops with one line (exit 2) before hours of pseudo-targets, not at the first step
of stage 2 (the kernel's OOM killer on the CPU, exit 137 without a word; a CUDA out-of-memory line on
a GPU).

The code-level objective (DT-BFR, `objectives.CodeObjective`) trains CodeFormer's encoder and
transformer on x -> (logits, lq_feat); what a step holds at its peak (B = the batch of one process):

    B * activations   what autograd saves in that pass, traced on the meta device as `train` does
                      (`training.step_memory.traced_saved_bytes`); on the CPU times 1 + TRANSIENT.
                      The meta device runs the transformer's attention on the math path, which
                      saves the attention matrices that torch's fused kernels do not: 2-3% more
                      at 512 px, on the safe side
    B * inputs        lq and target, and on the CPU the batches the data-loading workers hold ready
    P * 4 * 2         the net and its frozen pre-trained copy (the target codes' encoder), float32
    T * 4 * 3         gradients and Adam's two moments of the T trained parameters
    (+ T * 4)         the EMA of the trained parameters, on the main process only
    (+ BASE)          on the CPU, what the first step adds besides

Measured on the CPU (full-size CodeFormer, 512 px, 2026-12-06): the peak RSS grew by 1775, 3320 and
6037 MB for a step of 1, 2 and 4 faces, 1360-1550 MB a face, where the trace counts 1465; TRANSIENT
= 0.25 keeps the estimate 20-35% above what was measured. The image-level objective (a restorer
without a codebook: L1 + LPIPS + GAN) is not estimated yet.
"""

from __future__ import annotations

import math

import torch

from facerestore.devices import training_amp_dtype
from facerestore.errors import UsageError
from facerestore.training.step_memory import BASE, PREFETCH, StepMemory, available_bytes, local_processes, refusal, traced_saved_bytes

TRANSIENT = 0.25


def code_step_memory(net_config, size: int, amp_dtype: torch.dtype | None, *, ema: bool, workers: int = 0, device: str = "cpu") -> StepMemory:
    """What one process's code-level step of a CodeFormer of `net_config` needs (module docstring)."""
    import torch.nn.functional as F

    from facerestore.nets.codeformer import CodeFormer
    from facerestore.training.finetune.objectives import freeze_codeformer

    def step(on: str, batch: int):
        with torch.device(on):
            net = CodeFormer(net_config).train()
        freeze_codeformer(net)
        lq = torch.zeros(batch, 3, size, size, device=on)
        codes = torch.zeros(batch, net_config.latent_size, dtype=torch.long, device=on)  # the target's codes: made without grad

        def forward():
            logits, lq_feat = net.code_forward(lq)
            target = net.codebook_features(codes).detach()
            return torch.mean((target - lq_feat.float()) ** 2) + F.cross_entropy(logits.float().permute(0, 2, 1), codes)

        return forward, [*net.parameters(), *net.buffers(), lq, codes]

    one = traced_saved_bytes(lambda on: step(on, 1), amp_dtype)
    activations = one if amp_dtype is None else traced_saved_bytes(lambda on: step(on, 2), amp_dtype) - one
    with torch.device("meta"):
        net = CodeFormer(net_config)
    freeze_codeformer(net)
    total = sum(p.numel() for p in net.parameters())
    trained = sum(p.numel() for p in net.parameters() if p.requires_grad)
    cpu = device == "cpu"
    inputs = 2 * 3 * size * size * 4 * (1 + (workers * (PREFETCH + 1) if cpu else 0))
    fixed = (one - activations) + total * 4 * 2 + trained * 4 * (3 + int(ema)) + (BASE if cpu else 0)
    return StepMemory(per_sample=math.ceil(activations * (1 + (TRANSIENT if cpu else 0))) + inputs, fixed=fixed)


def check_finetune_memory(net_config, *, size: int, batch_size: int, amp: bool, workers: int, device: torch.device, world: int = 1,
                          main: bool = True, resume: bool = False) -> None:
    """A UsageError (exit 2, one line) when a code-level step will not fit in the memory `device` has
    free now, with the largest --batch-size that fits. Nothing happens where memory is not known."""
    available = available_bytes(device)
    if available is None:
        return
    amp_dtype, _ = training_amp_dtype(device, amp, fp16=False, cpu=False)  # as the fine-tuning loop decides it
    cpu = device.type == "cpu"
    sharing = local_processes() if cpu else 1
    batch = batch_size // world
    need = code_step_memory(net_config, size, amp_dtype, ema=main, workers=workers, device=device.type)
    if need.needs(batch) * sharing <= available:
        return
    message = refusal(f"a fine-tuning step of CodeFormer at --size {size} with --batch-size {batch_size}", batch, need.needs(batch), available,
                      device, world, sharing)
    elsewhere = "fine-tune on a GPU or a machine with more memory" if cpu else "fine-tune on a GPU with more memory (or on more GPUs with torchrun)"
    if resume:
        raise UsageError(message, hint=f"a resumed run keeps its --batch-size and --size: {elsewhere.replace('fine-tune', 'resume it', 1)}")
    largest = need.largest_batch(available // sharing) * world
    amp_hint = " (or --amp)" if not cpu and amp_dtype is None and not amp else ""
    hint = f"use --batch-size {largest} or less{amp_hint}, or {elsewhere}" if largest else elsewhere
    raise UsageError(message, hint=hint)
