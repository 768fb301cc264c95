"""`facerestore clean-dataset SRC --out DST`: restore every image of a dataset into the same tree.

This is IDM's extrinsic iteration (sec. 3.3, eq. 10): x* = f(x) for every training image, written
to DST with the same relative paths, formats, sizes, bit depths, gray and alpha, so DST can be the
`--targets` of the next `facerestore train`.

Modes: aligned faces (default): each image is one aligned face, resized to 512 for the method and
back to its own size; `--detect`: whole photos through the restore pipeline (detect, align,
restore, paste back at the photo's own size; a photo without a face is copied through unchanged).

Resumable. Every finished file is appended to DST/.facerestore-clean/done-rank<R>.jsonl (flushed and
fsynced) after its image was written atomically (image_io.write_image: temp file + rename). After a
kill -9 every visible file in DST is complete; a rerun reads all manifests and does only the files
not listed (a file written but not yet listed is simply redone). Stale temp files are removed, under
DST's lock (training/out_lock): a second run into DST is refused, so no live temp file is taken for stale.
Each entry also keeps the size, mtime and sha256 of its source (taken before it was read): a
source replaced by another image at the same path since is restored again, its stale output removed
first (entries written before sources were recorded are trusted). An output whose source is gone
from SRC (deleted or moved since) is kept, never deleted, and the summary says how many there are.
Each entry carries the number of the run that wrote it, so the manifests merge by recency however
the ranks were numbered: a file failed by rank 1 of a 2-process run and restored by a 1-process
rerun is done, whichever rank's manifest is read last (see `_read_manifests`).
The first run records its settings (method, weights, steps, seed, mode, and what they resolved to:
every weights file the method loaded, by sha256, the precision its networks ran in, and the method's
own options as they ran, defaults filled in: its `run_options()`, e.g. DR2's preset, n, tau, enhancer);
a rerun whose files, precision, method options or other settings differ is refused, so one tree
never mixes two models. What ran is compared, not its spelling: --steps 10 is idm's default, and the
same --weights files by another path are the same files. A tree begun by a version that recorded no
files, precision or method options resumes as before and records them then; such a version ran every
method option but --steps at its default, so a rerun that runs another one is refused there (`_as_recorded`).

Sharded. Under torchrun, file i of the sorted list belongs to rank i % WORLD_SIZE, before anything
is filtered, so every file has exactly one owner however far each rank got. Each file's noise
comes from its own seed, keyed by (--seed, relative path): the result of a file does not depend
on the number of ranks, the batch it shared, or on being redone after a restart.

`--check` measures IDM's authenticity criterion (eq. 2, f(x) = x for a clean x): the PSNR of each
output against its input; the summary gives the mean and the worst file. High values mean the
method leaves clean faces alone; low values mean it hallucinates or smooths them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from facerestore.errors import FaceRestoreError, UsageError
from facerestore.faces.align import check_aligned_crop
from facerestore.image_io import OUT_ONLY_HINT, Picture, remove_stale_temps, resize, write_bytes, assert_apart, InputPaths, assert_not_input, assert_output_folder, from_samples, list_images, read_image, write_image
from facerestore.metrics.json_numbers import json_number, read_json_number
from facerestore.out_of_memory import BatchLimit
from facerestore.plural import counted
from facerestore.training import distributed
from facerestore.methods.base import MethodOptions, loaded_weights, precision_name, run_options
from facerestore.methods.registry import METHOD_SPECIFIC, planned_run_options
from facerestore.training.loop import (check_settings, manifest_records, open_manifest, read_settings, setting_differences, setting_text, source_changed, source_fingerprint,
                                       source_stat, write_settings)
from facerestore.training.out_lock import output_lock
from facerestore.training.seeds import check_seed, stable_seed
from facerestore.weights.store import loaded_record, sha256_file

STATE_DIR = ".facerestore-clean"
FACE = 512


@dataclass(frozen=True)
class CleanOptions:
    src: Path
    out: Path
    method: str = "idm"
    weights: str | None = None
    # the method options of `restore` (MethodOptions' fields of the same names; None / False: the method's default)
    steps: int | None = None
    fidelity: float | None = None
    eta: float | None = None
    start: int | None = None
    dr2_n: int | None = None
    dr2_tau: int | None = None
    dr2_preset: str | None = None
    dr2_auto: bool = False
    no_enhancer: bool = False
    detect: bool = False
    check: bool = False
    batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    offline: bool | None = None
    detector: str = "auto"
    jpeg_quality: int = 95
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        check_seed(self.seed)
        if self.detector != "auto" and not self.detect:
            raise UsageError(f"--detector {self.detector} is used only with --detect", hint="add --detect to restore whole photos, or drop --detector")

    def method_options(self) -> MethodOptions:
        """The MethodOptions the method is built with (device, weights and the rest as given)."""
        return MethodOptions(weights=self.weights, offline=self.offline, precision=self.precision,
                             **{option: getattr(self, option) for option in METHOD_SPECIFIC})


@dataclass
class FileResult:
    path: str  # relative to SRC, posix
    status: str  # ok | no-face | failed
    seconds: float = 0.0
    psnr: float | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()  # restored, but not from all the file held (other frames, an unusable profile)

    def to_json(self) -> dict:
        data = {"path": self.path, "status": self.status, "seconds": round(self.seconds, 4)}
        if self.psnr is not None:
            data["psnr"] = json_number(self.psnr, 4)
        if self.error:
            data["error"] = self.error
        if self.warnings:
            data["warnings"] = list(self.warnings)
        return data


@dataclass
class CleanSummary:
    total: int  # images in SRC (after --limit)
    skipped: int  # already done before this run (all ranks)
    done: int  # restored by this run (all ranks)
    failed: int  # failed in this run (all ranks)
    no_face: int  # with --detect: photos without a face, copied through
    seconds: float  # wall time of this run
    seconds_per_image: float  # restore + I/O time per image, summed over ranks / images
    complete: int  # files of SRC listed as done after this run
    changed: int = 0  # done before, redone by this run because their source changed since (all ranks; counted in done or failed)
    no_source: list[str] = field(default_factory=list)  # outputs in DST listed as done whose source is gone from SRC: kept, said
    check: dict | None = None  # with --check: mean, worst, worst_path, count (over every done file)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, error) of every rank's failures, by path

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "failures"} | {"failures": [list(f) for f in self.failures]}


def _settings(options: CleanOptions, method) -> dict:
    """What settings.json records: the options as given (`weights`: the --weights file by its sha256, or
    the value as written), and what they resolved to: `files`, every file the method loaded (each role,
    catalogue copies and the bundled model included) by path and sha256 (weights.store.loaded_record:
    remembered, so a rerun does not hash hundreds of MB again), the `precision` its networks ran in, and
    `options`, the method's options as it runs them, defaults filled in (`run_options`: --dr2-preset
    severe and --dr2-n 16 --dr2-tau 35 are the same run; --dr2-preset medium and none are too; so are
    idm's --steps 10 and none). --steps is recorded there only: a tree recorded before `options` holds
    it as given, at the top level (`_as_recorded`)."""
    weights = options.weights
    described = None
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir() and (path / "idm.safetensors").is_file():
            path = path / "idm.safetensors"
        # the content, not the size: a model retrained in place must not finish a tree another began
        described = {"path": str(path.resolve()), "sha256": sha256_file(path)} if path.is_file() else {"name": str(weights)}
    files = {role: loaded_record(file) for role, file in sorted(loaded_weights(method).items())}
    return {"method": options.method, "weights": described, "seed": options.seed, "detect": options.detect,
            "files": files, "precision": precision_name(method), "options": _as_json(run_options(method))}


def _as_json(value: dict) -> dict:
    """As settings.json holds it (lists, not tuples), so an equal one compares equal."""
    return json.loads(json.dumps(value))


RESOLVED_KEYS = ("files", "precision", "options")  # recorded since these were: a settings.json without them is from an older version

# run_options key -> the flag that sets it (cli/method_options.py declares them), as a refusal names it
RUN_OPTION_FLAGS = {"steps": "--steps", "fidelity": "-w/--fidelity", "eta": "--eta", "start": "--start", "preset": "--dr2-preset",
                    "n": "--dr2-n", "tau": "--dr2-tau", "auto": "--dr2-auto", "candidates": "--dr2-auto", "enhancer": "--no-enhancer"}
_SWITCHES = {"auto": False, "enhancer": True}  # run_options keys of on/off flags -> the value they have without the flag


def _as_recorded(settings: dict, recorded: dict | None, out: Path) -> dict:
    """The settings to compare with the recorded ones (`check_settings`); a difference in the method's
    options or files is refused here, named by the flags and files, not as dicts, in one line with
    every other setting that differs (a rerun with another --seed and --dr2-preset was told the seed,
    and the preset only on the next rerun).

    What ran is compared, not how it was spelled: --steps through `options` (idm's --steps 10 is its
    default), --weights through `files`, by role and sha256 (the same files by another path, relative
    or found in another folder, are the same model). A tree begun by a version that did not record
    `files`, `precision` or `options` is compared on the keys it has, as then, so it stays resumable
    (`_clean_tree` then records them); its method options are those of the method's defaults with its
    recorded --steps: that version took no other option."""
    if recorded is None:
        return settings
    mine = {k: v for k, v in settings.items() if k not in RESOLVED_KEYS or k in recorded}
    if "steps" in recorded:  # as given, beside `options` or, in an older tree, alone: compared through the options
        mine["steps"] = recorded["steps"]
    if "files" in recorded:
        mine["weights"] = recorded.get("weights")
    if recorded.get("method") != settings["method"]:
        return mine | {k: recorded[k] for k in ("files", "options") if k in recorded}  # refused by the method's name
    options, older = _option_differences(settings, recorded)
    # --no-enhancer loads one file fewer: where the options differ, they are the cause of the files'
    files = [] if options else _file_differences(mine, recorded)
    if options or files:
        rest = ("files", "options", "steps")
        others = setting_differences({k: v for k, v in recorded.items() if k not in rest}, {k: v for k, v in mine.items() if k not in rest})
        if options and older:
            first = f"the earlier facerestore that began it ran every {settings['method']} option but --steps at its default: drop the others to resume it"
        elif others:
            first = "rerun with the settings it was made with"
        elif options:
            first = "rerun with the options it was made with"
        else:
            first = "rerun with the same weights files (put the original back)"
        raise UsageError(f"{out} holds a cleaning run made with other settings ({', '.join(others + options + files)})",
                         hint=f"{first}, choose another --out, or delete {out / STATE_DIR} to start over")
    same_files = isinstance(mine.get("files"), dict) and isinstance(recorded.get("files"), dict)  # by sha256: the same files, perhaps by another path
    return mine | {k: recorded[k] for k in ("options",) if k in recorded} | ({"files": recorded["files"]} if same_files else {})


def _option_differences(settings: dict, recorded: dict) -> tuple[list[str], bool]:
    """Each method option that differs from the recorded ones, as `--FLAG: RECORDED -> NOW`, and whether
    the tree is from a version that recorded none (its options: the defaults with its --steps)."""
    older = "options" not in recorded
    if older:
        try:
            theirs = _as_json(planned_run_options(settings["method"], MethodOptions(steps=recorded.get("steps"))))
        except FaceRestoreError:  # steps this version refuses: no run of it has them
            theirs = {"steps": recorded.get("steps")}
    else:
        theirs = recorded["options"]
    ran = settings["options"]
    if not isinstance(theirs, dict) or ran == theirs:
        return [], older
    named: dict[str, str] = {}
    for key in [*ran, *(k for k in theirs if k not in ran)]:
        flag = RUN_OPTION_FLAGS.get(key, key)
        if flag not in named and (key not in ran or key not in theirs or ran[key] != theirs[key]):
            named[flag] = f"{flag}: {_option_text(theirs, key)} -> {_option_text(ran, key)}"
    return list(named.values()), older


def _file_differences(settings: dict, recorded: dict) -> list[str]:
    """Each weights file (by role) `settings` loaded that is not the recorded one by sha256, as
    `weights ROLE: RECORDED -> NOW`; none where either side has no files to compare."""
    mine, theirs = settings.get("files"), recorded.get("files")
    if not isinstance(mine, dict) or not isinstance(theirs, dict):
        return []
    digests = {role: (r.get("sha256") if isinstance(r, dict) else None) for role, r in theirs.items()}
    return [f"{'weights' if role == 'weights' else f'weights {role}'}: {setting_text(theirs[role]) if role in theirs else 'not recorded'} -> "
            f"{setting_text(mine[role]) if role in mine else 'not loaded'}"
            for role in sorted({*mine, *theirs}) if role not in mine or role not in theirs or mine[role]["sha256"] != digests[role]]


def _option_text(options: dict, key: str) -> str:
    """One of a method's run_options as a refusal shows it: an on/off flag as "set" or "not set"
    (--no-enhancer: set where the enhancer is off); None is "none" (DR2's preset where --dr2-n or
    --dr2-tau set other values); an option that run did not have (--dr2-n beside --dr2-auto) is "not used"."""
    if key in _SWITCHES:
        return "set" if options.get(key, _SWITCHES[key]) != _SWITCHES[key] else "not set"
    if key not in options:
        return "not used"
    return "none" if options[key] is None else repr(options[key])


def _read_manifests(state: Path) -> dict[str, dict]:
    """path -> its newest manifest entry, over every rank's file (lines cut by a kill are ignored).

    Newest: from the highest run number; within one run a file has one owner, so its entries are in
    one manifest, in order. Across rank files the file order says nothing (a rerun with fewer ranks
    writes into a lower rank's file). Entries written before runs were numbered count as run 0; among
    those, a done entry beats a failed one from another rank's file: a failed retry writes no output,
    so a done entry whose output is there (what callers check) is the later truth.
    """
    newest: dict[str, tuple[int, int, dict]] = {}  # path -> (run, manifest index, entry)
    for index, manifest in enumerate(sorted(state.glob("done-rank*.jsonl"))):
        for entry in manifest_records(manifest):
            try:
                path, run = str(entry["path"]), int(entry.get("run", 0))
            except (KeyError, TypeError, ValueError):
                continue
            seen = newest.get(path)
            if seen is not None and (run < seen[0] or (run == seen[0] and index != seen[1] and _is_done(seen[2]) and not _is_done(entry))):
                continue
            newest[path] = (run, index, entry)
    return {path: entry for path, (_, _, entry) in newest.items()}


def _is_done(entry: dict) -> bool:
    return entry.get("status") in ("ok", "no-face")


def _next_run(entries: dict[str, dict]) -> int:
    """This run's number: one above every run the manifests hold (0 for entries written before runs were numbered)."""
    return 1 + max((int(e.get("run", 0)) for e in entries.values()), default=0)


def file_seed(seed: int, rel: str) -> int:
    return stable_seed(seed, "clean", rel)


def _restore_faces(method, crops: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
    """Restore aligned 512 crops, each with its own seed (batched when the method supports seeds)."""
    batch = torch.from_numpy(np.stack(crops).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    if hasattr(method, "restore_seeded"):
        out = method.restore_seeded(batch, seeds)
    else:  # one call per face so each face's result depends only on its own seed
        out = torch.cat([method.restore(batch[i : i + 1], generator=torch.Generator().manual_seed(s)) for i, s in enumerate(seeds)])
    return list(out.permute(0, 2, 3, 1).float().clamp(0, 1).cpu().numpy())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from facerestore.metrics.psnr import psnr

    return psnr(a, b)


def _write(target: Path, rgb: np.ndarray, picture: Picture, inputs: InputPaths, quality: int) -> None:
    assert_not_input(target, inputs, hint=OUT_ONLY_HINT)
    write_image(target, rgb, alpha=picture.alpha, jpeg_quality=quality, **picture.encoding())


def clean_dataset(
    options: CleanOptions,
    *,
    on_file: Callable[[FileResult], None] | None = None,
    on_message: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> CleanSummary:
    """Run (or continue) the cleaning described in the module docstring; returns the summary.
    `on_warning` gets each thing of SRC left out (a broken link, ...), shown even where messages are not."""
    assert_output_folder(Path(options.out))
    with distributed.process_group(options.device) as d:
        return _clean(options, d, on_file, on_message, on_start, on_warning)


def _clean(options: CleanOptions, d: distributed.Dist, on_file, on_message, on_start, on_warning) -> CleanSummary:
    def message(text: str) -> None:
        if on_message is not None:
            on_message(text)

    clock = time.perf_counter()
    src, out = Path(options.src), Path(options.out)
    if not src.is_dir():
        raise UsageError(f"{src} is not a folder" if src.exists() else f"{src} does not exist", hint="pass the folder of the dataset to clean")
    # DST/<rel> for every file: a DST above SRC would write over the user's files beside SRC (and over SRC's
    # own files where a sub-folder repeats SRC's name), and a DST inside SRC would be read back by a rerun
    assert_apart(out, src, f"the dataset {src}", hint="write the cleaned copy to a folder that neither is, lies inside nor holds SRC")
    links: list[tuple[Path, str]] = []
    paths, problems = list_images([src], exclude=[out], links=links)  # never DST, also not through a link: a rerun would clean its own outputs
    if d.main and on_warning is not None:  # a broken link, a pipe, a folder that cannot be listed, a link up: left out, but not without a word
        for path, reason in links + ([] if not paths else problems):
            on_warning(f"skipped {path}: {reason}")
    if not paths:
        raise UsageError(f"{src} holds no images", hint="pass a folder of jpg, png, webp, tif or bmp images")
    present = {p.relative_to(src).as_posix() for p in paths}  # all of SRC, --limit or not: an output of none of them has no source
    if options.limit is not None:
        paths = paths[: options.limit]
    rels = [p.relative_to(src).as_posix() for p in paths]
    # the method and detector first: a mistyped option must fail before the settings are recorded,
    # or the folder would refuse the corrected rerun
    from facerestore.devices import resolve_device
    from facerestore.methods.registry import build_method

    device = str(d.device) if d.active else resolve_device(options.device)
    method = build_method(options.method, replace(options.method_options(), device=device))
    detector = None
    if options.detect:
        from facerestore.faces.detect import load_detector

        detector = load_detector(options.detector, device, None, options.offline)

    # one run at a time into out (training/out_lock), held by rank 0 for the whole run: the other ranks
    # write nothing before the barrier after check_settings, so a refused run's ranks write nothing at all
    limit = BatchLimit(options.batch_size, on_lower=on_warning)  # lowered for the whole run when a batch does not fit (out_of_memory)
    with output_lock(out, hold=d.main, on_message=message):
        return _clean_tree(options, d, paths, rels, present, method, detector, limit, clock, message, on_file, on_start)


def _clean_tree(options: CleanOptions, d: distributed.Dist, paths: list[Path], rels: list[str], present: set[str], method, detector, limit: BatchLimit,
                clock: float, message: Callable[[str], None], on_file, on_start) -> CleanSummary:
    """The checked run of `_clean`, under out's lock: settings, manifests, cleanup, the files, the summary.
    `present`: the relative path of every image SRC holds now (before --limit)."""
    out = Path(options.out)
    state = out / STATE_DIR
    settings, recorded = _settings(options, method), read_settings(state)
    check_settings(state, _as_recorded(settings, recorded, out), d.main, "a cleaning run")
    if d.main and recorded is not None and any(k not in recorded for k in RESOLVED_KEYS):
        write_settings(state, recorded | {k: settings[k] for k in RESOLVED_KEYS if k not in recorded})  # an older tree: checked from now on
    distributed.barrier(d)
    state.mkdir(parents=True, exist_ok=True)

    entries = _read_manifests(state)
    run = _next_run(entries)
    distributed.barrier(d)  # every rank has read the manifests (and so numbered this run alike) before any writes to them
    # listed as done AND still there: an output deleted since (by hand, or a tree copied without it) is redone
    done_before = {p for p, e in entries.items() if _is_done(e) and (out / p).is_file()}
    mine = [i for i in range(len(rels)) if i % d.world == d.rank]
    stats = {i: source_stat(paths[i]) for i in mine}
    changed = [i for i in mine if rels[i] in done_before and source_changed(entries[rels[i]], paths[i], stats[i])]
    for i in changed:  # stale: a redo that fails leaves no output of the old image
        try:
            (out / rels[i]).unlink(missing_ok=True)
        except OSError as exc:
            raise FaceRestoreError(f"cannot remove {out / rels[i]} ({exc.strerror or exc})", hint="check the permissions of --out") from None
    done_before -= {rels[i] for i in changed}
    todo = [i for i in mine if rels[i] not in done_before]
    skipped_here = len(mine) - len(todo)
    removed = remove_stale_temps(out / rels[i] for i in todo)
    if removed:
        message(f"removed {counted(removed, 'unfinished temporary file')} of an earlier run")

    if on_start is not None:
        on_start(len(todo))
    inputs = InputPaths(paths)  # indexed once: every output is looked up, not compared with every input
    manifest = open_manifest(state / f"done-rank{d.rank}.jsonl")
    done = failed = no_face = 0
    busy = 0.0
    failures: list[tuple[str, str]] = []
    sources: dict[str, dict] = {}  # rel -> what its entry keeps of its source, taken before the file is read

    def fingerprint(indices: list[int]) -> None:
        for i in indices:
            sources[rels[i]] = source_fingerprint(paths[i], stats[i])

    def record(result: FileResult) -> None:
        nonlocal done, failed, no_face, busy
        manifest.write(json.dumps({**result.to_json(), **sources.pop(result.path, {}), "run": run}) + "\n")
        manifest.flush()
        os.fsync(manifest.fileno())
        busy += result.seconds
        if result.status == "failed":
            failed += 1
            failures.append((result.path, result.error or ""))
        else:
            done += 1
            no_face += result.status == "no-face"
        if on_file is not None:
            on_file(result)

    try:
        if options.detect:
            for i in todo:
                fingerprint([i])
                record(_clean_photo(paths[i], rels[i], out, method, detector, limit, options, inputs))
        else:
            for start in range(0, len(todo), options.batch_size):
                chunk = todo[start : start + options.batch_size]
                fingerprint(chunk)
                for result in _clean_faces(paths, rels, chunk, out, method, limit, options, inputs):
                    record(result)
    finally:
        manifest.close()

    counts = distributed.total(d, [done, failed, no_face, busy, skipped_here, len(changed)])
    failures = sorted(tuple(f) for f in distributed.gather(d, failures))  # by path: the same list whatever the number of ranks
    distributed.barrier(d)
    entries = _read_manifests(state)
    wanted = set(rels)
    complete = sum(1 for p, e in entries.items() if p in wanted and _is_done(e) and (out / p).is_file())
    # outputs of sources deleted or moved since: never deleted (they are the user's files now), but said
    no_source = sorted(p for p, e in entries.items() if p not in present and _is_done(e) and (out / p).is_file())
    check = None
    if options.check:
        scores = [(read_json_number(e["psnr"]), p) for p, e in entries.items()
                  if p in wanted and e.get("status") == "ok" and "psnr" in e]  # a photo copied through (no face) is not a test
        if scores:
            finite = [min(s, 99.0) for s, _ in scores]
            worst = min(scores)
            check = {"mean_psnr": round(float(np.mean(finite)), 3), "worst_psnr": round(min(worst[0], 99.0), 3), "worst_path": worst[1],
                     "count": len(scores)}
    restored = int(counts[0]) + int(counts[1])
    return CleanSummary(
        total=len(rels), skipped=int(counts[4]), done=int(counts[0]), failed=int(counts[1]), no_face=int(counts[2]),
        seconds=time.perf_counter() - clock, seconds_per_image=counts[3] / restored if restored else 0.0,
        complete=complete, changed=int(counts[5]), check=check, failures=failures, no_source=no_source,
    )


def _clean_faces(paths: list[Path], rels: list[str], chunk: list[int], out: Path, method, limit: BatchLimit, options: CleanOptions,
                 inputs: InputPaths) -> list[FileResult]:
    """One batch of aligned faces; a file that fails is reported and the others go on."""
    results: list[FileResult] = []
    pictures: list[tuple[int, Picture, float]] = []
    for i in chunk:
        clock = time.perf_counter()
        try:
            picture = read_image(paths[i])
            check_aligned_crop(picture.height, picture.width, paths[i], hint="aligned crops are square (FFHQ alignment, e.g. 512x512); for a folder of photos use --detect")
            pictures.append((i, picture, time.perf_counter() - clock))
        except FaceRestoreError as exc:
            results.append(FileResult(rels[i], "failed", time.perf_counter() - clock, error=exc.one_line()))
    if not pictures:
        return results
    clock = time.perf_counter()
    try:
        faces = [(resize(p.rgb, FACE, FACE), file_seed(options.seed, rels[i])) for i, p, _ in pictures]
        restored = limit.run(faces, lambda part: _restore_faces(method, [crop for crop, _ in part], [seed for _, seed in part]))
    except FaceRestoreError as exc:
        per = (time.perf_counter() - clock) / len(pictures)
        return results + [FileResult(rels[i], "failed", per + t, error=exc.one_line_for(paths[i])) for i, _, t in pictures]
    per_face = (time.perf_counter() - clock) / len(pictures)
    for (i, picture, read_time), face in zip(pictures, restored):
        clock = time.perf_counter()
        rgb = resize(face, picture.width, picture.height)
        try:
            _write(out / rels[i], rgb, picture, inputs, options.jpeg_quality)
        except FaceRestoreError as exc:
            results.append(FileResult(rels[i], "failed", read_time + per_face + time.perf_counter() - clock, error=exc.one_line()))
            continue
        score = _psnr(rgb, picture.rgb) if options.check else None
        results.append(FileResult(rels[i], "ok", read_time + per_face + time.perf_counter() - clock, psnr=score,
                                  warnings=picture.notes("restored")))
    return results


def _clean_photo(path: Path, rel: str, out: Path, method, detector, limit: BatchLimit, options: CleanOptions, inputs: InputPaths) -> FileResult:
    from facerestore.pipeline import RestoreOptions, Tools, restore_picture

    clock = time.perf_counter()
    try:
        picture = read_image(path)
        tools = Tools(method=method, detector=detector, batch_limit=limit)
        restore_options = RestoreOptions(output=out, upscale=1.0, aligned=False, batch_size=options.batch_size, seed=file_seed(options.seed, rel), save_faces=False)
        photo, faces, _ = restore_picture(picture, tools, restore_options)
        if faces:
            _write(out / rel, photo, picture, inputs, options.jpeg_quality)
        else:  # copied byte for byte: re-encoding a JPEG would degrade what there was nothing to restore in
            assert_not_input(out / rel, inputs, hint=OUT_ONLY_HINT)
            write_bytes(out / rel, path.read_bytes())
    except FaceRestoreError as exc:
        return FileResult(rel, "failed", time.perf_counter() - clock, error=exc.one_line_for(path))
    score = _psnr(from_samples(photo), picture.rgb) if options.check else None
    notes = picture.notes("restored") if faces else ()  # a photo copied through keeps all its frames and its profile
    return FileResult(rel, "ok" if faces else "no-face", time.perf_counter() - clock, psnr=score, warnings=notes)
