"""Identity (ArcFace cosine similarity): the fixed FFHQ -> ArcFace map, the anti-aliased crop, and
with the real w600k_mbf.onnx the same person scores far above two different people."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facerestore.faces.align import FFHQ_TEMPLATE_512
from facerestore.metrics import compute
from facerestore.metrics.identity import (
    ARCFACE_TEMPLATE_112,
    FFHQ512_TO_ARCFACE112,
    arcface_crop,
    identity_degree,
    identity_similarity,
)
from facerestore.metrics.result import MetricUnavailable


def test_the_fixed_map_is_insightfaces_similarity_fit_of_the_two_templates():
    """insightface fits the map with skimage's SimilarityTransform (Umeyama); ours must be that fit."""
    from skimage.transform import SimilarityTransform

    fit = SimilarityTransform.from_estimate(FFHQ_TEMPLATE_512, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(FFHQ512_TO_ARCFACE112, fit.params[:2], atol=1e-9)
    mapped = np.c_[FFHQ_TEMPLATE_512, np.ones(5)] @ FFHQ512_TO_ARCFACE112.T
    # the two templates differ a little in shape (FFHQ's mouth is wider): at most ~2 px at 112
    assert np.abs(mapped - ARCFACE_TEMPLATE_112).max() < 2.5
    scale = np.sqrt(np.linalg.det(FFHQ512_TO_ARCFACE112[:, :2]))
    assert 0.28 < scale < 0.30  # a 512 crop shrinks about 3.4x


def test_the_antialiased_crop_lands_where_the_plain_warp_does():
    """On a smooth image, shrink-then-warp and a direct warp sample the same places."""
    y, x = np.mgrid[0:512, 0:512].astype(np.float32)
    smooth = np.stack([0.5 + 0.4 * np.sin(x / 41.0), 0.5 + 0.4 * np.cos(y / 37.0), 0.5 + 0.3 * np.sin((x - y) / 59.0)], -1)
    direct = cv2.warpAffine(smooth, FFHQ512_TO_ARCFACE112, (112, 112), flags=cv2.INTER_LINEAR)
    ours = arcface_crop(smooth, FFHQ_TEMPLATE_512)
    assert ours.shape == (112, 112, 3) and ours.dtype == np.float32
    assert np.abs(ours[4:-4, 4:-4] - direct[4:-4, 4:-4]).max() < 0.01


def test_unavailable_without_the_onnx_file():
    image = np.zeros((512, 512, 3), np.float32)
    with pytest.raises(MetricUnavailable, match="w600k_mbf.onnx"):
        identity_similarity(image, image)
    result = compute("identity", image, image)
    assert result.status == "unavailable" and "facerestore weights import w600k_mbf.onnx" in result.reason


def test_a_file_that_is_no_onnx_model_is_one_line_not_onnxruntimes_traceback(tmp_path):
    pytest.importorskip("onnxruntime")
    from facerestore.errors import UnsupportedCheckpoint
    from facerestore.metrics.identity import load_arcface

    junk = tmp_path / "w600k_mbf.onnx"
    junk.write_bytes(b"<html>not found</html>")
    with pytest.raises(UnsupportedCheckpoint) as info:
        load_arcface(junk)
    assert info.value.one_line() == (f"{junk} cannot be loaded by onnxruntime (Protobuf parsing failed.); pass insightface's w600k_mbf.onnx "
                                     "(catalogue name arcface_w600k_mbf); a truncated download: import it again")
    image = np.zeros((512, 512, 3), np.float32)
    result = compute("identity", image, image, weights=junk)
    assert result.status == "unavailable" and "cannot be loaded by onnxruntime" in result.reason  # was "failed", with the traceback's text


def _degrade(image: np.ndarray, seed: int, blur: float, noise: float, quality: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = cv2.GaussianBlur(image, (0, 0), blur)
    x = np.clip(x + noise * rng.standard_normal(x.shape), 0, 1)
    ok, data = cv2.imencode(".jpg", np.round(x[..., ::-1] * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


@pytest.fixture
def ffhq_faces(shared_data, shared_weights, monkeypatch) -> list[np.ndarray]:
    """Three different FFHQ people as aligned 512 crops; the real ArcFace found via FACERESTORE_WEIGHTS."""
    from facerestore.image_io import read_image

    if not (shared_weights / "w600k_mbf.onnx").is_file():
        pytest.skip("needs ../shared/weights/w600k_mbf.onnx")
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared_weights))
    paths = [shared_data / "faces-hq" / "ffhq" / f"{n}.png" for n in ("00001", "00016", "00018")]
    if not all(p.is_file() for p in paths):
        pytest.skip("needs ../shared/data/faces-hq/ffhq")
    return [read_image(p).rgb for p in paths]


def test_same_person_scores_far_above_different_people(ffhq_faces):
    same, different = [], []
    for i, face in enumerate(ffhq_faces):
        first = _degrade(face, seed=i, blur=2.0, noise=0.03, quality=40)
        second = _degrade(face, seed=10 + i, blur=1.0, noise=0.05, quality=30)
        other = _degrade(ffhq_faces[(i + 1) % 3], seed=20 + i, blur=1.0, noise=0.05, quality=30)
        same.append(identity_similarity(first, second))
        different.append(identity_similarity(first, other))
    assert min(same) > 0.8, same
    assert max(different) < 0.3, different
    assert identity_similarity(ffhq_faces[0], ffhq_faces[0]) == pytest.approx(1.0, abs=1e-6)
    assert identity_degree(ffhq_faces[0], ffhq_faces[0]) < 0.2


def test_detected_landmarks_give_about_the_same_score_as_the_template(ffhq_faces):
    face = ffhq_faces[0]
    degraded = _degrade(face, seed=5, blur=2.0, noise=0.03, quality=40)
    aligned = identity_similarity(face, degraded)
    detected = identity_similarity(face, degraded, aligned=False)
    assert detected == pytest.approx(aligned, abs=0.05)


def test_reference_identity_embeds_each_reference_once_and_scores_as_identity_similarity(ffhq_faces, monkeypatch):
    import facerestore.metrics.identity as identity

    embedded = []
    real = identity.face_embedding
    monkeypatch.setattr(identity, "face_embedding", lambda image, **options: embedded.append(id(image)) or real(image, **options))
    scorer = identity.ReferenceIdentity()
    restored = [_degrade(face, seed=i, blur=2.0, noise=0.03, quality=40) for i, face in enumerate(ffhq_faces[:2])]
    for _ in range(3):  # three validation steps
        scores = [scorer(r, face) for r, face in zip(restored, ffhq_faces[:2])]
    assert scores == [pytest.approx(real(r) @ real(face), abs=1e-9) for r, face in zip(restored, ffhq_faces[:2])]
    assert embedded.count(id(ffhq_faces[0])) == 1 and embedded.count(id(ffhq_faces[1])) == 1 and len(embedded) == 2 + 6
