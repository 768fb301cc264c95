"""Where checkpoints live and how they get there: resolve, download, verify, import.

Resolution order for a catalogue name: the folders in FACERESTORE_WEIGHTS (os.pathsep-separated,
e.g. a shared read-only folder) -> the user cache (FACERESTORE_HOME/weights, else the platform cache
dir) -> download into the cache. Downloads resume from a `.part` file, are checked against the
catalogue's sha256 and renamed into place only when complete. Offline (--offline, FACERESTORE_OFFLINE=1
or HF_HUB_OFFLINE=1, or no network), a missing file is one line naming it, its URL, its sha256 and
the import command. Pickled files are converted once to safetensors in the cache. A process that
writes a cache file holds its lock (weights/file_lock.py): another that needs the same file waits
and takes the result, instead of writing into the same `.part` (torchrun ranks resolve alike).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shlex
import sys
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from facerestore.errors import BadWeightsFile, BadWeightsOption, ChecksumMismatch, UnsupportedCheckpoint, UsageError, WeightsError
from facerestore.file_modes import new_file_mode
from facerestore.ranks import main_rank
from facerestore.warning_lines import warn
from facerestore.weights.catalogue import WeightsEntry, entry_for_filename, get_entry, load_catalogue, local_registry_path
from facerestore.weights.file_lock import exclusive

if TYPE_CHECKING:
    from facerestore.weights.checkpoint import StateDict

Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0)
CHUNK = 1 << 20
PICKLED_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt", ".bin")


def home_dir() -> Path:
    """FACERESTORE_HOME, else the platform's user cache dir: never inside site-packages."""
    env = os.environ.get("FACERESTORE_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("facerestore", appauthor=False))


def cache_dir() -> Path:
    return home_dir() / "weights"


def search_dirs() -> list[Path]:
    """Folders searched for existing files, in order (read-only ones first, the cache last)."""
    extra = [Path(p).expanduser() for p in os.environ.get("FACERESTORE_WEIGHTS", "").split(os.pathsep) if p.strip()]
    return [*extra, cache_dir()]


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("FACERESTORE_OFFLINE", "HF_HUB_OFFLINE"))


# ---------------------------------------------------------------- hashing (memoised by file stat)


def _memo_path() -> Path:
    return home_dir() / "verified.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    try:
        _write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home only costs re-hashing next time


def _write_text_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a temp file renamed over it): a crash or a full disk midway
    leaves the old file, not half of it that no later read can parse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        Path(tmp).write_text(text, encoding="utf-8")
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600: as a file written in place would be
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _update_json(path: Path, change: Callable[[dict], None]) -> None:
    """Read, change and write back under the file's lock: two processes recording at once (two
    downloads, two files hashed) each used to write what it had read, dropping the other's entry."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only home: nothing is remembered
    with exclusive(path):
        data = _read_json(path)
        change(data)
        _write_json(path, data)


def sha256_file(path: Path, *, fresh: bool = False) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so large files are hashed once;
    `fresh` reads the bytes again (what `weights verify` is asked for: a file damaged in place keeps
    its size and mtime)."""
    path = Path(path).resolve()
    try:
        key = _memo_key(path)
        memo = _read_json(_memo_path())
        if key in memo and not fresh:
            return memo[key]
        digest = read_sha256(path)
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror or exc})", hint="check its permissions (or its disk)") from None
    return _remember_sha256(path, digest, key)


def _memo_key(path: Path) -> str:
    """PATH|SIZE|MTIME_NS of a resolved path: a file changed since it was hashed has another key."""
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def remembered_sha256(path: Path, memo: dict | None = None) -> str | None:
    """The sha256 remembered for `path` as it is now, without reading it; None if it was not hashed
    since it last changed (or is gone). `memo`: verified.json as read once by a caller asking for
    several files."""
    path = Path(path).resolve()
    try:
        key = _memo_key(path)
    except OSError:
        return None
    return (_read_json(_memo_path()) if memo is None else memo).get(key)


def read_sha256(path: Path) -> str:
    """sha256 of the bytes of `path`, read now, without the memo (for files that are not weights, such
    as a dataset's sources); an OSError is the caller's to word."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _remember_sha256(path: Path, digest: str, key: str | None = None) -> str:
    """Memoise a hash already computed (a download is hashed as `.part`, then renamed: the rename
    keeps size and mtime, so its first use need not read the whole file again)."""
    path = Path(path).resolve()
    if key is None:
        key = _memo_key(path)

    def change(memo: dict) -> None:
        for old in [k for k in memo if k.startswith(f"{path}|")]:
            del memo[old]
        _drop_stale(memo)
        memo[key] = digest

    _update_json(_memo_path(), change)
    return digest


def _drop_stale(memo: dict) -> None:
    """Forget the hashes of files that are gone or changed since (deleted, replaced by an import, a
    download's source in ~/Downloads removed): their keys can never match again, and verified.json
    would otherwise grow with every file ever hashed."""
    for key in list(memo):
        path = key.rsplit("|", 2)[0]  # _memo_key's PATH|SIZE|MTIME_NS (a path may hold '|')
        try:
            current = _memo_key(Path(path))
        except (OSError, ValueError):
            current = None
        if key != current:
            del memo[key]


def _forget_stale_hashes() -> None:
    """Prune verified.json now (an import deleted the file it replaced)."""
    _update_json(_memo_path(), _drop_stale)


def _recorded_path() -> Path:
    return home_dir() / "recorded_sha256.json"


def expected_sha256(entry: WeightsEntry) -> str:
    """The catalogue's hash, else the one recorded when the file was first fetched (trust on first use)."""
    return entry.sha256 or _read_json(_recorded_path()).get(entry.name, "")


def _record_sha256(entry: WeightsEntry, digest: str) -> None:
    if not entry.sha256:
        _update_json(_recorded_path(), lambda recorded: recorded.update({entry.name: digest}))


def check_file(entry: WeightsEntry, path: Path, offline: bool | None = None) -> None:
    """ChecksumMismatch if `path` is not `entry`'s file; `offline` words the cure (fetch_again). Against
    a sha256 recorded from a first copy (no published one), the copy may be the right one and that
    first copy the wrong one: the cure says how to record this copy's sha256 instead."""
    expected = expected_sha256(entry)
    if expected:
        actual = sha256_file(path)
        if actual != expected:
            if entry.sha256:
                raise ChecksumMismatch(f"{path} has sha256 {actual[:16]}..., but {entry.name} should be {expected}",
                                       hint=f"the file is corrupt or another version: {fetch_again(entry, offline)}")
            raise ChecksumMismatch(f"{path} has sha256 {actual[:16]}..., but {entry.name} should be {expected} ({RECORDED})",
                                   hint=f"{rerecord(path)}; else {fetch_again(entry, offline)}")


RECORDED = "recorded from its first copy, as no sha256 is published"


def rerecord(path: Path | str) -> str:
    """How to replace a recorded sha256 (an entry with no published one) with that of `path`, the
    official file stored after a wrong first copy: `weights import --no-verify` skips only the recorded
    hash, still checks the file is a checkpoint of the entry's architecture, and records its sha256."""
    return (f"if this is the official file and that first copy was not, `facerestore weights import --no-verify {shlex.quote(str(path))}` "
            "records its sha256 instead")


def fetch_again(entry: WeightsEntry, offline: bool | None = None) -> str:
    """How to replace a damaged copy of `entry` (every catalogue file's sha256 mismatch and unreadable
    copy says this): `weights pull` only fetches what has a URL, and only online (`offline`: as
    `is_offline`); the rest (DR2's files, on a file share, any file offline) and the user's own
    weights are imported (a good copy in the cache is used past a damaged one elsewhere)."""
    if entry.local:
        return f"import a good copy again with `facerestore weights import FILE --name {entry.name}`"
    if entry.urls and is_offline(offline):
        return f"downloads are off, so get a good copy of {entry.filename} from {entry.urls[0]} and run `facerestore weights import {entry.filename}`"
    if entry.urls:
        return f"delete it and run `facerestore weights pull {entry.name}`"
    where = f" ({entry.note})" if entry.note else ""
    return f"delete it, get the official {entry.filename} again{where} and run `facerestore weights import {entry.filename}`"


# ---------------------------------------------------------------- finding, converting, resolving


def find_local(name: str) -> Path | None:
    """The first existing file for this entry in the search folders (no hashing, no download)."""
    found = local_copies(name)
    return found[0] if found else None


def local_copies(name: str) -> list[Path]:
    """Every existing file for this entry, in search order."""
    entry = get_entry(name)
    folders = [cache_dir()] if entry.local else search_dirs()
    return [folder / entry.filename for folder in folders if (folder / entry.filename).is_file()]


@dataclass(frozen=True)
class Choice:
    """Which local copy of a checkpoint a run loads: the first in search order that is not damaged
    (a damaged file in the first FACERESTORE_WEIGHTS folder must not hide a good one in the cache).
    Loading, `weights list` and `weights verify` all choose with `choose_copy`, so they name the same file."""

    used: Path | None  # None: every copy is damaged, and a run fails
    passed_over: tuple[tuple[Path, str], ...] = ()  # the damaged copies before it (all of them when `used` is None), each with why
    checked: bool = True  # `used` is known to hold the expected sha256, or none is known to check it against


def choose_copy(copies: list[Path], damage: Callable[[Path], str]) -> Choice:
    """The first of `copies` for which `damage` (why the copy is damaged, '' if it is not) says nothing."""
    passed_over = []
    for path in copies:
        why = damage(path)
        if not why:
            return Choice(path, tuple(passed_over))
        passed_over.append((path, why))
    return Choice(None, tuple(passed_over))


def first_good_copy(entry: WeightsEntry, copies: list[Path], offline: bool | None = None) -> Path:
    """The copy a run loads (`choose_copy` with `check_file`); with none good, the first copy's error."""
    errors: dict[Path, ChecksumMismatch] = {}

    def damage(path: Path) -> str:
        try:
            check_file(entry, path, offline)
        except ChecksumMismatch as exc:
            errors[path] = exc
            return damage_reason(entry, path, sha256_file(path)) or "sha256 mismatch"  # hashed just now: remembered
        return ""

    choice = choose_copy(copies, damage)
    if choice.used is None:
        raise errors[copies[0]]
    for path, why in choice.passed_over:
        _warn_passed_over(entry, path, why, choice.used)
    return choice.used


_warned_passed_over: set[Path] = set()  # the damaged copies this process has warned about


def _warn_passed_over(entry: WeightsEntry, damaged: Path, why: str, used: Path) -> None:
    """One warning line per damaged copy per process (as `--detector auto` warns of a detector it
    passes over): the run goes on with a good copy further on, but silently it would pass over the
    damaged one on every run, and only `weights list` or `weights verify` would tell. `why`:
    `damage_reason`, as `weights list` gives it."""
    if damaged in _warned_passed_over or not main_rank():  # under torchrun every rank passes over it: one line
        return
    _warned_passed_over.add(damaged)
    cure = unless_rerecorded(entry, damaged, "delete it or put a good copy in its place")
    warn(f"warning: {damaged_copy(entry, _with_weights_name(damaged, entry), why)} and is passed over; this run uses {used}; "
         f"{cure} (`facerestore weights verify` checks every copy)")


def damage_reason(entry: WeightsEntry, path: Path, digest: str | None, expected: str | None = None) -> str:
    """Why `path` is not `entry`'s file, in the words a run's warning and `weights list` share; '' if
    nothing known says so. `digest`: its sha256 where known (None: not read since it last changed,
    so only a size other than the catalogue's tells); `expected`: `expected_sha256`, where the caller
    has it. A copy cut short is told by its size, which says more than a sha256 mismatch (the
    catalogue's size goes with its published sha256 only)."""
    expected = expected_sha256(entry) if expected is None else expected
    if not expected or digest == expected:
        return ""
    try:
        size = path.stat().st_size
    except OSError:  # gone since it was found: loading would say so
        return ""
    if entry.sha256 and entry.size and size != entry.size:
        return f"{size} bytes, not {entry.size}"
    if digest is None:
        return ""
    return "sha256 mismatch" if entry.sha256 else "no sha256 is published; the first copy's was recorded"


def damaged_copy(entry: WeightsEntry, shown: str, why: str) -> str:
    """`SHOWN is damaged (WHY)`; against a sha256 recorded from a first copy (none published) the copy
    may be the official file and that first copy the wrong one, so it is said only to differ."""
    if entry.sha256:
        return f"{shown} is damaged ({why})"
    return f"{shown} differs from the copy recorded earlier ({why})"


def damaged_line(name: str, entry: WeightsEntry, path: Path, why: str, used: Path | None) -> str:
    """`weights list`'s and `weights verify`'s line on a damaged copy: what is wrong with it (`why`:
    `damage_reason`) and what to do, given the copy a run uses instead (None: a run fails)."""
    if used:
        cure = f"runs pass over it and use the copy in {used.parent}; " + unless_rerecorded(entry, path, "delete it")
    else:
        cure = unless_rerecorded(entry, path, fetch_again(entry))
    return f"{name}: {damaged_copy(entry, str(path), why)}; {cure}"


def unless_rerecorded(entry: WeightsEntry, path: Path, cure: str) -> str:
    """`cure` for a copy passed over, after `rerecord`'s where its sha256 was checked against a
    recorded first copy's (no published one)."""
    return cure if entry.sha256 else f"{rerecord(path)}; else {cure}"


def copy_in_use(name: str) -> Choice | None:
    """The copy of `name` a run would load, as `weights list` shows it: chosen as loading chooses, but
    reading no file (a listing must not hash gigabytes). A copy is known damaged by its remembered
    sha256 or, for a catalogued file, by a size other than the catalogue's; the copy chosen is marked
    unchecked when its sha256 was not read since it last changed (a run reads it then, and passes over
    it if it is damaged; `weights verify` reads them all). None: no copy on this machine."""
    entry = get_entry(name)
    copies = local_copies(name)
    if not copies:
        return None
    expected = expected_sha256(entry)
    if not expected:  # nothing to check a copy against: a run takes the first
        return Choice(copies[0])

    memo = _read_json(_memo_path())  # read once for every copy

    choice = choose_copy(copies, lambda path: damage_reason(entry, path, remembered_sha256(path, memo), expected))
    if choice.used is None:
        return choice
    return Choice(choice.used, choice.passed_over, checked=remembered_sha256(choice.used, memo) == expected)


def _converted_path(entry: WeightsEntry, digest: str) -> Path:
    return cache_dir() / "converted" / f"{entry.name}-{digest[:16]}.safetensors"


def loadable(entry: WeightsEntry, path: Path, offline: bool | None = None) -> Path:
    """A pickled checkpoint is converted once to safetensors in the cache; later loads read that
    (`offline` words the cure of a damaged one)."""
    if path.suffix not in PICKLED_SUFFIXES:
        return path
    from facerestore.weights.checkpoint import read_state_dict, save_safetensors

    def read() -> dict:
        try:
            return read_state_dict(path)
        except UnsupportedCheckpoint as exc:  # a catalogue file: the cure is the catalogue's, not the reader's generic one
            raise type(exc)(str(exc), hint=fetch_again(entry, offline)) from None

    target = _converted_path(entry, sha256_file(path))
    if target.is_file() and safetensors_complete(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        read()  # a read-only cache: the original is loaded every time, so check it here, where its cure is known
        return path
    # one conversion at a time (torchrun ranks resolve alike): a process that waited finds the file made
    with exclusive(target, f"converting {path.name} to safetensors in {target.parent}"):
        if target.is_file() and safetensors_complete(target):
            return target
        state = read()
        try:
            return save_safetensors(state, target, {"source": entry.filename, "source_sha256": sha256_file(path), "name": entry.name})
        except OSError:
            return path  # no room or read-only cache: load the original every time (it was read just now)


def display_name(path: Path | str) -> str:
    """How a loader names the file it read, in its errors: the cache's conversion of a pickled file
    (`loadable`) has a hashed name the user never saw, so it is named by the copy it was converted
    from, as the search folders hold it, and by its weights name; a catalogue or registered file
    loaded as it is stored (a `.safetensors`) by its path and weights name; any other file as given."""
    path = Path(path)
    if path.suffix != ".safetensors" or path.parent.name != "converted":
        return _stored_name(path)
    from facerestore.weights.checkpoint import safetensors_metadata

    try:
        meta = safetensors_metadata(path)
    except Exception:  # an unreadable file: its own error says so
        return str(path)
    name, source, digest = meta.get("name", ""), meta.get("source", ""), meta.get("source_sha256", "")
    if not source:
        return str(path)
    entry = load_catalogue().get(name)
    stored = None
    if entry is not None and entry.filename == source:
        for copy in local_copies(name):
            try:
                if sha256_file(copy) == digest:  # remembered: the copy was hashed when it was resolved
                    stored = copy
                    break
            except WeightsError:
                continue
    if stored is None:  # re-imported or deleted since: the conversion is all there is
        return f"{path} (converted from {source})"
    return _with_weights_name(stored, entry)


def loaded_record(path: Path | str) -> dict[str, str]:
    """{"path", "sha256"} of a file a method loaded, for a settings file that must tell a model replaced
    in place. A conversion in the cache (`loadable`) is named by its original's sha256, kept in its
    metadata (what `sha256sum` of the file the user has says; not hashed again); any other file by
    `sha256_file` (remembered per path, size and mtime, so hundreds of MB are hashed once)."""
    path = Path(path).resolve()
    if path.suffix == ".safetensors" and path.parent.name == "converted":
        from facerestore.weights.checkpoint import safetensors_metadata

        try:
            digest = safetensors_metadata(path).get("source_sha256", "")
        except Exception:  # noqa: BLE001 - unreadable metadata: hash the file itself
            digest = ""
        if digest:
            return {"path": display_name(path), "sha256": digest}
    return {"path": str(path), "sha256": sha256_file(path)}


def _with_weights_name(path: Path, entry: WeightsEntry) -> str:
    """`path (weights 'NAME')`, or `(your weights 'NAME')` for one the user registered."""
    return f"{path} ({'your ' if entry.local else ''}weights '{entry.name}')"


def _stored_name(path: Path) -> str:
    """`path` with its weights name when it is the file of a catalogue or registered entry where the
    search folders keep it (the cache for a registered one); any other file as given."""
    entry = entry_for_filename(path.name)
    if entry is None:
        return str(path)
    folders = [cache_dir()] if entry.local else search_dirs()
    try:
        kept = any(path.resolve().parent == folder.resolve() for folder in folders)
    except OSError:
        return str(path)
    return _with_weights_name(path, entry) if kept else str(path)


def safetensors_complete(path: Path) -> bool:
    """Whether the header parses and the file is as long as its tensors say: a conversion cut short
    (disk full, a killed process) is made again instead of failing every later run."""
    try:
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 2 <= length <= 100_000_000:
                return False
            header = json.loads(f.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + length + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def missing_message(entry: WeightsEntry, reason: str) -> WeightsError:
    sha = expected_sha256(entry) or "not published"
    where = f"get it from {entry.urls[0]}" if entry.urls else (f"it is {entry.note}" if entry.note else "it has no public URL")
    return WeightsError(
        f"{entry.filename} (weights '{entry.name}') is not on this machine and {reason}; "
        f"{where} (sha256 {sha})",
        hint=f"then run `facerestore weights import {entry.filename}` or put it in a folder named by FACERESTORE_WEIGHTS",
    )


def also_missing(first: str, names: list[str]) -> str:
    """The tail of `first`'s missing-file line naming the other files a method lacks (`names`), so one
    run says everything to fetch instead of one file per rerun (DR2's two files are on one share)."""
    head = get_entry(first)
    parts = []
    for name in names:
        entry = get_entry(name)
        if entry.urls:
            where = f"from {entry.urls[0]}"
        elif entry.note and entry.note == head.note:
            where = "from the same place"
        else:
            where = entry.note or "no public URL"
        parts.append(f"{entry.filename} (weights '{name}', {where})")
    return f"also missing, get and import {'it' if len(parts) == 1 else 'them'} the same way: {' and '.join(parts)}"


def resolve(name: str, *, explicit: Path | str | None = None, offline: bool | None = None, progress: Progress | None = None,
            option: str | None = "--weights", replace_damaged: bool = False) -> Path:
    """A verified, loadable file for catalogue entry `name` (downloading it if allowed); `option` is
    the command-line option `explicit` came from, named in its errors (None: none did);
    `replace_damaged`: see `locate`."""
    if explicit is not None:
        return resolve_explicit(explicit, offline=offline, progress=progress, catalogued=(name,), option=option)
    return loadable(get_entry(name), locate(name, offline=offline, progress=progress, replace_damaged=replace_damaged), offline)


def locate(name: str, *, offline: bool | None = None, progress: Progress | None = None, replace_damaged: bool = False) -> Path:
    """The verified file of catalogue entry `name`, found in the search folders or downloaded, before
    `loadable` converts it: the file a report names (the conversion in the cache has a hashed name).

    With every local copy damaged a run fails, naming the cure; `replace_damaged` (`weights pull`,
    which is asked to download) downloads a good copy into the cache instead, where runs use it past
    a damaged one that cannot be deleted (a read-only FACERESTORE_WEIGHTS share)."""
    entry = get_entry(name)
    copies = local_copies(name)
    if copies:
        try:
            return first_good_copy(entry, copies, offline)
        except ChecksumMismatch:
            if not (replace_damaged and entry.urls and not entry.local and not is_offline(offline)):
                raise
        return download(entry, progress=progress)
    if entry.local:
        raise WeightsError(f"{entry.filename} (your weights '{name}') is missing from {cache_dir()}", hint=f"import it again with `facerestore weights import FILE --name {name}`")
    if is_offline(offline):
        raise missing_message(entry, "downloads are off (offline)")
    if not entry.urls:
        raise missing_message(entry, "it has no direct download URL")
    return download(entry, progress=progress)


def resolve_explicit(value: Path | str, *, offline: bool | None = None, progress: Progress | None = None,
                     catalogued: tuple[str, ...] | None = None, option: str | None = "--weights") -> Path:
    """--weights accepts a file path or a catalogue / registered name.

    `catalogued` lists the published checkpoints the caller can use (None: any): `-m baseline
    --weights codeformer` must not download 377 MB of another model only to fail on its keys.
    `option` is the option the value came from (--base-weights, --prior-weights...), named in errors.
    A value that names no usable file or name is a mistake on the command line (BadWeightsOption, exit 2).
    """
    path = check_weights_option(value, catalogued=catalogued, option=option)
    return path if path is not None else resolve(str(value), offline=offline, progress=progress)


def check_weights_option(value: Path | str, *, catalogued: tuple[str, ...] | None = None, option: str | None = "--weights") -> Path | None:
    """The checks of `resolve_explicit` that read and download nothing: the readable file `value`
    names, or None for a catalogue or registered name this caller may use; else BadWeightsOption
    (exit 2). Commands call it on every weights option first, so a typo in the second one is not
    found only after the first one's download."""
    path = Path(value).expanduser()
    if path.is_file():
        return readable_option_file(path, option)
    if str(value).strip() and path.is_dir():
        raise BadWeightsOption(f"{_given(option, value)} is a folder, not a checkpoint file", hint="name the checkpoint file inside it")
    entries = load_catalogue()
    if str(value) in entries:
        if catalogued is not None and not entries[str(value)].local and str(value) not in catalogued:
            usable = f"the catalogued {' or '.join(catalogued)}, " if catalogued else ""
            raise BadWeightsOption(f"{_given(option, value)} names the published checkpoint of another model",
                                   hint=f"pass {usable}a checkpoint file, or a name registered with `facerestore weights import FILE --name NAME`")
        return None
    raise BadWeightsOption(f"{_given(option, value)}: no such file and no weights registered under that name", hint="pass an existing checkpoint file or a name from `facerestore weights list`")


def _given(option: str | None, value: Path | str) -> str:
    """The option and its value as the user gave them; the value alone where no option named it."""
    return f"{option} {value}" if option else str(value)


def readable_option_file(path: Path, option: str | None = "--weights") -> Path:
    """`path` if this process may read it: a file named by an option that it cannot open is a usage
    error (exit 2) found now, not a failure after the other models have loaded."""
    if not os.access(path, os.R_OK):
        raise BadWeightsOption(f"{_given(option, path)} cannot be read (permission denied)", hint="make it readable (chmod a+r), or copy it somewhere of yours and pass the copy")
    return path


@contextmanager
def loading_option(option: str | None, named: bool = True, *, otherwise: str = "") -> Iterator[None]:
    """Around loading what the weights option `option` named (`named`: it did, not the catalogue):
    a file that is no checkpoint of this use (truncated, damaged, another architecture) is
    BadWeightsFile, one line starting with the option, exit 2 as a missing one. A file no option
    named (`option` None: finetune's report loads the run's own export) stays UnsupportedCheckpoint,
    exit 1, for the caller to say where it comes from. `otherwise`: the hint for a bad file the
    option did not name, where the reader's does not fit (the bundled model: reinstall)."""
    try:
        yield
    except BadWeightsOption:
        raise
    except UnsupportedCheckpoint as exc:
        if not named or option is None:
            if otherwise:
                raise type(exc)(str(exc), hint=otherwise) from None
            raise
        raise BadWeightsFile(f"{option}: {exc}", hint=exc.hint) from None


# ---------------------------------------------------------------- downloading


def _http_url(url: str) -> str:
    if url.startswith("hf://"):
        from huggingface_hub import hf_hub_url

        owner, repo, filename = url[len("hf://") :].split("/", 2)
        return hf_hub_url(f"{owner}/{repo}", filename)
    return url


def _fetch(url: str, part: Path, progress: Progress | None, timeout: float) -> None:
    """Append to `part` from where it stops (HTTP Range); restart if the server ignores the range."""
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "facerestore"})
    if done:
        request.add_header("Range", f"bytes={done}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # already complete
            return
        raise
    with response:
        if done and response.status != 206:
            done = 0  # the server sent the whole file
        length = int(response.headers.get("Content-Length") or 0)
        total = length + done
        with open(part, "ab" if done else "wb") as handle:
            while block := response.read(CHUNK):
                handle.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    if length and done < total:  # the connection closed early: keep the part, the next try resumes it
        raise ValueError(f"the connection closed after {done} of {total} bytes")


def download(entry: WeightsEntry, *, progress: Progress | None = None, timeout: float = 60.0) -> Path:
    """Download into the cache: `.part` (resumable) -> sha256 check -> atomic rename; under the
    file's lock (weights/file_lock.py), so a process that needs it at the same time waits for this
    download and takes its result instead of writing into the same `.part`."""
    target = cache_dir() / entry.filename
    _make_folder(target.parent)
    with exclusive(target, f"downloading {entry.filename} into {target.parent}"):
        done = _good_in_cache(entry, target)
        return done if done is not None else _download_locked(entry, target, progress or _told_progress(entry, target), timeout)


def _amount(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def _told_progress(entry: WeightsEntry, target: Path) -> Progress:
    """What a download started by a command (not `weights pull`, which draws a bar) says on stderr:
    a first use of CodeFormer fetches 377 MB, which must not look like a hang. One line when it
    starts; on a terminal, the share done, rewritten in place."""
    size = f" ({_amount(entry.size)})" if entry.size else ""
    print(f"downloading {entry.filename}{size} into {target.parent} (first use; `facerestore weights pull {entry.name}` "
          "fetches it ahead of time)", file=sys.stderr, flush=True)
    if not sys.stderr.isatty():
        return lambda done, total: None
    shown = [-1]

    def show(done: int, total: int) -> None:
        percent = int(100 * done / total) if total else -1
        if total and percent != shown[0]:
            shown[0] = percent
            print(f"\r  {_amount(done)} of {_amount(total)} ({percent}%)", end="\n" if done >= total else "", file=sys.stderr, flush=True)

    return show


def _good_in_cache(entry: WeightsEntry, target: Path) -> Path | None:
    """`target` if another process put a good copy there while this one waited for the lock."""
    if not target.is_file():
        return None
    try:
        check_file(entry, target)
    except ChecksumMismatch:
        return None  # a bad copy is replaced by this download
    return target


def _download_locked(entry: WeightsEntry, target: Path, progress: Progress | None, timeout: float) -> Path:
    part = target.with_name(target.name + ".part")
    errors = []
    for url in entry.urls:
        try:
            _fetch(_http_url(url), part, progress, timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        digest = sha256_file(part)
        expected = expected_sha256(entry)
        if expected and digest != expected:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"downloaded {entry.filename} from {url} has sha256 {digest[:16]}..., expected {expected}",
                hint=f"the download was corrupted or the file changed upstream; run `facerestore weights pull {entry.name}` again"
                + ("" if entry.sha256 else f" (the expected sha256 was {RECORDED}: if that copy was wrong, get the official file and run "
                   f"`facerestore weights import --no-verify {entry.filename}`, which records its sha256 instead)"),
            )
        if not entry.sha256:
            try:
                what = f"downloaded {entry.filename} from {url}"
                _assert_architecture(entry, _assert_checkpoint(part, what), what)
            except WeightsError:
                part.unlink(missing_ok=True)  # an error page or the like: never stored, never trusted
                raise
        os.replace(part, target)
        _remember_sha256(target, digest)
        _record_sha256(entry, digest)
        return target
    raise missing_message(entry, f"could not be downloaded ({'; '.join(errors) or 'no URL'})")


# ---------------------------------------------------------------- verify, import


class Verified(NamedTuple):
    """One line of `weights verify`."""

    name: str
    path: Path | None
    status: str  # ok, mismatch, unchecked (no hash known) or missing
    used: Path | None = None  # for a damaged copy passed over: the good copy a run loads instead
    why: str = ""  # for a mismatch: `damage_reason`, as `weights list` gives it ("100000 bytes, not 13616099")


def verify_all() -> Iterator[Verified]:
    """Every entry's copies a run looks at, each read again: the damaged ones passed over (mismatch,
    with the copy used instead and why), then the one a run loads (ok), or each copy when all are damaged."""
    for name, entry in load_catalogue().items():
        copies = local_copies(name)
        if not copies:
            yield Verified(name, None, "missing")
            continue
        expected = expected_sha256(entry)
        if not expected:
            yield Verified(name, copies[0], "unchecked")
            continue
        def damage(path: Path, entry: WeightsEntry = entry, expected: str = expected) -> str:
            digest = sha256_file(path, fresh=True)
            return "" if digest == expected else damage_reason(entry, path, digest, expected) or "sha256 mismatch"

        choice = choose_copy(copies, damage)
        for path, why in choice.passed_over:
            yield Verified(name, path, "mismatch", choice.used, why)
        if choice.used is not None:
            yield Verified(name, choice.used, "ok")


@dataclass(frozen=True)
class Imported:
    """What an import did, for the line `weights import` prints: a re-import under a name of your own
    replaces the earlier file and deletes it, and the same bytes again (yours or an official file's)
    change nothing."""

    path: Path  # the file in the cache
    name: str  # the weights name it is stored under
    replaced: bool = False  # an earlier file of your own under this name was replaced
    deleted: Path | None = None  # that earlier file, when it had another file name (another suffix): deleted
    unchanged: bool = False  # the same bytes were already stored under this name: nothing was written
    official: bool = False  # a catalogue checkpoint, not weights of your own (--name, or recognised by their sha256)


def import_file(file: Path | str, name: str | None = None, *, verify: bool = True) -> Path:
    """The file in the cache of `import_weights` (for callers that need no more)."""
    return import_weights(file, name, verify=verify).path


def import_weights(file: Path | str, name: str | None = None, *, verify: bool = True) -> Imported:
    """Copy a hand-downloaded checkpoint into the cache (checked), or register your own under `name`,
    which may not be a catalogue name, an official file's name or a restoration method's name."""
    source = Path(file).expanduser()
    if source.is_dir():
        raise UsageError(f"{source} is a folder, not a checkpoint file", hint="name the checkpoint file itself (.pth, .ckpt, .pkl or .safetensors)")
    if source.exists() and not source.is_file():  # /dev/null, a pipe: not a file to copy
        raise UsageError(f"{source} is not a regular file", hint="name the checkpoint file itself (.pth, .ckpt, .pkl or .safetensors)")
    if not source.is_file():
        raise UsageError(f"{source} does not exist", hint="check the path")
    if not os.access(source, os.R_OK):  # else sha256_file's PermissionError traceback
        raise UsageError(f"{source} cannot be read (permission denied)", hint="make it readable (chmod a+r), or copy it somewhere of yours and import the copy")
    if name is not None:
        _check_own_name(name)
    digest = sha256_file(source)
    if name is not None:
        return _register_local(source, name, digest)
    entry = _recognised(source, digest)
    expected = expected_sha256(entry)
    if expected and digest != expected and (verify or entry.sha256):  # a catalogued hash is checked at every use
        if entry.sha256:
            raise ChecksumMismatch(f"{source} has sha256 {digest[:16]}..., but {entry.name} ({entry.filename}) should be {expected}",
                                   hint="download the official file again, or register it as your own weights with --name and a name of your own")
        raise ChecksumMismatch(f"{source} has sha256 {digest[:16]}..., but {entry.name} ({entry.filename}) should be {expected} ({RECORDED})",
                               hint=f"{rerecord(source)}; else get the official file, or register this one as your own weights with --name NAME")
    if not entry.sha256:  # trusted on first use: it must be a checkpoint, of this entry's architecture
        _assert_architecture(entry, _assert_checkpoint(source, str(source), error=BadWeightsFile), str(source), BadWeightsFile)
    target = cache_dir() / entry.filename
    _make_folder(target.parent)
    with exclusive(target, f"importing {source.name} into {target.parent}"):  # not while a download of it renames
        if _unchanged(target, digest, expected_sha256(entry)):
            return Imported(target, entry.name, unchanged=True, official=not entry.local)
        _copy_atomic(source, target)
        _remember_sha256(target, digest)  # the bytes hashed just now: `weights list` need not call it unchecked
        _record_sha256(entry, digest)
    return Imported(target, entry.name, official=not entry.local)


def _recognised(source: Path, digest: str) -> WeightsEntry:
    """The catalogue entry `source` is a copy of, by sha256 (the catalogue's, or the one recorded when
    a file without a published one was first fetched: the same bytes under another name), else by
    file name. A file of an entry with no published sha256 is recognised by its name only: its key
    layout would only say which architecture it is, and a fine-tune or another release of that
    architecture (SPARNet's own SPARNetHD beside DR2's retrained one) has the same, so the refusal
    names the file name each such entry is recognised by."""
    entries = load_catalogue()
    entry = next((e for e in entries.values() if expected_sha256(e) == digest), None) or entry_for_filename(source.name)
    if entry is not None:
        return entry
    unpublished = [f"{e.filename} ({e.name})" for e in entries.values() if not e.local and not e.sha256]
    rename = (f"if it is an official file with no published sha256, give it its official name and import it again: "
              f"{', '.join(unpublished)}; else " if unpublished else "")
    raise UsageError(f"{source} matches no catalogued checkpoint (by sha256 or file name)",
                     hint=f"{rename}register it as your own weights with `--name NAME`")


OFFICIAL_AGAIN = "get the whole official file and try again"
OWN_AGAIN = "copy the whole file again, or export it again from the run that wrote it, then import it"


def _assert_checkpoint(path: Path, what: str, cure: str = OFFICIAL_AGAIN, error: type[WeightsError] = WeightsError) -> StateDict:
    """A file whose hash nobody published is trusted on first use, so it must at least be a checkpoint
    (not an HTML error page, a cut-off download or the wrong file type) before it is stored. `cure`:
    the official file again for a catalogue entry; your own (`--name`) only you can copy again. A file
    that is no checkpoint at all (a photo, a web page, pickled objects) is said to be one in the
    reader's words, as `--weights` says it: copying it again would not help. `error`: BadWeightsFile
    (exit 2) for the FILE `weights import` was given, as for a `--weights` file; a download stays a
    WeightsError (exit 1): the command line was right."""
    from facerestore.weights.checkpoint import read_state_dict

    try:
        return read_state_dict(path)
    except WeightsError as exc:  # "PATH is truncated or damaged (REASON)": the reason, found after the path (which may hold " (" itself)
        text = str(exc)
        rest = text[len(str(path)):] if text.startswith(str(path)) else f" {text}"
        if not rest.startswith(" is truncated or damaged") and exc.hint:  # another format or pickled objects
            raise error(f"{what}{rest}", hint=f"nothing was stored; {cure if cure != OWN_AGAIN else exc.hint}") from None
        reason = rest.split(" (", 1)[1].rstrip(")") if " (" in rest else rest.strip()
        raise error(f"{what} is not a readable checkpoint ({reason})",
                    hint=f"nothing was stored; {cure}") from None


def _checkpoint_fits() -> dict[str, Callable[[StateDict, str], None]]:
    """catalogue name -> its method's loader checks (`methods.registry.checkpoint_fits`), looked up only
    when an official file is stored: the methods sit above weights/ (as for `_method_names`)."""
    from facerestore.methods.registry import checkpoint_fits

    return checkpoint_fits()


def _assert_architecture(entry: WeightsEntry, state: StateDict, what: str, error: type[WeightsError] = WeightsError) -> None:
    """A file stored as `entry`'s official one with no published sha256 must be a checkpoint of the
    architecture `entry`'s method loads (the same checks its loader makes, on the meta device): else
    the first copy's sha256 was recorded as the official one, and the real file refused after it.
    The refusal says which other official file it fits, where one does."""
    fits = _checkpoint_fits()
    fit = fits.get(entry.name)
    if fit is None:
        return
    try:
        fit(state, what)
    except UnsupportedCheckpoint as exc:
        text = str(exc)
        reason = text[len(what):].strip() if text.startswith(what) else text
        entries = load_catalogue()
        like = next((entries[other] for other, other_fit in fits.items() if other != entry.name and other in entries and _fits(other_fit, state)), None)
        looks = f"; it fits {like.name} ({like.filename}) instead" if like else ""
        where = entry.urls[0] if entry.urls else entry.note
        official = f"the official {entry.filename}" + (f" ({where})" if where else "")
        cure = (f"if it is {like.name}'s file, name it {like.filename} and import that; else get {official}" if like
                else f"get {official}, or register this file as your own weights with --name NAME")
        raise error(f"{what} has the name of {entry.name}'s file but {reason}{looks}", hint=f"nothing was stored; {cure}") from None


def _fits(fit: Callable[[StateDict, str], None], state: StateDict) -> bool:
    try:
        fit(state, "")
    except Exception:  # any refusal, or a config the meta build cannot make: not that file
        return False
    return True


def wrong_copy_hint(name: str) -> str:
    """How to replace the copy of catalogue entry `name` a run loads when it is of another architecture
    (a file stored under the official name before `weights import` checked that, or put in a folder by
    hand), the hint of the run's error: not `--weights`, which the user did not pass. In the cache, a
    new import replaces it; `--no-verify` because the wrong copy's sha256 may have been recorded."""
    entry = get_entry(name)
    if entry.local:
        return fetch_again(entry)
    choice = copy_in_use(name)
    where = entry.urls[0] if entry.urls else entry.note
    official = f"the official {entry.filename}" + (f" ({where})" if where else "")
    if choice is not None and choice.used is not None and choice.used.parent.resolve() != cache_dir().resolve():
        return f"that copy is not {official}: delete it or put the official file in its place"
    return f"that copy is not {official}: get the official file and run `facerestore weights import --no-verify {entry.filename}`, which replaces it"


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the weights cache {folder} ({exc.strerror or exc})",
                           hint="point FACERESTORE_HOME at a writable folder") from None


def _copy_atomic(source: Path, target: Path) -> None:
    _make_folder(target.parent)
    if target.is_dir():
        raise WeightsError(f"cannot write {target}: a folder of that name is in the cache", hint="choose another --name")
    if target.exists() and target.resolve() == source.resolve():
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise WeightsError(f"cannot write into {target.parent} ({exc.strerror or exc})", hint="point FACERESTORE_HOME at a writable folder") from None
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600: others sharing the cache could not read it
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WeightsError(f"cannot write {target} ({exc.strerror or exc})", hint="free some disk space or point FACERESTORE_HOME elsewhere") from None
        raise


CHECKPOINT_SUFFIXES = (*PICKLED_SUFFIXES, ".safetensors", ".onnx")


def _method_names() -> list[str]:
    """The restoration methods' names, looked up only when a --name is checked: the registry sits
    above weights/ (the methods import this module) and imports torch, which a command that only
    reads the catalogue must not pay for."""
    from facerestore.methods.registry import method_names

    return method_names()


def _check_own_name(name: str) -> None:
    """UsageError (exit 2) for a --name that is not a name of your own: a catalogued checkpoint's name,
    its file's name with or without a suffix (`codeformer.pth` would list a second `codeformer`, as
    `codeformer.pth.safetensors`), or a method's (`--name idm`, then `-m dr2 --weights idm`)."""
    if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise UsageError(f"--name {name!r}: use letters, digits, '-', '_' and '.' only")
    if name.startswith("."):  # its file would be hidden from `ls` in the cache
        raise UsageError(f"--name {name!r}: use letters, digits, '-', '_' and '.' only, and no '.' first",
                         hint=f"choose a name that starts with a letter or digit, such as {name.lstrip('.')}")
    forms = {name.casefold()}
    stem, dot, suffix = name.rpartition(".")
    if dot and stem and f".{suffix}".casefold() in CHECKPOINT_SUFFIXES:
        forms.add(stem.casefold())  # the name a file of it is taken for: codeformer.safetensors is codeformer
    official = (e for e in load_catalogue().values() if not e.local)
    entry = next((e for e in official if forms & {e.name.casefold(), e.filename.casefold(), Path(e.filename).stem.casefold()}), None)
    if entry is not None:
        raise UsageError(f"--name {name} is taken by the catalogued checkpoint {entry.name} ({entry.filename}), so it cannot name weights of your own",
                         hint="choose another --name; to import the official file, " + _how_recognised(entry))
    method = next((m for m in _method_names() if m.casefold() in forms), None)
    if method is not None:
        raise UsageError(f"--name {name} is taken by the method {method}, so it cannot name weights of your own",
                         hint=f"choose another --name, such as my-{method}")


def _how_recognised(entry: WeightsEntry) -> str:
    """How to import the official file of `entry` (`_recognised`): with no published sha256 only its
    file name tells it, so the hint names the name to give it."""
    if entry.sha256:
        return "pass no --name (it is recognised by sha256 or file name)"
    return f"name it {entry.filename} and pass no --name (with no published sha256 it is recognised by file name)"


def _register_local(source: Path, name: str, digest: str) -> Imported:
    suffix = "" if name.casefold().endswith(source.suffix.casefold()) else source.suffix  # --name best.pth: not best.pth.pth
    target = cache_dir() / f"{name}{suffix}"
    owner = next((e for e in load_catalogue().values() if e.local and e.name != name and e.filename.casefold() == target.name.casefold()), None)
    if owner is not None:  # --name best of a .pth: best.pth, the file of your weights 'best.pth'
        raise UsageError(f"--name {name} would store {source.name} as {target.name}, the file of your weights '{owner.name}'",
                         hint=f"choose another --name, or import it with --name {owner.name} to replace those")
    _assert_checkpoint(source, str(source), OWN_AGAIN, BadWeightsFile)
    _make_folder(target.parent)
    registry = local_registry_path()
    # one import of a name at a time, whatever its file's suffix: the file and its registered sha256
    # come from the same one, and the file it replaces is the one registered before it; under any
    # names: the registry is read and rewritten by one at a time, so neither registration is lost
    with exclusive(cache_dir() / name, f"importing {source.name} into {target.parent}"):
        earlier = _registered(name)
        if earlier is not None and earlier.filename == target.name and _unchanged(target, digest, earlier.sha256):
            return Imported(target, name, unchanged=True)
        _copy_atomic(source, target)
        _remember_sha256(target, digest)
        with exclusive(registry):
            lines = registry.read_text(encoding="utf-8").splitlines() if registry.is_file() else []
            lines = _drop_table(lines, name)
            lines += [f'["{name}"]', f"file = {_toml_string(target.name)}", f'sha256 = "{digest}"', f"size = {source.stat().st_size}",
                      'license = "your own weights"', f"note = {_toml_string('imported from ' + source.name)}", ""]
            try:
                _write_text_atomic(registry, "\n".join(lines) + "\n")
            except OSError as exc:
                raise WeightsError(f"cannot write {registry} ({exc.strerror or exc}); {name!r} is not registered",
                                   hint="free some disk space or point FACERESTORE_HOME elsewhere, then import it again") from None
        deleted = None
        if earlier is not None and earlier.filename != target.name and not _file_of_another(earlier.filename, name) and _unlink(cache_dir() / earlier.filename):
            deleted = cache_dir() / earlier.filename
        if earlier is not None:
            _forget_stale_hashes()  # the file replaced or deleted just now
        _drop_conversions(name, keep=digest)
    return Imported(target, name, replaced=earlier is not None, deleted=deleted)


def _registered(name: str) -> WeightsEntry | None:
    """The registration of your own weights under `name`, as the registry holds it now."""
    entry = load_catalogue().get(name)
    return entry if entry is not None and entry.local else None


def _file_of_another(filename: str, name: str) -> bool:
    """Whether a catalogue entry or a registration other than `name` stores its file as `filename`."""
    return any(entry.filename == filename for other, entry in load_catalogue().items() if other != name)


def _unchanged(target: Path, digest: str, recorded: str) -> bool:
    """Whether importing bytes of sha256 `digest` to `target` would change nothing: the hash recorded
    for it (catalogue, first use or registry) is theirs and the file there holds them already."""
    return recorded == digest and _holds(target, digest)


def _holds(path: Path, digest: str) -> bool:
    try:
        return path.is_file() and sha256_file(path) == digest
    except WeightsError:
        return False


def _unlink(path: Path) -> bool:
    """Delete a file the cache no longer uses; whether it was there. One that cannot be deleted (a
    read-only cache) stays: the import itself succeeded."""
    try:
        path.unlink()
    except OSError:
        return False
    return True


def _drop_conversions(name: str, keep: str) -> None:
    """Delete the safetensors conversions of weights `name` made from any file but the one of sha256
    `keep` (`_converted_path`: NAME-<16 hex>.safetensors; NAME-2's are not NAME's)."""
    folder = cache_dir() / "converted"
    prefix = f"{name}-"
    for path in folder.glob(f"{glob.escape(prefix)}*.safetensors") if folder.is_dir() else ():
        rest = path.name[len(prefix) : -len(".safetensors")]
        if len(rest) == 16 and all(c in "0123456789abcdef" for c in rest) and rest != keep[:16]:
            _unlink(path)


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escaping of quotes, backslashes and control characters is TOML's,
    plus DEL, which TOML also wants escaped (a file named 'my "best".pth' broke the registry). A file
    name that is not UTF-8 (a Linux name is bytes) keeps its odd bytes as `\\udcff`-style text."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _drop_table(lines: list[str], name: str) -> list[str]:
    out, skipping = [], False
    for line in lines:
        if line.startswith("["):
            skipping = line.strip() == f'["{name}"]'
        if not skipping:
            out.append(line)
    return out
