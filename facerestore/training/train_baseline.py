"""Train the `baseline` restorer shipped inside the package (the fast one-step offline restorer).

    python -m facerestore.training.train_baseline --data DIR [DIR ...] --val DIR --out runs/baseline --keep-size
    cp runs/baseline/baseline.safetensors runs/baseline/baseline.json facerestore/models/   # steps/ stays out of the package

One-step L1 regression (IDM eq. 7 without the diffusion: x_d -> x) of a BaselineUNet on random crops of
faces resized to 512 (with --keep-size, as the shipped model: kept at their own size up to 512, eq. 11
scaled to it) and degraded on the fly with IDM eq. 11. docs/baseline-model.md has the shipped run. Adam, cosine learning rate, gradient
clipping, EMA of the weights (the EMA is what ships, stored as fp16 safetensors with a JSON card that
records data, steps, time and the validation numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from facerestore.image_io import BadImage, list_images, read_image
from facerestore.metrics.json_numbers import json_number
from facerestore.nets.baseline_unet import BaselineUNet, BaselineUNetConfig
from facerestore.plural import counted
from facerestore.training.degradations import Eq11Params, Eq11Ranges, apply_eq11, sample_eq11
from facerestore.weights.checkpoint import save_safetensors

SIZE = 512
VAL_SEVERITIES = {  # fixed eq. 11 parameters: (sigma, r, noise, jpeg)
    "mild": Eq11Params(sigma=1.5, scale=2.0, noise=3.0, jpeg=85),
    "medium": Eq11Params(sigma=4.0, scale=4.0, noise=8.0, jpeg=70),
    "severe": Eq11Params(sigma=8.0, scale=8.0, noise=12.0, jpeg=55),
}


def load_faces(folders: list[Path], limit: int | None = None, keep_size: bool = False) -> list[np.ndarray]:
    """Every readable image as uint8 RGB, resized to 512 (or, with keep_size, only ever shrunk to 512).

    keep_size exists because upsampling 256-pixel training faces to 512 gives soft targets, and a
    restorer trained on soft targets learns to soften sharp inputs.
    """
    links: list[tuple[Path, str]] = []
    paths, problems = list_images(folders, links=links)
    for path, reason in [*links, *problems]:
        print(f"skipped {path}: {reason}", flush=True)
    faces = []
    for path in paths[:limit]:
        try:
            rgb = read_image(path).rgb
        except BadImage as e:
            print(f"skipped: {e}", flush=True)
            continue
        if min(rgb.shape[:2]) < 128:
            continue
        side = min(rgb.shape[0], SIZE) if keep_size else SIZE
        if rgb.shape[0] != side:
            rgb = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_CUBIC if rgb.shape[0] < side else cv2.INTER_AREA)
        faces.append(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    return faces


def scaled_params(params: Eq11Params, side: int) -> Eq11Params:
    """The eq. 11 degradation of a 512 face, expressed for the same face at `side` pixels."""
    s = side / SIZE
    return Eq11Params(sigma=params.sigma * s, scale=max(1.0, params.scale * s), noise=params.noise, jpeg=params.jpeg)


LIGHT = Eq11Ranges(sigma=(0.2, 2.0), scale=(1.0, 2.0), noise=(0.0, 4.0), jpeg=(80.0, 100.0))  # at 512 px, like VAL_SEVERITIES["mild"]


def batches(faces: list[np.ndarray], batch: int, crop: int, seed: int, stop: threading.Event, light: float = 0.0) -> queue.Queue:
    """A background thread makes (degraded, clean) crop batches; OpenCV releases the GIL.

    `light`: the share of samples drawn from LIGHT instead of eq. 11's full ranges, which are mostly
    heavy damage; a restorer that never sees nearly clean faces learns to change every face.
    """
    out: queue.Queue = queue.Queue(maxsize=4)

    def work() -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            lq, hq = [], []
            for index in rng.integers(0, len(faces), batch):
                clean = faces[index].astype(np.float32) / 255.0
                if rng.random() < 0.5:
                    clean = clean[:, ::-1].copy()
                side = clean.shape[0]
                ranges = LIGHT if light > 0 and rng.random() < light else Eq11Ranges()
                degraded = apply_eq11(clean, scaled_params(sample_eq11(rng, ranges), side), rng)
                y, x = rng.integers(0, side - crop + 1, 2)
                lq.append(degraded[y : y + crop, x : x + crop])
                hq.append(clean[y : y + crop, x : x + crop])
            pair = [torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).contiguous() * 2 - 1 for a in (lq, hq)]
            out.put(pair)

    threading.Thread(target=work, daemon=True).start()
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.round(a * 255) - np.round(b * 255)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def mean_psnr(values: list[float]) -> float | str:
    """Rounded mean, or "inf" where a face came back identical: cards are JSON, which has no infinity
    (the convention of `facerestore evaluate`, docs/evaluation.md)."""
    return json_number(float(np.mean(values)), 3)


@torch.inference_mode()
def validate(restore: Callable[[torch.Tensor], torch.Tensor], faces: list[np.ndarray],
             identity: Callable[[np.ndarray, np.ndarray], float] | None = None) -> dict[str, dict[str, float]]:
    """Mean PSNR of input and output per fixed severity, plus restoring the clean image (authenticity).

    `restore` maps the batch of degraded faces [B,3,H,W] in [-1,1] to its restoration in [-1,1].
    `identity(image, reference)` (images HxWx3 in [0, 1]), when given, adds the mean identity
    similarity of input and output, the other half of issue 5's bar.
    """
    report = {}
    rng = np.random.default_rng(0)
    for name, params in {**VAL_SEVERITIES, "clean": None}.items():
        clean = [face.astype(np.float32) / 255.0 for face in faces]
        degraded = [c if params is None else apply_eq11(c, params, rng) for c in clean]
        x = torch.from_numpy(np.stack(degraded)).permute(0, 3, 1, 2) * 2 - 1
        restored = ((restore(x).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        report[name] = {
            "input_psnr": None if params is None else mean_psnr([psnr(d, c) for d, c in zip(degraded, clean)]),
            "output_psnr": mean_psnr([psnr(r, c) for r, c in zip(restored, clean)]),
        }
        if identity is not None:
            if params is not None:
                report[name]["input_identity"] = round(float(np.mean([identity(d, c) for d, c in zip(degraded, clean)])), 4)
            report[name]["output_identity"] = round(float(np.mean([identity(r, c) for r, c in zip(restored, clean)])), 4)
    return report


def recipe_card(args: argparse.Namespace, step: int, seconds: float, faces: list, val_faces: list, history: list) -> dict:
    """The card fields every model trained by `train_on_crops` records: data, recipe, time, validation."""
    return {
        "data": [str(p) for p in args.data],
        "train_faces": len(faces),
        "validation": str(args.val),
        "validation_faces": len(val_faces),
        "steps": step,
        "planned_steps": args.steps,
        "batch": args.batch,
        "crop": args.crop,
        "lr": args.lr,
        "ema": args.ema,
        "seed": args.seed,
        "train_seconds": round(seconds),
        "machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}",
        "history": history,
    }


def write_model(ema: BaselineUNet, step: int, seconds: float, faces: list, val_faces: list, history: list, *,
                config: BaselineUNetConfig, args: argparse.Namespace) -> None:
    """Written at every validation, so a run that is cut off still leaves its latest model and card."""
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() for k, v in ema.state_dict().items()}
    metadata = {"net": "BaselineUNet", "config": json.dumps(config.__dict__)}
    save_safetensors(state, args.out / "baseline.safetensors", metadata)
    save_safetensors(state, args.out / "steps" / f"baseline-step{step}.safetensors", metadata)  # to pick from the history
    card = {
        "name": "baseline",
        "net": "BaselineUNet",
        "config": {"channels": list(config.channels), "blocks": config.blocks, "unshuffle": config.unshuffle},
        "params": sum(p.numel() for p in ema.parameters()),
        "objective": "L1 regression x_d -> x (one step), IDM eq. 11 degradations drawn uniformly",
        "keep_size": args.keep_size,
        **recipe_card(args, step, seconds, faces, val_faces, history),
        "sha256": hashlib.sha256((args.out / "baseline.safetensors").read_bytes()).hexdigest(),
    }
    (args.out / "baseline.json").write_text(json.dumps(card, indent=1, allow_nan=False) + "\n")
    print(f"wrote {args.out / 'baseline.safetensors'} (step {step})", flush=True)


def recipe_arguments(description: str, model_file: str, *, steps: int, val_every: int) -> argparse.ArgumentParser:
    """The command-line options of `train_on_crops`; each script adds its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="folders of aligned training faces")
    parser.add_argument("--val", type=Path, required=True, help="folder of aligned faces kept aside for validation")
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {model_file} and its JSON card")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--val-every", type=int, default=val_every)
    parser.add_argument("--val-count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (degraded, clean) crops in [-1,1] -> scalar loss of `net`
Writer = Callable[[torch.nn.Module, int, float, list, list, list], None]  # (ema, step, seconds, faces, val_faces, history)


def train_on_crops(net: torch.nn.Module, ema: torch.nn.Module, args: argparse.Namespace, loss_of: Loss,
                   restore: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor], write: Writer,
                   *, keep_size: bool, light: float = 0.0,
                   identity: Callable[[np.ndarray, np.ndarray], float] | None = None) -> None:
    """The bundled models' CPU recipe: crops from `batches`, Adam with cosine decay, gradient clipping,
    an EMA of the weights, and at every validation (`restore(ema, x)`) the model and card (`write`)."""
    start = time.time()
    faces = load_faces(args.data, keep_size=keep_size)
    val_faces = load_faces([args.val], limit=args.val_count)
    print(f"{counted(len(faces), 'training face')}, {counted(len(val_faces), 'validation face')} ({time.time() - start:.0f} s to load)", flush=True)

    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps, eta_min=args.lr * 0.05)
    stop = threading.Event()
    feed = batches(faces, args.batch, args.crop, args.seed, stop, light=light)
    history = []
    train_start = time.time()
    for step in range(1, args.steps + 1):
        lq, hq = feed.get()
        loss = loss_of(lq, hq)
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
            report = validate(partial(restore, ema.eval()), val_faces, identity)
            history.append({"step": step, "loss": round(loss.item(), 5), **report})
            print(json.dumps(history[-1], allow_nan=False), flush=True)
            write(ema, step, time.time() - train_start, faces, val_faces, history)
    stop.set()


def main() -> None:
    parser = recipe_arguments(__doc__, "baseline.safetensors", steps=2500, val_every=500)
    parser.add_argument("--keep-size", action="store_true", help="train on faces at their own size (<= 512) with eq. 11 scaled to it")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    config = BaselineUNetConfig()
    net = BaselineUNet(config)
    train_on_crops(net, BaselineUNet(config), args, lambda lq, hq: (net(lq) - hq).abs().mean(), lambda ema, x: ema(x),
                   partial(write_model, config=config, args=args), keep_size=args.keep_size)


if __name__ == "__main__":
    main()
