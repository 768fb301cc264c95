"""A training run's folder and its checkpoints, in formats that cannot carry code.

    RUN_DIR/
      config.json                     the recipe (TrainConfig) and the UNet config (`training.run_config`)
      files.json                      the training file list, frozen at the first start
      log.jsonl                       one line per step: step, loss, grad norm, seconds
      metrics.jsonl, val/step_N.png   validation numbers and image grids (with --val)
      checkpoints/step_0001000/       one complete checkpoint (a folder renamed into place when full)
        model.safetensors             the raw weights (fp32)
        ema.safetensors               the EMA weights (fp32)
        optimizer.safetensors         the optimizer's per-parameter tensors, keyed "<param>:<slot>"
        state.json                    step, samples seen, optimizer hyperparameters and scalars,
                                      AMP grad-scaler state, the RNG scheme, the recipe
      idm.safetensors, idm.json       the latest EMA model, for `--weights RUN_DIR` / `--init-from`

Safetensors holds only tensors and JSON holds only data, so loading a checkpoint never unpickles.
A checkpoint is written into a hidden temporary folder and renamed when complete, so a crash while
saving leaves the previous one intact; `latest_checkpoint` takes the highest complete step. The
temporary folder a kill -9 leaves behind (`checkpoints/.tmp-step_N`) is removed at the next save
and on resume (`remove_checkpoint_temps`).

No generator state is saved because none exists: all randomness is keyed by (seed, sample or step)
(`training.seeds`), so the step counter restores the data order, the degradations, the diffusion
noise and the global torch/numpy/python generators (re-seeded at every step) exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from facerestore.errors import FaceRestoreError, UnsupportedCheckpoint, UsageError
from facerestore.weights.checkpoint import read_state_dict, save_safetensors

CHECKPOINTS = "checkpoints"
PREFIX = "step_"
TEMP = ".tmp-"  # + the checkpoint's folder name, while it is being written


def step_dir(run: Path, step: int) -> Path:
    return run / CHECKPOINTS / f"{PREFIX}{step:07d}"


def latest_checkpoint(run: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    found = [p for p in found if (p / "state.json").is_file()]
    return max(found, key=lambda p: int(p.name[len(PREFIX) :]), default=None)


def remove_checkpoint_temps(run: Path) -> int:
    """Delete the temporary folders of saves cut short by a kill (only `.tmp-step_N`, never a checkpoint); returns how many."""
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if p.name.startswith(TEMP + PREFIX) and p.name[len(TEMP + PREFIX) :].isdigit()
             and p.is_dir() and not p.is_symlink()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def write_json(path: Path, data: object) -> None:
    """Atomic JSON write (temp file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _json_scalar(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, names: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split `optimizer.state_dict()` into tensors (by parameter name) and JSON-ready data."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, object]] = {}
    for index, slots in state["state"].items():
        name = names[index]
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                tensors[f"{name}:{slot}"] = value
            elif isinstance(value, torch.Tensor):
                tensors[f"{name}:{slot}"] = value.reshape(1)  # 0-dim (Adam's step): kept as a tensor, shape [1]
            else:
                scalars.setdefault(name, {})[slot] = _json_scalar(value)
    groups = [{k: _json_scalar(v) for k, v in group.items()} for group in state["param_groups"]]
    return tensors, {"names": list(names), "param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, names: Sequence[str], tensors: dict[str, torch.Tensor], data: dict, source: str) -> None:
    """Inverse of `optimizer_to_tensors`; the parameter names must match the model's."""
    if list(data.get("names", [])) != list(names):
        raise UnsupportedCheckpoint(f"{source}: the optimizer state belongs to another model (parameter names differ)", hint="resume with the run's own model")
    current = optimizer.state_dict()
    groups = []
    for saved, now in zip(data["param_groups"], current["param_groups"], strict=True):
        group = dict(saved)
        group["params"] = now["params"]
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    state: dict[int, dict[str, object]] = {}
    index_of = {name: i for i, name in enumerate(names)}
    for key, value in tensors.items():
        name, slot = key.rsplit(":", 1)
        state.setdefault(index_of[name], {})[slot] = value.reshape(()) if slot == "step" else value
    for name, slots in data.get("scalars", {}).items():
        state.setdefault(index_of[name], {}).update(slots)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    state: dict
    extra: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # <name>.safetensors beside the three


CORE_FILES = ("model", "ema", "optimizer")


def save_checkpoint(run: Path, step: int, *, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, names: Sequence[str], state: dict, metadata: dict[str, str], keep: int,
                    extra: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> Path:
    """Write checkpoint `step` completely, then rename it into place; keep the newest `keep`.

    `extra` adds more tensor files to the same checkpoint (e.g. a discriminator and its optimizer's
    tensors, `unpaired fine-tuning`): name -> state, written as `<name>.safetensors`.
    """
    final = step_dir(run, step)
    tmp = final.with_name(f"{TEMP}{final.name}")
    for name in extra or {}:
        if name in CORE_FILES or not name.replace("_", "").isalnum():
            raise ValueError(f"extra checkpoint file name {name!r} is reserved or not a plain name")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_safetensors(model, tmp / "model.safetensors", metadata)
        save_safetensors(ema, tmp / "ema.safetensors", metadata)
        for name, tensors in (extra or {}).items():
            save_safetensors(dict(tensors), tmp / f"{name}.safetensors")
        tensors, opt_data = optimizer_to_tensors(optimizer, names)
        save_safetensors(tensors, tmp / "optimizer.safetensors")
        write_json(tmp / "state.json", {**state, "step": step, "optimizer": opt_data})
        if final.exists():  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
    except Exception as exc:  # OSError, or safetensors' own error for a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, FaceRestoreError):
            raise
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1]
        raise FaceRestoreError(f"cannot write checkpoint {final} ({reason})",
                               hint="free some space (or fix the permissions), then continue with --resume from the last checkpoint") from None
    remove_checkpoint_temps(run)  # of earlier saves a kill cut short
    if keep > 0:
        done = sorted((p for p in (run / CHECKPOINTS).iterdir() if p.is_dir() and p.name.startswith(PREFIX)), key=lambda p: p.name)
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint_state(path: Path) -> dict:
    """A checkpoint's state.json: step, optimizer data, and the recipe it was made with (resume compares it)."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnsupportedCheckpoint(f"{path}/state.json cannot be read ({exc})", hint="delete this checkpoint folder to resume from the one before") from None
    if not isinstance(state, dict):
        raise UnsupportedCheckpoint(f"{path}/state.json holds no checkpoint state", hint="delete this checkpoint folder to resume from the one before")
    return state


def load_checkpoint(path: Path) -> Checkpoint:
    state = read_checkpoint_state(path)
    try:
        extra = {p.stem: read_state_dict(p) for p in sorted(path.glob("*.safetensors")) if p.stem not in CORE_FILES}
        tensors = {name: read_state_dict(path / f"{name}.safetensors") for name in ("model", "ema", "optimizer")}
    except FaceRestoreError as exc:  # its hint is for downloaded weights
        raise UnsupportedCheckpoint(str(exc), hint="delete this checkpoint folder to resume from the one before") from None
    return Checkpoint(path=path, step=int(state["step"]), state=state, extra=extra, **tensors)


STEPS_FILE = "steps.json"  # {"steps": N}: a run's target length once `--resume --steps N` moved it from config.json's


def read_target_steps(run: Path | str) -> int | None:
    """The steps RUN/steps.json records (None without one: the run still has config.json's steps).

    config.json stays as the run was started; a later `--resume --steps N` records N here so that a
    plain `--resume` after it goes on to N instead of stopping at the first --steps."""
    path = Path(run) / STEPS_FILE
    if not path.is_file():
        return None
    try:
        steps = json.loads(path.read_text())["steps"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a step count ({exc})", hint="delete it and resume with --steps N") from None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UsageError(f"{path} holds no step count >= 1 ({steps!r})", hint="delete it and resume with --steps N")
    return steps


def record_target_steps(run: Path | str, steps: int, *, section: str) -> None:
    """Record a changed --steps in RUN/steps.json (atomic write); `section` is config.json's key for the run."""
    run = Path(run)
    current = read_target_steps(run)
    if current is None:
        current = json.loads((run / "config.json").read_text())[section].get("steps")
    if current != steps:
        write_json(run / STEPS_FILE, {"steps": steps})
