"""restore_paths / restore_file / restore_picture: read -> detect -> align -> restore (batched) -> paste -> write.

Output layout follows GFPGAN (the convention users know, ANCHORS.md 3.3):
  restored_imgs/<name>[_suffix].<ext>    whole photo (not with --aligned)
  cropped_faces/<name>_<ii>.png          aligned input crops (ii: face_number)
  restored_faces/<name>_<ii>[_suffix].png
  cmp/<name>_<ii>.png                    crop | restored, side by side
Every file of a photo is written to a temp file, and all are renamed into place once the photo is
done (a failed or interrupted photo leaves an earlier run's files as they were); an input file is
never overwritten. Folder
inputs skip these four folders of the output (`output_folders`), so a rerun into an output folder
inside the input tree does not restore its own earlier results.
"""

from __future__ import annotations

import os
import time
import traceback
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from facerestore.background_upsampler import BackgroundUpsampler
from facerestore.training.seeds import check_seed
from facerestore.errors import FaceRestoreError, UsageError
from facerestore.faces.align import AlignedFace, align_face, check_aligned_crop
from facerestore.faces.detect import RetinaFaceHeads, detect_faces, select_faces
from facerestore.faces.parsing import Parser
from facerestore.faces.paste import paste_faces
from facerestore.image_io import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, NO_IMAGES, NOT_WRITABLE, InputPaths, Picture, StagedWrites, assert_not_input, check_encodable,
                                  folder_relation, is_image_path, output_format, pixel_counts, read_image, refuses_new_files, resize,
                                  to_samples, write_image)
from facerestore.methods.base import RestorationMethod
from facerestore.out_of_memory import BatchLimit

FACE_SIZE = 512
AUTO_UPSCALE = 2.0  # the references' --upscale default (GFPGAN, CodeFormer, DifFace)
AUTO_UPSCALE_MAX_SIDE = 1500  # above this long side the default is 1 (CodeFormer's web demo)


@dataclass(frozen=True)
class RestoreOptions:
    """Everything that shapes the output of one run (method knobs live in MethodOptions)."""

    output: Path
    upscale: float | None = None  # None: AUTO_UPSCALE, or 1 for photos over AUTO_UPSCALE_MAX_SIDE (scale_for)
    aligned: bool = False
    only_center_face: bool = False
    detection_threshold: float = 0.8
    min_face: float = 5.0
    batch_size: int = 8
    seed: int = 0
    suffix: str | None = None
    ext: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_faces: bool = True

    def __post_init__(self) -> None:
        if self.upscale is not None and not 1.0 <= self.upscale <= 8.0:
            raise UsageError(f"--upscale must be between 1 and 8, got {self.upscale}",
                             hint=f"pass a scale from 1 to 8, or leave -s out ({AUTO_UPSCALE:g}, or 1 for photos over {AUTO_UPSCALE_MAX_SIDE} px)")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}", hint=f"pass 1 or more faces (default {type(self).batch_size})")
        object.__setattr__(self, "ext", output_format(self.ext))  # frozen: normalised once, here
        check_seed(self.seed)
        if self.max_pixels < 1:
            raise UsageError(f"--max-pixels must be at least 1, got {self.max_pixels}", hint=f"pass a pixel count of 1 or more (default {DEFAULT_MAX_PIXELS})")
        if not 0.0 <= self.detection_threshold <= 1.0:
            raise UsageError(f"--detection-threshold is a confidence between 0 and 1, got {self.detection_threshold}",
                             hint=f"pass a value from 0 to 1 (default {type(self).detection_threshold:g}; facexlib uses 0.97)")
        if not 0 <= self.min_face < float("inf"):  # inf drops every face: each photo would only say 'no face found'
            raise UsageError(f"--min-face must be 0 or more pixels (a finite number), got {self.min_face}",
                             hint=f"pass the smallest eye distance in pixels to keep, 0 or more (default {type(self).min_face:g})")
        if self.aligned and self.upscale is not None:
            raise UsageError("--upscale does nothing with --aligned: restored faces are written at 512x512", hint="drop --upscale, or drop --aligned to paste the faces back into the photo")
        if self.suffix is not None and any(sep in self.suffix for sep in ("/", "\\")):
            raise UsageError(f"--suffix {self.suffix!r} holds a path separator", hint="use a plain word such as restored")
        if self.suffix is not None and any(unicodedata.category(c) == "Cc" for c in self.suffix):  # a newline in every file name
            raise UsageError(f"--suffix {self.suffix!r} holds a control character (a newline, tab, ...)", hint="use a plain word such as restored")

    def scale_for(self, height: int, width: int) -> float:
        """The output scale of a photo: --upscale, else 2 for photos up to 1500 px and 1 above, as
        CodeFormer's demo does: enlarging a phone photo fourfold in pixels only makes it heavier."""
        if self.upscale is not None:
            return self.upscale
        return AUTO_UPSCALE if max(height, width) <= AUTO_UPSCALE_MAX_SIDE else 1.0


@dataclass
class ImageResult:
    """What happened to one input; the CLI turns these into lines and the JSON summary."""

    path: Path
    status: str = "ok"  # ok | no-face | failed
    faces: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # restored, but the user should know (an animation's other frames)
    outputs: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "status": self.status,
            "faces": self.faces,
            "error": self.error,
            "warnings": self.warnings,
            "outputs": [str(p) for p in self.outputs],
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


def restore_crops(
    method: RestorationMethod,
    crops: Sequence[np.ndarray],
    *,
    batch_size: int = 8,
    seed: int = 0,
    limit: BatchLimit | None = None,
) -> list[np.ndarray]:
    """Restore aligned crops in chunks of `batch_size`; same seed -> same output for each photo.
    `limit`: a run's shared BatchLimit (of `batch_size`), lowered where a chunk does not fit in memory."""
    return _restore_batch(method, crops, torch.Generator().manual_seed(seed), limit or BatchLimit(batch_size))


def _restore_batch(method: RestorationMethod, crops: Sequence[np.ndarray], generator: torch.Generator,
                   limit: BatchLimit | None = None) -> list[np.ndarray]:
    """The crops restored in chunks of the limit's size (all at once without one), fewer at a time
    where they do not fit in memory together (out_of_memory)."""
    def call(chunk: Sequence[np.ndarray]) -> list[np.ndarray]:
        batch = torch.from_numpy(np.stack(chunk).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
        return list(method.restore(batch, generator=generator).permute(0, 2, 3, 1).float().clamp(0, 1).cpu().numpy())

    return (limit or BatchLimit(len(crops))).run(crops, call, generator=generator)


def _side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.concatenate([left, right], axis=1)


OUTPUT_FOLDERS = ("restored_imgs", "cropped_faces", "restored_faces", "cmp")


def output_folders(output: Path) -> list[Path]:
    """Where restore writes under `output`: what a scan of the inputs must not read back."""
    return [Path(output) / folder for folder in OUTPUT_FOLDERS]


def explain_own_results(missing: Sequence[tuple[Path, str]], output: Path) -> tuple[list[tuple[Path, str]], dict[Path, str]]:
    """list_images' inputs that gave no image, where a folder "has no images" because the images it
    holds all lie in this run's output folders (`facerestore out -o out` after a run into out), which
    are never read as inputs, saying so instead; with the hint for each such folder, by path."""
    explained, hints = [], {}
    for path, reason in missing:
        own = own_results_reason(path, output) if reason == NO_IMAGES else None
        explained.append((path, own or reason))
        if own:
            hints[path] = "pass another -o, or the folder of the original photos"
    return explained, hints


def own_results_reason(folder: Path, output: Path) -> str | None:
    """Why `folder` gave no image, when the images it holds all lie in this run's output folders;
    None when those hold none ("folder has no images" is then the truth)."""
    held = [f for f in output_folders(output) if folder_relation(f, folder) == "lies inside" and any(map(is_image_path, _files_below(f)))]
    if not held:
        return None
    names = ", ".join(f"{os.path.relpath(f, folder)}/" for f in held)
    return f"holds images only in this run's own output folders ({names}), which are never read as inputs"


def _files_below(folder: Path) -> Iterator[Path]:
    for root, _, names in os.walk(folder):
        yield from (Path(root) / name for name in names)


def written_folders(options: RestoreOptions) -> list[Path]:
    """The output folders this run writes into: --aligned writes no photo and no input crop."""
    faces = ("cropped_faces", "restored_faces", "cmp") if options.save_faces else ()
    names = [n for n in faces if n != "cropped_faces"] if options.aligned else ["restored_imgs", *faces]
    return [Path(options.output) / name for name in names]


def assert_inputs_apart(inputs: Sequence[Path], options: RestoreOptions) -> None:
    """Refuse a folder input at or below an output folder this run writes into (`results/restored_imgs
    -o results`): its results would land among its inputs under the same names (each refused as an
    overwrite), or beside them with --suffix/--ext, and a rerun would restore those again.
    A folder elsewhere in the output (`out/photos -o out`) is fine: nothing is written into it, and
    a walk of `out` skips the output folders; a file named on its own keeps the per-file refusal."""
    for item in map(Path, inputs):
        if not item.is_dir():
            continue
        for folder in written_folders(options):
            relation = folder_relation(item, folder)
            if relation in ("is", "lies inside"):
                where = "is" if relation == "is" else f"lies inside {folder},"
                raise UsageError(f"the input folder {item} {where} where this run writes its results (a rerun would restore them again)",
                                 hint=f"choose another -o, or move the images out of {folder}")


def assert_output_layout(options: RestoreOptions) -> None:
    """Refuse an output folder this run writes into that cannot take its files (`OUT/restored_faces` a
    file, a broken link, a read-only mount): every write would fail, one photo after another, each
    after its faces were restored. -o itself is checked before (image_io.assert_output_folder), so a
    folder still to be made inside it can be made."""
    for folder in written_folders(options):
        if folder.is_symlink() and not folder.exists():
            raise UsageError(f"-o {options.output}: {folder} is a broken link, and this run writes its results into it",
                             hint="fix the link or remove it, or choose another -o")
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"-o {options.output}: {folder} is a file, not a folder, and this run writes its results into it",
                             hint="move that file away, or choose another -o")
        refusal = refuses_new_files(folder) if folder.is_dir() else None
        if refusal:
            why = "is not writable" if refusal == NOT_WRITABLE else f"cannot be written ({refusal})"
            raise UsageError(f"-o {options.output}: {folder} {why}, and this run writes its results into it",
                             hint="make it writable, or choose another -o")


def face_number(index: int, faces: int) -> str:
    """`_07`: the tag of face `index` in its photo's face files, two digits as in GFPGAN's layout, or as
    many as the photo's last index needs (`_007` ... `_276` for 277 faces), so that a photo's face files
    sort in face order (`_18`, `_180`, `_19` did)."""
    return f"_{index:0{max(2, len(str(faces - 1)))}d}"


class OutputNamer:
    """Paths in the GFPGAN layout; keeps sub-folders of folder inputs apart so names never collide."""

    def __init__(self, options: RestoreOptions, inputs: set[Path]) -> None:
        self.options = options
        self.inputs = InputPaths(inputs)  # indexed once: every output path is looked up, not compared with every input

    def _path(self, folder: str, name: str, ext: str) -> Path:
        path = self.options.output / folder / f"{name}.{ext}"
        assert_not_input(path, self.inputs)
        return path

    def image(self, name: str, source: Path) -> Path:
        ext = source.suffix.lstrip(".").lower() if self.options.ext == "auto" else self.options.ext
        if f".{ext}" not in IMAGE_EXTENSIONS:  # no extension, or one we read but do not write (GIF): PNG keeps every pixel
            ext = "png"
        suffix = f"_{self.options.suffix}" if self.options.suffix else ""
        return self._path("restored_imgs", f"{name}{suffix}", ext)

    def face(self, folder: str, name: str, index: int | None, suffix: bool = False, *, of: int = 1) -> Path:
        """Face `index` of the `of` faces of a photo (None with --aligned: the crop is the face)."""
        tag = "" if index is None else face_number(index, of)
        end = f"_{self.options.suffix}" if suffix and self.options.suffix else ""
        # with --aligned the restored face is the result (there is no photo), so --ext applies to it
        main = self.options.aligned and folder == "restored_faces" and self.options.ext != "auto"
        return self._path(folder, f"{name}{tag}{end}", self.options.ext if main else "png")


@dataclass(frozen=True)
class Tools:
    """The models one run uses: built once, shared by every photo."""

    method: RestorationMethod
    detector: RetinaFaceHeads | None = None  # None with --aligned
    parser: Parser | None = None  # face parsing for the paste mask (--parse)
    background: BackgroundUpsampler | None = None  # --bg-upsampler: Real-ESRGAN instead of Lanczos for the photo
    on_faces: Callable[[int], None] | None = None  # progress: called with the number of faces just restored
    batch_limit: BatchLimit | None = None  # shared by every photo: lowered for the run when a batch does not fit (out_of_memory)


def scale_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Alpha for --upscale: bilinear, which cannot ring (Lanczos would leave faint ghosts of an edge in
    fully transparent areas)."""
    return cv2.resize(alpha, size, interpolation=cv2.INTER_LINEAR)


def scale_background(rgb: np.ndarray, alpha: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """Resize a photo for --upscale (Lanczos): float [0, 1], or uint8 / uint16 samples without alpha.
    With alpha (float only), colours are weighted by it (premultiplied), so the invisible colour of
    transparent pixels does not bleed into the edge as a dark halo."""
    lanczos = cv2.resize(rgb, size, interpolation=cv2.INTER_LANCZOS4)
    if alpha is None:
        return lanczos
    tiny = 1 / 1024
    premultiplied = rgb * alpha[:, :, None]
    weighted = cv2.resize(premultiplied, size, interpolation=cv2.INTER_LANCZOS4)
    weight = cv2.resize(alpha, size, interpolation=cv2.INTER_LANCZOS4)[:, :, None]
    # where Lanczos's weights undershoot at an edge, the bilinear ones (never negative) decide
    weighted_linear = cv2.resize(premultiplied, size, interpolation=cv2.INTER_LINEAR)
    weight_linear = scale_alpha(alpha, size)[:, :, None]
    fallback = np.where(weight_linear > tiny, weighted_linear / np.maximum(weight_linear, tiny), lanczos)
    return np.where(weight > tiny, weighted / np.maximum(weight, tiny), fallback).astype(np.float32)


def prepare_background(picture: Picture, upscale: float, upsampler: BackgroundUpsampler | None = None) -> np.ndarray:
    """The photo to paste the faces into, resized by `upscale`, as integer samples of the source's
    depth (uint8, or uint16 for a 16-bit source), not float32: a 12 MP photo enlarged twice is 150 MB
    in uint8 against 600 MB in float32, and it is written as it is (no float copy to round). A photo
    without alpha is resized in uint8 (OpenCV's fixed-point Lanczos, within one level of the float
    one, rounded); with alpha the premultiplied resize runs in float and is rounded after.
    With `upsampler` (--bg-upsampler) the net enlarges it instead, even at --upscale 1 (GFPGAN's
    scripts run it there too: the net's output resized back to the photo's size)."""
    dtype = np.uint16 if picture.bit_depth == 16 else np.uint8
    if upsampler is not None:
        return upsampler.enlarge(picture.samples, (round(picture.width * upscale), round(picture.height * upscale)), dtype)
    if upscale == 1:
        return picture.samples.copy()  # pasted into, while later faces are still aligned from the photo
    size = (round(picture.width * upscale), round(picture.height * upscale))
    if picture.alpha is None:
        return scale_background(picture.samples, None, size)  # saturated: no overshoot to clip
    return to_samples(scale_background(picture.rgb, picture.alpha, size), dtype)  # rounded and clipped


FacesCallback = Callable[[int, int, Sequence[AlignedFace], Sequence[np.ndarray]], None]


def restore_picture(
    picture: Picture,
    tools: Tools,
    options: RestoreOptions,
    on_faces: FacesCallback | None = None,
) -> tuple[np.ndarray | None, int, dict[str, float]]:
    """The in-memory core: returns (the whole restored photo, as uint8 samples, or uint16 for a
    16-bit source (`image_io.from_samples` gives floats), or None with --aligned; the number of
    faces; seconds per stage: detect, prepare, align, restore, parse, paste). `prepare` is the
    photo-sized background (copied, or resized for --upscale), made once per photo; `paste` only the
    per-face work, so that it divides by the number of faces.

    Faces are aligned, restored, pasted and handed to `on_faces(index of the first, number of faces in
    the photo, aligned faces, restored crops)` one batch at a time and then dropped, so memory does
    not grow with the number of faces (two 3 MB crops per face: a 600-face class photo would hold
    several GB). One generator
    per photo, drawn in face order: the same seed gives the same output whatever the batching."""
    method, detector = tools.method, tools.detector
    timings: Counter[str] = Counter()
    generator = torch.Generator().manual_seed(options.seed)
    clock = time.perf_counter()
    if options.aligned:
        check_aligned_crop(picture.height, picture.width, picture.path or "input")
        crop = resize(picture.rgb, FACE_SIZE, FACE_SIZE)  # as clean-dataset and evaluate do
        identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
        faces = [AlignedFace(crop=crop.astype(np.float32), affine=identity, inverse=identity)]
        restored = _restore_batch(method, [faces[0].crop], generator, tools.batch_limit)
        timings["restore"] = time.perf_counter() - clock
        if tools.on_faces:
            tools.on_faces(1)
        if on_faces:
            on_faces(0, 1, faces, restored)
        return None, 1, dict(timings)
    assert detector is not None
    found = detect_faces(picture.samples, detector, threshold=options.detection_threshold, min_eye_distance=options.min_face)
    found = select_faces(found, picture.samples.shape, only_center_face=options.only_center_face)
    timings["detect"] = time.perf_counter() - clock
    clock = time.perf_counter()
    height, width = picture.height, picture.width
    upscale = options.scale_for(height, width)
    photo = prepare_background(picture, upscale, tools.background)  # one photo-sized integer array, pasted into in place
    timings["prepare"] = time.perf_counter() - clock
    for start in range(0, len(found), options.batch_size):
        clock = time.perf_counter()
        faces = [align_face(picture.samples, f.landmarks, FACE_SIZE) for f in found[start : start + options.batch_size]]
        timings["align"] += time.perf_counter() - clock
        clock = time.perf_counter()
        restored = _restore_batch(method, [f.crop for f in faces], generator, tools.batch_limit)
        timings["restore"] += time.perf_counter() - clock
        if tools.on_faces:
            tools.on_faces(len(faces))
        masks = None
        if tools.parser is not None:
            clock = time.perf_counter()
            masks = list(tools.parser(torch.from_numpy(np.stack(restored)).permute(0, 3, 1, 2).contiguous()))
            timings["parse"] += time.perf_counter() - clock
        clock = time.perf_counter()
        paste_faces(photo, [(r, f.inverse) for r, f in zip(restored, faces)], upscale=upscale, masks=masks, out=photo)
        timings["paste"] += time.perf_counter() - clock
        if on_faces:
            on_faces(start, len(found), faces, restored)
    return photo, len(found), dict(timings)  # only the stages that ran: no `restore` without a face


def restore_file(path: Path, name: str, tools: Tools, options: RestoreOptions, namer: OutputNamer) -> ImageResult:
    """Restore one file and write its outputs; raises FaceRestoreError for a bad input."""
    result = ImageResult(path=path)
    clock = time.perf_counter()
    picture = read_image(path, max_pixels=options.max_pixels)
    upscale = options.scale_for(picture.height, picture.width)
    out_pixels = picture.height * picture.width * (1 if options.aligned else upscale**2)
    if out_pixels > options.max_pixels:
        size, limit = pixel_counts(int(out_pixels), options.max_pixels)
        raise FaceRestoreError(
            f"{path}: output would be {size}, over the {limit} limit",
            hint="use a smaller --upscale or raise --max-pixels",
        )
    result.seconds["read"] = time.perf_counter() - clock
    target = None
    if not options.aligned:  # refused before any work: an output over an input, or one its format cannot hold
        target = namer.image(name, path)
        check_encodable(target, round(picture.width * upscale), round(picture.height * upscale))
    result.warnings.extend(picture.notes("restored", written_as=target or namer.face("restored_faces", name, None, suffix=True)))
    keep = picture.encoding(exif=False)  # the faces: the photo's colour profile and depth, not its camera data
    # with --aligned the restored face is the result: it keeps the crop's transparency
    face_alpha = resize(picture.alpha, FACE_SIZE, FACE_SIZE) if options.aligned and picture.alpha is not None else None
    writing = 0.0
    # the photo's files are written to temp files and renamed into place together once all are
    # written: a failed or interrupted photo (Ctrl-C) leaves none of them, and an earlier run's
    # files for it as they were (docs/usage.md: a rerun deletes nothing)
    staged = StagedWrites()

    def write_faces(first: int, count: int, faces: Sequence[AlignedFace], restored: Sequence[np.ndarray]) -> None:
        nonlocal writing
        clock = time.perf_counter()
        for index, (face, out) in enumerate(zip(faces, restored), first):
            tag = None if options.aligned else index
            if not options.aligned:
                result.outputs.append(write_image(namer.face("cropped_faces", name, tag, of=count), face.crop, staged=staged, **keep))
            result.outputs.append(write_image(namer.face("restored_faces", name, tag, suffix=True, of=count), out, alpha=face_alpha,
                                              staged=staged, **keep))
            result.outputs.append(write_image(namer.face("cmp", name, tag, of=count), _side_by_side(face.crop, out), staged=staged, **keep))
        writing += time.perf_counter() - clock

    with staged:  # left without the commit: its temp files are deleted
        photo, result.faces, timings = restore_picture(picture, tools, options, on_faces=write_faces if options.save_faces else None)
        result.seconds.update(timings)
        clock = time.perf_counter()
        if photo is not None:
            alpha, encoding = picture.alpha, picture.encoding()
            del picture  # its samples, as large as the photo, are done with: the encoder's copy takes their place
            if alpha is not None and upscale != 1:
                alpha = scale_alpha(alpha, (photo.shape[1], photo.shape[0]))
            result.outputs.append(write_image(target, photo, alpha=alpha, staged=staged, **encoding))
        staged.commit()
    result.seconds["write"] = writing + time.perf_counter() - clock
    if not result.faces:
        result.status = "no-face"
        if tools.background is not None:
            resized = f" (only upscaled x{upscale:g} by Real-ESRGAN, --bg-upsampler)"
        else:
            resized = "" if upscale == 1 else f" (only resized x{upscale:g}, --upscale)"
        result.error = f"{path}: no face found; the photo was written without restoration{resized}"
    return result


def output_names(paths: Sequence[Path], roots: Sequence[Path]) -> list[str]:
    """Name each output after its path relative to the folder it was found in, without collisions:
    names that clash (face.jpg and face.png, or x.jpg from two folders) get their extension, then a
    number, in input order. Compared case-folded, as on macOS and Windows disks."""
    # compared as absolute, normalised paths: '../x.png' is not inside '.', and a name must never
    # climb out of the output folder
    folders = [Path(os.path.abspath(r)) for r in roots if r.is_dir()]
    names = []
    for path in paths:
        absolute = Path(os.path.abspath(path))
        root = next((r for r in folders if absolute.is_relative_to(r)), None)
        rel = absolute.relative_to(root) if root else Path(path.name)
        names.append(rel.with_suffix("").as_posix())
    clashes = Counter(name.casefold() for name in names)
    unique, used = [], set()
    for path, name in zip(paths, names):
        if clashes[name.casefold()] > 1 and path.suffix:
            name = f"{name}_{path.suffix.lstrip('.').lower()}"
        candidate, number = name, 2
        while candidate.casefold() in used:
            candidate, number = f"{name}_{number}", number + 1
        used.add(candidate.casefold())
        unique.append(candidate)
    return unique


def restore_paths(
    paths: Sequence[Path],
    roots: Sequence[Path],
    tools: Tools,
    options: RestoreOptions,
    *,
    on_image: Callable[[ImageResult], None] | None = None,
    debug: bool = False,
) -> list[ImageResult]:
    """Restore every path; a bad file is recorded as failed and the batch goes on."""
    namer = OutputNamer(options, {p.resolve() for p in paths})
    results = []
    for path, name in zip(paths, output_names(paths, roots)):
        try:
            result = restore_file(path, name, tools, options, namer)
        except FaceRestoreError as exc:
            result = ImageResult(path=path, status="failed", error=exc.one_line_for(path))
        except Exception as exc:  # a bug or a backend crash must not end the batch
            detail = traceback.format_exc() if debug else f"{type(exc).__name__}: {exc}"
            result = ImageResult(path=path, status="failed", error=f"{path}: internal error ({detail}); rerun with --debug and report it")
        results.append(result)
        if on_image:
            on_image(result)
    return results
