"""Degrade a file or a folder tree with a named preset and write each image's parameters.

    DST/<relative path>          the degraded copy (same name; --ext changes the format)
    DST/degradations.json        {"preset", "seed", "spec", "images": [{"path", "source", <params>}]}
    DST/degradations.csv         one row per image: path, source and every parameter
    DST/.facerestore-degrade/    settings.json and done.jsonl: the record of a run not yet finished
    DST/.facerestore.lock        while a run writes: its pid and host (training/out_lock)

Each image's parameters and noise come from a generator keyed by (seed, its relative path), so a
rerun, a subset or another order of the same files gives the same degradations.

Resumable. degradations.json is written once, at the end, and always describes a whole run; until
then every copy's record (the line it will have in degradations.json) is appended to
DST/.facerestore-degrade/done.jsonl, flushed and fsynced, right after the copy was written
atomically. After Ctrl-C or kill -9 every visible copy is complete and its parameters are in that
manifest; a rerun of the same command skips the copies listed there (and still present) and ends
with the degradations.json an uninterrupted run writes; the temp files of a killed write are
removed (while the run holds DST's lock: a second run into DST is refused, see training/out_lock).
Each manifest record also keeps the size, mtime and sha256 of its source (taken before it
was read): a source replaced by another image at the same path since is degraded again, its stale
copy removed first (records written before sources were recorded are trusted). The manifest is kept
for the settings in
.facerestore-degrade/settings.json (preset, seed, the preset's ranges): a rerun with other settings
starts over, dropping the manifest and the degradations.json / .csv of the earlier settings, and first
the copies they list (else DST would mix two presets: a copy of another --ext, or of a source that is
gone, is never rewritten). Only what they list is removed, and only a plain file whose folder lies
inside DST (never through a link out of it). A rerun with the same settings removes nothing: such a
copy is kept and counted in `no_source` / `other_format`, for the summary to say.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import stat as stat_mode
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.image_io import (IMAGE_EXTENSIONS, OUT_ONLY_HINT, InputPaths, assert_not_input, assert_output_folder, assert_outside, folder_relation, list_images, output_format, read_image,
                                  remove_stale_temps, write_bytes, write_image)
from facerestore.training.degradations import DegradationParams, DegradationSpec, apply_degradation, preset as get_preset, sample_params
from facerestore.training.loop import SOURCE_KEYS, manifest_records, open_manifest, read_settings, source_changed, source_fingerprint, source_stat
from facerestore.training.out_lock import output_lock
from facerestore.training.seeds import check_seed, numpy_rng
from facerestore.plural import counted

FIELDS = [f.name for f in dataclasses.fields(DegradationParams)]
STATE_DIR = ".facerestore-degrade"
MANIFEST = "done.jsonl"


@dataclass
class DegradeReport:
    written: int  # copies written by this run
    failed: int
    json_path: Path
    csv_path: Path
    records: list[dict]  # every copy of the run, as in degradations.json (those of earlier runs included)
    skipped: int = 0  # copies an interrupted earlier run had finished (same settings)
    changed: int = 0  # copies redone because their source changed since they were made (counted in written or failed)
    # copies an earlier run with the same settings made that this run does not list (so neither does
    # degradations.json): kept, never deleted, for the summary to say (a start-over removes them)
    no_source: list[str] = field(default_factory=list)  # their source is gone from SRC
    other_format: list[str] = field(default_factory=list)  # their source is still there: made with another --ext


def _settings(preset: str, seed: int, spec: DegradationSpec) -> dict:
    """What a manifest's records depend on, as JSON gives it back (tuples become lists)."""
    return json.loads(json.dumps({"preset": preset, "seed": seed, "spec": dataclasses.asdict(spec)}))


def read_manifest(path: Path) -> dict[str, dict]:
    """Target path -> its newest record, as degradations.json lists it; a line cut by a kill is ignored (that copy is redone)."""
    return {target: _public(record) for target, record in _read_records(path).items()}


def _read_records(path: Path) -> dict[str, dict]:
    """Target path -> its newest record as the manifest holds it (with its source's size, mtime and hash)."""
    if not path.is_file():
        return {}
    return {str(record["path"]): record for record in manifest_records(path) if "path" in record}


def _public(record: dict) -> dict:
    """A manifest record less what it keeps of its source: the line degradations.json has."""
    return {k: v for k, v in record.items() if k not in SOURCE_KEYS}


def _own_copy(dst: Path, listed: object) -> Path | None:
    """DST/`listed` where an earlier run's record names a copy that may be removed: a relative path
    without '..' and with an image extension, a plain file (not a link) in a folder that resolves
    inside DST; else None (a damaged or edited record never reaches a file outside DST)."""
    if not isinstance(listed, str):
        return None
    rel = PurePosixPath(listed)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.parts[0].startswith(".facerestore") or rel.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    copy = dst.joinpath(*rel.parts)
    try:
        if not copy.parent.resolve().is_relative_to(dst.resolve()) or not stat_mode.S_ISREG(copy.lstat().st_mode):
            return None
    except (OSError, RuntimeError):  # gone, or a link loop
        return None
    return copy


def _listed_copies(state: Path, json_path: Path) -> list[str]:
    """The copies the earlier settings' manifest lists, and its degradations.json (a run from before
    the manifest wrote only that one): this command's own outputs."""
    listed = list(_read_records(state / MANIFEST))
    try:
        images = json.loads(json_path.read_text()).get("images", [])
        listed += [str(image["path"]) for image in images if isinstance(image, dict) and "path" in image]
    except (OSError, ValueError, AttributeError, TypeError):  # none, or not degrade's: it lists nothing
        pass
    return list(dict.fromkeys(listed))


def _earlier_records(state: Path, settings: dict, stale: list[Path], targets: set[str], on_message: Callable[[str], None] | None) -> dict[str, dict]:
    """The records an interrupted run with these settings left; with other (or unknown) settings the
    run starts over: the copies their manifest lists go (`targets` are this run's: the others would
    stay, of the other preset, beside this run's), then the manifest, then the `stale` files made
    from it, then the settings are recorded (in that order, so a kill in between never pairs a
    manifest with the wrong settings, nor loses the list of copies still to remove)."""
    path = state / "settings.json"
    recorded = read_settings(state)  # None where it is missing or unreadable (not JSON, not UTF-8, not an object)
    if recorded == settings:
        return _read_records(state / MANIFEST)
    dst = state.parent
    copies = [(listed, copy) for listed in _listed_copies(state, dst / "degradations.json") if (copy := _own_copy(dst, listed)) is not None]
    left = sum(1 for listed, _ in copies if listed not in targets)  # those this run rewrites are simply degraded again
    removing = f" and removing {counted(left, 'earlier copy', 'earlier copies')} it will not rewrite (another --ext, or a source that is gone)" if left else ""
    if isinstance(recorded, dict) and on_message is not None:
        differ = ", ".join(f"--{k} {recorded.get(k, '(none)')} -> {settings[k]}" for k in ("preset", "seed") if recorded.get(k) != settings[k])
        differ = differ or f"the ranges of preset {settings['preset']} changed since"
        on_message(f"{dst} held copies made with other settings ({differ}); degrading every image again{removing}")
    elif left and on_message is not None:
        on_message(f"{dst} held copies whose settings are unknown ({path} is missing or unreadable); degrading every image again{removing}")
    for _, copy in copies:  # all of them: a copy whose redo fails leaves no copy of the other preset
        try:
            copy.unlink(missing_ok=True)
        except OSError as exc:
            raise FaceRestoreError(f"cannot remove {copy} ({exc.strerror or exc})", hint="check the permissions of --out") from None
    remove_stale_temps([copy for _, copy in copies])  # a killed write of a copy this run will not rewrite (another --ext) left its temp file
    (state / MANIFEST).unlink(missing_ok=True)
    for file in stale:
        file.unlink(missing_ok=True)
    write_bytes(path, (json.dumps(settings, indent=1) + "\n").encode())
    return {}


def degrade_tree(src: Path, dst: Path, *, preset: str = "eq11", seed: int = 0, ext: str = "auto",
                 on_error: Callable[[str], None] | None = None, on_warning: Callable[[str], None] | None = None,
                 on_message: Callable[[str], None] | None = None) -> DegradeReport:
    """Degrade every image of `src` into `dst` (or finish what an interrupted run began; module docstring)."""
    spec = get_preset(preset)
    check_seed(seed)
    ext = output_format(ext)
    src, dst = Path(src), Path(dst)
    assert_output_folder(dst)
    links: list[tuple[Path, str]] = []
    paths, problems = list_images([src], exclude=[dst], links=links)  # never dst, also not through a link: a rerun would degrade its own copies
    if on_warning is not None:  # a folder link that holds SRC, a broken link, a pipe, a folder that cannot be listed: left out, but not without a word
        for path, reason in links + (problems if paths else []):  # with no image, the refusal below names the problem
            on_warning(f"skipped {path}: {reason}")
    if not paths:
        reason = problems[0][1] if problems else "no images"
        raise UsageError(f"{src}: {reason}", hint="pass an image or a folder of images")
    root = src if src.is_dir() else src.parent
    if src.is_dir():
        assert_outside(dst, src, str(src), hint="write the degraded copies outside the source folder")
        if folder_relation(dst, src) == "holds":  # the copies would land among the user's files beside src
            raise UsageError(f"--out {dst} holds the source folder {src}", hint="write the degraded copies to a folder of their own")
    if not src.is_dir() and dst.resolve() == root.resolve():  # the copy would land among the user's files
        raise UsageError(f"--out {dst} is the folder of {src}", hint="write the degraded copy to another folder")
    rels = [path.relative_to(root) for path in paths]
    # auto keeps the input's format where we can write it; a GIF (or a file without an extension)
    # named on the command line gets PNG, as in restore
    targets = [rel if ext == "auto" and rel.suffix.lower() in IMAGE_EXTENSIONS else rel.with_suffix("." + ("png" if ext == "auto" else ext))
               for rel in rels]
    first: dict[str, Path] = {}
    for rel, target in zip(rels, targets):
        if target.as_posix() in first:
            raise UsageError(f"{root / first[target.as_posix()]} and {root / rel} would both be written as {dst / target}",
                             hint="use --ext auto, or rename one of them")
        first[target.as_posix()] = rel
    # one run at a time into dst (training/out_lock): another's live temp files are not stale ones
    with output_lock(dst, on_message=on_message):
        return _degrade_all(paths, rels, targets, dst, preset, seed, spec, on_error, on_warning, on_message)


def _degrade_all(paths: list[Path], rels: list[Path], targets: list[Path], dst: Path, preset: str, seed: int, spec: DegradationSpec,
                 on_error: Callable[[str], None] | None, on_warning: Callable[[str], None] | None,
                 on_message: Callable[[str], None] | None) -> DegradeReport:
    """The checked run of `degrade_tree`, under dst's lock."""
    inputs = InputPaths(paths)  # indexed once: every output is looked up, not compared with every input
    json_path, csv_path = dst / "degradations.json", dst / "degradations.csv"
    state = dst / STATE_DIR
    # a kill -9 in the middle of a write leaves its temp file (.NAME.RANDOM.tmp) beside the target: only those go
    removed = remove_stale_temps([*(dst / t for t in targets), json_path, csv_path, state / "settings.json"])
    if removed and on_message is not None:
        on_message(f"removed {counted(removed, 'unfinished temporary file')} of an earlier run")
    try:
        state.mkdir(parents=True, exist_ok=True)
        earlier = _earlier_records(state, _settings(preset, seed, spec), [json_path, csv_path], {t.as_posix() for t in targets}, on_message)
        manifest = open_manifest(state / MANIFEST)
    except OSError as exc:  # write_bytes says its own line
        raise FaceRestoreError(f"cannot write into {state} ({exc.strerror or exc})", hint="check free space and permissions") from None
    stats = [source_stat(path) for path in paths]
    done: dict[str, dict] = {}  # target -> its record, for every copy this run or an earlier one finished
    changed = 0
    for path, stat, rel, target in zip(paths, stats, rels, targets):
        record = earlier.get(target.as_posix())
        if record is not None and record.get("source") == rel.as_posix() and (dst / target).is_file():
            if not source_changed(record, path, stat):
                done[target.as_posix()] = _public(record)
                continue
            changed += 1
            try:  # stale: a redo that fails leaves no copy of the old image
                (dst / target).unlink(missing_ok=True)
            except OSError as exc:
                raise FaceRestoreError(f"cannot remove {dst / target} ({exc.strerror or exc})", hint="check the permissions of --out") from None
    skipped = len(done)
    failed = 0
    with manifest:
        for path, stat, rel, target in zip(paths, stats, rels, targets):
            if target.as_posix() in done:
                continue
            source = source_fingerprint(path, stat)  # before the read, so a file replaced meanwhile is redone next time
            record = _degrade_one(path, rel, target, dst, spec, seed, inputs, on_error, on_warning)
            if record is None:
                failed += 1
                continue
            try:
                manifest.write(json.dumps({**record, **source}) + "\n")
                manifest.flush()
                os.fsync(manifest.fileno())
            except OSError as exc:
                raise FaceRestoreError(f"cannot write {state / MANIFEST} ({exc.strerror or exc})", hint="check free space and permissions") from None
            done[target.as_posix()] = record
    records = [done[t.as_posix()] for t in targets if t.as_posix() in done]  # in the order of the files, as an uninterrupted run
    # copies of the same settings this run does not list: kept (as clean-dataset keeps an output whose source is gone), but said
    wanted, sources = {t.as_posix() for t in targets}, {r.as_posix() for r in rels}
    left = sorted(p for p in earlier if p not in wanted and _own_copy(dst, p) is not None)
    no_source = [p for p in left if earlier[p].get("source") not in sources]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "source", *FIELDS])
    writer.writeheader()
    writer.writerows(records)
    write_bytes(json_path, (json.dumps({"preset": preset, "seed": seed, "spec": dataclasses.asdict(spec), "images": records}, indent=1) + "\n").encode())
    write_bytes(csv_path, buffer.getvalue().encode())
    return DegradeReport(written=len(records) - skipped, failed=failed, json_path=json_path, csv_path=csv_path, records=records, skipped=skipped,
                         changed=changed, no_source=no_source, other_format=[p for p in left if p not in no_source])


def _degrade_one(path: Path, rel: Path, target: Path, dst: Path, spec: DegradationSpec, seed: int, inputs: InputPaths,
                 on_error: Callable[[str], None] | None, on_warning: Callable[[str], None] | None) -> dict | None:
    """Degrade and write one copy; its record, or None after reporting why it failed."""
    try:
        picture = read_image(path)
        if on_warning is not None:
            for line in picture.notes("degraded", written_as=target):
                on_warning(line)
        rng = numpy_rng(seed, "degrade", rel.as_posix())
        params = sample_params(rng, spec)
        degraded = apply_degradation(picture.rgb, params, rng)
        assert_not_input(dst / target, inputs, hint=OUT_ONLY_HINT)
        write_image(dst / target, degraded, alpha=picture.alpha, **(picture.encoding() | {"gray": picture.gray or params.gray}))
    except FaceRestoreError as exc:
        if on_error is not None:
            on_error(exc.one_line())
        return None
    return {"path": target.as_posix(), "source": rel.as_posix(), **params.to_dict()}
