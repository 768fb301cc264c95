"""Does one fine-tuning step fit in memory? Asked before stage 1, so a batch too large for the
machine stops with one line (exit 2) before hours of pseudo-targets, not at the first step of
stage 2 (the kernel's OOM killer on the CPU, exit 137 without a word; a CUDA out-of-memory line on
a GPU).

What a step holds at its peak (B = the batch of one process), for either objective:

    B * activations   what autograd saves in the step's forward, traced on the meta device as
                      `train` does (`training.step_memory.traced_saved_bytes`); on the CPU times
                      1 + the objective's TRANSIENT, set from measured steps
    B * inputs        the faces of a sample, and on the CPU the batches the data-loading workers hold
    fixed             the weights of every net the step runs, and the trained ones' gradients, Adam
                      moments and (main process) EMA; on the CPU BASE besides

Code level (CodeFormer, DT-BFR, `objectives.CodeObjective`): the encoder and transformer on
x -> (logits, lq_feat); the net and its frozen pre-trained copy (the target codes' encoder). The
meta device runs the transformer's attention on the math path, which saves the attention matrices
torch's fused kernels do not: 2-3% more at 512 px, on the safe side. Measured on the CPU (full-size
CodeFormer, 512 px, random weights, 2026-12-06): the peak RSS grew by 1775, 3320 and 6037 MB for
a step of 1, 2 and 4 faces, 1360-1550 MB a face where the trace counts 1465; TRANSIENT_CODE = 0.25.

Image level (a one-step restorer such as `baseline`, `objectives.ImageObjective`): the restorer, the
LPIPS VGG on its output and the discriminator on its output, all in one graph (the discriminator's
own step, on real and restored faces, comes after that graph is freed, and saves less). Measured (bundled baseline, 512 px,
LPIPS and a width-64 discriminator, 2026-12-06): 2066, 4506 and 8465 MB for 1, 2 and 4 faces,
1980-2440 MB a face (2110 by a least-squares line) where the trace counts 1757; TRANSIENT_IMAGE = 0.5
keeps the estimate about 25% above the line, as TRANSIENT_CODE does for CodeFormer (1410 a face).
"""

from __future__ import annotations

import math

import torch

from facerestore.devices import training_amp_dtype
from facerestore.errors import UsageError
from facerestore.training.step_memory import BASE, PREFETCH, StepMemory, available_bytes, local_processes, refusal, traced_saved_bytes

TRANSIENT_CODE = 0.25
TRANSIENT_IMAGE = 0.5


def _traced(step, amp_dtype: torch.dtype | None) -> tuple[int, int]:
    """(what a batch of one saves, what each further sample adds), from two traces: some of what a step
    saves is made once a step whatever its batch (the spectral-normalised weights of the discriminator,
    the loss's scalars, the 16-bit copies of the weights under autocast)."""
    one = traced_saved_bytes(lambda on: step(on, 1), amp_dtype)
    return one, traced_saved_bytes(lambda on: step(on, 2), amp_dtype) - one


def _parameters(net: torch.nn.Module, trained: bool | None = None) -> int:
    return sum(p.numel() for p in net.parameters() if trained is None or p.requires_grad == trained)


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

    one, activations = _traced(step, amp_dtype)
    with torch.device("meta"):
        net = CodeFormer(net_config)
    freeze_codeformer(net)
    weights = _parameters(net) * 4 * 2  # the net and its frozen copy
    return _step(one, activations, weights, _parameters(net, trained=True), 2, TRANSIENT_CODE, size, ema=ema, workers=workers, device=device)


def image_step_memory(net_config, size: int, amp_dtype: torch.dtype | None, *, lpips: bool, gan: bool, disc_width: int, ema: bool,
                      workers: int = 0, device: str = "cpu") -> StepMemory:
    """What one process's image-level step of a baseline UNet of `net_config` needs (module docstring)."""
    import torch.nn.functional as F

    from facerestore.nets.baseline_unet import BaselineUNet
    from facerestore.training.finetune.objectives import UNetDiscriminatorSN

    def nets(on: str) -> tuple[torch.nn.Module, torch.nn.Module | None, torch.nn.Module | None]:
        with torch.device(on):
            net = BaselineUNet(net_config).train()
            disc = UNetDiscriminatorSN(disc_width).train().requires_grad_(False) if gan else None  # the generator's term: gradients reach `out` only
        return net, _lpips_net(on) if lpips else None, disc

    def step(on: str, batch: int):
        net, perceptual, disc = nets(on)
        lq = torch.zeros(batch, 3, size, size, device=on)
        target = torch.zeros_like(lq)

        def forward():
            out = net(lq).float()
            loss = (out - target).abs().mean()
            if perceptual is not None:
                loss = loss + perceptual(out, target, normalize=False).float().mean()
            if disc is not None:
                logits = disc(out).float()
                loss = loss + F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            return loss

        given = [t for m in (net, perceptual, disc) if m is not None for t in (*m.parameters(), *m.buffers())]
        return forward, [*given, lq, target]

    one, activations = _traced(step, amp_dtype)
    net, perceptual, disc = nets("meta")
    trained = _parameters(net) + (_parameters(disc) if disc is not None else 0)  # the discriminator has its own Adam
    weights = trained * 4 + (_parameters(perceptual) * 4 if perceptual is not None else 0)
    return _step(one, activations, weights, trained, 3 if gan else 2, TRANSIENT_IMAGE, size, ema=ema, workers=workers, device=device,
                 ema_params=_parameters(net))


def _lpips_net(on: str) -> torch.nn.Module:
    import warnings

    import lpips

    with warnings.catch_warnings(), torch.device(on):
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated"
        net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
    return net.to(on).eval().requires_grad_(False)  # its scaling constants are made on the CPU whatever the device


def _step(one: int, activations: int, weights: int, trained: int, images: int, transient: float, size: int, *, ema: bool, workers: int,
          device: str, ema_params: int | None = None) -> StepMemory:
    cpu = device == "cpu"
    inputs = images * 3 * size * size * 4 * (1 + (workers * (PREFETCH + 1) if cpu else 0))
    fixed = (one - activations) + weights + trained * 4 * 3 + (trained if ema_params is None else ema_params) * 4 * int(ema) + (BASE if cpu else 0)
    return StepMemory(per_sample=math.ceil(activations * (1 + (transient if cpu else 0))) + inputs, fixed=fixed)


def check_finetune_memory(base: str, net_config, *, size: int, batch_size: int, amp: bool, workers: int, device: torch.device, world: int = 1,
                          main: bool = True, resume: bool = False, lpips: bool = False, gan: bool = False, disc_width: int = 64) -> None:
    """A UsageError (exit 2, one line) when a fine-tuning step of `base` will not fit in the memory
    `device` has free now, with the largest --batch-size that fits. Nothing happens where memory is
    not known, or for a base without an estimate."""
    available = available_bytes(device)
    if available is None:
        return
    amp_dtype, _ = training_amp_dtype(device, amp, fp16=False, cpu=False)  # as the fine-tuning loop decides it
    if base == "codeformer":
        need = code_step_memory(net_config, size, amp_dtype, ema=main, workers=workers, device=device.type)
        name = "CodeFormer"
    elif base == "baseline":
        need = image_step_memory(net_config, size, amp_dtype, lpips=lpips, gan=gan, disc_width=disc_width, ema=main, workers=workers, device=device.type)
        name = "the baseline"
    else:
        return
    cpu = device.type == "cpu"
    sharing = local_processes() if cpu else 1
    batch = batch_size // world
    if need.needs(batch) * sharing <= available:
        return
    message = refusal(f"a fine-tuning step of {name} at --size {size} with --batch-size {batch_size}", batch, need.needs(batch), available,
                      device, world, sharing)
    elsewhere = "fine-tune on a GPU or a machine with more memory" if cpu else "fine-tune on a GPU with more memory (or on more GPUs with torchrun)"
    if resume:
        raise UsageError(message, hint=f"a resumed run keeps its --batch-size and --size: {elsewhere.replace('fine-tune', 'resume it', 1)}")
    largest = need.largest_batch(available // sharing) * world
    amp_hint = " (or --amp)" if not cpu and amp_dtype is None and not amp else ""
    hint = f"use --batch-size {largest} or less{amp_hint}, or {elsewhere}" if largest else elsewhere
    raise UsageError(message, hint=hint)
