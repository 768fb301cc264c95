"""Ship one validation snapshot of a `train_bundled_idm` run as the package's bundled IDM model.

    python -m facerestore.training.ship_snapshot RUN_DIR --step 500 --why "best identity ..." [--out facerestore/models]

A run writes `steps/idm-stepN.{safetensors,json}` at every validation and its latest card
`idm.json` (with the whole validation history). The snapshot worth shipping is rarely the last
one (docs/idm-model.md: identity falls with training time), so this copies the chosen one and
completes its card: the run's whole history (to show what the later steps did), the step and the
reason it was chosen, the training time to that step and of the whole run, and the sha256 of the
shipped file. Both files are written next to their destination first and then renamed, so an
interrupted call never leaves a half-written model in the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.methods.idm import MODEL_FILE, load_model

CARD_FILE = Path(MODEL_FILE).with_suffix(".json").name


def read_card(path: Path) -> dict:
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", hint="pass the folder a `train_bundled_idm` run wrote (--out) and one of its validation steps") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} cannot be read as JSON ({exc})", hint="the run folder is damaged; rerun the validation or pick another step") from None
    if not isinstance(card, dict):
        raise UsageError(f"{path} is not a model card", hint="pass a `train_bundled_idm` run folder")
    return card


def shipped_card(run: Path, step: int, why: str) -> dict:
    """The snapshot's card completed with the run's history, the choice and both training times."""
    card = read_card(run / "steps" / f"idm-step{step}.json")
    latest = read_card(run / CARD_FILE)
    history = latest.get("history", card.get("history", []))
    if not any(entry.get("step") == step for entry in history):
        raise UsageError(f"{run}: step {step} is not in the run's validation history", hint="ship a step the run validated")
    card.pop("sha256", None)
    seconds = card.pop("train_seconds", None)
    return {**card, "history": history, "chosen_step": step, "choice": why, "train_seconds_to_step": seconds,
            "run_seconds": latest.get("train_seconds")}


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def ship(run: Path, step: int, why: str, out: Path) -> Path:
    """Copy snapshot `step` of `run` to `out/idm.safetensors` with its completed card; returns the model path."""
    source = run / "steps" / f"idm-step{step}.safetensors"
    if not source.is_file():
        raise UsageError(f"{source} does not exist", hint=f"pick a step the run validated: {', '.join(sorted(p.stem for p in (run / 'steps').glob('*.safetensors'))) or 'none yet'}")
    if not why.strip():
        raise UsageError("--why is empty", hint="say why this step is the one to ship; the card keeps it")
    card = shipped_card(run, step, why)
    load_model(source)  # refuse a file the method could not load before touching the package
    data = source.read_bytes()
    card["sha256"] = hashlib.sha256(data).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    target = out / MODEL_FILE
    write_atomic(target, data)
    write_atomic(out / CARD_FILE, (json.dumps(card, indent=1) + "\n").encode())
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the --out folder of a train_bundled_idm run")
    parser.add_argument("--step", type=int, required=True, help="the validation step to ship")
    parser.add_argument("--why", required=True, help="why this step: kept in the card as `choice`")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models",
                        help="where idm.safetensors and idm.json go (default: the package's models folder)")
    args = parser.parse_args(argv)
    try:
        path = ship(args.run, args.step, args.why, args.out)
    except FaceRestoreError as exc:
        sys.exit(f"ship_snapshot: {exc.one_line()}")
    card = json.loads(path.with_suffix(".json").read_text())
    print(f"shipped step {args.step} of {args.run} as {path} (sha256 {card['sha256']}); update weights.toml's comment and docs/idm-model.md")


if __name__ == "__main__":
    main()
