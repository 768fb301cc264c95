"""Stage 2 objectives: what one fine-tuning step computes, for each kind of base restorer.

`CodeObjective` (CodeFormer; DT-BFR `CodeFormer/options/codeformer_finetune.yml` + `CodeFormerModel`):

    frozen                 quantize, generator, fuse_convs_dict (`fix_modules`); trained: encoder,
                           position_emb, feat_emb, ft_layers, idx_pred_layer
    idx_gt   = nearest_codes(E_ref(x^_0))        a FROZEN copy of the pre-trained encoder + quantizer
                                                 applied to the pseudo-target (`hq_vqgan_fix`)
    logits, lq_feat = net.code_forward(y)        fidelity w = 0: `net_g(x, w=0, code_only=True)`
    loss     = 1.0 * mean((codebook[idx_gt] - lq_feat)^2)                      (feat_loss_weight)
             + 0.5 * cross_entropy(logits, idx_gt)                             (entropy_loss_weight)

    No image-level, LPIPS or GAN term, no discriminator (the paper, Sec. 4.1: code-level losses only).

`ImageObjective` (any one-step restorer R without a codebook, e.g. facerestore's `baseline`;
paper eq. 6-8, DT-BFR `configs/main/swinir_gan.yaml` for the SwinIR model):

    out      = R(y)
    L_G      = |out - x^_0|_1  +  0.1 LPIPS(out, x^_0)  +  0.1 BCE(D(out), real)             (eq. 6, 8)
    L_D      = BCE(D(x_real), real) + BCE(D(out.detach()), fake)                            (eq. 7)

    L1 is measured on the [0, 1] scale (the code's data range), LPIPS is LPIPS-vgg (v0.1, our
    catalogued backbone), the GAN is the "vanilla" GAN of the code (basicsr GANLoss: BCE on logits,
    the non-saturating generator form -log D(out), which is what eq. 6's log(1 - D) is trained as in
    practice). D is a U-Net discriminator with spectral norm (Real-ESRGAN's design, as the code's
    `UNetDiscriminatorSN`), trained from scratch on the --real faces (the paper: FFHQ). LPIPS is the
    mean over the batch (the code sums it over micro-batches of 4). Without the VGG16 backbone
    offline, one warning line names it and training goes on with L1 (+ GAN).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facerestore.errors import (
    FaceRestoreError,
    UnknownMethod,
    UnsupportedCheckpoint,
    UsageError,
    WeightsError,
)

CODEFORMER_FROZEN = ("quantize.", "generator.", "fuse_convs_dict.")


# ------------------------------------------------------------------ base restorers that can be fine-tuned


@dataclass(frozen=True)
class Adapter:
    """How to load, train and export one kind of base restorer."""

    method: str  # the registry name (`--base`)
    objective: str  # "code" or "image"
    export_name: str  # the exported file in RUN/


def adapter_for(base: str) -> Adapter:
    if base == "codeformer":
        return Adapter("codeformer", "code", "codeformer-finetuned.safetensors")
    if base == "baseline":
        return Adapter("baseline", "image", "baseline-finetuned.safetensors")
    from facerestore.methods.registry import method_names

    if base not in method_names():  # before the advice below, which suggests pseudo-targets from it
        raise UnknownMethod(f"unknown --base {base!r}", hint="fine-tune codeformer (code-level, as DT-BFR) or baseline (L1 + LPIPS + GAN)")
    raise UsageError(
        f"--base {base} cannot be fine-tuned: it has no one-step restorer network to train",
        hint="fine-tune codeformer (code-level, as DT-BFR) or baseline (L1 + LPIPS + GAN); "
             f"pseudo-targets from {base} are still possible with `facerestore finetune pseudo-targets --base {base}`",
    )


def resolve_base_weights(base: str, weights: str | Path | None, offline: bool | None) -> Path:
    """The base checkpoint file (a missing one is one WeightsError line naming the import command)."""
    from facerestore.weights.store import resolve, resolve_explicit

    if base == "codeformer":
        return resolve("codeformer", explicit=weights, offline=offline, option="--base-weights")
    if base == "baseline":
        if weights is not None:
            return resolve_explicit(weights, offline=offline, catalogued=(), option="--base-weights")
        from facerestore.methods.baseline import bundled_weights

        path = bundled_weights()
        if not path.is_file():
            raise WeightsError(f"the bundled baseline model {path} is missing from this installation", hint="reinstall facerestore, or pass --base-weights FILE")
        return path
    adapter_for(base)  # raises the usage error
    raise AssertionError(base)


def load_base_net(base: str, path: Path) -> nn.Module:
    """The base restorer as a trainable float32 module on the CPU (train mode, nothing frozen yet)."""
    if base == "codeformer":
        from facerestore.methods.codeformer import load_codeformer

        return load_codeformer(path, "cpu").float().train().requires_grad_(True)
    from facerestore.nets.baseline_unet import BaselineUNet, infer_config
    from facerestore.weights.checkpoint import load_strict, read_state_dict
    from facerestore.weights.store import display_name

    state = {k: v.float() for k, v in read_state_dict(path).items()}
    try:
        config = infer_config(state)
    except (KeyError, IndexError) as exc:
        raise UnsupportedCheckpoint(f"{display_name(path)} is not a baseline UNet checkpoint (no {exc})", hint="pass a file written by facerestore.training.train_baseline") from None
    return load_strict(BaselineUNet(config), state, path).train()


def export_model(base: str, state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write the fine-tuned weights as safetensors with the base's own keys (loads with --weights)."""
    from facerestore.weights.checkpoint import save_safetensors

    return save_safetensors({k: v.float() for k, v in state.items()}, path, {"format": f"facerestore-{base}", **metadata})


def freeze_codeformer(net: nn.Module) -> list[str]:
    """requires_grad off for quantize, generator and fuse_convs_dict (DT-BFR's fix_modules); returns the trained names."""
    trained = []
    for name, p in net.named_parameters():
        keep = not name.startswith(CODEFORMER_FROZEN)
        p.requires_grad_(keep)
        if keep:
            trained.append(name)
    return trained


# ------------------------------------------------------------------ the discriminator


class UNetDiscriminatorSN(nn.Module):
    """A U-Net discriminator with spectral norm: x [B,3,H,W] in [-1,1] -> per-pixel logits [B,1,H,W].

    The design of Real-ESRGAN's discriminator (the one DT-BFR's SwinIR fine-tuning uses): three
    stride-2 convolutions down, three bilinear x2 + conv up with skip additions, two more convs, a
    1-channel head; every convolution but the first and the head is spectrally normalised. `channels`
    is the first width (64 upstream). H and W must be divisible by 8.
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        c = channels
        self.first = nn.Conv2d(3, c, 3, 1, 1)
        self.down = nn.ModuleList(sn(nn.Conv2d(c * 2**i, c * 2 ** (i + 1), 4, 2, 1, bias=False)) for i in range(3))
        self.up = nn.ModuleList(sn(nn.Conv2d(c * 2 ** (i + 1), c * 2**i, 3, 1, 1, bias=False)) for i in (2, 1, 0))
        self.extra = nn.ModuleList(sn(nn.Conv2d(c, c, 3, 1, 1, bias=False)) for _ in range(2))
        self.head = nn.Conv2d(c, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"the discriminator needs sides divisible by 8, got {tuple(x.shape[-2:])}")
        act = lambda t: F.leaky_relu(t, 0.2)
        h = act(self.first(x))
        skips = [h]
        for conv in self.down:
            h = act(conv(h))
            skips.append(h)
        skips.pop()  # the deepest features are h itself
        for conv in self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = act(conv(h)) + skips.pop()
        for conv in self.extra:
            h = act(conv(h))
        return self.head(h)


# ------------------------------------------------------------------ objectives


class _CodeOnly(nn.Module):
    """forward(x) = net.code_forward(x), so DDP hooks the code-only pass."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.code_forward(x)


def _ddp(module: nn.Module, device: torch.device, active: bool) -> nn.Module:
    if not active:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def _adam(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)


class CodeObjective:
    """CodeFormer's code-level fine-tuning (module docstring)."""

    kind = "code"

    def __init__(self, net: nn.Module, reference: nn.Module, *, device: torch.device, distributed: bool, lr: float,
                 feat_weight: float = 1.0, ce_weight: float = 0.5, grad_clip: float = 0.0) -> None:
        self.model = net.to(device)
        self.trained = freeze_codeformer(self.model)
        self.reference = reference.to(device).eval().requires_grad_(False)
        self.feat_weight, self.ce_weight, self.grad_clip = feat_weight, ce_weight, grad_clip
        self.module = _ddp(_CodeOnly(self.model), device, distributed)
        named = dict(self.model.named_parameters())
        self.names = list(self.trained)
        self.optimizer = _adam([named[n] for n in self.names], lr)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    @torch.no_grad()
    def target_codes(self, target: torch.Tensor) -> torch.Tensor:
        """idx_gt [B, L]: nearest codes of the frozen pre-trained encoder's features of the pseudo-target."""
        return self.reference.nearest_codes(self.reference.encode(target))

    def losses(self, lq: torch.Tensor, target: torch.Tensor, autocast: Callable) -> dict[str, torch.Tensor]:
        idx_gt = self.target_codes(target)
        with autocast():
            logits, lq_feat = self.module(lq)
        quant_gt = self.model.codebook_features(idx_gt).detach()  # the (frozen) codebook: upstream's net_g.quantize
        feat = torch.mean((quant_gt - lq_feat.float()) ** 2) * self.feat_weight
        ce = F.cross_entropy(logits.float().permute(0, 2, 1), idx_gt) * self.ce_weight
        return {"loss": feat + ce, "feat": feat, "ce": ce}

    def step(self, batch: dict[str, torch.Tensor], autocast: Callable) -> dict[str, float]:
        parts = self.losses(batch["lq"], batch["target"], autocast)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.grad_clip)
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in parts.items()}

    def extra_state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        return {}, {}

    def load_extra_state(self, extra: dict, data: dict, source: str) -> None:
        return None


class ImageObjective:
    """L1 + LPIPS + GAN fine-tuning of a one-step restorer (module docstring)."""

    kind = "image"

    def __init__(self, net: nn.Module, *, device: torch.device, distributed: bool, lr: float, lpips_weight: float = 0.1,
                 gan_weight: float = 0.1, lpips_net: nn.Module | None = None, disc_channels: int = 64, grad_clip: float = 0.0,
                 init_seed: int = 0) -> None:
        self.model = net.to(device)
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.module = _ddp(self.model, device, distributed)
        self.lpips = lpips_net
        self.lpips_weight = lpips_weight if lpips_net is not None else 0.0
        self.gan_weight, self.grad_clip = gan_weight, grad_clip
        named = dict(self.model.named_parameters())
        self.optimizer = _adam([named[n] for n in self.names], lr)
        self.disc: nn.Module | None = None
        self.disc_module: nn.Module | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if gan_weight > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                self.disc = UNetDiscriminatorSN(disc_channels)
            self.disc = self.disc.to(device).train()
            self.disc_module = _ddp(self.disc, device, distributed)
            self.disc_names = [n for n, _ in self.disc.named_parameters()]
            self.disc_optimizer = _adam(self.disc.parameters(), lr)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] + ([self.disc_optimizer] if self.disc_optimizer is not None else [])

    def step(self, batch: dict[str, torch.Tensor], autocast: Callable) -> dict[str, float]:
        lq, target = batch["lq"], batch["target"]
        with autocast():
            out = self.module(lq)
        out = out.float()
        parts: dict[str, torch.Tensor] = {"l1": (out - target).abs().mean() / 2}  # on the [0,1] scale
        if self.lpips_weight > 0:
            with autocast():
                parts["lpips"] = self.lpips(out, target, normalize=False).float().mean() * self.lpips_weight
        if self.disc is not None:
            self.disc.requires_grad_(False)  # the generator's adversarial term: gradients reach `out` only
            with autocast():
                fake_logits = self.disc(out)
            parts["gan"] = F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32)) * self.gan_weight
            self.disc.requires_grad_(True)
        loss = sum(parts.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        result = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
        if self.disc is not None:
            real = batch["real"]
            with autocast():
                logits = self.disc_module(torch.cat([real, out.detach()])).float()  # one pass: DDP syncs once
            n = real.shape[0]
            d_real = F.binary_cross_entropy_with_logits(logits[:n], torch.ones_like(logits[:n]))
            d_fake = F.binary_cross_entropy_with_logits(logits[n:], torch.zeros_like(logits[n:]))
            self.disc_optimizer.zero_grad(set_to_none=True)
            (d_real + d_fake).backward()
            self.disc_optimizer.step()
            result.update(d_real=float(d_real.detach()), d_fake=float(d_fake.detach()))
        return result

    def extra_state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        if self.disc is None:
            return {}, {}
        from facerestore.training.checkpoints import optimizer_to_tensors

        tensors, data = optimizer_to_tensors(self.disc_optimizer, self.disc_names)
        return {"discriminator": self.disc.state_dict(), "optimizer_d": tensors}, {"optimizer_d": data}

    def load_extra_state(self, extra: dict, data: dict, source: str) -> None:
        if self.disc is None:
            return
        from facerestore.training.checkpoints import optimizer_from_tensors
        from facerestore.weights.checkpoint import load_strict

        if "discriminator" not in extra or "optimizer_d" not in data:
            raise UnsupportedCheckpoint(f"{source} has no discriminator state", hint="resume with the run's own options")
        load_strict(self.disc, extra["discriminator"], f"{source}/discriminator.safetensors")
        optimizer_from_tensors(self.disc_optimizer, self.disc_names, extra.get("optimizer_d", {}), data["optimizer_d"], source)


def load_lpips_for_training(device: torch.device, offline: bool | None, warn: Callable[[str], None]) -> nn.Module | None:
    """The LPIPS-vgg module (frozen), or None after ONE warning line when its backbone is unavailable."""
    from facerestore.metrics.lpips import load_lpips

    try:
        return load_lpips(offline=offline, device=str(device))
    except FaceRestoreError as exc:
        warn(f"warning: LPIPS is unavailable, fine-tuning with L1 + GAN only: {exc.one_line()}")
        return None
