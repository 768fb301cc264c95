"""Alignment and paste-back: closed-form checks on synthetic images."""

import numpy as np
import pytest

from facerestore.faces.align import FFHQ_TEMPLATE_512, align_face, similarity_transform
from facerestore.faces.paste import paste_faces, soft_face_mask, upscaled_inverse


def smooth_image(height: int, width: int) -> np.ndarray:
    """A smooth colour field: bilinear resampling is exact to second order on it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack(
        [0.5 + 0.4 * np.sin(x / 37.0), 0.5 + 0.4 * np.cos(y / 29.0), 0.5 + 0.3 * np.sin((x + y) / 53.0)], -1
    ).astype(np.float32)


def test_similarity_recovers_known_transform():
    angle, scale, shift = 0.3, 0.7, np.array([12.5, -4.25])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = FFHQ_TEMPLATE_512 @ rotation.T + shift
    matrix = similarity_transform(FFHQ_TEMPLATE_512, dst)
    np.testing.assert_allclose(matrix[:, :2], rotation, atol=1e-10)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_align_maps_landmarks_onto_template():
    image = smooth_image(600, 800)
    landmarks = FFHQ_TEMPLATE_512 * 0.5 + [300.0, 150.0]
    face = align_face(image, landmarks)
    mapped = np.c_[landmarks, np.ones(5)] @ face.affine.T
    np.testing.assert_allclose(mapped, FFHQ_TEMPLATE_512, atol=1e-9)
    np.testing.assert_allclose(face.affine @ np.r_[face.inverse, [[0, 0, 1]]], np.c_[np.eye(2), np.zeros(2)], atol=1e-9)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("where", ["inside", "cut by the edge", "mostly outside", "rotated"])
def test_a_crop_from_samples_is_the_crop_from_their_floats(dtype, where):
    """The pipeline aligns from the photo's integer samples, making only the region the crop reads
    float: the same crop as from a float copy of the whole photo, border included."""
    top = np.iinfo(dtype).max
    samples = np.rint(smooth_image(600, 800) * top).astype(dtype)
    samples[::7] = top // 3  # texture: a region one pixel short would show
    landmarks = {"inside": FFHQ_TEMPLATE_512 * 0.5 + [300.0, 150.0], "cut by the edge": FFHQ_TEMPLATE_512 * 0.6 - [60.0, 40.0],
                 "mostly outside": FFHQ_TEMPLATE_512 * 0.4 + [700.0, 520.0]}.get(where)
    if landmarks is None:
        angle = 0.6
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        landmarks = (FFHQ_TEMPLATE_512 - 256) @ rotation.T * 0.7 + [400.0, 300.0]
    whole = align_face(samples.astype(np.float32) / np.float32(top), landmarks)
    region = align_face(samples, landmarks)
    np.testing.assert_allclose(region.crop, whole.crop, atol=1e-6)
    np.testing.assert_array_equal(region.affine, whole.affine)


def test_a_large_face_is_aligned_from_samples_without_a_float_copy_of_it():
    """A selfie's face, 2560 px wide, from uint8 samples: a float copy of its region alone would be
    79 MB; made float a band of crop rows at a time, the alignment holds about the crop's size."""
    import tracemalloc

    samples = np.random.default_rng(2).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
    landmarks = FFHQ_TEMPLATE_512 * 5.0 + [200.0, 200.0]
    tracemalloc.start()
    face = align_face(samples, landmarks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * face.crop.nbytes, peak / face.crop.nbytes
    np.testing.assert_allclose(face.crop, align_face(samples.astype(np.float32) / np.float32(255), landmarks).crop, atol=1e-6)


@pytest.mark.parametrize("upscale", [1, 2, 3])
def test_round_trip_is_subpixel_exact(upscale):
    """Align a crop and paste it back unchanged: the photo must come back (no half-pixel shift)."""
    import cv2

    image = smooth_image(400, 500)
    landmarks = FFHQ_TEMPLATE_512 * 0.45 + [120.0, 60.0]
    face = align_face(image, landmarks)
    background = cv2.resize(image, (500 * upscale, 400 * upscale), interpolation=cv2.INTER_LINEAR)
    pasted = paste_faces(background, [(face.crop, face.inverse)], upscale=upscale)
    # compare inside the face where the mask is 1
    inner = (slice(int(60 + 80 * 0.45) * upscale, int(60 + 430 * 0.45) * upscale),
             slice(int(120 + 80 * 0.45) * upscale, int(120 + 430 * 0.45) * upscale))
    error = np.abs(pasted[inner] - background[inner]).max()
    assert error < 4e-3, error
    # the facexlib offset (+0.5*s instead of +(s-1)/2) is measurably worse for s>1
    if upscale > 1:
        shifted = face.inverse * upscale
        shifted[:, 2] += 0.5 * upscale
        assert not np.allclose(shifted, upscaled_inverse(face.inverse, upscale))


def test_paste_is_pure_and_outside_untouched():
    image = smooth_image(300, 300)
    face = align_face(image, FFHQ_TEMPLATE_512 * 0.3 + [80.0, 80.0])
    restored = np.zeros_like(face.crop)
    once = paste_faces(image, [(restored, face.inverse)])
    twice = paste_faces(image, [(restored, face.inverse)])
    np.testing.assert_array_equal(once, twice)
    assert np.array_equal(image, smooth_image(300, 300))  # input not mutated
    np.testing.assert_array_equal(once[:60], image[:60])  # far from the face: bit-exact


def test_paste_into_out_equals_the_pure_paste():
    image = smooth_image(300, 300)
    face = align_face(image, FFHQ_TEMPLATE_512 * 0.3 + [80.0, 80.0])
    restored = np.full_like(face.crop, 0.25)
    pure = paste_faces(image, [(restored, face.inverse)])
    into = image.copy()
    assert paste_faces(into, [(restored, face.inverse)], out=into) is into  # blended in place, no copy
    np.testing.assert_array_equal(into, pure)
    elsewhere = np.zeros_like(image)
    np.testing.assert_array_equal(paste_faces(image, [(restored, face.inverse)], out=elsewhere), pure)
    assert np.array_equal(image, smooth_image(300, 300))
    centre = tuple(np.round(face.inverse @ [256.0, 256.0, 1.0]).astype(int))[::-1]
    assert pure[centre] == pytest.approx([0.25] * 3)  # mask 1 at the crop centre: the restored face


def test_mask_has_no_hard_edge():
    mask = soft_face_mask(512)
    assert mask[0].max() == 0.0 and mask[256, 256] == 1.0
    steps = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert steps < 1.6 / (512 / 8)  # smoothstep slope bound: 1.5 / feather width


@pytest.mark.parametrize("upscale", [1, 2, 4])
def test_a_face_cut_by_the_photo_edge_leaves_no_gray_line(upscale):
    """The crop is gray beyond the photo's edge, and its edge pixels partly gray: pasted back as they
    are, they drew a line along the edge. The face fades out toward the edge instead."""
    import cv2

    from facerestore.faces.paste import photo_edge_fade

    image = np.full((300, 300, 3), 0.1, np.float32)  # dark, far from the gray fill (0.52)
    face = align_face(image, FFHQ_TEMPLATE_512 * 0.5 + [-60.0, 40.0])  # a quarter of the crop lies left of the photo
    assert face.crop[:, :100].mean() > 0.4  # gray fill, as facexlib's alignment makes it
    background = cv2.resize(image, (300 * upscale, 300 * upscale), interpolation=cv2.INTER_LINEAR)
    pasted = paste_faces(background, [(face.crop, face.inverse)], upscale=upscale)
    np.testing.assert_allclose(pasted[:, : 2 * upscale], 0.1, atol=2e-3)  # no gray pulled into the edge columns
    inner = pasted[150 * upscale, 60 * upscale : 120 * upscale]
    np.testing.assert_allclose(inner, 0.1, atol=2e-3)  # and the face's own pixels are pasted as before
    inside = align_face(image, FFHQ_TEMPLATE_512 * 0.3 + [80.0, 80.0])
    assert photo_edge_fade(upscaled_inverse(inside.inverse, upscale), 512, 300 * upscale, 300 * upscale) is None  # the usual case costs nothing


def test_paste_into_uint8_blends_only_each_face_box_in_float():
    """A uint8 photo is pasted into as it is: each face's box is turned into float, blended and
    rounded back. The paste used to make a float32 copy of the whole photo first (here 144 MB for a
    36 MB canvas); now its numpy memory is a few face boxes, and the pixels are the float paste's,
    rounded (faces apart: exactly; where a later face covers an earlier one: within one level)."""
    import tracemalloc

    from facerestore.image_io import to_uint8

    canvas = np.zeros((3000, 4000, 3), np.uint8)
    rng = np.random.default_rng(0)
    canvas[:800, :1200] = rng.integers(0, 256, (800, 1200, 3), dtype=np.uint8)  # texture under the faces
    faces = []
    for x, y in ((100.0, 80.0), (500.0, 120.0), (620.0, 160.0)):  # the last two overlap
        landmarks = FFHQ_TEMPLATE_512 * 0.6 + [x, y]
        inverse = align_face(canvas[:800, :1200].astype(np.float32) / 255, landmarks).inverse
        faces.append((rng.random((512, 512, 3), dtype=np.float32), inverse))
    tracemalloc.start()
    pasted = paste_faces(canvas, faces)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert pasted.dtype == np.uint8
    assert peak - canvas.nbytes < 0.1 * canvas.size * 4, peak / 1e6  # the uint8 copy returned, and far below a float32 canvas
    corner = canvas[:800, :1200].astype(np.float32) / np.float32(255)
    apart = to_uint8(paste_faces(corner, faces[:2]))
    np.testing.assert_array_equal(paste_faces(canvas[:800, :1200], faces[:2]), apart)
    into = canvas.copy()
    assert paste_faces(into, faces, out=into) is into and np.array_equal(into, pasted)  # in place, as the pipeline does
    both = to_uint8(paste_faces(corner, faces))
    difference = np.abs(pasted[:800, :1200].astype(int) - both)
    assert difference.max() == 1 and (difference > 0).mean() < 0.01  # the second rounding, in the overlap only
    assert not pasted[800:].any() and not pasted[:, 1200:].any()  # outside the faces' boxes: untouched


def test_a_face_filling_the_photo_is_pasted_a_band_of_rows_at_a_time(monkeypatch):
    """A selfie's face box is most of the photo (2800 px square here; 6000 px in a 12 MP photo at
    --upscale 2): the warped face, its mask and the box in float were each that size (220 MB here,
    1.3 GB there). Now the box is warped and blended a band of rows at a time: a few MB, whatever
    the face's size, and the pixels of the one-band paste (bands only move warpAffine's float
    rounding, far below a level)."""
    import tracemalloc

    from facerestore.faces import paste

    rng = np.random.default_rng(2)
    canvas = rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    landmarks = FFHQ_TEMPLATE_512 * 5.5 + [300.0, 100.0]
    inverse = align_face(np.zeros((64, 64, 3), np.float32), landmarks).inverse
    faces = [(rng.random((512, 512, 3), dtype=np.float32), inverse)]
    banded = canvas.copy()
    tracemalloc.start()
    paste_faces(banded, faces, out=banded)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.2 * canvas.size * 4, peak / 1e6  # a fifth of a float32 canvas: in bands
    assert not np.array_equal(banded, canvas)
    monkeypatch.setattr(paste, "BAND_PIXELS", 1 << 40)
    whole = paste_faces(canvas, faces)
    difference = np.abs(banded.astype(int) - whole)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-5
