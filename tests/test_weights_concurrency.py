"""Weights needed by several processes at once (two shells, torchrun ranks): one download, one
conversion, one good file; the others wait for it (weights/file_lock.py) and use it."""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from facerestore.weights import catalogue, file_lock, store
from facerestore.weights.catalogue import WeightsEntry
from helpers import refuse_flock

REPO = Path(__file__).resolve().parents[1]

# One process of a race: both start it, wait until both are ready, then resolve the same entry at
# once. It prints one JSON line: the path it got and whether it converted the file itself.
CHILD = r"""
import json, sys, time
from pathlib import Path
from facerestore.weights import catalogue, file_lock, store

spec, ready, me = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
entry = catalogue.WeightsEntry(**{**spec["entry"], "urls": tuple(spec["entry"]["urls"])})
catalogue.official_catalogue = lambda: {entry.name: entry}
file_lock.NOTE_AFTER_S = 0.2
converted = []
if spec["what"] == "resolve":  # torch only where a conversion needs it: it takes seconds to import
    from facerestore.weights import checkpoint
    real_save = checkpoint.save_safetensors
    def slow_save(*args, **kw):
        converted.append(1)
        time.sleep(spec["convert_s"])  # long enough for the other process to arrive meanwhile
        return real_save(*args, **kw)
    checkpoint.save_safetensors = slow_save
(ready / me).touch()
deadline = time.monotonic() + 10
while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
path = store.locate(entry.name) if spec["what"] == "locate" else store.resolve(entry.name)
print(json.dumps({"path": str(path), "converted": len(converted)}))
"""


def entry_fields(path: Path, urls: tuple[str, ...]) -> dict:
    return dict(name="tiny", filename=path.name, urls=list(urls), sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                size=path.stat().st_size, license="MIT", commercial_use=True)


def race(tmp_path: Path, home: Path, spec: dict, env: dict[str, str]) -> list[tuple[dict, str]]:
    """Run CHILD twice at once; (its JSON line, its stderr) each."""
    ready = tmp_path / "ready"
    ready.mkdir()
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "FACERESTORE_HOME": str(home), **env}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec), str(ready), str(i)], env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    return results


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload in small pieces with pauses: a download that takes about a second."""

    payload = b""
    requests: list[str | None] = []

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).requests.append(self.headers.get("Range"))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        step = max(1, len(self.payload) // 10)
        for start in range(0, len(self.payload), step):
            self.wfile.write(self.payload[start : start + step])
            self.wfile.flush()
            time.sleep(0.1)

    def log_message(self, *args):
        pass


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    path = tmp_path / "src" / "tiny.pth"
    path.parent.mkdir()
    torch.manual_seed(0)
    torch.save({"params_ema": torch.nn.Linear(3, 2).state_dict()}, path)
    return path


def test_two_processes_needing_one_missing_file_download_it_once(tiny_file, tmp_path, isolated_home):
    SlowHandler.payload, SlowHandler.requests = tiny_file.read_bytes(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny.pth"
        spec = {"entry": entry_fields(tiny_file, (url,)), "what": "locate", "convert_s": 0}
        results = race(tmp_path, isolated_home, spec, {"FACERESTORE_OFFLINE": "0"})
    finally:
        httpd.shutdown()
    cached = store.cache_dir() / "tiny.pth"
    assert SlowHandler.requests == [None]  # one download, from the start: no second writer resumed the first's .part
    assert [r["path"] for r, _ in results] == [str(cached)] * 2
    assert cached.read_bytes() == SlowHandler.payload
    assert sorted(p.name for p in store.cache_dir().iterdir()) == ["tiny.pth"]  # no .part, no lock file left
    waited = [err for _, err in results if "waiting for another process" in err]
    assert len(waited) == 1 and f"downloading tiny.pth into {store.cache_dir()}" in waited[0]
    assert "(pid " in waited[0] and "(pid unknown)" not in waited[0]


def test_two_processes_converting_one_checkpoint_convert_it_once(tiny_file, tmp_path, isolated_home):
    spec = {"entry": entry_fields(tiny_file, ()), "what": "resolve", "convert_s": 1.0}
    results = race(tmp_path, isolated_home, spec, {"FACERESTORE_WEIGHTS": str(tiny_file.parent)})
    (first, _), (second, _) = results
    assert first["path"] == second["path"] and first["path"].endswith(".safetensors")
    assert first["converted"] + second["converted"] == 1  # the other waited and took its file
    converted = Path(first["path"])
    assert store.safetensors_complete(converted)
    assert sorted(p.name for p in converted.parent.iterdir()) == [converted.name]
    assert any("waiting for another process" in err and "converting tiny.pth to safetensors" in err for _, err in results)


def test_the_lock_file_of_a_killed_holder_is_taken_and_a_removed_one_is_not_shared(tmp_path):
    """A lock file left behind (its holder killed) holds nothing; a waiter whose file the holder
    removed locks the new file instead of sharing a lock with a third process."""
    target = tmp_path / "x.pth"
    file_lock.lock_path(target).write_text('{"pid": 1}\n')
    with file_lock.exclusive(target, "testing") as held:
        assert held and json.loads(file_lock.lock_path(target).read_text())["doing"] == "testing"
    assert not file_lock.lock_path(target).exists()
    order = []

    def worker(name: str, hold_s: float) -> None:
        with file_lock.exclusive(target, name, on_wait=None):
            order.append(f"{name}+")
            time.sleep(hold_s)
            order.append(f"{name}-")

    threads = [threading.Thread(target=worker, args=(f"t{i}", 0.1)) for i in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join()
    assert [order[i][-1] for i in range(6)] == ["+", "-"] * 3  # never two inside at once


def test_no_fcntl_goes_on_unlocked(tmp_path, monkeypatch):
    monkeypatch.setattr(file_lock, "fcntl", None)
    with file_lock.exclusive(tmp_path / "x.pth", "testing") as held:
        assert not held
    assert list(tmp_path.iterdir()) == []


def test_a_lock_that_cannot_be_taken_leaves_no_lock_file_it_made(tmp_path, monkeypatch):
    """A file system without locks: the work goes on unlocked, and the lock file this process made
    for nothing is removed again. One made here but locked first by another process (the flock is
    refused as busy) is that process's: it removes it at its end, and removing it now would let a
    third process lock a new file beside the one still held."""
    target = tmp_path / "x.pth"
    refuse_flock(monkeypatch, errno.ENOLCK)
    with file_lock.exclusive(target, "testing") as held:
        assert not held
    assert list(tmp_path.iterdir()) == []
    refuse_flock(monkeypatch, errno.EWOULDBLOCK)
    with pytest.raises(file_lock.Busy):
        file_lock.take(file_lock.lock_path(target), {}, wait=False)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth.lock"]


def wait_behind_a_download(target: Path, **waiter) -> None:
    """A thread asks for `target`'s lock (`waiter`: exclusive's on_wait) while this one holds it for 0.4 s."""

    def wait_for_it() -> None:
        with file_lock.exclusive(target, "importing y.pth", **waiter):
            pass

    with file_lock.exclusive(target, "downloading x.pth into DIR"):
        waiting = threading.Thread(target=wait_for_it)
        waiting.start()
        time.sleep(0.4)
    waiting.join()


def test_a_wait_is_said_once_with_the_holders_pid_and_work(tmp_path, monkeypatch):
    monkeypatch.setattr(file_lock, "NOTE_AFTER_S", 0.05)
    said: list[str] = []
    wait_behind_a_download(tmp_path / "x.pth", on_wait=said.append)
    assert said == [f"waiting for another process (pid {os.getpid()}) downloading x.pth into DIR"]


@pytest.mark.parametrize(("rank", "said"), [(None, True), ("0", True), ("3", False)])
def test_under_torchrun_only_the_main_rank_says_it_waits(tmp_path, monkeypatch, capsys, rank, said):
    """8 ranks needing one download: the 7 waiting each said "waiting for another process ...", 7 lines for one wait."""
    for name in ("RANK", "LOCAL_RANK"):
        if rank is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, rank)
    monkeypatch.setattr(file_lock, "NOTE_AFTER_S", 0.05)
    wait_behind_a_download(tmp_path / "x.pth")  # the default on_wait: said on stderr
    assert capsys.readouterr().err == (f"waiting for another process (pid {os.getpid()}) downloading x.pth into DIR\n" if said else "")


def test_two_imports_under_other_names_at_once_both_stay_registered(tiny_file, tmp_path, monkeypatch):
    """The registry of your own weights is read, extended and rewritten: two imports at once each
    wrote what they had read, and the first registration was lost."""
    real_drop = store._drop_table
    monkeypatch.setattr(store, "_drop_table", lambda lines, name: time.sleep(0.3) or real_drop(lines, name))
    errors = []

    def register(name: str) -> None:
        try:
            store.import_file(tiny_file, name=name)
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(name,)) for name in ("mine-a", "mine-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    entries = catalogue.load_catalogue()
    assert {"mine-a", "mine-b"} <= set(entries) and entries["mine-a"].sha256 == entries["mine-b"].sha256 == hashlib.sha256(tiny_file.read_bytes()).hexdigest()
    assert sorted(p.name for p in store.cache_dir().iterdir()) == ["mine-a.pth", "mine-b.pth"]


def test_hashes_recorded_at_once_by_two_processes_are_both_kept(tiny_file, tmp_path, monkeypatch, isolated_home):
    """recorded_sha256.json (the trust-on-first-use hashes) and verified.json were read, changed and
    rewritten unlocked: of two downloads at once, one recorded hash was lost, and that file was
    never checked again."""
    real_write = store._write_json
    monkeypatch.setattr(store, "_write_json", lambda path, data: time.sleep(0.3) or real_write(path, data))
    other = tmp_path / "other.pth"
    other.write_bytes(b"other")
    entries = [WeightsEntry(name=n, filename=f"{n}.pth", urls=(), sha256="", size=0, license="MIT", commercial_use=True) for n in ("a", "b")]
    jobs = [lambda: store._record_sha256(entries[0], "a" * 64), lambda: store._record_sha256(entries[1], "b" * 64),
            lambda: store._remember_sha256(tiny_file, "c" * 64), lambda: store._remember_sha256(other, "d" * 64)]
    threads = [threading.Thread(target=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [store.expected_sha256(e) for e in entries] == ["a" * 64, "b" * 64]
    assert sorted(json.loads((isolated_home / "verified.json").read_text()).values()) == ["c" * 64, "d" * 64]
    assert sorted(p.name for p in isolated_home.iterdir()) == ["recorded_sha256.json", "verified.json"]  # no lock files left
