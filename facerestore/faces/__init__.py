"""Face detection, alignment and paste-back: stateless functions over frozen dataclasses."""

from facerestore.faces.align import FFHQ_TEMPLATE_512, AlignedFace, align_face, similarity_transform
from facerestore.faces.detect import DetectedFace, detect_faces, select_faces
from facerestore.faces.paste import paste_faces, soft_face_mask

__all__ = [
    "FFHQ_TEMPLATE_512",
    "AlignedFace",
    "DetectedFace",
    "align_face",
    "detect_faces",
    "paste_faces",
    "select_faces",
    "similarity_transform",
    "soft_face_mask",
]
