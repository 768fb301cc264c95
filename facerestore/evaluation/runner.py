"""Evaluation runs: make or read the inputs, restore them with every method, score every image.

    spec = resolve_spec(EvalSpec(methods=("baseline",), hq=Path("faces"), degradations=("mild", "severe")))
    result = Evaluator(spec, {"baseline": build_method("baseline", MethodOptions())}, staging).run()

Three kinds of image sets (`SetResult.kind`):

- "degraded" (--hq DIR --degrade PRESET): every reference x is degraded with the preset (seeded per
  image, `presets.degrade`), the input is saved under inputs/PRESET/, every method restores it, and
  every full-reference metric compares the input ("input" row) and each restoration with x.
- "real" (--lq DIR): real low-quality inputs without references; no-reference metrics (NIQE) per
  image, and FID of each set of outputs against --ref-set.
- "authenticity" (--authenticity, with --hq): the IDM paper's test (Zhao et al. 2023, sec. 3.1,
  eq. 2-3): an authentic restorer leaves a clean face alone, f(x) = x, and applying it again does not
  make things worse. Rows per method: f(x) vs x, f(f(x)) vs f(x), and f(f(x)) vs x.

Faces are aligned square crops at 512x512 (what every method restores); other square sizes are
resized to 512 (INTER_AREA when shrinking, INTER_CUBIC when enlarging) and the report says which;
a non-square image is not an aligned crop and fails with one line. An image that cannot be read
fails alone; a method that raises fails only its batch for that method; a metric that cannot run
is reported "unavailable" (or "failed") with its reason, never dropped and never faked. Everything
the run writes goes into `staging` (the report module publishes it as the report folder).
"""

from __future__ import annotations

import os
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facerestore.training.seeds import check_seed
from facerestore.errors import BadImage, FaceRestoreError, UsageError
from facerestore.evaluation import presets
from facerestore.faces.align import check_aligned_crop
from facerestore.image_io import BROKEN_LINK, IMAGE_EXTENSIONS, LINK_LOOP, list_images, read_image, resize, write_image
from facerestore.metrics import METRICS, MetricResult, compute, compute_all, metric_failure
from facerestore.metrics.fid import FEATURE_DIM as FID_FEATURES
from facerestore.out_of_memory import BatchLimit
from facerestore.plural import counted, verb
from facerestore.warning_lines import routed

FACE = 512
TILE = 256  # side of one image in the comparison grids
HQ_METRICS = ("psnr", "ssim", "lpips", "identity", "lmd")
LQ_METRICS = ("niqe",)
INPUT = "input"
COMPARISONS = ("f(x) vs x", "f(f(x)) vs f(x)", "f(f(x)) vs x")


# ------------------------------------------------------------------ what to run


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation: inputs, methods, metrics. `resolve_spec` checks it and fills the defaults."""

    methods: tuple[str, ...] = ()
    hq: Path | None = None  # references: inputs are synthesized from them
    lq: Path | None = None  # real low-quality inputs, no references
    degradations: tuple[str, ...] = ()  # presets for --hq; empty = medium (none with --authenticity)
    seed: int = 0
    ref_set: Path | None = None  # FID reference: a folder of images or an .npz of statistics
    metrics: tuple[str, ...] | None = None  # None = the mode's defaults
    limit: int | None = None
    authenticity: bool = False
    restored: tuple[tuple[str, Path], ...] = ()  # results of another tool: (row label, folder)
    batch_size: int = 8
    grid_images: int = 8  # images shown in the comparison grids of each set
    grid_rows: int = 4  # images per grid PNG
    device: str = "cpu"
    offline: bool | None = None
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ref_listing: RefListing | None = field(default=None, repr=False, compare=False)  # resolve_spec's walk of a --ref-set folder, which the run reuses

    @property
    def mode(self) -> str:
        return "hq" if self.hq is not None else "lq"


def split_list(values: Sequence[str] | None) -> tuple[str, ...]:
    """Repeated options and comma-separated lists alike: ("a,b", "c") -> ("a", "b", "c")."""
    return tuple(v.strip() for value in values or () for v in str(value).split(",") if v.strip())


def resolve_spec(spec: EvalSpec) -> EvalSpec:
    """Check option combinations (UsageError, exit 2) and fill the defaults of the mode."""
    if spec.hq is not None and spec.lq is not None:
        raise UsageError("--hq and --lq cannot be combined", hint="--hq DIR synthesizes degraded inputs from clean references; --lq DIR scores real inputs without references")
    if spec.hq is None and spec.lq is None:
        raise UsageError("nothing to evaluate", hint="pass --hq DIR (clean aligned faces to degrade) or --lq DIR (real low-quality aligned faces)")
    methods = split_list(spec.methods)
    if not methods and not spec.restored:
        raise UsageError("no --method given", hint="pass --method NAME (repeat it to compare methods; `facerestore methods` lists them)")
    for name, count in Counter(methods).items():
        if count > 1:
            raise UsageError(f"--method {name} is given twice")
    labels = list(methods)
    for label, folder in spec.restored:
        if not label or label in labels or label == INPUT:
            raise UsageError(f"--restored {label}={folder}: the label {label!r} is empty, reserved or already used", hint="give each results folder its own label: --restored LABEL=DIR")
        if not Path(folder).is_dir():
            what = "is a file, not a folder" if Path(folder).exists() else "does not exist"
            raise UsageError(f"--restored {label}={folder}: {folder} {what}",
                             hint="pass --restored LABEL=DIR, DIR the folder of that tool's restored faces (e.g. its restored_faces/), named as the inputs")
        labels.append(label)
    degradations = tuple(presets.check_preset(p) for p in split_list(spec.degradations))
    if len(set(degradations)) != len(degradations):
        raise UsageError("a --degrade preset is given twice")
    if spec.lq is not None:
        if degradations:
            raise UsageError("--degrade needs --hq", hint="--lq inputs are already degraded; pass --hq DIR to synthesize inputs from references")
        if spec.authenticity:
            raise UsageError("--authenticity needs --hq", hint="the test restores clean references: pass --hq DIR")
    elif not degradations and not spec.authenticity:
        degradations = (presets.DEFAULT_PRESET,)
    if spec.authenticity and not methods:
        raise UsageError("--authenticity needs a --method", hint="results folders (--restored) cannot be re-run on clean references")
    if spec.restored and spec.hq is not None and not degradations:
        raise UsageError("--restored results are scored against degraded inputs, but no --degrade preset is evaluated", hint="add --degrade PRESET (the preset the results were made from)")
    if spec.limit is not None and spec.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {spec.limit}")
    check_seed(spec.seed)
    if spec.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {spec.batch_size}")
    if spec.grid_images < 0 or spec.grid_rows < 1:
        raise UsageError(f"--grid-images must be 0 or more, got {spec.grid_images}")
    listing = None
    if spec.ref_set is not None:
        listing = check_ref_set(Path(spec.ref_set), feature_dim=None if spec.metric_options.get("fid", {}).get("extractor") else FID_FEATURES)
    metrics = _metrics(spec)
    return replace(spec, methods=methods, degradations=degradations, metrics=metrics, ref_listing=listing)


@dataclass(frozen=True)
class RefListing:
    """The one walk of a --ref-set folder (a folder of 70 000 FFHQ faces is what users pass): the images
    FID reads, and what the walk passed over with why (folder links not followed, broken links,
    sub-folders that cannot be listed), for the run's warnings."""

    images: tuple[Path, ...]
    left_out: tuple[tuple[Path, str], ...] = ()


def list_ref_set(ref_set: Path) -> RefListing:
    """Walk a --ref-set folder once (`image_io.list_images`, as FID would)."""
    links: list[tuple[Path, str]] = []
    found, problems = list_images([ref_set], links=links)
    return RefListing(tuple(found), (*links, *((path, reason) for path, reason in problems if path != ref_set)))


def check_ref_set(ref_set: Path, feature_dim: int | None = FID_FEATURES) -> RefListing | None:
    """Refuse a --ref-set FID cannot use (UsageError, exit 2) before any model loads: found only when
    FID runs, after the whole evaluation, it made the FID column 'failed' and the run exit 0.

    Cheap: a folder must hold at least 2 images (not decoded here); an .npz must open (no pickles) and
    hold `mu` [D] and `sigma` [D, D] of finite numbers, D = `feature_dim` (2048, the FID Inception's
    pool3) unless another feature extractor is used (None: any D). A folder's listing is returned, so
    the run reads the images this walk found instead of walking it again (None for an .npz).
    """
    hint = "pass a folder of at least 2 high-quality aligned faces, or an .npz of FID statistics (mu [2048], sigma [2048, 2048]) as pytorch-fid saves them"
    if not ref_set.exists():
        raise UsageError(f"--ref-set {ref_set} does not exist", hint=hint)
    if not os.access(ref_set, os.R_OK | (os.X_OK if ref_set.is_dir() else 0)):
        raise UsageError(f"--ref-set {ref_set} cannot be read (permission denied)", hint="make it readable (chmod a+r), or copy it somewhere of yours and pass the copy")
    if ref_set.is_dir():
        listing = list_ref_set(ref_set)
        if len(listing.images) < 2:
            raise UsageError(f"--ref-set {ref_set} holds {counted(len(listing.images), 'image')}; FID needs at least 2", hint=hint)
        return listing
    if not ref_set.name.lower().endswith(".npz"):
        raise UsageError(f"--ref-set {ref_set} is neither a folder of images nor an .npz of FID statistics", hint=hint)
    kind = _npz_kind(ref_set)
    if kind:
        raise UsageError(f"--ref-set {ref_set} is not an .npz archive ({kind})", hint=hint)
    try:
        data = np.load(ref_set, allow_pickle=False)
        with data:
            missing = [key for key in ("mu", "sigma") if key not in data.files]
            if missing:
                raise UsageError(f"--ref-set {ref_set} has no {' or '.join(missing)} (it holds: {', '.join(data.files) or 'nothing'})", hint=hint)
            mu, sigma = data["mu"], data["sigma"]
    except ValueError as exc:  # numpy's words would suggest allow_pickle=True, which runs the file's code
        why = "it holds pickled (object) arrays, which are never loaded" if "pickle" in str(exc) else str(exc)
        raise UsageError(f"--ref-set {ref_set} is not a readable .npz ({why})", hint=hint) from None
    except (EOFError, zipfile.BadZipFile):
        raise UsageError(f"--ref-set {ref_set} is not a readable .npz (a zip archive cut short or damaged)", hint=hint) from None
    except OSError as exc:
        raise UsageError(f"--ref-set {ref_set} is not a readable .npz ({exc})", hint=hint) from None
    dim = feature_dim if feature_dim is not None else (len(mu) if mu.ndim == 1 else -1)
    if mu.ndim != 1 or len(mu) != dim or sigma.shape != (dim, dim):
        want = f"mu [{dim}] and sigma [{dim}, {dim}]" if dim > 0 else "mu [D] and sigma [D, D]"
        raise UsageError(f"--ref-set {ref_set}: mu has shape {list(mu.shape)} and sigma {list(sigma.shape)}; FID needs {want}", hint=hint)
    if not (np.issubdtype(mu.dtype, np.number) and np.issubdtype(sigma.dtype, np.number)) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UsageError(f"--ref-set {ref_set}: mu and sigma must be finite numbers", hint=hint)
    return None


def _npz_kind(path: Path) -> str:
    """Why `path` is no .npz by its first bytes ('' when it starts as a zip archive, as an .npz does):
    numpy would read anything else as a pickle and answer with advice to load it unsafely."""
    try:
        with path.open("rb") as handle:
            head = handle.read(6)
    except OSError:
        return ""  # np.load says what is wrong with reading it
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return ""
    if head.startswith(b"\x93NUMPY"):
        return "it is an .npy: one array, not an archive of named arrays"
    return "it is no zip file" if head else "it is empty"


def _metrics(spec: EvalSpec) -> tuple[str, ...]:
    if spec.metrics is None:
        chosen = list(HQ_METRICS if spec.hq is not None else LQ_METRICS)
        if spec.ref_set is not None:
            chosen.append("fid")
        return tuple(chosen)
    chosen = list(dict.fromkeys(split_list(spec.metrics)))
    if not chosen:
        raise UsageError("--metrics is empty", hint=f"choose from: {', '.join(METRICS)}")
    for name in chosen:
        if name not in METRICS:
            raise UsageError(f"unknown metric {name!r}", hint=f"choose from: {', '.join(METRICS)}")
    if spec.lq is not None:
        full = [n for n in chosen if METRICS[n].needs_reference and not METRICS[n].on_sets]
        if full:
            raise UsageError(f"{', '.join(full)} {verb(len(full), 'needs', 'need')} references, which --lq inputs do not have", hint="use no-reference metrics (niqe, fid with --ref-set), or --hq DIR to synthesize inputs from references")
        if "fid" in chosen and spec.ref_set is None:
            raise UsageError("fid on --lq inputs needs --ref-set DIR (a folder of high-quality faces or an .npz of statistics)")
    if spec.ref_set is not None and "fid" not in chosen:
        chosen.append("fid")  # --ref-set is only for FID: asking for it asks for FID
    return tuple(chosen)


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class InputItem:
    """One input file; `key` (its path under the input folder, no extension) names all its outputs."""

    key: str
    path: Path
    problem: str = ""  # why it cannot be read, found while listing (a broken link): it fails in every set as an unreadable file does


def list_inputs(source: Path, limit: int | None = None, *, option: str = "--hq",
                links: list[tuple[Path, str]] | None = None) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """Image files of a folder (recursive, sorted) or one file -> (items, [(path, reason)] failures).

    An empty folder or a missing path is a UsageError. A link to a missing file is an item with its
    problem: it fails alone in each set, as an unreadable image does (and counts as one of the --limit
    first images); two files with the same key (face.jpg and face.png) cannot both be evaluated: the
    second is returned as a failure outside any set. Folder links not followed (image_io._walk) go
    to `links`.
    """
    source = Path(source)
    paths, problems = list_images([source], links=links)
    hint = "pass a folder of aligned face crops (jpg, png, webp, tif, bmp)"
    broken = [(path, reason) for path, reason in problems if path != source]  # links and sub-folders that cannot be listed, inside the folder
    if not paths:
        if broken:
            links = sum(reason in (BROKEN_LINK, LINK_LOOP) for _, reason in broken)
            what = " and ".join(counted(n, noun) for n, noun in ((links, "broken link"), (len(broken) - links, "unreadable folder")) if n)
            raise UsageError(f"{option} {source}: no image to evaluate, only {what} (first: {broken[0][0]})", hint=hint)
        raise UsageError(f"{option} {source}: {problems[0][1] if problems else 'no images'}", hint=hint)

    def relative(path: Path) -> Path:
        return path.relative_to(source) if source.is_dir() else Path(path.name)

    entries: list[tuple[str, Path, str]] = []  # (key, path, why it fails: "" for an image to evaluate), in order
    duplicates: list[tuple[str, str, str]] = []  # (key, path, reason)
    seen: dict[str, Path] = {}
    for path, reason in sorted([(p, "") for p in paths] + broken, key=lambda entry: relative(entry[0]).parts):
        key = relative(path).with_suffix("").as_posix()
        if reason:
            entries.append((key, path, reason))
        elif key in seen:
            duplicates.append((key, str(path), f"skipped: {seen[key].name} has the same name; outputs are named after the file name without extension"))
        else:
            seen[key] = path
            entries.append((key, path, ""))
    kept = entries[:limit] if limit else entries
    keys = {key for key, _, reason in kept if not reason}  # a duplicate of an image --limit leaves out is no failure of this run
    return [InputItem(key, path, reason) for key, path, reason in kept], [(path, reason) for key, path, reason in duplicates if key in keys]


def to_face_size(rgb: np.ndarray, path: Path | str) -> tuple[np.ndarray, str]:
    """A square crop at 512x512 (resized when needed) and the note that says so ("" if unchanged)."""
    height, width = rgb.shape[:2]
    check_aligned_crop(height, width, path, hint="evaluate aligned 512x512 crops (e.g. the cropped_faces/ of `facerestore PHOTO`)")
    if (height, width) == (FACE, FACE):
        return rgb, ""
    shrink = height * width > FACE * FACE
    return resize(rgb, FACE, FACE), f"resized from {width}x{height} to {FACE}x{FACE} ({'area' if shrink else 'cubic'})"


def load_face(path: Path) -> tuple[np.ndarray, str]:
    """Read an aligned face crop as float32 RGB 512x512x3 in [0, 1] (BadImage: one line)."""
    picture = read_image(path)
    return to_face_size(picture.rgb, path)


def restored_folder(folder: Path, set_name: str, several_sets: bool) -> Path:
    """Where another tool's results for one set are looked for: FOLDER[/SET][/restored_faces]."""
    base = folder / set_name if several_sets or (folder / set_name).is_dir() else folder
    return base / "restored_faces" if (base / "restored_faces").is_dir() else base


def find_restored(folder: Path, set_name: str, key: str, several_sets: bool) -> Path | None:
    """The file of another tool's results for this input: FOLDER[/SET][/restored_faces]/KEY.<image ext>."""
    base = restored_folder(folder, set_name, several_sets)
    for ext in IMAGE_EXTENSIONS:
        for candidate in (base / f"{key}{ext}", base / f"{key}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def check_inputs(spec: EvalSpec, links: list[tuple[Path, str]] | None = None) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """The inputs of a resolved spec, and the usage mistakes found without reading any pixel: an
    empty folder, a --restored folder none of whose files is named after an input (exit 2)."""
    hq = spec.hq is not None
    items, failures = list_inputs(Path(spec.hq if hq else spec.lq), spec.limit, option="--hq" if hq else "--lq", links=links)
    sets = spec.degradations or ("real",)
    several = len(spec.degradations) > 1
    for label, folder in spec.restored:
        folder = Path(folder)
        if any(find_restored(folder, s, item.key, several) for s in sets for item in items):
            continue
        found, _ = list_images([folder])
        example = f"e.g. {found[0].relative_to(folder).as_posix()} vs the input {items[0].key}" if found and items else "it holds no images"
        layout = f"{folder}/<{'|'.join(sets)}>/NAME.png" if several else f"{folder}/NAME.png"
        raise UsageError(f"--restored {label}={folder}: no file is named after an input ({example})", hint=f"expected {layout} with NAME the input's name without extension")
    return items, failures


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class RowSpec:
    """One row of a set's table: the degraded input, a method, another tool's results, or an
    authenticity comparison of a method."""

    label: str
    kind: str  # input | method | restored | authenticity
    method: str | None = None
    comparison: str = ""


@dataclass
class ImageRecord:
    """Everything measured on one image of one set."""

    key: str
    source: str
    status: str = "ok"  # ok | failed (unreadable, not a square crop, duplicate name)
    error: str = ""
    notes: list[str] = field(default_factory=list)
    params: dict | None = None  # eq. 11 parameters of its degraded input
    scores: dict[str, dict[str, MetricResult]] = field(default_factory=dict)  # row label -> metric -> result
    row_errors: dict[str, str] = field(default_factory=dict)  # row label -> why this row has no image
    files: dict[str, str] = field(default_factory=dict)  # row label -> image path in the report


@dataclass(frozen=True)
class Summary:
    """A row's metric over the images of a set: mean and std of the images where it ran."""

    mean: float | None
    std: float | None
    count: int  # images with a value
    total: int  # images of the row (failed images excluded)
    status: str  # ok | partial | unavailable | failed | none
    reasons: tuple[tuple[str, int], ...] = ()  # (reason, images) for the images without a value

    @property
    def reason(self) -> str:
        return self.reasons[0][0] if self.reasons else ""


def summarize(results: Sequence[MetricResult]) -> Summary:
    values = [r.value for r in results if r.ok and r.value is not None]
    missing = [r for r in results if not (r.ok and r.value is not None)]
    reasons = tuple(Counter(r.reason or r.status for r in missing).most_common())
    if not results:
        return Summary(None, None, 0, 0, "none")
    if not values:
        status = Counter(r.status for r in missing).most_common(1)[0][0]
        return Summary(None, None, 0, len(results), status, reasons)
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    std = None
    if len(array) > 1 and np.isfinite(array).all():
        std = float(array.std(ddof=1))
    return Summary(mean, std, len(values), len(results), "ok" if not missing else "partial", reasons)


@dataclass
class SetResult:
    """One table of the report: a degradation preset, the real inputs, or the authenticity test."""

    name: str
    kind: str  # degraded | real | authenticity
    description: str
    rows: list[RowSpec]
    metrics: list[str]  # per-image metrics of this set
    params: dict | None = None
    images: list[ImageRecord] = field(default_factory=list)
    set_scores: dict[str, dict[str, MetricResult]] = field(default_factory=dict)  # row -> set metric (fid) -> result
    restore_seconds: dict[str, float] = field(default_factory=dict)  # method -> seconds spent in restore
    restore_faces: dict[str, int] = field(default_factory=dict)  # method -> faces restored
    grid_columns: list[str] = field(default_factory=list)
    grid_tiles: list[tuple[str, list[np.ndarray]]] = field(default_factory=list)  # (key, uint8 TILE tiles)
    grids: list[str] = field(default_factory=list)  # PNGs written by the report (relative paths)

    def summary(self, row: str, metric: str) -> Summary:
        """Over the images that loaded: a row without an image for some of them (its method failed,
        another tool's file is missing) counts those as failed, with the reason."""
        results = []
        for image in self.images:
            if image.status != "ok":
                continue
            if metric in image.scores.get(row, {}):
                results.append(image.scores[row][metric])
            elif row in image.row_errors:
                results.append(MetricResult(metric, None, "failed", image.row_errors[row]))
        return summarize(results)

    def seconds_per_face(self, method: str | None) -> float | None:
        if method is None or not self.restore_faces.get(method):
            return None
        return self.restore_seconds[method] / self.restore_faces[method]

    def failures(self) -> list[tuple[str, str]]:
        """(what, why) for every failed image and every row an image lacks."""
        out = [(image.source, image.error) for image in self.images if image.status == "failed"]
        for image in self.images:
            out.extend((f"{self.name}/{image.key} [{row}]", reason) for row, reason in image.row_errors.items())
        return out


@dataclass
class EvalResult:
    spec: EvalSpec
    sets: list[SetResult]
    methods: dict[str, dict[str, Any]]  # label -> what it is (summary, paper, license, options: the method options that ran)
    notes: list[str]
    failures: list[tuple[str, str]]  # problems outside any set (duplicate names)
    started: float
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # every "warning: ..." line said during the run, the lower layers' included (`warning_lines`)

    def all_failures(self) -> list[tuple[str, str]]:
        seen: dict[tuple[str, str], None] = dict.fromkeys(self.failures)
        for s in self.sets:
            seen.update(dict.fromkeys(s.failures()))
        return list(seen)


# ------------------------------------------------------------------ the run


def _tile(image: np.ndarray) -> np.ndarray:
    small = cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA) if image.shape[0] != TILE else image
    return np.round(np.clip(small, 0.0, 1.0) * 255.0).astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, FaceRestoreError):
        return exc.one_line()
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class Evaluator:
    """Runs a resolved EvalSpec with built methods, writing images under `staging`.

    `on_total(n)` is called once with the number of image steps (images x sets), `on_progress(n)`
    after each batch of each set; `on_message(line)` with warnings (a metric unavailable, an image
    or a method failing, a lower layer's `warning_lines.warn`), each said once. `restore` replaces `pipeline.restore_crops` (tests).
    """

    def __init__(
        self,
        spec: EvalSpec,
        methods: Mapping[str, Any],
        staging: Path,
        *,
        on_progress: Callable[[int], None] | None = None,
        on_message: Callable[[str], None] | None = None,
        on_total: Callable[[int], None] | None = None,
        restore: Callable[..., list[np.ndarray]] | None = None,
        debug: bool = False,
    ) -> None:
        from facerestore.pipeline import restore_crops

        self.spec = spec
        self.methods = dict(methods)
        self.staging = Path(staging)
        self.on_progress = on_progress or (lambda n: None)
        self.on_message = on_message or (lambda line: None)
        self.on_total = on_total or (lambda n: None)
        self.restore_crops = restore or restore_crops
        self.batch_limit = BatchLimit(spec.batch_size, on_lower=lambda text: self.tell(f"oom:{text}", f"warning: {text}"))  # shared by the methods and sets
        self.debug = debug  # a method's exception propagates (with its traceback) instead of failing its rows
        self.told: set[str] = set()
        self.warnings: list[str] = []
        self.resized: dict[str, str] = {}
        self.ref_images: list[Path] | None = None  # the images of a --ref-set folder, from its one walk
        self.references: dict[tuple[str, ...], Any] = {}  # FID reference -> its statistics (or why there are none), computed once
        self.external = dict(spec.restored)
        self.options = self._metric_options()
        image_metrics = [m for m in spec.metrics or () if not METRICS[m].on_sets]
        self.set_metrics = [m for m in spec.metrics or () if METRICS[m].on_sets]
        self.image_metrics = image_metrics
        self.pair_metrics = [m for m in image_metrics if METRICS[m].needs_reference]

    def _metric_options(self) -> dict[str, dict[str, Any]]:
        options: dict[str, dict[str, Any]] = {}
        for name in ("lpips", "fid"):
            options[name] = {"device": self.spec.device, "offline": self.spec.offline}
        for name in ("identity", "identity_deg"):
            options[name] = {"offline": self.spec.offline}
        for name, extra in self.spec.metric_options.items():
            options.setdefault(name, {}).update(extra)
        return options

    def tell(self, key: str, line: str) -> None:
        if key not in self.told:
            self.told.add(key)
            if line.startswith("warning: "):  # the report lists them; errors are its failures already
                self.warnings.append(line)
            self.on_message(line)

    # -------------------------------------------------------------- entry point

    def run(self) -> EvalResult:
        """The whole evaluation; the lower layers' warning lines (a damaged weights copy passed over
        while a metric loads its net) are said through `on_message` and kept in the result, as its own."""
        with routed(lambda line: self.tell(f"said:{line}", line)):
            return self._run()

    def _run(self) -> EvalResult:
        started = time.time()
        spec = self.spec
        links: list[tuple[Path, str]] = []
        items, failures = check_inputs(spec, links)
        for path, reason in links:  # not followed, and not a failure of any image
            self.tell(f"link:{path}", f"warning: skipped {path}: {reason}")
        if spec.ref_set is not None and Path(spec.ref_set).is_dir():  # FID reads what the walk finds: say what it leaves out
            listing = spec.ref_listing or list_ref_set(Path(spec.ref_set))  # resolve_spec walked it already
            self.ref_images = list(listing.images)
            for path, reason in listing.left_out:
                self.tell(f"ref:{path}", f"warning: --ref-set: skipped {path}: {reason}")
        for path, reason in failures:
            self.tell(f"dup:{path}", f"error: {path}: {reason}")
        count = len(spec.degradations) + int(spec.authenticity) if spec.hq is not None else 1
        self.on_total(len(items) * count)
        sets: list[SetResult] = []
        if spec.hq is not None:
            for preset in spec.degradations:
                sets.append(self._degraded_set(preset, items))
            if spec.authenticity:
                sets.append(self._authenticity_set(items))
        else:
            sets.append(self._real_set(items))
        notes = [f"{counted(len(links), 'folder link')} not followed, as {verb(len(links), 'it links', 'they link')} "
                 f"to a folder that holds the input folder: {', '.join(str(p) for p, _ in links)}"] if links else []
        if self.resized:
            shown = ", ".join(f"{k} ({v})" for k, v in list(self.resized.items())[:5])
            more = f" and {len(self.resized) - 5} more" if len(self.resized) > 5 else ""
            notes.append(f"{len(self.resized)} of {counted(len(items), 'image')} {verb(len(self.resized), 'was', 'were')} not {FACE}x{FACE} and {verb(len(self.resized), 'was', 'were')} resized to it before evaluation (INTER_AREA when shrinking, INTER_CUBIC when enlarging): {shown}{more}")
        if self.external:
            notes.append("rows from --restored folders are another tool's results read from disk; they were not produced here, and are not in the authenticity test")
        result = EvalResult(spec, sets, self._describe_methods(), notes, failures, started, warnings=self.warnings)
        result.seconds = time.time() - started
        return result

    def _describe_methods(self) -> dict[str, dict[str, Any]]:
        described: dict[str, dict[str, Any]] = {}
        from facerestore.methods.base import precision_name, run_options, run_summary

        for name, method in self.methods.items():
            info = getattr(method, "info", None)
            described[name] = {
                "kind": "method",
                "summary": run_summary(method),  # with the numbers this run used, not the defaults
                "paper": getattr(info, "paper", ""),
                "license": getattr(info, "license", ""),
                "options": run_options(method) | {"precision": precision_name(method)},  # what ran, defaults filled in
            }
        for label, folder in self.external.items():
            described[label] = {"kind": "restored", "summary": f"results read from {folder}", "paper": "", "license": ""}
        return described

    # -------------------------------------------------------------- scoring

    def _score(self, image: np.ndarray, reference: np.ndarray | None, names: Sequence[str], where: str) -> dict[str, MetricResult]:
        scores = compute_all(image, reference, names=names, options=self.options) if names else {}
        for name, result in scores.items():
            if not result.ok:
                self.tell(f"metric:{name}:{result.status}", f"warning: {name} {result.status} ({where}): {result.reason}")
        return scores

    def _restore(self, label: str, crops: list[np.ndarray], result: SetResult, records: list[ImageRecord], row: str, seed: int) -> list[np.ndarray] | None:
        """Restore a batch with one method; on failure every image of the batch records why."""
        method = self.methods[label]
        start = time.perf_counter()
        try:
            out = self.restore_crops(method, crops, batch_size=self.spec.batch_size, seed=seed, limit=self.batch_limit)
        except Exception as exc:  # noqa: BLE001 - one method failing on one batch fails only that
            if self.debug:
                raise
            reason = f"{label} failed: {_one_line(exc)}"
            for record in records:
                record.row_errors[row] = reason
            self.tell(f"restore:{label}:{reason}", f"error: {reason}")
            return None
        result.restore_seconds[label] = result.restore_seconds.get(label, 0.0) + time.perf_counter() - start
        result.restore_faces[label] = result.restore_faces.get(label, 0) + len(crops)
        return [np.asarray(o, dtype=np.float32) for o in out]

    def _save(self, relative: str, image: np.ndarray) -> str:
        write_image(self.staging / relative, image)
        return relative

    def _load(self, item: InputItem, record: ImageRecord) -> np.ndarray | None:
        try:
            if item.problem:
                raise BadImage(f"{item.path}: {item.problem}")
            image, note = load_face(item.path)
        except FaceRestoreError as exc:
            record.status, record.error = "failed", exc.one_line()
            self.tell(f"load:{item.path}", f"error: {record.error}")
            return None
        if note:
            record.notes.append(note)
            self.resized[item.key] = note.split(" to ")[0].replace("resized from ", "")
        return image

    def _chunks(self, items: list[InputItem]) -> list[tuple[int, list[InputItem]]]:
        size = self.spec.batch_size
        return [(i // size, items[i : i + size]) for i in range(0, len(items), size)]

    def _external_image(self, label: str, set_name: str, key: str, record: ImageRecord) -> np.ndarray | None:
        """Another tool's result for this input (its path goes to `record.files`), or None with the reason,
        said on the message line as an unreadable input is (--json keeps it off stdout, not unsaid)."""
        folder = Path(self.external[label])
        path = find_restored(folder, set_name, key, len(self.spec.degradations) > 1)
        if path is None:
            searched = restored_folder(folder, set_name, len(self.spec.degradations) > 1)
            return self._external_failed(label, record, f"{label}: no restored image named {key}.<ext> in {searched}")
        record.files[label] = str(path.resolve())
        try:
            image = read_image(path).rgb
        except FaceRestoreError as exc:
            return self._external_failed(label, record, f"{label}: {exc.one_line()}")
        if image.shape[:2] != (FACE, FACE):
            return self._external_failed(label, record, (
                f"{label}: {path} is {image.shape[1]}x{image.shape[0]} but the input and reference are {FACE}x{FACE}; "
                "restore the 512 crops (the report's inputs/ folder) or resize the results to 512"
            ))
        return image

    def _external_failed(self, label: str, record: ImageRecord, reason: str) -> None:
        record.row_errors[label] = reason
        self.tell(f"restored:{reason}", f"error: {reason}")
        return None

    def _grid_add(self, result: SetResult, key: str, tiles: list[np.ndarray | None]) -> None:
        if len(result.grid_tiles) < self.spec.grid_images and all(t is not None for t in tiles):
            result.grid_tiles.append((key, [_tile(t) for t in tiles]))  # type: ignore[arg-type]

    def _fid_reference(self, references: list[str]) -> Any:
        """The FID reference of a set: --ref-set (the images its one walk found, or its .npz), else the
        set's own references (`references`)."""
        if self.spec.ref_set is None:
            return references
        return self.ref_images if self.ref_images is not None else self.spec.ref_set

    def _reference_statistics(self, metric: str, reference: Any) -> Any:
        """`reference` as FID statistics, computed once per run and shared by every row and set (each
        row read all 70 000 images of an FFHQ --ref-set again), or the MetricResult saying why it
        cannot be; another set metric gets `reference` as it is."""
        if metric != "fid":
            return reference
        key = tuple(map(str, reference)) if isinstance(reference, list) else (str(reference),)
        if key not in self.references:
            from facerestore.metrics.fid import reference_statistics

            start = time.perf_counter()
            try:
                self.references[key] = reference_statistics(reference, **self.options.get(metric, {}))
            except Exception as exc:  # noqa: BLE001 - as compute() would report it, for every row
                self.references[key] = metric_failure(metric, exc, time.perf_counter() - start)
        return self.references[key]

    def _set_fid(self, result: SetResult, sets: Mapping[str, list[str]], reference: Any) -> None:
        for metric in self.set_metrics:
            prepared = self._reference_statistics(metric, reference)
            for row, files in sets.items():
                paths = [self.staging / f if not Path(f).is_absolute() else Path(f) for f in files]
                score = prepared if isinstance(prepared, MetricResult) else compute(metric, paths, prepared, **self.options.get(metric, {}))
                if not score.ok:
                    self.tell(f"metric:{metric}:{score.status}", f"warning: {metric} {score.status} ({result.name}, {row}): {score.reason}")
                result.set_scores.setdefault(row, {})[metric] = score

    # -------------------------------------------------------------- the three kinds of sets

    def _rows(self, set_name: str) -> list[RowSpec]:
        rows = [RowSpec(INPUT, "input")]
        rows += [RowSpec(name, "method", method=name) for name in self.methods]
        rows += [RowSpec(label, "restored") for label in self.external]
        return rows

    def _outputs(self, set_name: str, inputs: list[np.ndarray], records: list[ImageRecord], result: SetResult,
                 seed: int) -> dict[str, list[np.ndarray | None]]:
        """Each method's restorations of one chunk and each external folder's images (None where missing)."""
        outputs: dict[str, list[np.ndarray | None]] = {}
        for name in self.methods:
            restored = self._restore(name, inputs, result, records, name, seed) if inputs else []
            outputs[name] = list(restored) if restored is not None else [None] * len(inputs)
        for label in self.external:
            outputs[label] = [self._external_image(label, set_name, r.key, r) for r in records]
        return outputs

    def _keep_outputs(self, record: ImageRecord, outputs: dict[str, list[np.ndarray | None]], i: int,
                      reference: np.ndarray | None, fid_sets: dict[str, list[str]], *, folder: str, where: str) -> None:
        """Save the methods' restorations of image i (under restored/LABEL/FOLDER), score every output."""
        for label, images in outputs.items():
            image = images[i]
            if image is None:
                continue
            if label in self.methods:
                record.files[label] = self._save(f"restored/{label}/{folder}{record.key}.png", image)
            fid_sets[label].append(record.files[label])
            record.scores[label] = self._score(image, reference, self.image_metrics, f"{where}{label} {record.key}")

    def _degraded_set(self, preset: str, items: list[InputItem]) -> SetResult:
        spec = self.spec
        result = SetResult(preset, "degraded", presets.describe(preset), self._rows(preset), list(self.image_metrics), params=presets.preset_params(preset))
        result.grid_columns = ["input", *self.methods, *self.external, "reference"]
        fid_sets: dict[str, list[str]] = {row.label: [] for row in result.rows}
        references: list[str] = []
        for index, chunk in self._chunks(items):
            loaded: list[tuple[ImageRecord, np.ndarray, np.ndarray]] = []
            for item in chunk:
                record = ImageRecord(item.key, str(item.path))
                result.images.append(record)
                reference = self._load(item, record)
                if reference is None:
                    continue
                degraded, params = presets.degrade(reference, preset, seed=spec.seed, key=item.key)
                record.params = params.to_dict()
                record.files[INPUT] = self._save(f"inputs/{preset}/{item.key}.png", degraded)
                record.scores[INPUT] = self._score(degraded, reference, self.image_metrics, f"{preset}, input {item.key}")
                fid_sets[INPUT].append(record.files[INPUT])
                references.append(str(item.path))
                loaded.append((record, reference, degraded))
            records = [r for r, _, _ in loaded]
            outputs = self._outputs(preset, [d for _, _, d in loaded], records, result, spec.seed + index)
            for i, (record, reference, degraded) in enumerate(loaded):
                self._keep_outputs(record, outputs, i, reference, fid_sets, folder=f"{preset}/", where=f"{preset}, ")
                self._grid_add(result, record.key, [degraded, *(outputs[label][i] for label in outputs), reference])
            self.on_progress(len(chunk))
        if self.set_metrics:
            self._set_fid(result, fid_sets, self._fid_reference(references))
        return result

    def _real_set(self, items: list[InputItem]) -> SetResult:
        spec = self.spec
        name = "real"
        result = SetResult(name, "real", f"real low-quality inputs from {spec.lq} (no references)", self._rows(name), list(self.image_metrics))
        result.grid_columns = ["input", *self.methods, *self.external]
        fid_sets: dict[str, list[str]] = {row.label: [] for row in result.rows}
        for index, chunk in self._chunks(items):
            loaded: list[tuple[ImageRecord, np.ndarray]] = []
            for item in chunk:
                record = ImageRecord(item.key, str(item.path))
                result.images.append(record)
                image = self._load(item, record)
                if image is None:
                    continue
                record.files[INPUT] = str(Path(item.path).resolve())  # as --restored files: the report's own are relative to it
                record.scores[INPUT] = self._score(image, None, self.image_metrics, f"input {item.key}")
                fid_sets[INPUT].append(str(Path(item.path).resolve()))
                loaded.append((record, image))
            outputs = self._outputs(name, [x for _, x in loaded], [r for r, _ in loaded], result, spec.seed + index)
            for i, (record, image) in enumerate(loaded):
                self._keep_outputs(record, outputs, i, None, fid_sets, folder="", where="")
                self._grid_add(result, record.key, [image, *(outputs[label][i] for label in outputs)])
            self.on_progress(len(chunk))
        if self.set_metrics:
            self._set_fid(result, fid_sets, self._fid_reference([]))
        return result

    def _authenticity_set(self, items: list[InputItem]) -> SetResult:
        """IDM sec. 3.1: restore the clean x once and twice; an authentic f keeps f(x) = x (eq. 2)."""
        spec = self.spec
        rows = [RowSpec(f"{m}: {c}", "authenticity", method=m, comparison=c) for m in self.methods for c in COMPARISONS]
        description = (
            "IDM (Zhao et al. 2023) sec. 3.1: clean references x restored once, f(x), and twice, f(f(x)). "
            "An authentic restorer keeps f(x) = x (eq. 2); at least f(f(x)) should be no worse than f(x)."
        )
        result = SetResult("authenticity", "authenticity", description, rows, list(self.pair_metrics))
        result.grid_columns = ["x (clean)"] + [f"{m} {s}" for m in self.methods for s in ("f(x)", "f(f(x))")]
        for index, chunk in self._chunks(items):
            loaded: list[tuple[ImageRecord, np.ndarray]] = []
            for item in chunk:
                record = ImageRecord(item.key, str(item.path))
                result.images.append(record)
                clean = self._load(item, record)
                if clean is not None:
                    loaded.append((record, presets.quantize(clean)))
            records = [r for r, _ in loaded]
            tiles: dict[str, list[tuple[np.ndarray | None, np.ndarray | None]]] = {}
            for name in self.methods:
                labels = [f"{name}: {c}" for c in COMPARISONS]
                once = self._restore(name, [x for _, x in loaded], result, records, labels[0], spec.seed + index) if loaded else []
                twice = self._restore(name, once, result, records, labels[1], spec.seed + index) if once else None
                if once is None:
                    for record in records:
                        record.row_errors[labels[1]] = record.row_errors[labels[2]] = record.row_errors[labels[0]]
                elif twice is None:
                    for record in records:
                        record.row_errors[labels[2]] = record.row_errors.get(labels[1], "")
                tiles[name] = []
                for i, (record, x) in enumerate(loaded):
                    fx = once[i] if once else None
                    ffx = twice[i] if twice else None
                    tiles[name].append((fx, ffx))
                    if fx is None:
                        continue
                    record.files[labels[0]] = self._save(f"authenticity/{name}/once/{record.key}.png", fx)
                    record.scores[labels[0]] = self._score(fx, x, self.pair_metrics, f"authenticity, {name} {record.key}")
                    if ffx is None:
                        continue
                    record.files[labels[1]] = record.files[labels[2]] = self._save(f"authenticity/{name}/twice/{record.key}.png", ffx)
                    record.scores[labels[1]] = self._score(ffx, fx, self.pair_metrics, f"authenticity, {name} {record.key}")
                    record.scores[labels[2]] = self._score(ffx, x, self.pair_metrics, f"authenticity, {name} {record.key}")
            for i, (record, x) in enumerate(loaded):
                self._grid_add(result, record.key, [x, *(t for name in self.methods for t in tiles[name][i])])
            self.on_progress(len(chunk))
        return result


__all__ = [
    "COMPARISONS",
    "EvalResult",
    "EvalSpec",
    "Evaluator",
    "ImageRecord",
    "InputItem",
    "RowSpec",
    "SetResult",
    "Summary",
    "find_restored",
    "check_inputs",
    "list_inputs",
    "load_face",
    "resolve_spec",
    "summarize",
    "to_face_size",
]
