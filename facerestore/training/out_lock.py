"""One run at a time per output folder: the lock `degrade`, `clean-dataset`, `train`, `finetune` and
`finetune pseudo-targets` hold while they write.

Two runs into one --out would both write the same files and manifests, and the temp-file cleanup at
the start of one would delete the temp files the other is writing. So a run holds OUT/.facerestore.lock
from before its cleanup to its end: the flock of `weights.file_lock`, asked not to wait, on a file
that names the pid and host of the run that holds it (what a refused run says). An flock, not just a
file made with O_EXCL: the kernel drops it when its process dies, even by kill -9 (the DataLoader
workers it forked close their copy of its fd, so they do not keep it), so a lock file a killed run
left is free and taken over (with a note), and a pid reused since never looks alive.

Under torchrun the ranks of one run share the lock: rank 0 holds it (`hold=d.main`), and the other
ranks write only after a barrier that follows it, so a second run's rank 0 is refused and its other
ranks stop at that barrier without writing. Where the file system cannot lock (some network or FUSE
mounts) or there is no fcntl (Windows), the run goes on unlocked after saying so.

The folders the lock made for its file are removed again at its end while they are empty, so a run
refused by a later check (a bad option, nothing to resume) leaves no empty --out behind.
`assert_free` only looks: the commands whose option checks read the folder (`train --resume`,
`finetune`) call it first, so a second run is told that the folder is in use, not that it holds a
run already or nothing to resume. (It takes a shared lock for an instant: a run starting into the
folder at that very instant is refused, as it would be by the run that looks.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.image_io import assert_output_folder
from facerestore.ranks import main_rank
from facerestore.weights.file_lock import Busy, NoLocks, describe, peek, release, take

LOCK_NAME = ".facerestore.lock"


@contextmanager
def output_lock(out: Path, *, hold: bool = True, on_message: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `out`'s lock for the body (released at its end, on an error and on Ctrl-C alike); a
    folder another live run holds is a UsageError naming it and that run's pid. `hold=False` (torchrun
    ranks other than 0) takes nothing."""
    out = Path(out)
    made = _missing(out) if hold else []
    try:
        fd = _acquire(out, on_message or (lambda text: None)) if hold else None
        try:
            yield
        finally:
            if fd is not None:
                release(fd, out / LOCK_NAME)
    finally:
        for folder in made:  # deepest first; the first that is not empty (or cannot go) stops it
            try:
                folder.rmdir()
            except OSError:
                break


def checked_run_folder(out: Path | str) -> Path:
    """`out` as `train` and `finetune` first check it, before they read any option from it: a place a
    run folder can be made and written, and no live run writing there (the main torchrun rank looks:
    `assert_free`), so a second run is told the folder is in use, not that it holds a run already or
    nothing to resume."""
    out = Path(out)
    assert_output_folder(out)
    if main_rank():
        assert_free(out)
    return out


def assert_free(out: Path) -> None:
    """A UsageError, the one `output_lock` raises, while another live run holds `out`'s lock; takes
    nothing. Call it before checks that read what a run in `out` writes (only where no rank of this
    run can hold the lock yet: under torchrun, on rank 0 before `output_lock`)."""
    holder = peek(Path(out) / LOCK_NAME)
    if holder is not None:
        raise _in_use(Path(out), holder)


def _missing(out: Path) -> list[Path]:
    """`out` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (out, *out.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


def _in_use(out: Path, holder: dict) -> UsageError:
    return UsageError(f"{out} is being written by another run ({describe(holder)})", hint="wait for it to end, or choose another --out")


def _acquire(out: Path, note: Callable[[str], None]) -> int | None:
    path = out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, earlier = take(path, {}, wait=False)
    except Busy as busy:
        raise _in_use(out, busy.holder) from None
    except NoLocks as why:
        note(f"cannot lock {out} {why}; make sure no other run writes into it")
        return None
    except OSError as exc:
        raise FaceRestoreError(f"cannot write {path} ({exc.strerror or exc})", hint="check free space and permissions") from None
    if earlier:
        note(f"{out} was locked by {describe(earlier)}, which ended without releasing it; taking the lock over")
    return fd
