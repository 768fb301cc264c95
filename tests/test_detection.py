"""Face detection: the shared RetinaFace decoder on known heads, and real photos with real weights."""

from __future__ import annotations

import numpy as np
import pytest

from facerestore.faces import detect
from facerestore.faces.detect import DetectedFace, detect_faces, load_detector, select_faces
from facerestore.image_io import read_image


def no_faces(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The priors of an image and detector outputs that score every one as background."""
    priors = detect._priors(height, width)
    n = len(priors)
    conf = np.tile(np.array([[1.0, 0.0]], np.float32), (1, n, 1))
    return priors, np.zeros((1, n, 4), np.float32), conf, np.zeros((1, n, 10), np.float32)


def nearest_prior(priors: np.ndarray, cx: float, cy: float, size: float) -> int:
    """The prior closest to a centre and a size, all as fractions of the image width/height."""
    return int(np.argmin((priors[:, 0] - cx) ** 2 + (priors[:, 1] - cy) ** 2 + (priors[:, 2] - size) ** 2))

class FakeHeads:
    """Heads that put one confident face on the prior nearest a chosen centre (pixels of the detection
    image, or fractions of it with `relative`) and size (pixels of the detection image)."""

    def __init__(self, centre: tuple[float, float], landmark_offsets: np.ndarray, prior_size: int = 64, relative: bool = False) -> None:
        self.centre, self.offsets, self.prior_size, self.relative = centre, landmark_offsets, prior_size, relative
        self.priors: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray):
        _, _, height, width = batch.shape
        priors, loc, conf, landmarks = no_faces(height, width)
        cx, cy = self.centre if self.relative else (self.centre[0] / width, self.centre[1] / height)
        index = nearest_prior(priors, cx, cy, self.prior_size / width)
        conf[0, index] = (0.01, 0.99)
        landmarks[0, index] = self.offsets.ravel()
        self.priors.append(priors[index])
        return loc, conf, landmarks

    @property
    def prior(self) -> np.ndarray:
        """The prior used at the fine scale (the first call)."""
        return self.priors[0]


def test_decoder_matches_the_closed_form():
    """With zero box regression the box is the prior; landmarks are prior centre + offset*0.1*prior size."""
    offsets = np.array([[-1.0, -0.5], [1.0, -0.5], [0.0, 0.2], [-0.7, 1.0], [0.7, 1.0]], np.float32)
    heads = FakeHeads((400.0, 300.0), offsets)
    image = np.zeros((640, 800, 3), np.float32)  # short side 640: no detection resize
    (face,) = detect_faces(image, heads)
    cx, cy, pw, ph = heads.prior * [800, 640, 800, 640]
    np.testing.assert_allclose(face.box, [cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2], atol=1e-3)
    np.testing.assert_allclose(face.landmarks, np.c_[cx + offsets[:, 0] * 0.1 * pw, cy + offsets[:, 1] * 0.1 * ph], atol=1e-3)
    assert face.landmarks.dtype == np.float64 and not np.allclose(face.landmarks, np.round(face.landmarks))
    assert face.score == pytest.approx(0.99)


def test_small_images_are_enlarged_for_detection_only():
    offsets = np.zeros((5, 2), np.float32)
    offsets[1, 0] = 3.0  # eyes apart
    heads = FakeHeads((320.0, 320.0), offsets)
    small = np.zeros((320, 320, 3), np.float32)  # detected at 640, reported at 320
    (face,) = detect_faces(small, heads)
    cx = heads.prior[0] * 640 / 2
    assert face.landmarks[0, 0] == pytest.approx(cx, abs=1e-3)


def test_detection_scales():
    def scales(height, width):
        return [(round(s.factor, 4), round(s.smallest, 1), s.largest if s.largest == np.inf else round(s.largest, 1))
                for s in detect.detection_scales(height, width)]

    # fine: short side to 640 (enlarging) or 3 MP (shrinking, not below 640), faces up to 320 px there;
    # coarse: short side to 400, faces from half that limit (in photo pixels)
    assert scales(320, 320) == [(2.0, 0, 160.0), (1.25, 80.0, np.inf)]
    assert scales(640, 800) == [(1.0, 0, 320.0), (0.625, 160.0, np.inf)]
    assert scales(3024, 4032) == [(round(2048 / 4032, 4), 0, 630.0), (round(400 / 3024, 4), 315.0, np.inf)]
    assert scales(1000, 8000) == [(0.64, 0, 500.0), (0.4, 250.0, np.inf)]  # a panorama keeps a short side of 640
    (strip,) = detect.detection_scales(2, 3000)  # enlarged to 3 MP, not to a short side of 640 (409 MP: killed for memory)
    assert 2 * 3000 * strip.factor**2 == pytest.approx(2048 * 1536)


def sized_heads(prior_size: int) -> FakeHeads:
    offsets = np.zeros((5, 2), np.float32)
    offsets[1, 0] = 3.0  # eyes apart
    return FakeHeads((0.5, 0.5), offsets, prior_size=prior_size, relative=True)


def test_a_face_too_big_for_the_fine_scale_comes_from_the_coarse_one():
    image = np.zeros((3024, 4032, 3), np.float32)
    fine, coarse = detect.detection_scales(3024, 4032)
    (big,) = detect_faces(image, sized_heads(512))  # 512 px at both scales: ~1000 px (too big) fine, ~3900 coarse
    width = big.box[2] - big.box[0]
    assert width == pytest.approx(512 / coarse.factor, rel=1e-3)
    (small,) = detect_faces(image, sized_heads(32))  # ~63 px fine (kept), ~242 px coarse (below its 315)
    assert small.box[2] - small.box[0] == pytest.approx(32 / fine.factor, rel=1e-3)


def test_parts_inside_a_much_larger_face_are_dropped():
    boxes = np.array([[0, 0, 1000, 1000], [400, 400, 600, 600], [900, 900, 1100, 1100], [2000, 0, 2100, 100],
                      [50, 50, 850, 850]], np.float64)
    # the second lies inside the first (a part); the third is only a quarter inside; the fourth is elsewhere;
    # the fifth is inside the first at 64% of its area (not much smaller: kept), and holds the second (a part of it too)
    assert detect._parts(boxes, [0, 1, 2, 3, 4]) == {1}
    assert detect._parts(boxes, [1, 2, 3]) == set()  # without a larger face nothing is a part


class FaceInFaintBoxHeads:
    """A confident face (prior 32, eyes apart) at the centre, inside a large box of near-zero confidence (prior 256)."""

    def __call__(self, batch: np.ndarray):
        _, _, height, width = batch.shape
        priors, loc, conf, landmarks = no_faces(height, width)
        for size, score in ((32, 0.99), (256, 0.01)):
            index = nearest_prior(priors, 0.5, 0.5, size / width)
            conf[0, index] = (1 - score, score)
            landmarks[0, index, 2] = 3.0  # right eye 0.3 prior sizes to the right of the left one
        return loc, conf, landmarks


def test_a_faint_large_box_does_not_swallow_a_confident_face():
    """A low --detection-threshold lets near-zero boxes through; a confident face inside one is no part of it
    (groups/26.jpg at 0.02: 10 of its 77 faces were left, the others dropped as parts of faint boxes)."""
    image = np.zeros((640, 800, 3), np.float32)
    (face,) = detect_faces(image, FaceInFaintBoxHeads(), threshold=0.5)
    low = detect_faces(image, FaceInFaintBoxHeads(), threshold=0.001, min_eye_distance=0.0)
    assert face.score == pytest.approx(0.99) and face.box in [f.box for f in low]  # a lower threshold adds boxes, never loses a face
    boxes = np.array([[0, 0, 1000, 1000], [400, 400, 600, 600]], np.float64)
    assert detect._parts(boxes, [1, 0], np.array([0.5, 0.9])) == set()  # the holder is less confident and below 0.8
    assert detect._parts(boxes, [0, 1], np.array([0.85, 0.9])) == {1}  # a face at 0.8 or more still drops its parts


def test_threshold_and_eye_distance_filter():
    heads = FakeHeads((400.0, 300.0), np.zeros((5, 2), np.float32))  # all landmarks on one point
    image = np.zeros((640, 800, 3), np.float32)
    assert detect_faces(image, heads, min_eye_distance=0.0)
    assert detect_faces(image, heads, min_eye_distance=1.0) == ()  # eye distance 0: rejected
    assert detect_faces(image, heads, threshold=0.995, min_eye_distance=0.0) == ()


def test_the_threshold_keeps_a_face_scoring_exactly_it():
    """docs/usage.md: a face is kept when its confidence is at least --detection-threshold."""
    heads = FakeHeads((400.0, 300.0), np.zeros((5, 2), np.float32))
    image = np.zeros((640, 800, 3), np.float32)
    (face,) = detect_faces(image, heads, min_eye_distance=0.0)
    assert len(detect_faces(image, heads, threshold=face.score, min_eye_distance=0.0)) == 1


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    assert detect._nms(boxes, np.array([0.9, 0.95, 0.5]), 0.4) == [1, 2]


def test_select_center_face():
    def face(x: float) -> DetectedFace:
        return DetectedFace(box=(x, 0.0, x + 10, 10.0), score=0.9, landmarks=np.zeros((5, 2)))

    faces = (face(0), face(45), face(90))
    assert select_faces(faces, (10, 100, 3), only_center_face=True) == (faces[1],)
    assert select_faces(faces, (10, 100, 3)) == faces


def test_unknown_detector_is_a_usage_error():
    from facerestore.errors import UsageError

    with pytest.raises(UsageError, match="unknown detector"):
        load_detector("yolo")


def test_detector_label_names_the_variant_and_the_weights_file(tmp_path):
    """A benchmark's header must say which RetinaFace ran: the class name alone does not tell
    mobile0.25 from resnet50, nor the bundled net from the official weights."""
    import torch
    from facexlib.detection.retinaface import RetinaFace

    weights = tmp_path / "my_mobilenet.pth"
    torch.save(RetinaFace(network_name="mobile0.25", half=False, phase="test", device=torch.device("cpu")).state_dict(), weights)
    torch_net = load_detector("retinaface_mobile0.25", weights=weights)
    assert detect.describe_detector(torch_net) == f"RetinaFace mobile0.25 (facexlib, torch), weights {weights}"
    from retinaface import weights as bundled

    assert detect.describe_detector(load_detector("bundled")) == f"bundled RetinaFace mobile0.25 (ONNX, onnxruntime's own threads), weights embedded in {bundled.__file__}"
    assert detect.describe_detector(object()) == "object"  # a stand-in without a label


def test_auto_detector_label_names_the_shared_file_not_its_cache_conversion(shared_weights, monkeypatch):
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared_weights))
    detector = load_detector("auto")
    assert detect.describe_detector(detector) == f"RetinaFace mobile0.25 (facexlib, torch), weights {shared_weights / 'detection_mobilenet0.25_Final.pth'}"


def test_auto_detector_follows_the_weights_folders(shared_weights, monkeypatch):
    """`auto` is cached per weights folders: one built before FACERESTORE_WEIGHTS named the official
    file must not be returned after (nor the official one after the variable is gone)."""
    assert isinstance(load_detector("auto"), detect.OnnxRetinaFace)  # conftest: no FACERESTORE_WEIGHTS
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared_weights))
    assert isinstance(load_detector("auto"), detect.TorchRetinaFace)
    monkeypatch.delenv("FACERESTORE_WEIGHTS")
    assert isinstance(load_detector("auto"), detect.OnnxRetinaFace)


def official_mobilenet(folder, monkeypatch):
    """A mobile0.25 RetinaFace checkpoint (random weights) in `folder` under the official name, its
    sha256 and size pinned in the catalogue: the official file, as far as the store can tell."""
    import torch
    from facexlib.detection.retinaface import RetinaFace
    from helpers import pin_catalogue_hashes

    torch.manual_seed(0)
    path = folder / "detection_mobilenet0.25_Final.pth"
    torch.save(RetinaFace(network_name="mobile0.25", half=False, phase="test", device=torch.device("cpu")).state_dict(), path)
    pin_catalogue_hashes(monkeypatch, {"detector": path}, {"detector": "detection_mobilenet0.25_Final"})
    return path


def test_auto_passes_over_a_damaged_optional_detector_with_one_warning(tmp_path, monkeypatch, capsys):
    """`auto` is "the best detector whose weights are present": a damaged ResNet50 file made every
    run fail, though mobile0.25 (or the bundled net) works. Now it is passed over with one line naming
    it and its cure, and the next detector is used; asked for by name, it still fails."""
    from facerestore.errors import ChecksumMismatch

    folder = tmp_path / "weights"
    folder.mkdir()
    mobilenet = official_mobilenet(folder, monkeypatch)
    resnet = folder / "detection_Resnet50_Final.pth"
    resnet.write_bytes(b"cut short")
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(folder))
    load_detector.cache_clear()

    detector = load_detector("auto")
    assert detect.describe_detector(detector) == f"RetinaFace mobile0.25 (facexlib, torch), weights {mobilenet}"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: --detector auto uses retinaface_mobile0.25 instead: {resnet} has sha256 ")
    assert lines[0].endswith("run `facerestore weights import detection_Resnet50_Final.pth`")  # conftest: offline
    assert load_detector("auto") is detector and capsys.readouterr().err == ""  # built once, said once

    with pytest.raises(ChecksumMismatch, match=f"^{resnet} has sha256 "):
        load_detector("retinaface_resnet50")

    mobilenet.write_bytes(mobilenet.read_bytes()[:1000])  # both damaged: the bundled net, one line for each
    load_detector.cache_clear()
    assert isinstance(load_detector("auto"), detect.OnnxRetinaFace)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 2)[2].split(" has ")[0] for line in lines] == [str(resnet), str(mobilenet)]
    assert all(line.startswith("warning: --detector auto uses the bundled detector instead: ") for line in lines)

    load_detector.cache_clear()
    monkeypatch.setenv("RANK", "1")  # under torchrun rank 0 alone says it
    assert isinstance(load_detector("auto"), detect.OnnxRetinaFace) and capsys.readouterr().err == ""


def test_a_restore_with_a_damaged_optional_detector_file_succeeds(tmp_path, monkeypatch, tiny_baseline):
    """The QA run: a damaged detection_mobilenet0.25_Final.pth in FACERESTORE_WEIGHTS made
    `facerestore photo.jpg --offline` exit 1; it restores with the bundled detector, warning once."""
    import cv2
    from typer.testing import CliRunner

    from facerestore.cli.app import app, register

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "detection_mobilenet0.25_Final.pth").write_bytes(b"\0" * 1000)
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(folder))
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 128, np.uint8))
    load_detector.cache_clear()
    register()
    result = CliRunner().invoke(app, [str(photo), "-o", str(tmp_path / "out"), "--offline", "-q", "--weights", str(tiny_baseline)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "--detector auto" in line]
    assert len(warnings) == 1 and "detection_mobilenet0.25_Final.pth has sha256" in warnings[0], result.output
    assert "`facerestore weights import detection_mobilenet0.25_Final.pth`" in warnings[0] and "pull" not in warnings[0]
    load_detector.cache_clear()
    named = CliRunner().invoke(app, [str(photo), "-o", str(tmp_path / "out2"), "--offline", "-q", "--detector", "retinaface_mobile0.25",
                                     "--weights", str(tiny_baseline)], catch_exceptions=False)
    assert named.exit_code == 1 and named.output.startswith("error: ") and "detection_mobilenet0.25_Final.pth has sha256" in named.output


def _match(a: tuple[DetectedFace, ...], b: tuple[DetectedFace, ...]) -> list[float]:
    """For each face of a, the landmark error to its nearest face in b, relative to the eye distance."""
    errors = []
    for face in a:
        other = min(b, key=lambda f: np.abs(np.subtract(f.box, face.box)).sum())
        errors.append(float(np.abs(face.landmarks - other.landmarks).max() / face.eye_distance))
    return errors


GROUPS = ["1.jpg", "10.jpg", "5.jpg"]


def test_bundled_detector_agrees_with_official_mobilenet(shared_data, shared_weights, monkeypatch):
    """The offline ONNX net and facexlib's mobile0.25 with the real weights find the same faces."""
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared_weights))
    bundled = load_detector("bundled")
    official = load_detector("retinaface_mobile0.25", offline=True)
    assert isinstance(official, detect.TorchRetinaFace)
    errors = []
    for name in GROUPS + ["../degraded/Blake_Lively.jpg", "../old/Solvay_conference_1927.png"]:
        image = read_image(shared_data / "photos" / "groups" / name).rgb
        a, b = detect_faces(image, bundled), detect_faces(image, official)
        assert abs(len(a) - len(b)) <= max(1, 0.05 * len(b)), (name, len(a), len(b))
        errors += _match(a, b)
    # measured: median 0.08, max 0.19 of the eye distance (the nets' weights differ; see detect.py)
    assert np.median(errors) < 0.12 and max(errors) < 0.3


class RecordingHeads:
    """Heads that find nothing and keep the batch the detector was given."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray):
        self.batches.append(batch)
        return no_faces(*batch.shape[2:])[1:]


@pytest.mark.parametrize("shape", [(300, 400), (1500, 2600)])  # detected at its size; shrunk to 3 MP
def test_samples_reach_the_detector_as_their_floats_do(shape):
    """The pipeline detects on the photo's uint8 / uint16 samples (no float copy of the photo): the
    net sees what it sees for the same photo in float, within the shrink's integer rounding."""
    rng = np.random.default_rng(3)
    samples16 = rng.integers(0, 65536, (*shape, 3), dtype=np.uint16)
    samples8 = (samples16 >> 8).astype(np.uint8)
    for samples in (samples8, samples16):
        as_float, as_samples = RecordingHeads(), RecordingHeads()
        detect_faces(samples.astype(np.float32) / np.iinfo(samples.dtype).max, as_float)
        detect_faces(samples, as_samples)
        for a, b in zip(as_float.batches, as_samples.batches, strict=True):
            assert a.shape == b.shape
            shrunk = a.shape[2:] != shape
            tolerance = 0.51 if shrunk and samples.dtype == np.uint8 else 0.01  # a level of 255, or float rounding
            assert np.abs(a - b).max() <= tolerance, (samples.dtype, a.shape)


def test_real_photos_give_the_same_faces_from_samples_as_from_floats(shared_data, shared_weights, monkeypatch):
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared_weights))
    detector = load_detector("auto")
    for path in [shared_data / "photos" / "groups" / "5.jpg", shared_data / "photos" / "large" / "20200320.101220.jpg"]:
        picture = read_image(path)
        a, b = detect_faces(picture.rgb, detector), detect_faces(picture.samples, detector)
        assert len(a) == len(b) > 0, path
        assert max(_match(a, b)) < 0.01, path  # of the eye distance


def test_real_photos_face_counts(shared_data, shared_weights, monkeypatch):
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared_weights))
    detector = load_detector("auto")  # finds the official mobile0.25 in FACERESTORE_WEIGHTS
    assert isinstance(detector, detect.TorchRetinaFace)
    counts = {name: len(detect_faces(read_image(shared_data / "photos" / "degraded" / name).rgb, detector)) for name in ("Blake_Lively.jpg", "00.jpg")}
    assert counts == {"Blake_Lively.jpg": 2, "00.jpg": 4}


def test_phone_selfies_give_their_one_big_face(shared_data, shared_weights, monkeypatch):
    """At full size these 12 MP faces (over 1000 px) are missed and their noses, mouths and hands are
    found instead; the coarse scale finds each face, and the fine one finds nothing else."""
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared_weights))
    detector = load_detector("auto")
    for name in ("20200320.101220.jpg", "2020-12-10 175750.jpg", "2021-03-10 160843(29).jpg"):
        faces = detect_faces(read_image(shared_data / "photos" / "large" / name).rgb, detector)
        assert len(faces) == 1, (name, [f.box for f in faces])
        assert faces[0].box[2] - faces[0].box[0] > 1000 and faces[0].score > 0.99
    # the same child as a tight 724x900 portrait: the face alone, not also its upper half (0.92 before)
    import cv2

    selfie = read_image(shared_data / "photos" / "large" / "20200320.101220.jpg").rgb[:2300, 450:2300]
    portrait = cv2.resize(selfie, (724, 900), interpolation=cv2.INTER_AREA)
    (face,) = detect_faces(portrait, detector)
    assert face.box[2] - face.box[0] > 500
