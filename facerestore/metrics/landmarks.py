"""Landmark distance (LMD): how far the restored face's landmarks moved from the reference's.

Both faces go through our RetinaFace detector (`facerestore.faces.detect`, the offline "bundled"
mobile0.25 by default); LMD is the mean Euclidean distance between the 5 corresponding landmarks
(eyes, nose, mouth corners), in pixels of a 512 crop (inputs of another size are measured in their
own pixels and scaled by 512 / width). Lower is better; a face the detector cannot find makes the
metric unavailable for that pair (NoFaceFound), never zero.
"""

from __future__ import annotations

import numpy as np

from facerestore.errors import NoFaceFound
from facerestore.metrics.images import ImageLike, as_image, same_shape

CROP_SIZE = 512


def face_landmarks(image: ImageLike, *, detector: str = "bundled") -> np.ndarray:
    """The 5x2 landmarks (x, y) of the most central face, in the image's pixels; NoFaceFound if none."""
    from facerestore.faces.detect import detect_faces, load_detector, select_faces

    rgb = as_image(image)
    faces = select_faces(detect_faces(rgb, load_detector(detector)), rgb.shape, only_center_face=True)
    if not faces:
        raise NoFaceFound(f"no face found in a {rgb.shape[1]}x{rgb.shape[0]} image", hint="the metric needs a visible face")
    return faces[0].landmarks


def landmark_distance(restored: ImageLike, reference: ImageLike, *, detector: str = "bundled") -> float:
    """Mean distance between corresponding landmarks, in 512-crop pixels (lower is better)."""
    a, b = as_image(restored), as_image(reference)
    same_shape(a, b)
    distances = np.linalg.norm(face_landmarks(a, detector=detector) - face_landmarks(b, detector=detector), axis=1)
    return float(distances.mean() * CROP_SIZE / a.shape[1])
