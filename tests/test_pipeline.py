"""The restore pipeline on synthetic photos: batching, alpha, 16-bit, gray, no-face, per-photo seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facerestore import pipeline
from facerestore.faces.align import FFHQ_TEMPLATE_512
from facerestore.faces.detect import DetectedFace
from facerestore.errors import BadImage, FaceRestoreError
from facerestore.image_io import read_image, write_image
from facerestore.methods.base import MethodInfo
from facerestore.pipeline import OutputNamer, RestoreOptions, Tools, restore_crops, restore_file


class Darken:
    """A fake method: a visible, deterministic change, recording the batch sizes it is given."""

    info = MethodInfo(name="darken", summary="", paper="", license="", commercial_use=True)

    def __init__(self) -> None:
        self.batches: list[int] = []

    def restore(self, crops: torch.Tensor, generator=None) -> torch.Tensor:
        self.batches.append(crops.shape[0])
        noise = torch.rand(crops.shape, generator=generator) * 1e-3
        return crops * 0.5 + noise


def faces_at(*origins: tuple[float, float], scale: float = 0.25) -> tuple[DetectedFace, ...]:
    out = []
    for x, y in origins:
        landmarks = FFHQ_TEMPLATE_512 * scale + [x, y]
        out.append(DetectedFace(box=(x, y, x + 512 * scale, y + 512 * scale), score=0.99, landmarks=landmarks))
    return tuple(out)


@pytest.fixture
def three_faces(monkeypatch):
    found = faces_at((10, 10), (150, 20), (290, 30))
    monkeypatch.setattr(pipeline, "detect_faces", lambda image, detector, **kw: found)
    return found


def photo(h: int = 200, w: int = 440) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([0.6 + 0.3 * np.sin(x / 17), 0.6 + 0.3 * np.cos(y / 13), np.full_like(x, 0.7)], -1)


def run_file(tmp_path: Path, source: Path, method, **options) -> pipeline.ImageResult:
    opts = RestoreOptions(output=tmp_path / "out", **options)
    return restore_file(source, source.stem, Tools(method=method, detector=object()), opts, OutputNamer(opts, {source}))


def test_all_faces_of_a_photo_in_batches(tmp_path, three_faces):
    method = Darken()
    source = write_image(tmp_path / "p.png", photo())
    result = run_file(tmp_path, source, method, batch_size=2, upscale=1)
    assert method.batches == [2, 1] and result.faces == 3
    out = read_image(tmp_path / "out" / "restored_imgs" / "p.png").rgb
    original = read_image(source).rgb
    assert out[70, 70].mean() < original[70, 70].mean() - 0.2  # inside face 0: darkened
    np.testing.assert_allclose(out[195, 5], original[195, 5], atol=1 / 255)  # far from faces: untouched


def test_the_background_is_timed_apart_from_the_per_face_paste(tmp_path, three_faces, monkeypatch):
    """The photo-sized background is made once per photo: counted in `paste`, it made a few faces'
    paste time look like the whole photo's resize (bench_pipeline's 'paste ms per face')."""
    import time

    real = pipeline.scale_background

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "scale_background", slow)
    picture = read_image(write_image(tmp_path / "p.png", photo()))
    _, faces, seconds = pipeline.restore_picture(picture, Tools(method=Darken(), detector=object()), RestoreOptions(output=Path("unused"), upscale=2))
    assert faces == 3
    assert set(seconds) == {"detect", "prepare", "align", "restore", "paste"}
    assert seconds["prepare"] >= 0.5 and seconds["paste"] < 0.3


def _float_photo(picture, found, upscale: float, dtype=np.uint8):
    """The restored photo as restore_picture made it before it kept the background in uint8: a
    float32 photo-sized background (resized in float), every face pasted in float, rounded once."""
    from facerestore.faces.align import align_face
    from facerestore.faces.paste import paste_faces
    from facerestore.image_io import to_samples

    size = (round(picture.width * upscale), round(picture.height * upscale))
    background = picture.rgb.copy() if upscale == 1 else np.clip(pipeline.scale_background(picture.rgb, picture.alpha, size), 0, 1)
    faces = [align_face(picture.rgb, f.landmarks, 512) for f in found]
    restored = restore_crops(Darken(), [f.crop for f in faces], batch_size=8, seed=0)
    return to_samples(paste_faces(background, [(r, f.inverse) for r, f in zip(restored, faces)], upscale=upscale), dtype)


@pytest.mark.parametrize("upscale", [1, 2])
def test_the_photo_is_pasted_in_uint8_with_the_float_paste_result(tmp_path, monkeypatch, upscale):
    """The background was a float32 copy of the photo, pasted into and rounded when written; now it
    stays uint8 (uint16 for 16-bit sources) and only each face's box is blended in float: the same
    pixels at --upscale 1 with faces apart, within one level where faces overlap (a second rounding)
    or the background was enlarged (OpenCV's uint8 Lanczos)."""
    rng = np.random.default_rng(1)
    found = faces_at((10, 10), (150, 20), (190, 30), (290, 30))  # the 2nd and 3rd overlap
    monkeypatch.setattr(pipeline, "detect_faces", lambda image, detector, **kw: found)
    rgb = np.clip(photo(400, 600) + rng.normal(0, 0.05, (400, 600, 3)).astype(np.float32), 0, 1)  # texture: rounding shows
    picture = read_image(write_image(tmp_path / "p.png", rgb))
    tools, options = Tools(method=Darken(), detector=object()), RestoreOptions(output=tmp_path, upscale=upscale)
    out, faces, _ = pipeline.restore_picture(picture, tools, options)
    assert faces == 4 and out.dtype == np.uint8 and out.shape == (400 * upscale, 600 * upscale, 3)
    difference = np.abs(out.astype(int) - _float_photo(picture, found, upscale))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.02
    if upscale == 1:
        np.testing.assert_array_equal(difference[:, :140], 0)  # the first face, apart from the others: exact
    picture16 = read_image(write_image(tmp_path / "p16.png", rgb, bit_depth=16))
    out16, _, _ = pipeline.restore_picture(picture16, tools, options)
    assert out16.dtype == np.uint16  # a 16-bit photo stays 16-bit, as close to the float paste
    assert np.abs(out16.astype(int) - _float_photo(picture16, found, upscale, np.uint16)).max() <= 1


def test_restoring_a_large_photo_holds_no_float_copy_of_it(tmp_path, monkeypatch):
    """--upscale 2 on a 3 MP photo: the float32 background alone was 144 MB (585 MB for a 12 MP
    photo); now the pipeline's numpy memory is the 36 MB uint8 output and one face's batch."""
    import tracemalloc

    monkeypatch.setattr(pipeline, "detect_faces", lambda image, detector, **kw: faces_at((300, 200), scale=0.5))
    picture = read_image(write_image(tmp_path / "big.png", photo(1500, 2000)))
    tracemalloc.start()
    out, faces, _ = pipeline.restore_picture(picture, Tools(method=Darken(), detector=object()), RestoreOptions(output=tmp_path, upscale=2, batch_size=1))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert faces == 1 and out.shape == (3000, 4000, 3) and out.dtype == np.uint8
    assert peak < 0.6 * out.size * 4, peak / 1e6  # below a float32 copy of the output, with room for the face's arrays


def test_detection_and_alignment_read_the_samples_not_a_float_photo(tmp_path, monkeypatch):
    """At --upscale 1 the pipeline's numpy memory is the uint8 background and one face's float
    region: the decoded photo stays in samples (a float32 copy was 4 times their size)."""
    import tracemalloc

    seen = []

    def detect(image, detector, **kw):
        seen.append(image.dtype)
        return faces_at((300, 200), scale=0.5)

    monkeypatch.setattr(pipeline, "detect_faces", detect)
    picture = read_image(write_image(tmp_path / "big.png", photo(1500, 2000)))
    tracemalloc.start()
    out, faces, _ = pipeline.restore_picture(picture, Tools(method=Darken(), detector=object()), RestoreOptions(output=tmp_path, upscale=1, batch_size=1))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert faces == 1 and seen == [np.uint8] and out.dtype == np.uint8
    # the background copy (1x) and the face's arrays (1x here); a float copy of the photo alone is 4x
    assert peak < 3 * picture.samples.nbytes, peak / picture.samples.nbytes


def test_only_one_batch_of_crops_is_held_at_a_time(tmp_path, monkeypatch):
    """A class photo of 600 faces must not hold 600 pairs of 3 MB crops: align, restore, paste and
    write a batch, then drop it."""
    import gc
    import itertools
    import weakref

    alive: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # the crops not yet freed
    align, numbers = pipeline.align_face, itertools.count()

    def tracked(*args, **kwargs):
        face = align(*args, **kwargs)
        alive[next(numbers)] = face.crop
        return face

    class Counting(Darken):
        most = 0

        def restore(self, crops, generator=None):
            gc.collect()
            Counting.most = max(Counting.most, len(alive))
            return super().restore(crops, generator)

    monkeypatch.setattr(pipeline, "align_face", tracked)
    monkeypatch.setattr(pipeline, "detect_faces", lambda image, detector, **kw: faces_at(*[(10 + 40 * i, 10) for i in range(7)], scale=0.07))
    source = write_image(tmp_path / "class.png", photo())
    method = Counting()
    result = run_file(tmp_path, source, method, batch_size=2, upscale=1)
    assert result.faces == 7 and method.batches == [2, 2, 2, 1] and Counting.most == 2
    assert sorted(p.name for p in (tmp_path / "out" / "restored_faces").iterdir()) == [f"class_{i:02d}.png" for i in range(7)]


@pytest.mark.parametrize(("index", "faces", "tag"), [(0, 1, "_00"), (7, 99, "_07"), (99, 100, "_99"), (7, 101, "_007"), (276, 277, "_276"), (5, 1000, "_005"), (5, 1001, "_0005")])
def test_face_numbers_have_one_width_per_photo(index, faces, tag):
    assert pipeline.face_number(index, faces) == tag


def test_the_face_files_of_a_photo_of_over_100_faces_sort_in_face_order(tmp_path, monkeypatch):
    """A 277-face class photo gave 17_18.png, 17_180.png, ... 17_19.png: the width changed at face 100."""
    grid = [(8 + 20 * (i % 21), 8 + 38 * (i // 21)) for i in range(101)]
    monkeypatch.setattr(pipeline, "detect_faces", lambda image, detector, **kw: faces_at(*grid, scale=0.02))
    monkeypatch.setattr(pipeline, "write_image", lambda path, *args, **kwargs: Path(path))  # the names are the point, not 303 PNGs
    source = write_image(tmp_path / "class.png", photo())
    result = run_file(tmp_path, source, Darken(), upscale=1)
    assert result.faces == 101
    for folder in ("cropped_faces", "restored_faces", "cmp"):
        names = [p.name for p in result.outputs if p.parent.name == folder]
        assert names == [f"class_{i:03d}.png" for i in range(101)], folder


def test_batching_does_not_change_results():
    crops = [np.random.default_rng(i).random((512, 512, 3), dtype=np.float32) for i in range(3)]
    together = restore_crops(Darken(), crops, batch_size=8, seed=3)
    again = restore_crops(Darken(), crops, batch_size=8, seed=3)
    np.testing.assert_array_equal(together[2], again[2])  # same seed, same output
    apart = restore_crops(Darken(), crops, batch_size=1, seed=3)
    np.testing.assert_allclose(together[0], apart[0], atol=2e-3)  # only the random term may differ


def test_alpha_and_16_bit_survive(tmp_path, three_faces):
    alpha = np.linspace(0, 1, 200 * 440, dtype=np.float32).reshape(200, 440)
    source = write_image(tmp_path / "p.png", photo(), alpha=alpha, bit_depth=16)
    run_file(tmp_path, source, Darken(), upscale=2)
    out = read_image(tmp_path / "out" / "restored_imgs" / "p.png")
    assert out.bit_depth == 16 and out.alpha is not None and out.rgb.shape == (400, 880, 3)
    assert np.abs(out.alpha[::2, ::2] - alpha).max() < 0.01  # resized with the photo, not restored
    face = read_image(tmp_path / "out" / "restored_faces" / "p_00.png")
    assert face.bit_depth == 16


FORMAT_NAMES = {"jpg": "JPEG", "bmp": "BMP", "png": "PNG"}


@pytest.mark.parametrize("ext, warned", [("jpg", True), ("png", False), ("bmp", True)])
def test_transparency_a_format_cannot_hold_is_flattened_with_a_warning(tmp_path, three_faces, ext, warned):
    alpha = np.ones((200, 440), np.float32)
    alpha[:, :20] = 0.0
    source = write_image(tmp_path / "p.png", photo(), alpha=alpha)
    result = run_file(tmp_path, source, Darken(), upscale=1, ext=ext)
    flattened = [line for line in result.warnings if "transparent pixels" in line]
    assert flattened == ([f"{source} has transparent pixels, which {FORMAT_NAMES[ext]} cannot hold: p.{ext} shows them on white "
                          "(pass --ext png to keep the transparency)"] if warned else [])
    out = read_image(tmp_path / "out" / "restored_imgs" / f"p.{ext}")
    assert (out.alpha is None) == warned
    if warned:
        assert out.rgb[100, :15].min() > 0.9  # white where the photo was transparent


def test_an_opaque_alpha_channel_written_as_jpeg_is_no_news(tmp_path, three_faces):
    source = write_image(tmp_path / "p.png", photo(), alpha=np.ones((200, 440), np.float32))
    assert run_file(tmp_path, source, Darken(), upscale=1, ext="jpg").warnings == []


def test_upscaling_a_cutout_leaves_no_dark_halo():
    """A white cutout on transparent black: the black under alpha 0 must not darken the enlarged edge."""
    rgb = np.zeros((32, 32, 3), np.float32)
    rgb[:, :16] = 1.0
    alpha = (rgb[:, :, 0] > 0).astype(np.float32)
    big = pipeline.scale_background(rgb, alpha, (64, 64))
    big_alpha = pipeline.scale_alpha(alpha, (64, 64))
    assert 0 < big_alpha[5, 32] < 1  # the edge is soft
    over_white = big * big_alpha[:, :, None] + (1 - big_alpha[:, :, None])
    assert over_white.min() > 0.999  # with the colours resized as they are, the edge would show as 205/255
    np.testing.assert_allclose(pipeline.scale_background(rgb, None, (64, 64))[:, :24], 1.0, atol=0.02)  # plain Lanczos without alpha


def test_the_photo_keeps_its_profile_and_exif_and_the_faces_only_the_profile(tmp_path, three_faces):
    from PIL import Image, ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "OPPO"
    source = write_image(tmp_path / "p.jpg", photo(), icc=icc, exif=exif.tobytes()[6:])  # TIFF bytes, without "Exif\0\0"
    run_file(tmp_path, source, Darken(), upscale=1)
    whole = Image.open(tmp_path / "out" / "restored_imgs" / "p.jpg")
    assert whole.info.get("icc_profile") == icc and whole.getexif().get(0x010F) == "OPPO"
    face = Image.open(tmp_path / "out" / "restored_faces" / "p_00.png")
    assert face.info.get("icc_profile") == icc and not face.getexif()


def test_gray_in_gray_out(tmp_path, three_faces):
    gray = photo()[:, :, :1].repeat(3, axis=2)
    source = write_image(tmp_path / "g.jpg", gray, gray=True)
    run_file(tmp_path, source, Darken(), upscale=1)
    assert read_image(tmp_path / "out" / "restored_imgs" / "g.jpg").gray


def test_no_face_writes_the_photo(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "detect_faces", lambda image, detector, **kw: ())
    source = write_image(tmp_path / "p.png", photo())
    result = run_file(tmp_path, source, Darken(), upscale=1)
    assert result.status == "no-face" and "no face found" in result.error
    np.testing.assert_allclose(read_image(result.outputs[0]).rgb, read_image(source).rgb, atol=1 / 255)


def test_a_photo_without_faces_lists_no_restore_time(tmp_path, monkeypatch):
    """--json's `seconds` lists only the stages that ran (docs/usage.md); a photo without a face
    said `"restore": 0.0`, as if the method had run."""
    monkeypatch.setattr(pipeline, "detect_faces", lambda image, detector, **kw: ())
    result = run_file(tmp_path, write_image(tmp_path / "p.png", photo()), Darken(), upscale=1)
    assert sorted(result.to_json()["seconds"]) == ["detect", "prepare", "read", "write"]


def test_parsing_mask_is_used(tmp_path, three_faces):
    source = write_image(tmp_path / "p.png", photo())
    opts = RestoreOptions(output=tmp_path / "out", upscale=1)
    zero_mask = lambda crops: np.zeros((crops.shape[0], 512, 512), np.float32)  # noqa: E731
    restore_file(source, "p", Tools(method=Darken(), detector=object(), parser=zero_mask), opts, OutputNamer(opts, {source}))
    out = read_image(tmp_path / "out" / "restored_imgs" / "p.png").rgb
    np.testing.assert_allclose(out, read_image(source).rgb, atol=1 / 255)  # mask 0 everywhere: nothing pasted


def test_oversized_output_is_refused_before_work(tmp_path):
    source = write_image(tmp_path / "p.png", photo())
    with pytest.raises(Exception, match="over the"):
        run_file(tmp_path, source, Darken(), upscale=4, max_pixels=200 * 440 * 4)
    with pytest.raises(Exception, match="output would be 0.352 MP, over the 0.09 MP limit"):  # not "... over the 90000 pixels limit"
        run_file(tmp_path, source, Darken(), upscale=2, max_pixels=90_000)


def test_an_output_its_format_cannot_hold_or_over_an_input_is_refused_before_any_face_is_restored(tmp_path, three_faces):
    method = Darken()
    source = write_image(tmp_path / "p.png", photo(200, 4400))
    with pytest.raises(BadImage, match="p.webp would be 17600x800, over WebP's limit of 16383 px per side"):
        run_file(tmp_path, source, method, upscale=4, ext="webp")
    opts = RestoreOptions(output=tmp_path, upscale=1)  # restored_imgs/p.png would be the input itself
    inside = write_image(tmp_path / "restored_imgs" / "p.png", photo())
    with pytest.raises(FaceRestoreError, match="would overwrite the input"):
        restore_file(inside, "p", Tools(method=method, detector=object()), opts, OutputNamer(opts, {inside}))
    assert method.batches == [] and not (tmp_path / "out").exists() and not (tmp_path / "restored_faces").exists()


def test_a_photo_that_fails_late_leaves_none_of_its_face_files(tmp_path, three_faces, monkeypatch):
    source = write_image(tmp_path / "p.png", photo())
    real = pipeline.write_image

    def photo_write_fails(path, *args, **kwargs):
        if "restored_imgs" in str(path):
            raise BadImage(f"cannot write {path} (disk full)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "write_image", photo_write_fails)
    with pytest.raises(BadImage, match="disk full"):
        run_file(tmp_path, source, Darken(), upscale=1)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


class InterruptedAfter(Darken):
    """Darken, with Ctrl-C pressed while restoring the batch after the first `batches`."""

    def __init__(self, batches: int, error: BaseException = KeyboardInterrupt()) -> None:
        super().__init__()
        self.limit, self.error = batches, error

    def restore(self, crops: torch.Tensor, generator=None) -> torch.Tensor:
        if len(self.batches) == self.limit:
            raise self.error
        return 1 - super().restore(crops, generator)  # not what the first run wrote


def _files(out: Path) -> dict[str, bytes]:
    """Every file under `out`, temp files (hidden) included, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("backend crash")])
def test_a_rerun_interrupted_after_some_faces_leaves_the_earlier_run_s_files(tmp_path, three_faces, error):
    """The rerun replaced face 0 and 1's files, then deleted its own new ones on Ctrl-C: the earlier
    run's were lost, and cropped_faces/restored_faces/cmp held faces 2 only (docs/usage.md: a rerun
    deletes nothing)."""
    source = write_image(tmp_path / "p.png", photo())
    run_file(tmp_path, source, Darken(), batch_size=1, upscale=1)
    before = _files(tmp_path / "out")
    assert len(before) == 10  # the photo and 3 x 3 face files
    with pytest.raises(type(error)):
        run_file(tmp_path, source, InterruptedAfter(2, error), batch_size=1, upscale=1)
    assert _files(tmp_path / "out") == before  # the same files, the same bytes, no temp file left


def test_a_rerun_whose_photo_cannot_be_written_leaves_the_earlier_face_files(tmp_path, three_faces, monkeypatch):
    source = write_image(tmp_path / "p.png", photo())
    run_file(tmp_path, source, Darken(), upscale=1)
    before = _files(tmp_path / "out")
    (tmp_path / "out" / "restored_imgs" / "p.png").unlink()
    (tmp_path / "out" / "restored_imgs" / "p.png").mkdir()  # in the way of the photo's write
    with pytest.raises(BadImage, match="a folder of that name is in the way"):
        run_file(tmp_path, source, InterruptedAfter(99), upscale=1)
    after = _files(tmp_path / "out")
    assert after == {k: v for k, v in before.items() if k != "restored_imgs/p.png"} and len(after) == 9


def test_a_finished_rerun_replaces_the_earlier_run_s_files(tmp_path, three_faces):
    source = write_image(tmp_path / "p.png", photo())
    run_file(tmp_path, source, Darken(), batch_size=1, upscale=1)
    before = _files(tmp_path / "out")
    result = run_file(tmp_path, source, InterruptedAfter(99), batch_size=1, upscale=1)
    after = _files(tmp_path / "out")
    assert after.keys() == before.keys() and len(result.outputs) == 10 and all(p.is_file() for p in result.outputs)
    assert all(after[k] != before[k] for k in after if not k.startswith("cropped_faces/"))  # the new restoration
    assert all(after[k] == before[k] for k in after if k.startswith("cropped_faces/"))  # the same input crops


@pytest.mark.parametrize(("message", "line"), [
    ("x.png is truncated", "x.png is truncated"),  # names the input first: as it is
    ("x.png: 30x40 is not a square aligned face crop", "x.png: 30x40 is not a square aligned face crop"),
    ("out of memory restoring one face", "x.png: out of memory restoring one face"),
    ("cannot write out/restored_imgs/x.png (Read-only file system)", "x.png: cannot write out/restored_imgs/x.png (Read-only file system)"),
    ("x.pngs is truncated", "x.png: x.pngs is truncated"),  # another file whose name starts alike
])
def test_a_failed_photo_s_line_leads_with_the_photo_once(message, line):
    assert FaceRestoreError(message, hint="do this").one_line_for(Path("x.png")) == f"{line}; do this"


def test_default_upscale_is_2_up_to_1500_px_and_1_above(tmp_path):
    auto = RestoreOptions(output=tmp_path)
    assert auto.scale_for(1500, 1000) == 2.0 and auto.scale_for(1000, 1500) == 2.0
    assert auto.scale_for(1501, 20) == 1.0 and auto.scale_for(3024, 4032) == 1.0  # a phone photo keeps its size
    assert RestoreOptions(output=tmp_path, upscale=3).scale_for(3024, 4032) == 3.0  # an explicit --upscale wins


def test_output_names_never_clash(tmp_path):
    from facerestore.pipeline import output_names

    folder, other = tmp_path / "in", tmp_path / "other"
    paths = [folder / "face.jpg", folder / "face.png", folder / "sub" / "face.jpg", folder / "solo.jpg",
             other / "solo.jpg", other / "Solo.png"]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    names = output_names(paths, [folder, other / "solo.jpg", other / "Solo.png"])
    # same stem: the extension; the same file name from two places: a number; letter case counts as the same
    assert names == ["face_jpg", "face_png", "sub/face", "solo_jpg", "solo_jpg_2", "Solo_png"]


def test_output_names_never_climb_out_of_the_output_folder(tmp_path, monkeypatch):
    """`facerestore . ../x/me.png -o out`: '../x/me.png' is not inside '.', so it is named 'me',
    not '../x/me' (which wrote beside the output folder and over other files)."""
    from facerestore.pipeline import output_names

    (tmp_path / "work").mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "work" / "a.jpg").touch()
    (tmp_path / "x" / "me.png").touch()
    monkeypatch.chdir(tmp_path / "work")
    paths = [Path("a.jpg"), Path("../x/me.png"), Path("./sub/../a.jpg")]
    assert output_names(paths, [Path("."), Path("../x/me.png")]) == ["a_jpg", "me", "a_jpg_2"]
