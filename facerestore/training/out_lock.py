"""One run at a time per output folder: the lock `degrade`, `clean-dataset`, `train`, `finetune` and
`finetune pseudo-targets` hold while they write.

Two runs into one --out would both write the same files and manifests, and the temp-file cleanup at
the start of one would delete the temp files the other is writing. So a run holds OUT/.facerestore.lock
from before its cleanup to its end: an flock on that file, which names the pid and host of the run
that holds it (what a refused run says). An flock, not just a file made with O_EXCL: the kernel drops
it when its process dies, even by kill -9, so a lock file a killed run left is free and taken over
(with a note), and a pid reused since (a container restarting with the same pids) never looks alive.

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

import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from facerestore.errors import FaceRestoreError, UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".facerestore.lock"


@contextmanager
def output_lock(out: Path, *, hold: bool = True, on_message: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `out`'s lock for the body (released at its end, on an error and on Ctrl-C alike); a
    folder another live run holds is a UsageError naming it and that run's pid. `hold=False` (torchrun
    ranks other than 0) takes nothing."""
    out = Path(out)
    made = _missing(out) if hold else []
    try:
        held = _acquire(out, on_message) if hold else None
        try:
            yield
        finally:
            if held is not None:
                _release(*held)
    finally:
        for folder in made:  # deepest first; the first that is not empty (or cannot go) stops it
            try:
                folder.rmdir()
            except OSError:
                break


def assert_free(out: Path) -> None:
    """A UsageError, the one `output_lock` raises, while another live run holds `out`'s lock; takes
    nothing. Call it before checks that read what a run in `out` writes (only where no rank of this
    run can hold the lock yet: under torchrun, on rank 0 before `output_lock`)."""
    if fcntl is None:
        return
    path = Path(out) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or none readable): no run holds it, or `output_lock` will say why
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(Path(out), _holder(fd)) from None
    except OSError:
        pass
    finally:
        os.close(fd)  # closing drops the shared lock, if taken


def _missing(out: Path) -> list[Path]:
    """`out` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (out, *out.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


def _in_use(out: Path, holder: dict) -> UsageError:
    return UsageError(f"{out} is being written by another run ({_describe(holder)})", hint="wait for it to end, or choose another --out")


def _acquire(out: Path, on_message: Callable[[str], None] | None) -> tuple[int, Path] | None:
    def note(text: str) -> None:
        if on_message is not None:
            on_message(text)

    path = out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            note(f"cannot lock {out} on this system; make sure no other run writes into it")
            return None
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise _in_use(out, holder) from None
            except OSError as exc:  # this file system has no locks
                os.close(fd)
                note(f"cannot lock {out} ({exc.strerror or exc}); make sure no other run writes into it")
                return None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            except OSError:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)  # the run that held it removed the file as this one opened it: lock the new file
    except OSError as exc:
        raise FaceRestoreError(f"cannot write {path} ({exc.strerror or exc})", hint="check free space and permissions") from None
    try:
        earlier = _holder(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode(), 0)
    except BaseException as exc:
        _release(fd, path)
        if isinstance(exc, OSError):
            raise FaceRestoreError(f"cannot write {path} ({exc.strerror or exc})", hint="check free space and permissions") from None
        raise
    if earlier:
        note(f"{out} was locked by {_describe(earlier)}, which ended without releasing it; taking the lock over")
    return fd, path


def _release(fd: int, path: Path) -> None:
    """Remove the file while still holding it (a run that opened it meanwhile sees the inode change
    and locks a new file), then let go."""
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def _holder(fd: int) -> dict:
    """The pid and host a lock file names ({} for an empty or unreadable one)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and "pid" in data else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "pid unknown"
    host = holder.get("host")
    return f"pid {holder['pid']}" + (f" on {host}" if host and host != socket.gethostname() else "")
