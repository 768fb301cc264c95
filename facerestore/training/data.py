"""Training data: folders of aligned faces -> (degraded, clean, noise level, noise) samples.

Files. `scan_faces` lists every image under the data folders (recursively, sorted), reads only each
header (and that of its cleaned target), and skips unreadable files, images whose short side is below
`min_side`, broken links and second paths to a file already listed (a link to it) with a count.
For the extrinsic iteration (IDM sec. 3.3) a folder of cleaned targets x* = f(x) can stand beside
each data folder: the input is still degraded from the original x, the target is x* with the same
relative path (what `facerestore clean-dataset` writes).

Samples. Sample number n of a run (n = step * global batch + i) is a pure function of (seed, n):

    epoch, k = divmod(n, N);   file = permutation(N, seed, epoch)[k]
    rng      = numpy generator keyed (seed, "sample", n)    -> flip, degradation parameters and noise
    gamma, eps from a torch generator keyed (seed, "noise", n)   (diffusion.losses; eps + s xi with
                                                                  --input-perturbation s)

so the data order, the degradations and the diffusion noise need no saved generator state: resuming
at step s simply starts at sample s * batch, and any number of DataLoader workers or torchrun
processes draws the same samples. A file that fails to decode during training is replaced by the
next file of the same epoch's order (counted and reported), so one bad file never stops a run;
a list none of whose files decodes is refused before the run folder is written (`check_decodable`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from facerestore.diffusion.losses import NoiseLevels, perturbed_noise, sample_noise_levels
from facerestore.diffusion.schedule import NoiseSchedule
from facerestore.errors import BadImage, UsageError
from facerestore.image_io import BROKEN_LINK, IMAGE_EXTENSIONS, LINK_LOOP, NO_IMAGES, NOT_REGULAR, list_images, read_image, resize
from facerestore.training.config_file import fix, read_run_json, shown
from facerestore.training.degradations import DegradationSpec, sample_params, apply_degradation, to_gray
from facerestore.training.seeds import permutation, stable_seed
from facerestore.plural import counted, verb

T = TypeVar("T")


@dataclass(frozen=True)
class FaceFile:
    source: str  # the original image (degraded to make the input)
    target: str  # the training target: the same file, or its cleaned copy (extrinsic iteration)


@dataclass
class ScanResult:
    files: list[FaceFile]
    unreadable: list[str]
    tiny: list[str]
    missing_targets: list[str]
    unreadable_targets: list[str] = field(default_factory=list)  # cleaned targets (--targets) whose header cannot be read
    broken_links: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # another path to a file already listed
    unreadable_folders: list[str] = field(default_factory=list)  # sub-folders the walk could not list
    empty_folders: list[str] = field(default_factory=list)  # data folders holding no image file at all
    links_up: list[str] = field(default_factory=list)  # folder links that hold their data folder: not followed (image_io._walk)

    @property
    def skipped(self) -> int:
        return (len(self.unreadable) + len(self.tiny) + len(self.missing_targets) + len(self.unreadable_targets)
                + len(self.broken_links) + len(self.duplicates) + len(self.unreadable_folders))

    def summary(self, noun: str = "training image") -> str:
        """'N training images, M unreadable skipped, ...'; `noun` names what the files are to the command."""
        parts = [counted(len(self.files), noun)]
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable skipped")
        if self.tiny:
            parts.append(f"{len(self.tiny)} too small skipped")
        if self.missing_targets:
            parts.append(f"{len(self.missing_targets)} without a cleaned target skipped")
        if self.unreadable_targets:
            parts.append(f"{len(self.unreadable_targets)} with an unreadable cleaned target skipped ({_first(self.unreadable_targets)})")
        if self.broken_links:
            parts.append(f"{counted(len(self.broken_links), 'broken link')} skipped")
        if self.duplicates:
            parts.append(f"{counted(len(self.duplicates), 'duplicate')} (links to a file already listed) skipped")
        if self.unreadable_folders:
            parts.append(f"{counted(len(self.unreadable_folders), 'unreadable folder')} skipped ({_first(self.unreadable_folders)})")
        if self.empty_folders:
            parts.append(f"{counted(len(self.empty_folders), 'folder')} without images ({_first(self.empty_folders)})")
        if self.links_up:
            parts.append(f"{counted(len(self.links_up), 'link')} to a folder above not followed ({_first(self.links_up)})")
        return ", ".join(parts)

    def nothing_usable(self, folders: Sequence[str], size: int, *, what: str = "training images",
                       hint: str = "pass folders of aligned face images") -> UsageError:
        """The one line a command stops with when the scan kept no image of `folders` (`what` they should
        hold; `hint`: what to pass where they hold no image file at all): how many files were skipped and
        why, and what to do about each reason (at `--size size` they need min_side_for(size) px)."""
        where = ", ".join(map(str, folders))
        if not self.skipped:
            extensions = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
            return UsageError(f"no {what} in {where}: no {extensions} file in {'it' if len(folders) == 1 else 'them'} or below", hint=hint)
        min_side = min_side_for(size)
        reasons = [(self.tiny, f"smaller than {min_side} px on the short side"), (self.unreadable, "unreadable"),
                   (self.missing_targets, "without a cleaned target in --targets"),
                   (self.unreadable_targets, "with an unreadable cleaned target in --targets"), (self.broken_links, "broken links"),
                   (self.duplicates, "second paths to a file already listed")]
        why = ", ".join([f"{len(paths)} {reason}" for paths, reason in reasons if paths]
                        + ([f"{counted(len(self.unreadable_folders), 'folder')} that cannot be listed"] if self.unreadable_folders else []))
        files = self.skipped - len(self.unreadable_folders)
        advice = []
        if self.tiny:
            advice.append(f"use faces at least {min_side} px on the short side"
                          + (f" (or a smaller --size: at {size} faces below {min_side} px are skipped)" if min_side > SMALLEST_SIDE else ""))
        if self.unreadable:
            advice.append(f"re-export or remove the unreadable files ({_first(self.unreadable)})")
        if self.missing_targets:
            advice.append("clean the data folders into --targets with `facerestore clean-dataset` first")
        if self.unreadable_targets:
            advice.append(f"remove the unreadable cleaned targets ({_first(self.unreadable_targets)}) and run `facerestore clean-dataset` again to redo them")
        if self.broken_links or self.duplicates:
            advice.append("link to the images themselves")
        if self.unreadable_folders:
            advice.append(f"make {self.unreadable_folders[0]} readable")
        return UsageError(f"no usable {what} in {where}: {counted(files, 'file')} skipped ({why})", hint=", and ".join(advice))


SMALLEST_SIDE = 16  # px: no training size keeps smaller images


def _first(paths: Sequence[str]) -> str:
    """The first of `paths`, and ", ..." where there are more: an example in a one-line message."""
    return paths[0] + (", ..." if len(paths) > 1 else "")


def min_side_for(size: int) -> int:
    """Images with a shorter side than this are skipped: below 1/8 of the training size (at least 16 px)."""
    return max(SMALLEST_SIDE, size // 8)


def _header_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        return None


def scan_faces(data: Sequence[Path], targets: Sequence[Path] = (), *, min_side: int = 16, exclude: Sequence[Path] = ()) -> ScanResult:
    """Every usable image under `data` (sorted per folder), paired with its target; the walk never
    enters `exclude` (the command's own output folder), also not through a link."""
    if targets and len(targets) != len(data):
        raise UsageError(f"{counted(len(targets), '--targets folder')} for {counted(len(data), 'data folder')}",
                         hint="give one cleaned folder per DATA_DIR, in the same order, each after its own --targets (--targets A --targets B)")
    for folder in map(Path, targets):
        if not folder.is_dir():
            raise UsageError(f"--targets folder {folder} does not exist" if not folder.exists() else f"--targets {folder} is not a folder",
                             hint="pass the folder `facerestore clean-dataset` wrote for that DATA_DIR")
    result = ScanResult(files=[], unreadable=[], tiny=[], missing_targets=[])
    for i, folder in enumerate(data):
        folder = Path(folder)
        if not folder.is_dir():
            raise UsageError(f"data folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder", hint="pass folders of aligned face images")
        if not os.access(folder, os.R_OK | os.X_OK):  # the walk would skip it silently: "no usable training images"
            raise UsageError(f"data folder {folder} cannot be read (permission denied)", hint="make it readable (chmod a+rx), or pass a copy of yours")
        duplicates: list[Path] = []
        links: list[tuple[Path, str]] = []
        paths, problems = list_images([folder], exclude, duplicates=duplicates, links=links)
        result.links_up += [str(p) for p, _ in links]
        result.broken_links += [str(p) for p, reason in problems if reason in (BROKEN_LINK, LINK_LOOP)]
        result.unreadable += [str(p) for p, reason in problems if reason == NOT_REGULAR]  # a pipe or socket named like an image
        result.unreadable_folders += [str(p) for p, reason in problems if reason not in (BROKEN_LINK, LINK_LOOP, NO_IMAGES) and p.is_dir()]
        result.empty_folders += [str(p) for p, reason in problems if reason == NO_IMAGES]
        result.duplicates += [str(p) for p in duplicates]
        for path in paths:
            size = _header_size(path)
            if size is None:
                result.unreadable.append(str(path))
                continue
            if min(size) < min_side:
                result.tiny.append(str(path))
                continue
            target = path
            if targets:
                target = Path(targets[i]) / path.relative_to(folder)
                if not target.is_file():
                    result.missing_targets.append(str(path))
                    continue
                if _header_size(target) is None:  # as for sources: a damaged target is skipped, named, not blamed on its source
                    result.unreadable_targets.append(str(target))
                    continue
            result.files.append(FaceFile(source=str(path), target=str(target)))
    return result


def save_file_list(files: Sequence[FaceFile], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps([[f.source, f.target] for f in files]) + "\n")
    os.replace(tmp, path)


def load_file_list(path: Path) -> list[FaceFile]:
    """RUN/files.json read back strictly: --resume trains on exactly the files the run started with, so
    a list damaged or edited by hand is one line naming the file, never a traceback or a guess."""
    pairs = read_run_json(path, missing=f"{path} does not exist: the run's list of training images is gone")
    if not isinstance(pairs, list) or not pairs:
        raise UsageError(f"{path} holds {shown(pairs)}, not the run's list of [source, target] image paths", hint=fix())
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise UsageError(f"{path}: entry {i} is {shown(pair)}, not a [source, target] pair of image paths", hint=fix())
    return [FaceFile(source=s, target=t) for s, t in pairs]


def centre_square(rgb: np.ndarray) -> np.ndarray:
    """The centred square of side min(H, W): the part of a face image the networks see (aligned faces
    already are square); the fine-tuning report compares outputs with this part of the input."""
    height, width = rgb.shape[:2]
    if height == width:
        return rgb
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return rgb[top : top + side, left : left + side]


def to_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square (aligned faces already are), then resize to size x size."""
    return np.clip(resize(centre_square(rgb), size, size), 0.0, 1.0).astype(np.float32)


def load_face(path: str, size: int, *, failed: list[str] | None = None) -> np.ndarray:
    """One face at size x size; on BadImage `path` is appended to `failed` (when given) first, so a
    caller loading several files knows which one could not be read."""
    try:
        return to_square(read_image(Path(path)).rgb, size)
    except BadImage:
        if failed is not None:
            failed.append(path)
        raise


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 [0,1] -> [3,H,W] in [-1,1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1) * 2.0 - 1.0


class FaceDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by the run's sample number n (see the module docstring)."""

    def __init__(self, files: Sequence[FaceFile], *, size: int, seed: int, degradation: DegradationSpec,
                 schedule: NoiseSchedule, noise_levels: NoiseLevels = "continuous", input_perturbation: float = 0.0,
                 flip: bool = True) -> None:
        if not files:
            raise UsageError("no training images", hint="pass folders of aligned face images")
        self.files = list(files)
        self.size, self.seed, self.spec = size, seed, degradation
        self.schedule, self.noise_levels, self.flip = schedule, noise_levels, flip
        self.input_perturbation = input_perturbation
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:  # samples are drawn by number; the length is that of one epoch
        return len(self.files)

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.clear()
            self._orders[epoch] = permutation(len(self.files), self.seed, epoch)
        return self._orders[epoch]

    def _read(self, epoch: int, k: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(source, target, the file that could not be read or ""): the k-th file of the epoch, or the
        next readable one. The file named is the one that failed, source or cleaned target."""
        order = self.order(epoch)
        failed: list[str] = []
        (source, target), tries = first_readable(order, k, lambda i: load_pair(self.files[i], self.size, failed=failed), "training images",
                                                 hint="re-copy or re-export the files the run's files.json lists, or start a new run with another --out")
        return source, target, failed[0] if tries else ""

    def __getitem__(self, n: int) -> dict[str, torch.Tensor]:
        n = int(n)
        epoch, k = divmod(n, len(self.files))
        source, target, unreadable = self._read(epoch, k)
        rng = np.random.default_rng(stable_seed(self.seed, "sample", n))
        if self.flip and rng.random() < 0.5:
            source, target = source[:, ::-1], target[:, ::-1]
        params = sample_params(rng, self.spec)
        degraded = apply_degradation(np.ascontiguousarray(source), params, rng)
        if params.gray:  # a gray input asks for a gray output (GFPGAN's gt_gray)
            target = to_gray(target)
        g = torch.Generator().manual_seed(stable_seed(self.seed, "noise", n))
        gamma = sample_noise_levels(self.schedule, 1, generator=g, kind=self.noise_levels)[0]
        noise = perturbed_noise((3, self.size, self.size), self.input_perturbation, generator=g)
        return {"lq": to_tensor(degraded), "hq": to_tensor(np.ascontiguousarray(target)), "gamma": gamma, "noise": noise,
                "sample": torch.tensor(n), "substituted": torch.tensor(bool(unreadable)), "unreadable": unreadable}


def load_pair(f: FaceFile, size: int, *, failed: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) of one training file at size x size (BadImage when either fails to decode,
    after appending the path of the one that failed to `failed`: the warning names that file)."""
    source = load_face(f.source, size, failed=failed)
    return source, source if f.target == f.source else load_face(f.target, size, failed=failed)


def check_decodable(files: Sequence[FaceFile], size: int, folders: Sequence[str]) -> None:
    """Refuse a file list none of whose files decodes, before a run folder is written: the scan reads
    only headers, and such a run would stop at its first step with files.json already frozen. Reads
    files only until one decodes (the first, for a sound data set); the rest are replaced while training."""
    first_readable(range(len(files)), 0, lambda i: load_pair(files[i], size), f"training images in {', '.join(map(str, folders))}",
                   hint="re-export or remove the files that fail to decode, or add images that decode, then run the same command again")


def first_readable(order: Sequence[int], k: int, load: Callable[[int], T], what: str, *, hint: str) -> tuple[T, int]:
    """(load(order[k]), 0), or the load of the next index in `order` whose file decodes and how many
    were passed over: a file cut short passes the header-only scan, and must not stop a run; the
    choice stays a pure function of (order, k), so resumes and other worker counts draw the same.
    With none decoding, the error names the first file that failed and how many others did."""
    first: BadImage | None = None
    for tries in range(len(order)):
        try:
            return load(int(order[(k + tries) % len(order)])), tries
        except BadImage as exc:
            first = first or exc
    others = len(order) - 1
    more = f", and {counted(others, 'other')} {verb(others, 'fails', 'fail')} too" if others else ""
    raise UsageError(f"none of the {what} can be decoded" + (f": {first}{more}" if first else ""), hint=hint)


def substitution_warning(count: int, log: Path, what: str = "sample", files: Sequence[str] = ()) -> str:
    """The line `train` and `finetune` end with when samples came from the next file because theirs
    could not be read (cut short, damaged, or deleted since the run began; `FaceDataset`,
    `finetune.data.PairDataset`), naming the files (the first of them) so they can be mended."""
    which = (f"{counted(len(files), 'file')} that could not be read ({files[0]}{f' and {len(files) - 1} more' if len(files) > 1 else ''})"
             if files else "a file that could not be read")
    return (f"warning: {counted(count, what)} came from {which} and {verb(count, 'was', 'were')} replaced by the next readable one "
            f"(the per-step counts are in {log}); re-export or remove {'it' if len(files) == 1 else 'them'}")


def check_global_batch(batch: int, world: int, *, resume: bool | None = None) -> None:
    """Each of the `world` processes takes batch / world samples of every step: refuse a remainder.

    `train` and `finetune` call it before anything is written (a run folder records its batch size)
    with `resume`, which picks the advice: a new run can change either number, a resumed one only
    the number of processes."""
    if batch % world:
        hint = ("" if resume is None else f"resume with a number of processes that divides {batch}" if resume else
                f"use a multiple of {world} (e.g. --batch-size {(batch // world + 1) * world}), or a number of processes that divides it")
        raise UsageError(f"--batch-size {batch} is the global batch and must be divisible by the {world} processes", hint=hint)


class StepBatches(torch.utils.data.Sampler):
    """Sample numbers for this process, one list per step, from `start_step` to `steps`.

    The global batch of step s is samples s*B .. s*B + B - 1; rank r of W takes the r-th slice of
    B / W of them. Together the ranks see exactly the samples a single process would.
    """

    def __init__(self, *, start_step: int, steps: int, global_batch: int, rank: int = 0, world: int = 1) -> None:
        check_global_batch(global_batch, world)
        self.start, self.steps, self.batch = start_step, steps, global_batch
        self.local = global_batch // world
        self.offset = rank * self.local

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            first = step * self.batch + self.offset
            yield list(range(first, first + self.local))
