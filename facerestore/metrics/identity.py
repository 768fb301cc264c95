"""Identity preservation: cosine similarity of ArcFace embeddings of the restored and reference faces.

The embedding net is insightface's w600k_mbf.onnx (MobileFaceNet trained on WebFace600K; catalogue
name `arcface_w600k_mbf`, non-commercial) run with onnxruntime: input [N,3,112,112] RGB scaled by
(x - 127.5) / 127.5, output [N,512]. It expects faces warped onto insightface's 5-point `arcface_dst`
template at 112x112.

Our crops are already aligned on the FFHQ 5-point template at 512, so one fixed similarity transform
(FFHQ template -> ArcFace template) makes the 112 input with no detection; `aligned=False` detects
the 5 landmarks with our detector instead, for photos or crops made some other way. The crop is
shrunk with area averaging before the (then nearly unit-scale) warp: a 512 -> 112 bilinear warp
aliases, which would make the score depend on high-frequency noise rather than on the face.

Cost per pair of 512 crops: about 0.2 s of CPU (aligned), 0.5 s with detection.
Papers also report the angle between embeddings (the "Deg." column): `identity_degree`.
Note: CodeFormer/GFPGAN-era papers measure identity with a different net (arcface_resnet18), so
numbers from this metric rank methods the same way but are not comparable to their tables.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from facerestore.errors import UnsupportedCheckpoint, UsageError
from facerestore.faces.align import FFHQ_TEMPLATE_512, similarity_transform
from facerestore.metrics.images import ImageLike, as_image
from facerestore.metrics.landmarks import face_landmarks
from facerestore.metrics.result import resolve_weights

WEIGHTS = "arcface_w600k_mbf"
METRIC = "identity (ArcFace)"
INPUT_SIZE = 112
# insightface's `arcface_dst`: left eye, right eye, nose, left and right mouth corners at 112x112
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
# the fixed map from a 512 FFHQ-aligned crop to the ArcFace input (what `arcface_crop` fits for an
# aligned crop; other sizes scale the template first)
FFHQ512_TO_ARCFACE112 = similarity_transform(FFHQ_TEMPLATE_512, ARCFACE_TEMPLATE_112)


def arcface_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warp the face with these 5 landmarks onto the ArcFace template: float32 112x112x3 in [0, 1].

    Where the warp shrinks, the image is first reduced with INTER_AREA to about the target scale
    (the pixel-centre convention of cv2.resize is folded into the matrix), then warped bilinearly
    with a black border as insightface's `norm_crop` does.
    """
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 1.0:
        height, width = image.shape[:2]
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        sx, sy = new_w / width, new_h / height
        # x_original = (x_small + 0.5) / s - 0.5 for each axis
        linear = matrix[:, :2] @ np.diag([1.0 / sx, 1.0 / sy])
        shift = matrix[:, 2] + matrix[:, :2] @ np.array([0.5 / sx - 0.5, 0.5 / sy - 0.5])
        matrix = np.c_[linear, shift]
    crop = cv2.warpAffine(image, matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return crop.astype(np.float32)


def aligned_landmarks(image: np.ndarray) -> np.ndarray:
    """The FFHQ template scaled to a square aligned crop of any size."""
    height, width = image.shape[:2]
    if height != width:
        raise UsageError(
            f"an aligned face crop must be square, got {width}x{height}",
            hint="pass aligned=False to detect the face, or pass the 512x512 aligned crops",
        )
    return FFHQ_TEMPLATE_512 * (width / 512.0)


def _onnx_reason(exc: Exception) -> str:
    """onnxruntime's first line without its '[ONNXRuntimeError] : 7 : CODE : Load model from PATH failed:' preamble."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text.rsplit(" failed:", 1)[-1].strip() or text


class ArcFace:
    """The ONNX embedding net: 112x112 crops in [0, 1] -> L2-normalised [N, 512] embeddings."""

    def __init__(self, path: Path | str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # the model declares batch 1 on its output; batches still work
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail...) for a file that is no model
            raise UnsupportedCheckpoint(f"{path} cannot be loaded by onnxruntime ({_onnx_reason(exc)})",
                                        hint=f"pass insightface's w600k_mbf.onnx (catalogue name {WEIGHTS}); a truncated download: import it again") from None
        self.input_name = self.session.get_inputs()[0].name

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """crops [N,112,112,3] RGB in [0, 1] -> [N,512] unit vectors."""
        batch = (np.round(np.clip(crops, 0.0, 1.0) * 255.0) - 127.5) / 127.5
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        features = self.session.run(None, {self.input_name: batch})[0].astype(np.float64)
        return features / np.linalg.norm(features, axis=1, keepdims=True)


def load_arcface(weights: str | Path = WEIGHTS, offline: bool | None = None) -> ArcFace:
    """The embedding net for this checkpoint (catalogue name or path), built once per file."""
    path = resolve_weights(METRIC, weights, offline=offline)
    stat = path.stat()
    return _build(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=2)
def _build(path: str, size: int, mtime_ns: int) -> ArcFace:
    return ArcFace(path)


def face_embedding(
    image: ImageLike,
    *,
    aligned: bool = True,
    detector: str = "bundled",
    weights: str | Path = WEIGHTS,
    offline: bool | None = None,
) -> np.ndarray:
    """The unit [512] ArcFace embedding of one face (an aligned crop, or detected when not aligned)."""
    rgb = as_image(image)
    landmarks = aligned_landmarks(rgb) if aligned else face_landmarks(rgb, detector=detector)
    net = load_arcface(weights, offline)
    return net.embed(arcface_crop(rgb, landmarks)[None])[0]


def identity_similarity(
    restored: ImageLike,
    reference: ImageLike,
    *,
    aligned: bool = True,
    detector: str = "bundled",
    weights: str | Path = WEIGHTS,
    offline: bool | None = None,
) -> float:
    """Cosine similarity of the two faces' embeddings in [-1, 1] (higher is better)."""
    options = dict(aligned=aligned, detector=detector, weights=weights, offline=offline)
    return float(np.clip(face_embedding(restored, **options) @ face_embedding(reference, **options), -1.0, 1.0))


class ReferenceIdentity:
    """`identity_similarity` for aligned crops that embeds each reference once: training validation
    scores every restoration of the same clean faces, at every validation step."""

    def __init__(self, weights: str | Path = WEIGHTS, offline: bool | None = None) -> None:
        self.options = dict(weights=weights, offline=offline)
        self._references: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id -> (the array, kept alive; its embedding)

    def __call__(self, restored: ImageLike, reference: np.ndarray) -> float:
        known = self._references.get(id(reference))
        if known is None or known[0] is not reference:
            known = (reference, face_embedding(reference, **self.options))
            self._references[id(reference)] = known
        return float(np.clip(face_embedding(restored, **self.options) @ known[1], -1.0, 1.0))


def identity_degree(restored: ImageLike, reference: ImageLike, **options) -> float:
    """The angle between the two embeddings in degrees (lower is better): the papers' "Deg."."""
    return math.degrees(math.acos(identity_similarity(restored, reference, **options)))
