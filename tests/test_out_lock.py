"""One run at a time per output folder (training/out_lock): a second `degrade` or `clean-dataset`
into the same --out is refused with one line, and a lock left by a killed run is taken over."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from facerestore.errors import UsageError
from facerestore.training.out_lock import LOCK_NAME, output_lock
from helpers import lock_held, refuse_flock

REPO = Path(__file__).resolve().parents[1]


def hold_in_another_process(out: Path) -> subprocess.Popen:
    """A live process holding out's lock until it is killed."""
    code = "import sys, time\nfrom pathlib import Path\nfrom facerestore.training.out_lock import output_lock\n" \
           "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_folder_another_process_holds_is_refused_naming_the_folder_and_its_pid(tmp_path):
    out = tmp_path / "out"
    holder = hold_in_another_process(out)
    try:
        with pytest.raises(UsageError) as refused:
            with output_lock(out):
                pass
        assert refused.value.exit_code == 2
        assert refused.value.one_line() == f"{out} is being written by another run (pid {holder.pid}); wait for it to end, or choose another --out"
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the kernel dropped the killed holder's lock: its file is taken over
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_lock_file_left_by_a_dead_run_is_taken_over_with_a_note(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pid = dead_pid()
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}) + "\n")
    said: list[str] = []
    with output_lock(out, on_message=said.append):
        assert json.loads((out / LOCK_NAME).read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    assert said == [f"{out} was locked by pid {pid}, which ended without releasing it; taking the lock over"]
    assert not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("ending", [None, RuntimeError, KeyboardInterrupt])
def test_the_lock_is_released_however_the_run_ends(tmp_path, ending):
    out = tmp_path / "out"
    try:
        with output_lock(out):
            with pytest.raises(UsageError, match="being written by another run"):  # held, even within one process
                with output_lock(out):
                    pass
            if ending is not None:
                raise ending("stop")
    except (RuntimeError, KeyboardInterrupt):
        pass
    assert not (out / LOCK_NAME).exists()
    with output_lock(out):
        pass


def test_a_run_killed_while_its_forked_workers_live_on_frees_its_folder_at_once(tmp_path):
    """DataLoader workers and pools are forked while the lock is held, and a fork shares the lock's
    open file description with it: the children close their copy, so kill -9 of the run frees --out
    at once, not when its orphaned workers end."""
    out = tmp_path / "out"
    code = ("import os, sys, time\nfrom pathlib import Path\nfrom facerestore.training.out_lock import output_lock\n"
            "with output_lock(Path(sys.argv[1])):\n"
            "    if os.fork() == 0:\n"
            "        sys.exit(0)  # a child leaving through the with lets go of nothing\n"
            "    os.wait()\n"
            "    ready, told = os.pipe()\n"
            "    worker = os.fork()\n"
            "    if worker == 0:\n"
            "        os.write(told, b'1')\n"
            "        time.sleep(60)\n"
            "        os._exit(0)\n"
            "    os.read(ready, 1)\n"
            "    print(worker, flush=True)\n"
            "    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(run.stdout.readline())
        assert lock_held(out)
        run.send_signal(signal.SIGKILL)
        run.wait()
        os.kill(worker, 0)  # the forked worker lives on
        assert not lock_held(out)
        with output_lock(out):
            pass
    finally:
        run.kill()
        run.wait()
        run.stdout.close()
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)


def test_torchrun_ranks_other_than_0_take_no_lock(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        with output_lock(out, hold=False):  # rank 1 of the run rank 0 holds it for
            pass
        assert (out / LOCK_NAME).exists()


def test_where_nothing_can_be_locked_the_run_goes_on_unlocked_saying_so(tmp_path, monkeypatch):
    """The lock is weights/file_lock's flock: no fcntl (Windows) or a file system refusing flock
    (ENOLCK) is one note naming the folder, and the run goes on."""
    from facerestore.weights import file_lock

    said: list[str] = []
    monkeypatch.setattr(file_lock, "fcntl", None)
    with output_lock(tmp_path / "a" / "b", on_message=said.append):
        pass
    assert not (tmp_path / "a").exists()  # the folders it made are removed again
    monkeypatch.undo()
    refuse_flock(monkeypatch, errno.ENOLCK)
    with output_lock(tmp_path / "c", on_message=said.append):
        pass
    assert not (tmp_path / "c").exists()  # no lock file left in it keeps the folder it made
    assert said == [f"cannot lock {tmp_path / 'a' / 'b'} on this system; make sure no other run writes into it",
                    f"cannot lock {tmp_path / 'c'} ({os.strerror(errno.ENOLCK)}); make sure no other run writes into it"]


def test_a_lock_refused_leaves_no_lock_file_it_made_and_keeps_one_it_found(tmp_path, monkeypatch):
    """A refused flock removes the lock file only where this attempt made it: a file that was there
    is another run's (a live one, or a killed one whose pid the next run names)."""
    made, found = tmp_path / "made", tmp_path / "found"
    made.mkdir()
    found.mkdir()
    record = json.dumps({"pid": dead_pid(), "host": socket.gethostname()}) + "\n"
    (found / LOCK_NAME).write_text(record)
    refuse_flock(monkeypatch, errno.ENOLCK)
    for out in (made, found):
        with output_lock(out):
            pass
    assert list(made.iterdir()) == []
    assert (found / LOCK_NAME).read_text() == record
    refuse_flock(monkeypatch, errno.EWOULDBLOCK)  # as while another run holds it
    with pytest.raises(UsageError, match="being written by another run"):
        with output_lock(found):
            pass
    assert (found / LOCK_NAME).read_text() == record
