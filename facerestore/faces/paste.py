"""Paste restored crops back into the photo: a pure function of its inputs.

Unlike facexlib's helper, nothing is stored or mutated (pasting twice gives the same result), the
feathered mask is built once in crop space and warped (no full-image erode/blur per face), and each
face is blended only inside its own bounding box, so the cost scales with face area, not photo area,
and an integer (uint8 / uint16) photo is blended as it is, in float only there. The box is warped and
blended a band of rows at a time (BAND_PIXELS), so a face filling the photo needs no float arrays the
size of the photo either.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from facerestore.image_io import round_to_levels


def upscaled_inverse(inverse: np.ndarray, upscale: float) -> np.ndarray:
    """Map crop pixels to pixels of the photo resized by `upscale`.

    With pixel centres at integer coordinates, photo x maps to s*x + (s-1)/2 in the resized photo
    (the convention cv2.resize uses). facexlib adds 0.5*s instead, half a pixel off for s > 1.
    """
    matrix = np.asarray(inverse, dtype=np.float64) * upscale
    matrix[:, 2] += 0.5 * (upscale - 1.0)
    return matrix


@lru_cache(maxsize=8)
def soft_face_mask(size: int) -> np.ndarray:
    """Feathered mask in crop space: 0 at the crop border, 1 inside, smooth (C1) in between.

    The ramp starts size/32 in from the border (away from the interpolated gray border) and
    spans size/8, about the band facexlib's erode + blur produces (w_edge = face width / 20).
    """
    inset, feather = size / 32.0, size / 8.0
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32) + 0.5
    ramp = np.clip((distance - inset) / feather, 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no kink at either end
    mask = np.outer(ramp, ramp).astype(np.float32)
    mask.setflags(write=False)
    return mask


# photo pixels blended at a time (a band of rows of a face's box): 6 MB per float32 RGB array
# whatever the face's size; a face filling a 12 MP photo at --upscale 2 has a 36 MP box
BAND_PIXELS = 1 << 19

EDGE_SKIP, EDGE_RAMP = 1.0, 8.0  # crop pixels, for a 512 crop


def photo_edge_fade(matrix: np.ndarray, size: int, height: int, width: int) -> np.ndarray | None:
    """Weights in crop space that fade a face out toward the edge of the photo, or None where the
    crop lies well inside it.

    Where a face is cut by the photo's edge, the aligned crop is filled with gray beyond it, and the
    pixels at the edge are partly that gray (bilinear sampling), as is what the network makes of them
    a few pixels further in. Pasted as they are, they draw a gray line along the photo's edge. So the
    weight is 0 for the crop pixel at the edge and rises to 1 over EDGE_RAMP crop pixels inward.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # photo pixels per crop pixel
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ matrix.T
    margin = (EDGE_SKIP + EDGE_RAMP) * size / 512 * scale
    if corners[:, 0].min() >= margin and corners[:, 1].min() >= margin and corners[:, 0].max() <= width - 1 - margin \
            and corners[:, 1].max() <= height - 1 - margin:
        return None
    u, v = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    x = matrix[0, 0] * u + matrix[0, 1] * v + matrix[0, 2]
    y = matrix[1, 0] * u + matrix[1, 1] * v + matrix[1, 2]
    inside = np.minimum(np.minimum(x + 0.5, width - 0.5 - x), np.minimum(y + 0.5, height - 0.5 - y)) / scale  # crop pixels
    ramp = np.clip((inside - EDGE_SKIP * size / 512) / (EDGE_RAMP * size / 512), 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def _roi(matrix: np.ndarray, size: int, height: int, width: int) -> tuple[int, int, int, int] | None:
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    mapped = corners @ matrix.T
    x0, y0 = np.floor(mapped.min(0)).astype(int) - 1
    x1, y1 = np.ceil(mapped.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def paste_faces(
    background: np.ndarray,
    faces: Sequence[tuple[np.ndarray, np.ndarray]],
    upscale: float = 1.0,
    masks: Sequence[np.ndarray | None] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Blend restored crops into `background` (the photo already resized by `upscale`).

    faces: (restored crop SxSx3 float32 in [0,1], inverse affine crop->photo 2x3) in paste order;
    later faces cover earlier ones where they overlap, as in the references.
    masks: optional per-face crop-space masks (e.g. face parsing) multiplied into the soft mask.
    background: float32 in [0, 1], or uint8 / uint16 samples (0..255 / 0..65535). An integer photo
    stays integer: each face's bounding box is turned into float, blended and rounded back, so no
    float copy of the whole photo is made (a 50 MP photo is 600 MB per float32 copy, 150 MB in uint8);
    the box's values are those `samples / 255` gives, so the result is the float blend, rounded.
    Returns a new array of the background's dtype (float32 for float input) and leaves `background`
    alone, unless `out` (an array of its shape and dtype, `background` itself allowed) is given to
    blend into.
    """
    if out is None:
        integer = np.issubdtype(np.asarray(background).dtype, np.integer)
        out = np.array(background, dtype=None if integer else np.float32, copy=True)
    elif out is not background:
        np.copyto(out, background)
    scale = float(np.iinfo(out.dtype).max) if np.issubdtype(out.dtype, np.integer) else None
    height, width = out.shape[:2]
    for index, (crop, inverse) in enumerate(faces):
        size = crop.shape[0]
        mask = soft_face_mask(size)
        if masks is not None and masks[index] is not None:
            mask = mask * masks[index].astype(np.float32)
        matrix = upscaled_inverse(inverse, upscale)
        roi = _roi(matrix, size, height, width)
        if roi is None:
            continue
        fade = photo_edge_fade(matrix, size, height, width)
        if fade is not None:
            mask = mask * fade
        x0, y0, x1, y1 = roi
        face = crop.astype(np.float32)
        rows = max(1, BAND_PIXELS // (x1 - x0))
        for top_row in range(y0, y1, rows):  # a band of the box at a time: a selfie's box is most of the photo
            bottom = min(top_row + rows, y1)
            local = matrix.copy()
            local[:, 2] -= (x0, top_row)
            dsize = (x1 - x0, bottom - top_row)
            warped_face = cv2.warpAffine(face, local, dsize, flags=cv2.INTER_LINEAR)
            warped_mask = cv2.warpAffine(mask, local, dsize, flags=cv2.INTER_LINEAR)[..., None]
            region = out[top_row:bottom, x0:x1]
            work = region if scale is None else region.astype(np.float32) / np.float32(scale)
            warped_face -= work  # work + mask * (face - work), in place: no temporaries the size of the band
            warped_face *= warped_mask
            work += warped_face
            if scale is not None:
                region[...] = round_to_levels(work, scale, in_place=True)
    return out
