"""Ship one validated snapshot of a training run as the package's bundled IDM model.

    python -m facerestore.training.ship_snapshot RUN_DIR --step 500 --why "best identity ..." [--out facerestore/models]
    python -m facerestore.training.ship_snapshot RUN_DIR --step best [--out DIR]

RUN_DIR is either kind of run:

- `facerestore train` (the GPU route): every checkpoint `checkpoints/step_NNNNNNN/ema.safetensors`
  (train with `--keep 0` to keep them all), validation numbers in `metrics.jsonl`, the recipe in
  the exported card `idm.json`;
- `python -m facerestore.training.train_bundled_idm` (the CPU recipe): a snapshot
  `steps/idm-stepN.{safetensors,json}` at every validation, the whole history in the latest card.

The snapshot worth shipping is rarely the last one (docs/idm-model.md: identity falls with training
time), so this stores the chosen one as fp16 `idm.safetensors` and completes its card: the run's
whole validation history (to show what the later steps did), the step and the reason it was chosen,
the training time where the run recorded it, and the sha256 of the shipped file. Both files are
written in a temporary folder beside their destination and then renamed, so an interrupted call
never leaves a half-written model in the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.methods.idm import MODEL_FILE, load_model, save_model

CARD_FILE = Path(MODEL_FILE).with_suffix(".json").name


@dataclass(frozen=True)
class Snapshot:
    source: Path  # an IDM model file the method loads
    card: dict  # the shipped card, sha256 aside


def read_card(path: Path) -> dict:
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", hint="pass the --out folder of a training run and one of its validated steps") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} cannot be read as JSON ({exc})", hint="the run folder is damaged; rerun the validation or pick another step") from None
    if not isinstance(card, dict):
        raise UsageError(f"{path} is not a model card", hint="pass the --out folder of a training run")
    return card


def _validated(history: list, step: int, run: Path) -> dict:
    entry = next((e for e in history if isinstance(e, dict) and e.get("step") == step), None)
    if entry is None:
        raise UsageError(f"{run}: step {step} is not in the run's validation history", hint="ship a step the run validated")
    return entry


def gains(entry: dict) -> list[tuple[str, float]]:
    """(metric, output - input) for every row of a validation entry that scores both: each preset of
    `--val-degrade` or of `train_bundled_idm`'s severities, or the flat row of a single preset."""
    rows = [entry] + [v for v in entry.values() if isinstance(v, dict)]
    return [(metric, row[f"output_{metric}"] - row[f"input_{metric}"]) for row in rows for metric in ("psnr", "identity")
            if isinstance(row.get(f"input_{metric}"), (int, float)) and isinstance(row.get(f"output_{metric}"), (int, float))]


def best_step(history: list, run: Path) -> tuple[int, str]:
    """The validated step to ship and why: most counts (PSNR and identity per preset) that beat the
    input, then the largest worst identity gain (identity is what later steps lose, docs/idm-model.md),
    or the largest worst PSNR gain where the run was validated without identity, then the largest
    mean PSNR gain."""
    def score(entry: dict) -> tuple[int, float, float]:
        g = gains(entry)
        identity = [v for m, v in g if m == "identity"] or [v for m, v in g if m == "psnr"]
        psnr = [v for m, v in g if m == "psnr"]
        return sum(v > 0 for _, v in g), min(identity, default=0.0), sum(psnr) / max(len(psnr), 1)

    entries = [e for e in history if isinstance(e, dict) and isinstance(e.get("step"), int) and gains(e)]
    if not entries:
        raise UsageError(f"{run}: no validation with input and output numbers to choose from", hint="pass --step and --why, chosen by hand")
    best = max(entries, key=lambda e: (score(e), -e["step"]))
    beaten, worst, mean_psnr = score(best)
    # the second key falls back to PSNR when the run scored no identity (trained without --val-identity): say which it is
    worst_text = (f"worst identity gain {worst:+.4f}" if any(m == "identity" for m, _ in gains(best))
                  else f"worst PSNR gain {worst:+.3f} dB (no identity scores in the validation)")
    return best["step"], (f"--step best of {len(entries)} validations: beats the input on {beaten} of {len(gains(best))} counts, "
                          f"{worst_text}, mean PSNR gain {mean_psnr:+.3f} dB")


def is_trainer_run(run: Path) -> bool:
    """A `facerestore train` run folder (else perhaps a `train_bundled_idm` one, with steps/)."""
    return (run / "config.json").is_file() and (run / "checkpoints").is_dir()


def run_history(run: Path) -> list:
    """The run's validation history (either kind of run)."""
    if is_trainer_run(run):
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
        try:
            return [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError as exc:
            raise UsageError(f"{run / 'metrics.jsonl'} is damaged ({exc})", hint="the run folder is damaged; pick the step by hand from its validation grids") from None
    if (run / "steps").is_dir():
        return read_card(run / CARD_FILE).get("history", [])
    raise UsageError(f"{run} is not a training run folder", hint="pass the --out folder of `facerestore train` or of `train_bundled_idm`")


def _choices(paths) -> str:
    return ", ".join(sorted(p.name if p.is_dir() else p.stem for p in paths)) or "none"


def bundled_snapshot(run: Path, step: int, why: str) -> Snapshot:
    """A `train_bundled_idm` run: the snapshot's own card plus the run's latest history and times."""
    source = run / "steps" / f"idm-step{step}.safetensors"
    if not source.is_file():
        raise UsageError(f"{source} does not exist", hint=f"pick a step the run validated: {_choices((run / 'steps').glob('*.safetensors'))}")
    card = read_card(source.with_suffix(".json"))
    latest = read_card(run / CARD_FILE)
    history = latest.get("history", card.get("history", []))
    _validated(history, step, run)
    card.pop("sha256", None)
    seconds = card.pop("train_seconds", None)
    card = {**card, "history": history, "chosen_step": step, "choice": why, "train_seconds_to_step": seconds,
            "run_seconds": latest.get("train_seconds")}
    return Snapshot(source, card)


def trainer_snapshot(run: Path, step: int, why: str) -> Snapshot:
    """A `facerestore train` run: the checkpoint's EMA, the export card's recipe, metrics.jsonl's history."""
    source = run / "checkpoints" / f"step_{step:07d}" / "ema.safetensors"
    if not source.is_file():
        kept = _choices(p for p in (run / "checkpoints").glob("step_*") if p.is_dir())
        raise UsageError(f"{source} does not exist", hint=f"kept checkpoints: {kept}; train with --keep 0 to keep every one")
    card = read_card(run / CARD_FILE)
    history = run_history(run)
    validation = {k: v for k, v in _validated(history, step, run).items() if k != "step"}
    batch = card.get("recipe", {}).get("batch_size")
    card = {**card, "step": step, "samples": step * batch if isinstance(batch, int) else None, "validation": validation,
            "history": history, "chosen_step": step, "choice": why}
    card.pop("sha256", None)
    return Snapshot(source, card)


def is_half(path: Path) -> bool:
    """Every floating tensor of the file is fp16 (a `train_bundled_idm` snapshot; a checkpoint's EMA is
    fp32). Read from the safetensors header alone: `load_model` has already read the tensors."""
    with safe_open(str(path), "pt") as handle:
        dtypes = {handle.get_slice(key).get_dtype() for key in handle.keys()}
    return dtypes <= {"F16", "I64", "I32", "BOOL"}


def find_snapshot(run: Path, step: int, why: str) -> Snapshot:
    if is_trainer_run(run):
        return trainer_snapshot(run, step, why)
    if (run / "steps").is_dir():
        return bundled_snapshot(run, step, why)
    raise UsageError(f"{run} is not a training run folder", hint="pass the --out folder of `facerestore train` or of `train_bundled_idm`")


def ship(run: Path, step: int | str, why: str | None, out: Path) -> Path:
    """Store snapshot `step` (or "best": `best_step`) of `run` as fp16 `out/idm.safetensors` with its
    completed card; returns its path."""
    if step == "best":
        step, reason = best_step(run_history(Path(run)), Path(run))
        why = f"{why.strip()} ({reason})" if why and why.strip() else reason
    if not why or not why.strip():
        raise UsageError("--why is empty", hint="say why this step is the one to ship; the card keeps it")
    snapshot = find_snapshot(Path(run), step, why)
    model = load_model(snapshot.source)  # refuses a file the method could not load, before the package is touched
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".ship-"))
    try:
        written = staging / MODEL_FILE
        if is_half(snapshot.source):  # already what ships: keep its bytes (and sha256) as they are
            shutil.copyfile(snapshot.source, written)
        else:
            save_model(model.net, written, model.image_size, dtype=torch.float16)
        # both kinds of run card start with the fields `save_model` writes (format, unet, image_size, ...)
        card = {**snapshot.card, "sha256": hashlib.sha256(written.read_bytes()).hexdigest()}
        written.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
        os.replace(written, out / MODEL_FILE)
        os.replace(written.with_suffix(".json"), out / CARD_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / MODEL_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the --out folder of a `facerestore train` or `train_bundled_idm` run")
    parser.add_argument("--step", required=True, help="the validated step to ship, or `best`: the one that beats the input on the most "
                        "counts (PSNR and identity per validated preset), then with the largest worst identity gain (worst PSNR gain "
                        "where the run scored no identity)")
    parser.add_argument("--why", default=None, help="why this step: kept in the card as `choice` (required unless --step best)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models",
                        help="where idm.safetensors and idm.json go (default: the package's models folder)")
    args = parser.parse_args(argv)
    if args.step != "best" and not args.step.isdigit():
        sys.exit(f"ship_snapshot: --step {args.step!r} is neither a step number nor `best`")
    try:
        path = ship(args.run, args.step if args.step == "best" else int(args.step), args.why, args.out)
    except FaceRestoreError as exc:
        sys.exit(f"ship_snapshot: {exc.one_line()}")
    card = json.loads(path.with_suffix(".json").read_text())
    print(f"shipped step {card.get('chosen_step', args.step)} of {args.run} as {path} (sha256 {card['sha256']}); update weights.toml's comment and docs/idm-model.md")


if __name__ == "__main__":
    main()
