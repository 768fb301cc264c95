"""One process at a time per file: the flock a download, a conversion or an import holds on a cache
file, and (through `training.out_lock`) a run on its output folder.

Two processes that need the same missing checkpoint at once (two shells, the ranks of a torchrun
run) would both append to one `.part`, or one would rename it while the other still wrote into it.
So the writer of a cache file holds an flock on a lock file next to it (`FILE.lock`) and, once it
has it, looks again whether the file is there now: the process that waited finds the other's result
and uses it. The holder writes its pid, host and what it does into the lock file; a process kept
waiting more than `NOTE_AFTER_S` says so on stderr with those ("waiting for another process (pid 12)
downloading codeformer.pth into ~/.cache/facerestore/weights"), so a long download elsewhere does
not look like a hang. `take(wait=False)` refuses at once instead (`Busy`, naming the holder).

The kernel drops an flock when its process dies (even by kill -9), so a lock file a killed process
left behind is simply taken (and what it named is returned, for a note); a pid reused since never
looks alive. An flock belongs to the open file description, which a fork shares: a DataLoader worker
or a pool forked while the lock is held would keep it after a kill -9 of its parent, until it ended
too. So a forked child closes its copies of the held locks' fds at once (`os.register_at_fork`), and
a `release` in it (a child unwinding its parent's `with`) lets go of nothing. The holder removes the file while still holding it; a process that opened it meanwhile
sees that its inode is no longer the one at that path and locks the new file. Where there is no
fcntl (Windows), the lock file cannot be made (a read-only folder) or the file system refuses locks
(some FUSE mounts, NFS without a lock daemon), the work goes on unlocked, and a lock file made for
nothing is removed again; one that was there already is left as it is, and so is one made here but
locked first by another process (refused as busy): that process removes it at its end, while removing
it now would let a third process lock a new file beside the one still held.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from facerestore.ranks import main_rank

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

NOTE_AFTER_S = 2.0  # how long a process waits quietly before it says what it waits for
POLL_S = 0.05

_held: set[int] = set()  # the fds of the locks this process holds, from `take` to `release`


def _close_held_in_child() -> None:
    """In a forked child: its copies of the held fds would keep the parent's locks alive after the parent died."""
    for fd in list(_held):
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork (nor fcntl)
    os.register_at_fork(after_in_child=_close_held_in_child)


class NoLocks(OSError):
    """Nothing can be locked here (no fcntl, or a file system without locks): go on unlocked. Its
    text says why: "on this system" or the file system's reason in parentheses."""


class Busy(Exception):
    """Another live process holds the lock `take(wait=False)` asked for; `holder` is what its file names."""

    def __init__(self, holder: dict) -> None:
        super().__init__(describe(holder))
        self.holder = holder


def lock_path(path: Path) -> Path:
    """The lock file of cache file `path`."""
    return path.with_name(path.name + ".lock")


def _say(text: str) -> None:
    """On stderr, from the main torchrun rank only: its 7 other ranks waiting for one download each
    said so, 7 lines for one wait."""
    if main_rank():
        print(text, file=sys.stderr, flush=True)


@contextmanager
def exclusive(path: Path, doing: str | None = None, *, on_wait: Callable[[str], None] | None = _say) -> Iterator[bool]:
    """Hold the lock of cache file `path` for the body; yields whether it is held (False: unlocked,
    see the module docstring). `doing` ("downloading X into DIR") is what this process does under it,
    recorded for the processes it keeps waiting; None says nothing after a wait (a lock held for
    milliseconds)."""
    lock = lock_path(Path(path))

    def waiting(holder: dict) -> None:  # what the holder does; this process's own `doing` until it has written it
        on_wait(f"waiting for another process ({describe(holder)}) {holder.get('doing') or doing}")

    try:
        fd, _ = take(lock, {"doing": doing or ""}, shared=True, on_wait=waiting if doing is not None and on_wait is not None else None)
    except OSError:  # no locks here, or no lock file to be had
        fd = None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            release(fd, lock)


def take(lock: Path, record: dict[str, str], *, wait: bool = True, on_wait: Callable[[dict], None] | None = None,
         shared: bool = False) -> tuple[int, dict]:
    """Hold the flock of file `lock` (made if missing) and write this pid and host, and `record`, into
    it; returns its fd (for `release`) and what the file named before: {} unless a process that held
    it died without releasing it. A lock another process holds is waited for, polled so that Ctrl-C
    stops the wait, with `on_wait(holder)` once after NOTE_AFTER_S; `wait=False` raises Busy instead.
    `shared` (a cache other users write too): a lock file this process may only read is locked all
    the same, unrecorded. Raises NoLocks where nothing can be locked, OSError where the file cannot
    be opened (or, not `shared`, written)."""
    if fcntl is None:
        raise NoLocks("on this system")
    started = time.monotonic()
    while True:
        fd, made = _open(lock, shared)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        raise Busy(holder_of(fd)) from None
                    if on_wait is not None and time.monotonic() - started >= NOTE_AFTER_S:
                        on_wait(holder_of(fd))
                        on_wait = None
                    time.sleep(POLL_S)  # polled, not blocking: Ctrl-C stops a wait at once
                except OSError as exc:  # this file system has no locks (ENOLCK, EOPNOTSUPP...)
                    raise NoLocks(f"({exc.strerror or exc})") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
        except NoLocks:
            if made:  # made for nothing: no process can hold it
                _unlink(lock, fd)
            os.close(fd)
            raise
        except BaseException:  # Busy or a wait stopped: another process holds the file, and removes it at its end
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder removed the file as this process opened it: lock the new one
    _held.add(fd)
    earlier = holder_of(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), **record}) + "\n").encode(), 0)
    except BaseException as exc:
        if not (shared and isinstance(exc, OSError)):  # shared: opened read-only, the lock holds all the same
            release(fd, lock)
            raise
    return fd, earlier


def peek(lock: Path) -> dict | None:
    """What the file names while another process holds `lock` ({} if nothing readable); None while it
    is free or cannot be told. Takes nothing (a shared lock for an instant)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:  # no lock file (or none readable): nobody holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder_of(fd)
    except OSError:
        pass
    finally:
        os.close(fd)  # closing drops the shared lock, if taken
    return None


def _open(lock: Path, shared: bool) -> tuple[int, bool]:
    """The lock file's fd, and whether this call made the file (a lock refused removes only such a one)."""
    while True:
        try:
            return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True  # the umask decides, as for the files written beside it
        except FileExistsError:
            pass
        except PermissionError:  # a folder this process may not write to: only a lock file already there can be had
            if not os.path.lexists(lock):
                raise
        try:
            try:
                return os.open(lock, os.O_RDWR), False
            except PermissionError:
                if not shared:
                    raise
                return os.open(lock, os.O_RDONLY), False  # another user's lock file in a shared cache
        except FileNotFoundError:
            continue  # its holder removed it as this process opened it: make it


def _unlink(lock: Path, fd: int) -> None:
    """Remove `lock` while it is still the file of `fd` (not one another process made there since)."""
    try:
        if os.path.samestat(os.fstat(fd), os.stat(lock)):
            os.unlink(lock)
    except OSError:
        pass


def release(fd: int, lock: Path) -> None:
    """Remove the file while still holding it (a process that opened it meanwhile sees the inode
    change and locks a new file), then let go. Nothing in a forked child: the lock is its parent's."""
    if fd not in _held:
        return
    _held.discard(fd)
    try:
        os.unlink(lock)
    except OSError:
        pass
    os.close(fd)


def holder_of(fd: int) -> dict:
    """What a lock file names: pid, host and whatever its holder recorded ({} for an empty or unreadable one)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return {**data, "pid": int(data["pid"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def describe(holder: dict) -> str:
    """'pid 12', with ' on HOST' where that is another machine; 'pid unknown' for an empty record."""
    if not holder:
        return "pid unknown"
    host = holder.get("host")
    return f"pid {holder['pid']}" + (f" on {host}" if host and host != socket.gethostname() else "")
