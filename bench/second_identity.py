"""A second opinion on identity for an evaluate report: dlib's face recognition ResNet.

ArcFace (w600k_mbf) is the bench's identity metric, and training can validate on it, so a gain it
reports could be a gain on that one net. dlib's recogniser (a ResNet-29 trained by Davis King on
about 3 million faces, 128-D descriptors, 99.38% on LFW) shares neither data nor architecture with
it. Two faces are the same person below a Euclidean distance of 0.6; lower is closer.

Geometry: the 5 landmarks are found once on the clean reference (dlib's HOG detector and 5-point
shape predictor) and the same 150 px chip is cut from the reference, the input and every
restoration, so all rows are compared on identical crops. A reference without a detected face is
skipped and counted.

Needs `pip install dlib-bin face-recognition-models` (the models are public domain/CC0). The package
`face_recognition_models` is located without importing it (its __init__ needs pkg_resources).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from facerestore.evaluation.runner import load_face
from facerestore.image_io import read_image, to_uint8

PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RECOGNISER = "dlib_face_recognition_resnet_model_v1.dat"


def models_folder() -> Path | None:
    """The model folder of the `face_recognition_models` package, or None when it is not installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return folder if (folder / RECOGNISER).is_file() else None


def unavailable() -> str | None:
    """Why the second opinion cannot run here (one line), or None when it can."""
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed (pip install dlib-bin)"
    if models_folder() is None:
        return "face_recognition_models is not installed (pip install face-recognition-models)"
    return None


class DlibIdentity:
    def __init__(self) -> None:
        import dlib

        folder = models_folder()
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(folder / PREDICTOR))
        self.recogniser = dlib.face_recognition_model_v1(str(folder / RECOGNISER))

    def chip_geometry(self, rgb8: np.ndarray):
        """The chip of the largest face dlib finds in the clean reference, or None."""
        faces = self.detector(rgb8, 1)
        if len(faces) == 0:
            return None
        face = max(faces, key=lambda box: box.area())
        return self.dlib.get_face_chip_details(self.predictor(rgb8, face), 150, 0.25)

    def descriptor(self, rgb8: np.ndarray, geometry) -> np.ndarray:
        return np.asarray(self.recogniser.compute_face_descriptor(self.dlib.extract_image_chip(rgb8, geometry)))


def as_uint8(path: Path | str, *, reference: bool = False) -> np.ndarray:
    """An image as uint8 RGB; a reference is brought to 512 the way evaluate brings it (load_face)."""
    rgb = load_face(Path(path))[0] if reference else read_image(Path(path)).rgb
    return np.ascontiguousarray(to_uint8(rgb))


def distances(report: dict, folder: Path) -> tuple[dict[str, dict[str, dict[str, float]]], int]:
    """{set: {row label: {image key: distance to the clean reference}}} and the references skipped.

    Only the degraded sets (those with an "input" file) are scored; each reference is embedded once.
    """
    net = DlibIdentity()
    references: dict[str, tuple] = {}
    skipped: set[str] = set()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for s in report["sets"]:
        table: dict[str, dict[str, float]] = {}
        for image in s.get("images", []):
            files = image.get("files", {})
            if image.get("status") != "ok" or "input" not in files:
                continue
            source = image["source"]
            if source not in references and source not in skipped:
                rgb8 = as_uint8(source, reference=True)
                geometry = net.chip_geometry(rgb8)
                if geometry is None:
                    skipped.add(source)
                else:
                    references[source] = (geometry, net.descriptor(rgb8, geometry))
            if source in skipped:
                continue
            geometry, reference = references[source]
            for label, relative in files.items():
                value = np.linalg.norm(net.descriptor(as_uint8(folder / relative), geometry) - reference)
                table.setdefault(label, {})[image["key"]] = float(value)
        if table:
            out[s["name"]] = table
    return out, len(skipped)



if __name__ == "__main__":
    raise SystemExit("second_identity.py is a helper of bench_idm_model.py: run "
                     "`python bench/bench_idm_model.py --report DIR/results.json --dlib`")
