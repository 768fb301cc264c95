"""Train the IDM model shipped inside the package (`--method idm` with no weights) on CPU.

    python -m facerestore.training.train_bundled_idm --data DIR [DIR ...] --val DIR --out facerestore/models

IDM's intrinsic iteration (eq. 5-7: x0 regression with L1 from x_t concatenated with x_d, noise
levels drawn SR3-style) of the `compact` IDMUNet, with the shipped baseline's data recipe: faces kept
at their own size up to 512, eq. 11 scaled to that size, random 128 crops, degraded on the fly
(`train_baseline.batches`), with 30% of the samples lightly damaged (`--light`). `facerestore train --model compact` trains the same architecture on whole
faces resized to --size (the GPU route, with resume, DDP and the rest); this script exists because on
two CPU cores only crops of native-size faces give a useful model within an hour (docs/idm-model.md).
Validation runs the real 10-step sampler. Adam, cosine learning rate, gradient clipping, EMA; the EMA
ships as fp16 `idm.safetensors` + `idm.json` (the method's format), written at every validation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from facerestore.diffusion import NoiseSchedule
from facerestore.diffusion.losses import sample_noise_levels, x0_regression_loss
from facerestore.methods.idm import DEFAULT_STEPS, MODEL_FILE, SCHEDULE_NAME, T, idm_sample, save_model
from facerestore.nets.idm_unet import IDMUNet, idm_unet_config
from facerestore.training.degradations import apply_eq11
from facerestore.training.train_baseline import SIZE, VAL_SEVERITIES, batches, load_faces, psnr

PRESET = "compact"


@torch.inference_mode()
def validate(net: IDMUNet, faces: list[np.ndarray], steps: int = DEFAULT_STEPS) -> dict[str, dict[str, float]]:
    """Mean PSNR of input and 10-step output per fixed severity, plus restoring the clean face."""
    report = {}
    rng = np.random.default_rng(0)
    for name, params in {**VAL_SEVERITIES, "clean": None}.items():
        clean = [face.astype(np.float32) / 255.0 for face in faces]
        degraded = [c if params is None else apply_eq11(c, params, rng) for c in clean]
        x = torch.from_numpy(np.stack(degraded)).permute(0, 3, 1, 2) * 2 - 1
        out = ((idm_sample(net, x, list(range(len(faces))), steps=steps) + 1) / 2).permute(0, 2, 3, 1).numpy()
        report[name] = {
            "input_psnr": None if params is None else round(float(np.mean([psnr(d, c) for d, c in zip(degraded, clean)])), 3),
            "output_psnr": round(float(np.mean([psnr(o, c) for o, c in zip(out, clean)])), 3),
        }
    return report


def write_model(ema: IDMUNet, args: argparse.Namespace, step: int, seconds: float, faces: list, val_faces: list, history: list) -> None:
    """Written at every validation, so a run that is cut off still leaves its latest model and card."""
    card = {
        "name": "idm",
        "preset": PRESET,
        "params": sum(p.numel() for p in ema.parameters()),
        "objective": "IDM eq. 7: L1 x0 regression from cat(x_t, x_d), continuous noise levels (SR3), x0 = x_d + f",
        "schedule": SCHEDULE_NAME,
        "timesteps": T,
        "sampler": f"DDPM ancestral, {DEFAULT_STEPS} steps (respacing '{DEFAULT_STEPS}')",
        "data": [str(p) for p in args.data],
        "train_faces": len(faces),
        "keep_size": True,
        "validation": str(args.val),
        "validation_faces": len(val_faces),
        "steps": step,
        "planned_steps": args.steps,
        "batch": args.batch,
        "crop": args.crop,
        "light_share": args.light,
        "lr": args.lr,
        "ema": args.ema,
        "seed": args.seed,
        "train_seconds": round(seconds),
        "machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}",
        "history": history,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = save_model(ema, args.out / MODEL_FILE, SIZE, dtype=torch.float16, card=card)
    save_model(ema, args.out / "steps" / f"idm-step{step}.safetensors", SIZE, dtype=torch.float16, card=card)
    card["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "sha256": card["sha256"]}, indent=1) + "\n")
    print(f"wrote {path} (step {step})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="folders of aligned training faces")
    parser.add_argument("--val", type=Path, required=True, help="folder of aligned faces kept aside for validation")
    parser.add_argument("--out", type=Path, required=True, help="folder for idm.safetensors and idm.json")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--val-every", type=int, default=1000)
    parser.add_argument("--val-count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--light", type=float, default=0.3, help="share of samples with light damage (train_baseline.LIGHT)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    start = time.time()
    faces = load_faces(args.data, keep_size=True)
    val_faces = load_faces([args.val], limit=args.val_count)
    print(f"{len(faces)} training faces, {len(val_faces)} validation faces ({time.time() - start:.0f} s to load)", flush=True)

    net = IDMUNet(idm_unet_config(PRESET, SIZE))
    ema = IDMUNet(net.config)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps, eta_min=args.lr * 0.05)
    noise_schedule = NoiseSchedule.named(SCHEDULE_NAME, T)
    generator = torch.Generator().manual_seed(args.seed)
    stop = threading.Event()
    feed = batches(faces, args.batch, args.crop, args.seed, stop, light=args.light)
    history = []
    train_start = time.time()
    for step in range(1, args.steps + 1):
        lq, hq = feed.get()
        gamma = sample_noise_levels(noise_schedule, hq.shape[0], generator=generator)
        noise = torch.randn(hq.shape, generator=generator)
        loss, _ = x0_regression_loss(lambda x_t, g: net(torch.cat([x_t, lq], 1), g), hq, gamma, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 1 - args.ema)
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {(time.time() - train_start) / step:.2f} s/step", flush=True)
        if step % args.val_every == 0 or step == args.steps:
            report = validate(ema.eval(), val_faces)
            history.append({"step": step, "loss": round(loss.item(), 5), **report})
            print(json.dumps(history[-1]), flush=True)
            write_model(ema, args, step, time.time() - train_start, faces, val_faces, history)
    stop.set()


if __name__ == "__main__":
    main()
