"""Modes for files and folders written through a temporary name.

mkstemp and NamedTemporaryFile make 0600 files and mkdtemp 0700 folders; an output, a report or a
checkpoint cache shared with other users must get what open() and mkdir() would give under the
umask. The umask is read from /proc where Linux shows it, because the portable way (set it, then
set it back) changes it for every thread for a moment.
"""

from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()


def current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode open() would give a new file."""
    return 0o666 & ~current_umask()


def new_folder_mode() -> int:
    """The mode mkdir() would give a new folder."""
    return 0o777 & ~current_umask()
