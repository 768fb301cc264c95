"""One process at a time per cache file: the lock a download, a conversion or an import holds.

Two processes that need the same missing checkpoint at once (two shells, the ranks of a torchrun
run) would both append to one `.part`, or one would rename it while the other still wrote into it.
So the writer of a cache file holds an flock on a lock file next to it (`FILE.lock`) and, once it
has it, looks again whether the file is there now: the process that waited finds the other's result
and uses it. The holder writes its pid, host and what it does into the lock file; a process kept
waiting more than `NOTE_AFTER_S` says so on stderr with those ("waiting for another process (pid 12)
downloading codeformer.pth into ~/.cache/facerestore/weights"), so a long download elsewhere does
not look like a hang.

The kernel drops an flock when its process dies (even by kill -9), so a lock file a killed process
left behind is simply taken. The holder removes the file while still holding it; a process that
opened it meanwhile sees that its inode is no longer the one at that path and locks the new file.
Where there is no fcntl (Windows), the lock file cannot be made (a read-only folder) or the file
system refuses locks (some FUSE mounts, NFS without a lock daemon), the work goes on unlocked.
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

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

NOTE_AFTER_S = 2.0  # how long a process waits quietly before it says what it waits for
POLL_S = 0.05


def lock_path(path: Path) -> Path:
    """The lock file of cache file `path`."""
    return path.with_name(path.name + ".lock")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextmanager
def exclusive(path: Path, doing: str | None = None, *, on_wait: Callable[[str], None] | None = _say) -> Iterator[bool]:
    """Hold the lock of cache file `path` for the body; yields whether it is held (False: unlocked,
    see the module docstring). `doing` ("downloading X into DIR") is what this process does under it,
    recorded for the processes it keeps waiting; None says nothing after a wait (a lock held for
    milliseconds)."""
    fd = _acquire(lock_path(Path(path)), doing, on_wait)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            _release(fd, lock_path(Path(path)))


def _acquire(lock: Path, doing: str | None, on_wait: Callable[[str], None] | None) -> int | None:
    if fcntl is None:
        return None
    started, said = time.monotonic(), False
    while True:
        fd = _open(lock)
        if fd is None:
            return None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if doing is not None and on_wait is not None and not said and time.monotonic() - started >= NOTE_AFTER_S:
                        on_wait(_waiting_line(fd, doing))
                        said = True
                    time.sleep(POLL_S)  # polled, not blocking: Ctrl-C stops a wait at once
        except OSError:  # this file system has no locks (ENOLCK, EOPNOTSUPP...)
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except OSError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "doing": doing or ""}) + "\n").encode(), 0)
            except OSError:
                pass  # opened read-only (a cache shared with other users): the lock holds all the same
            return fd
        os.close(fd)  # the holder removed the file as this process opened it: lock the new one


def _open(lock: Path) -> int | None:
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for the cache's files
    except PermissionError:
        try:
            return os.open(lock, os.O_RDONLY)  # another user's lock file in a shared cache
        except OSError:
            return None
    except OSError:
        return None


def _release(fd: int, lock: Path) -> None:
    try:
        os.unlink(lock)
    except OSError:
        pass
    os.close(fd)


def _waiting_line(fd: int, doing: str) -> str:
    """The line a waiting process says: the holder's pid (and host, if another) and what it does,
    from the lock file; this process's own `doing` where the holder has not written it yet."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        host = data.get("host")
        who = f"pid {int(data['pid'])}" + (f" on {host}" if host and host != socket.gethostname() else "")
        doing = str(data.get("doing") or doing)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        who = "pid unknown"
    return f"waiting for another process ({who}) {doing}"
