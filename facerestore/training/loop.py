"""Pieces every facerestore training loop shares (`train` for IDM, `finetune` for Kuai et al. 2025).

- `reseed`: the global torch / numpy / python generators as a function of (seed, step, rank), so
  anything that draws from them (dropout, spectral-norm initial vectors, user code) is replayed
  exactly after a resume;
- `StopAtStepEnd`: Ctrl-C / SIGTERM finish the current step, then the loop saves and stops;
- `truncate_log`: drop JSON-lines log entries beyond the checkpoint being resumed;
- `check_settings`: a resumable output folder refuses a rerun with other settings (`read_settings`
  reads what it recorded);
- `open_manifest`: append to a JSON-lines manifest that a kill may have left torn;
- `source_stat`, `source_fingerprint`, `source_changed`: notice a source replaced at the same path
  since the manifest listed it as done.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TextIO
from pathlib import Path

import numpy as np
import torch

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.training.seeds import stable_seed
from facerestore.weights.store import read_sha256


def reseed(seed: int, step: int, rank: int) -> None:
    """Global generators as a function of (seed, step, rank): what dropout or user code might draw."""
    s = stable_seed(seed, "global", step, rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


class StopAtStepEnd:
    """SIGINT / SIGTERM in a single process: finish the current step, save, then stop.

    A signal in the middle of an optimizer step would leave weights and step counter apart, so the
    first Ctrl-C (or a scheduler's SIGTERM) only asks to stop; a second Ctrl-C interrupts at once.
    Under torchrun the default handlers stay (the periodic checkpoints are the resume points), since
    processes stopping at different steps would wait for each other forever.
    """

    def __init__(self, enabled: bool) -> None:
        self.requested: str | None = None
        self.previous: dict[int, object] = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def honour(self, step: int, last_saved: int, checkpoint: Callable[[int], None], message: Callable[[str], None]) -> None:
        """At a step's end: if a stop was asked for, save this step (unless just saved) and stop."""
        if not self.requested:
            return
        if step > last_saved:
            checkpoint(step)
        message(f"stopped by {self.requested} after step {step} (checkpoint saved)")  # the command's line says how to go on
        raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines beyond the checkpoint being resumed (they are recomputed identically)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by the crash
    write_json_lines(path, keep)


def write_json_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)


def open_manifest(path: Path) -> TextIO:
    """Open a JSON-lines manifest for appending. A kill -9 mid-write leaves a last line without its
    newline; the next record starts on a line of its own, so only the torn one is lost (and its file
    redone), not the record after it too."""
    path = Path(path)
    torn = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
    handle = open(path, "a")  # noqa: SIM115 - the caller closes it
    if torn:
        handle.write("\n")
    return handle


def manifest_records(path: Path) -> Iterator[dict]:
    """The records of a manifest `open_manifest` appends to: every line that is a whole JSON object.
    A line torn by a kill is skipped; its file is simply done again."""
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record


def read_settings(state: Path) -> dict | None:
    """The settings.json recorded in the state folder `state`, or None where there is none or it cannot
    be read (not JSON, not an object): such a file constrains nothing, and is left as it is."""
    try:
        recorded = json.loads((state / "settings.json").read_text())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None
    return recorded if isinstance(recorded, dict) else None


# What a manifest record keeps of the source it was made from. Size and mtime_ns first: one stat per
# file, so a rerun over an unchanged tree reads nothing (a replacement that keeps both, such as
# `cp -p` of an image of the same size, goes unnoticed, as with make or rsync). The sha256 settles a
# changed mtime: a tree copied with `cp -r` or touched keeps its contents and is not redone (hours of
# restoring), an image replaced by another is. Recording it costs one more read of a file that is
# about to be read anyway.
SOURCE_KEYS = ("source_size", "source_mtime_ns", "source_sha256")


def source_stat(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a source file, or None when it cannot be read (its work then fails with its own line)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _sha256(path: Path) -> str | None:
    """The source's sha256, or None where it cannot be read (its work then fails with its own line)."""
    try:
        return read_sha256(path)
    except OSError:
        return None


def source_fingerprint(path: Path, stat: tuple[int, int] | None) -> dict:
    """The source fields of a manifest record: `stat` (taken at the start of the run), then the hash,
    both BEFORE the file is read for its work. A file replaced in between then leaves a record that
    describes an older file than the one used, so the next run redoes it; never the other way round."""
    if stat is None:
        return {}
    digest = _sha256(path)
    return {"source_size": stat[0], "source_mtime_ns": stat[1], **({"source_sha256": digest} if digest else {})}


def source_changed(record: dict, path: Path, stat: tuple[int, int] | None) -> bool:
    """Whether the source at `path` (now `stat`) differs from the one `record` was made from.

    A record written before sources were recorded is trusted, as those runs did: there is nothing to
    compare with, and redoing a whole finished tree (hours of restoring) on an upgrade would be worse.
    """
    if "source_size" not in record or "source_mtime_ns" not in record:
        return False
    if stat is None or record["source_size"] != stat[0]:
        return True
    if record["source_mtime_ns"] == stat[1]:
        return False
    return record.get("source_sha256") is None or record["source_sha256"] != _sha256(path)


def setting_text(value: object) -> str:
    """A recorded setting as a refusal shows it: a weights record as its file (and the start of its
    sha256, which tells a model retrained in place), not a Python dict; None as the default it stands for."""
    if value is None:
        return "default"
    if isinstance(value, dict) and ("path" in value or set(value) == {"name"}):
        where = str(value.get("path") or value.get("name"))
        return f"{where} (sha256 {value['sha256'][:12]})" if value.get("sha256") else where
    return repr(value)


def _recorded_text(settings: dict, key: str) -> str:
    """A setting as a refusal shows it; a key one side lacks (a hand-edited file, or one an older
    version wrote) is "not recorded", not the "default" a recorded None stands for."""
    return setting_text(settings[key]) if key in settings else "not recorded"


def setting_differences(recorded: dict, settings: dict) -> list[str]:
    """`KEY: RECORDED -> NOW` for each setting that differs, as `check_settings`' refusal names them."""
    return [f"{k}: {_recorded_text(recorded, k)} -> {_recorded_text(settings, k)}"
            for k in [*settings, *(k for k in recorded if k not in settings)]
            if k not in recorded or k not in settings or recorded[k] != settings[k]]


def check_settings(state: Path, settings: dict, main: bool, what: str) -> None:
    """Refuse to mix two settings in one resumable output folder; record them on the first run (rank 0).

    Shared by `clean-dataset` and the pseudo-target stage: `state` is the folder's hidden state folder.
    """
    path = state / "settings.json"
    if path.is_file():
        recorded = read_settings(state)
        if recorded is None:  # passed over, it would let a rerun with other settings mix two models in one folder
            raise UsageError(f"{path} is damaged (not a JSON object): it records the settings {state.parent} was made with",
                             hint=f"if you made it with the options you give now, delete that file and rerun (they are recorded again); "
                                  f"else delete {state} to start over")
        if recorded != settings:
            raise UsageError(f"{state.parent} holds {what} made with other settings ({', '.join(setting_differences(recorded, settings))})",
                             hint=f"rerun with the same options, choose another --out, or delete {state} to start over")
    elif main:
        write_settings(state, settings)


def write_settings(state: Path, settings: dict) -> None:
    """Write `state`/settings.json atomically (temp file + rename): a kill leaves the old one or the new one."""
    path = state / "settings.json"
    try:
        state.mkdir(parents=True, exist_ok=True)
        tmp = state / ".settings.json.tmp"
        tmp.write_text(json.dumps(settings, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise FaceRestoreError(f"cannot write {path} ({exc.strerror or exc})", hint="check free space and permissions") from None
