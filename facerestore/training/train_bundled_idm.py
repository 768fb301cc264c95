"""Train the IDM model shipped inside the package (`--method idm` with no weights) on CPU.

    python -m facerestore.training.train_bundled_idm --data DIR [DIR ...] --val DIR --out runs/bundled-idm
    python -m facerestore.training.ship_snapshot runs/bundled-idm --step best     # the chosen step into facerestore/models

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
from functools import partial

import torch

from facerestore.diffusion import NoiseSchedule
from facerestore.diffusion.losses import perturbed_noise, sample_noise_levels, x0_regression_loss
from facerestore.methods.idm import DEFAULT_STEPS, MODEL_FILE, SCHEDULE_NAME, T, idm_sample, save_model
from facerestore.metrics.identity import identity_similarity
from facerestore.nets.idm_unet import IDMUNet, idm_unet_config
from facerestore.training.train_baseline import SIZE, recipe_arguments, recipe_card, train_on_crops

PRESET = "compact"


def write_model(ema: IDMUNet, step: int, seconds: float, faces: list, val_faces: list, history: list, *, args: argparse.Namespace) -> None:
    """Written at every validation, so a run that is cut off still leaves its latest model and card."""
    card = {
        "name": "idm",
        "preset": PRESET,
        "params": sum(p.numel() for p in ema.parameters()),
        "objective": "IDM eq. 7: L1 x0 regression from cat(x_t, x_d), continuous noise levels (SR3), x0 = x_d + f",
        "schedule": SCHEDULE_NAME,
        "timesteps": T,
        "sampler": f"DDPM ancestral, {DEFAULT_STEPS} steps (respacing '{DEFAULT_STEPS}')",
        "keep_size": True,
        "light_share": args.light,
        "input_perturbation": args.input_perturbation,
        **recipe_card(args, step, seconds, faces, val_faces, history),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = save_model(ema, args.out / MODEL_FILE, SIZE, dtype=torch.float16, card=card)
    save_model(ema, args.out / "steps" / f"idm-step{step}.safetensors", SIZE, dtype=torch.float16, card=card)
    card["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "sha256": card["sha256"]}, indent=1, allow_nan=False) + "\n")
    print(f"wrote {path} (step {step})", flush=True)


def restore(net: IDMUNet, degraded: torch.Tensor) -> torch.Tensor:
    """The real sampler at its default 10 steps, face i seeded with i."""
    return idm_sample(net, degraded, list(range(degraded.shape[0])), steps=DEFAULT_STEPS)


def main() -> None:
    parser = recipe_arguments(__doc__, MODEL_FILE, steps=4000, val_every=1000)
    parser.add_argument("--light", type=float, default=0.3, help="share of samples with light damage (train_baseline.LIGHT)")
    parser.add_argument("--input-perturbation", type=float, default=0.0,
                        help="DDPM-IP: x_t is built from eps + s*xi, a second normal xi (diffusion.losses.perturbed_noise)")
    parser.add_argument("--identity-weights", default=None,
                        help="ArcFace ONNX (path or catalogue name): validation also reports identity similarity")
    args = parser.parse_args()
    identity = None if args.identity_weights is None else partial(identity_similarity, weights=args.identity_weights)

    torch.manual_seed(args.seed)
    net = IDMUNet(idm_unet_config(PRESET, SIZE))
    noise_schedule = NoiseSchedule.named(SCHEDULE_NAME, T)
    generator = torch.Generator().manual_seed(args.seed)

    def loss_of(lq: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        gamma = sample_noise_levels(noise_schedule, hq.shape[0], generator=generator)
        noise = perturbed_noise(hq.shape, args.input_perturbation, generator=generator)
        return x0_regression_loss(lambda x_t, g: net(torch.cat([x_t, lq], 1), g), hq, gamma, noise)[0]

    train_on_crops(net, IDMUNet(net.config), args, loss_of, restore, partial(write_model, args=args), keep_size=True,
                   light=args.light, identity=identity)


if __name__ == "__main__":
    main()
