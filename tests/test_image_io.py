"""image_io: round trips, orientation, odd modes, bad files, atomic writes, listing."""

from __future__ import annotations

import io
import itertools
import os
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from facerestore import image_io
from facerestore.errors import BadImage
from facerestore.image_io import assert_not_input, list_images, problem_line, read_image, resize, to_uint8, write_image

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def _rgb(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def _bad(path: Path, match: str, **kw) -> BadImage:
    with pytest.raises(BadImage, match=match) as info:
        read_image(path, **kw)
    assert path.name in str(info.value)
    assert "\n" not in info.value.one_line()
    return info.value


def test_png_8bit_round_trip_is_exact(tmp_path):
    rgb = to_uint8(_rgb()).astype(np.float32) / 255
    pic = read_image(write_image(tmp_path / "a" / "b" / "x.png", rgb))
    assert (pic.height, pic.width, pic.bit_depth, pic.gray, pic.alpha) == (24, 40, 8, False, None)
    assert pic.rgb.dtype == np.float32 and np.array_equal(pic.rgb, rgb)


def test_jpeg_round_trip_is_close(tmp_path):
    rgb = cv2.GaussianBlur(_rgb(64, 96), (0, 0), 3)
    pic = read_image(write_image(tmp_path / "x.JPG", rgb, alpha=np.ones((64, 96), np.float32)))
    assert pic.alpha is None and pic.bit_depth == 8
    assert np.abs(pic.rgb - rgb).mean() < 0.02


@pytest.mark.parametrize("ext", ["jpg", "bmp"])
def test_a_format_without_alpha_gets_the_image_flattened_onto_white(tmp_path, ext):
    """Dropping alpha alone showed the colours hidden under transparent pixels (QA: magenta rows)."""
    rgb = np.zeros((16, 16, 3), np.float32)
    rgb[..., [0, 2]] = 1.0  # magenta everywhere
    alpha = np.repeat(np.array([0.0, 0.5, 1.0, 1.0], np.float32), 4)[:, None].repeat(16, axis=1)  # rows: clear, half, opaque
    pic = read_image(write_image(tmp_path / f"x.{ext}", rgb, alpha=alpha))
    assert pic.alpha is None
    tolerance = 0.03 if ext == "jpg" else 1 / 255
    np.testing.assert_allclose(pic.rgb[1, 8], [1, 1, 1], atol=tolerance)  # clear: white, not magenta
    np.testing.assert_allclose(pic.rgb[6, 8], [1, 0.5, 1], atol=tolerance)  # half: halfway to white
    np.testing.assert_allclose(pic.rgb[13, 8], [1, 0, 1], atol=tolerance)  # opaque: as it was


def test_rgba_png_keeps_alpha_exactly(tmp_path):
    rgb = to_uint8(_rgb()).astype(np.float32) / 255
    alpha = np.linspace(0, 1, 24 * 40, dtype=np.float32).reshape(24, 40)
    alpha = to_uint8(alpha).astype(np.float32) / 255
    pic = read_image(write_image(tmp_path / "x.png", rgb, alpha=alpha))
    assert np.array_equal(pic.alpha, alpha) and np.array_equal(pic.rgb, rgb)


def test_gray_png_in_gives_gray_flag_and_single_channel_out(tmp_path):
    src = tmp_path / "g.png"
    Image.fromarray((np.arange(24 * 40) % 256).astype(np.uint8).reshape(24, 40), "L").save(src)
    pic = read_image(src)
    assert pic.gray and pic.rgb.shape == (24, 40, 3)
    out = write_image(tmp_path / "out.png", pic.rgb, gray=True)
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).ndim == 2
    assert np.array_equal(read_image(out).rgb, pic.rgb)
    # 8-bit gray + alpha stays a gray+alpha (LA) PNG and TIFF; 16-bit becomes 4 equal-colour channels
    alpha = np.linspace(0, 1, 24 * 40, dtype=np.float32).reshape(24, 40)
    gray_icc = _profile("sRGB")[:16] + b"GRAY" + _profile("sRGB")[20:]  # header says GRAY
    for name in ("ga.png", "ga.tif"):
        written = write_image(tmp_path / name, pic.rgb, gray=True, alpha=alpha, icc=gray_icc if name == "ga.png" else None)
        assert Image.open(written).mode == "LA"
        pic2 = read_image(written)
        assert pic2.gray and np.array_equal(pic2.rgb, pic.rgb) and np.abs(pic2.alpha - alpha).max() <= 0.5 / 255 + 1e-6
    assert read_image(tmp_path / "ga.png").icc == gray_icc
    deep = read_image(write_image(tmp_path / "ga16.png", pic.rgb, gray=True, alpha=alpha, bit_depth=16))
    assert Image.open(tmp_path / "ga16.png").mode == "RGBA" and deep.gray and deep.bit_depth == 16
    # identical RGB channels count as gray; one differing pixel does not
    rgb = np.repeat(pic.rgb[:, :, :1], 3, axis=2)
    assert read_image(write_image(tmp_path / "eq.png", rgb)).gray
    rgb[3, 4, 1] = 1 - rgb[3, 4, 1]
    assert not read_image(write_image(tmp_path / "neq.png", rgb)).gray


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_round_trip_keeps_precision(tmp_path, ext):
    rgb = _rgb(seed=1)
    pic = read_image(write_image(tmp_path / f"x{ext}", rgb, bit_depth=16))
    assert pic.bit_depth == 16 and not pic.gray
    assert np.abs(pic.rgb - rgb).max() < 0.6 / 65535


def test_16bit_gray(tmp_path):
    g = (np.arange(24 * 40, dtype=np.uint32).reshape(24, 40) * 67 % 65536).astype(np.uint16)
    src = tmp_path / "g16.png"
    assert cv2.imwrite(str(src), g)
    pic = read_image(src)
    assert pic.gray and pic.bit_depth == 16
    assert np.array_equal(np.round(pic.rgb[:, :, 2] * 65535).astype(np.uint16), g)
    out = write_image(tmp_path / "o16.png", pic.rgb, bit_depth=16, gray=True)
    assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), g)


def _raw(h: int = 30, w: int = 50) -> np.ndarray:
    """Smooth, non-square, asymmetric test pattern (JPEG-friendly)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], -1).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    raw = (np.random.default_rng(2).random((30, 50, 3)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = tmp_path / "o.png"
    Image.fromarray(raw).save(src, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(src)).convert("RGB"))
    assert np.array_equal(to_uint8(read_image(src).rgb), expected)


@pytest.mark.parametrize("orientation,expect", [(3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1))])
def test_exif_orientation_jpeg(tmp_path, orientation, expect):
    raw = _raw()
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = tmp_path / "o.jpg"
    Image.fromarray(raw).save(src, quality=98, exif=exif)
    got = to_uint8(read_image(src).rgb)
    assert got.shape == expect(raw).shape
    assert np.abs(got.astype(int) - expect(raw)).mean() < 3


_EXIF_TURNS = {  # the EXIF spec: how a viewer shows stored pixels a for each orientation tag
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[:, ::-1],
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("mode", ["RGB", "CMYK"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_applied_once(tmp_path, orientation, mode):
    """Recent Pillow and OpenCV turn a TIFF by its tag while decoding; it must not be turned again."""
    raw = (np.random.default_rng(3).random((30, 50, 3)) * 255).astype(np.uint8)
    src = tmp_path / "o.tif"
    Image.fromarray(raw).convert(mode).save(src, tiffinfo={0x0112: orientation})
    stored = np.asarray(Image.fromarray(raw).convert(mode).convert("RGB"))
    got = to_uint8(read_image(src).rgb)
    expected = _EXIF_TURNS[orientation](stored)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_cmyk_jpeg_and_palette_png(tmp_path):
    raw = _raw()
    Image.fromarray(raw).convert("CMYK").save(tmp_path / "c.jpg", quality=98)
    pic = read_image(tmp_path / "c.jpg")
    assert pic.rgb.shape == (30, 50, 3) and pic.alpha is None
    assert np.abs(to_uint8(pic.rgb).astype(int) - raw).mean() < 4
    assert pic.icc is None and pic.read_warnings == ()  # no profile: the naive complement, untagged, as before

    pal = Image.fromarray((np.arange(30 * 50) % 4).astype(np.uint8).reshape(30, 50), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    pal.save(tmp_path / "p.png", transparency=3)
    pic = read_image(tmp_path / "p.png")
    assert np.array_equal(to_uint8(pic.rgb)[0, :3], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    assert np.array_equal(pic.alpha[0, :4], [1, 1, 1, 0])
    pal.save(tmp_path / "p2.png")  # no transparency -> no alpha
    assert read_image(tmp_path / "p2.png").alpha is None


@pytest.mark.parametrize("mode", ["L", "I;16", "1"])
def test_gray_png_with_a_transparent_key_colour_gets_alpha(tmp_path, mode):
    """PNG optimisers store black-and-white cutouts as gray + tRNS; OpenCV drops the key, Pillow keeps it."""
    top = {"L": 200, "I;16": 50000, "1": 1}[mode]
    values = np.zeros((8, 12), dtype=np.uint16 if mode == "I;16" else np.uint8)
    values[:, :5] = top
    img = Image.fromarray(values.astype(bool) if mode == "1" else values)
    assert img.mode == mode
    img.save(tmp_path / "cutout.png", transparency=0)
    pic = read_image(tmp_path / "cutout.png")
    assert pic.gray and pic.alpha is not None and pic.bit_depth == (16 if mode == "I;16" else 8)
    assert np.array_equal(pic.alpha, (values > 0).astype(np.float32))  # transparent exactly where the key colour is
    np.testing.assert_allclose(pic.rgb[0, 0], [top / {"L": 255, "I;16": 65535, "1": 1}[mode]] * 3)


def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    src = write_image(tmp_path / "big.png", _rgb())

    def boom(*a, **k):
        raise AssertionError("decoded despite the pixel limit")

    monkeypatch.setattr(image_io.cv2, "imdecode", boom)
    monkeypatch.setattr(image_io, "_decode_pil", boom)
    err = _bad(src, "40x24 = 960 pixels, over the 100 pixels limit", max_pixels=100)
    assert "--max-pixels" in err.one_line()
    monkeypatch.setattr(image_io, "DEFAULT_MAX_PIXELS", 100)  # degrade, evaluate, clean-dataset: no such option
    assert "--max-pixels" not in _bad(src, "over the 100 pixels limit").one_line()
    big = write_image(tmp_path / "wide.png", _rgb(370, 550))  # 203500 pixels against 60000: one unit for both
    _bad(big, "550x370 = 0.203 MP, over the 0.06 MP limit", max_pixels=60_000)


def test_pixel_counts_share_one_unit_and_tell_apart_what_differs():
    assert image_io.pixel_counts(960, 100) == ("960 pixels", "100 pixels")
    assert image_io.pixel_counts(203_500, 60_000) == ("0.203 MP", "0.06 MP")
    assert image_io.pixel_counts(50_000, 200_000) == ("0.05 MP", "0.2 MP")
    assert image_io.pixel_counts(24_000_001, 24_000_000) == ("24.000001 MP", "24 MP")  # not "24 MP, over the 24 MP limit"
    assert image_io.pixel_counts(1_920_000, 1_000_000) == ("1.92 MP", "1 MP")
    # a forged 100000x100000 header: no exponent ("1e+04 MP"), however large
    assert image_io.pixel_counts(100_000 * 100_000, 178_956_970) == ("10000 MP", "179 MP")
    assert image_io.pixel_counts(123_456_789_000, 123_456_780_000) == ("123456.79 MP", "123456.78 MP")


def test_bad_files(tmp_path, capfd):
    (tmp_path / "empty.png").write_bytes(b"")
    _bad(tmp_path / "empty.png", "is empty")
    (tmp_path / "notes.jpg").write_text("not an image\n")
    _bad(tmp_path / "notes.jpg", "is not an image file")
    data = write_image(tmp_path / "full.png", _rgb(64, 64)).read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    _bad(tmp_path / "half.png", "is truncated .the PNG ends before its last chunk.")
    assert "libpng" not in capfd.readouterr().err  # the one line is ours, with no decoder noise before it
    (tmp_path / "trailer.png").write_bytes(data + b"\0" * 5000)  # bytes after IEND: still a whole image
    assert read_image(tmp_path / "trailer.png").width == 64
    data = write_image(tmp_path / "deep.tif", _rgb(64, 64), bit_depth=16).read_bytes()
    (tmp_path / "half.tif").write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _bad(tmp_path / "half.tif", "is not an image file")
    assert not caught  # Pillow's "Corrupt EXIF data" warning would print two lines before the error
    Image.fromarray(_raw(240, 400)).save(tmp_path / "full.jpg")  # big enough that half of it ends in the pixel data
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    truncated = _bad(tmp_path / "half.jpg", "half.jpg is truncated .the JPEG data ends early.")
    assert "re-copy or re-export" in truncated.one_line() and "use one of" not in truncated.one_line()  # .jpg is fine already
    (tmp_path / "head.jpg").write_bytes(data[:20])  # cut inside its first marker segment: Pillow cannot even open it
    assert "re-copy or re-export" in _bad(tmp_path / "head.jpg", "head.jpg is truncated or damaged .a JPEG whose header cannot be read.").one_line()
    (tmp_path / "notes.txt").write_text("not an image\n")
    assert "use one of .jpg" in _bad(tmp_path / "notes.txt", "is not an image file").one_line()
    _bad(tmp_path / "missing.png", "does not exist")


@pytest.mark.parametrize("name", ["a" * 240 + ".png", "顔" * 80 + ".png"])  # 244 and 244 bytes: fit, but not with 14 more
def test_a_long_file_name_is_written_and_its_stale_temps_found(tmp_path, name):
    path = write_image(tmp_path / name, _rgb())
    assert read_image(path).width == 40 and [p.name for p in tmp_path.iterdir()] == [name]
    stale = tmp_path / f"{image_io.temp_prefix(path)}x1y2z3w4.tmp"  # what a kill -9 during the write leaves
    stale.write_bytes(b"half")
    assert len(stale.name.encode()) <= 255 and image_io.remove_stale_temps([path]) == 1 and not stale.exists()


def test_atomic_write_replaces_only_after_success(tmp_path, monkeypatch):
    target = write_image(tmp_path / "out.png", _rgb())
    before = target.read_bytes()

    def fail(*a, **k):
        raise cv2.error("simulated encoder failure")

    monkeypatch.setattr(image_io.cv2, "imencode", fail)
    with pytest.raises(BadImage, match="out.png"):
        write_image(target, _rgb(seed=5))
    assert target.read_bytes() == before
    monkeypatch.undo()

    def crash(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_io.os, "replace", crash)
    with pytest.raises(BadImage, match="No space left"):
        write_image(target, _rgb(seed=6))
    monkeypatch.undo()
    assert target.read_bytes() == before
    write_image(target, _rgb(seed=7))
    assert target.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    with pytest.raises(BadImage, match="x.gif"):
        write_image(tmp_path / "x.gif", _rgb())


def test_staged_writes_appear_together_at_commit_and_leave_no_temp_when_dropped(tmp_path, monkeypatch):
    old = write_image(tmp_path / "a.png", _rgb())
    before = old.read_bytes()
    with image_io.StagedWrites() as staged:
        write_image(old, _rgb(seed=3), staged=staged)
        write_image(tmp_path / "b.png", _rgb(seed=4), staged=staged)
        assert old.read_bytes() == before and not (tmp_path / "b.png").exists()  # nothing in place before the commit
        assert len(list(tmp_path.glob(f"{image_io.temp_prefix(old)}*.tmp"))) == 1  # the name remove_stale_temps finds
    assert old.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # dropped: temps deleted
    with image_io.StagedWrites() as staged:
        write_image(old, _rgb(seed=3), staged=staged)
        write_image(tmp_path / "b.png", _rgb(seed=4), staged=staged)
        assert staged.commit() == [old, tmp_path / "b.png"]
    assert old.read_bytes() != before and sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
    staged = image_io.StagedWrites()
    write_image(tmp_path / "c.png", _rgb(), staged=staged)
    monkeypatch.setattr(image_io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(BadImage, match="c.png .No space left"):
        staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # the failed rename's temp is gone too


def test_list_images(tmp_path):
    for rel in ["b/2.PNG", "b/c/1.jpg", "a.jpeg", "b/notes.txt", "b/.hidden/z.png", "b/._y.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    found, problems = list_images([tmp_path, tmp_path / "b" / "2.PNG", tmp_path / "nope.jpg", tmp_path / "empty"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jpeg", "b/2.PNG", "b/c/1.jpg"]
    assert problems[0] == (tmp_path / "nope.jpg", "does not exist")
    assert problems[1][0] == tmp_path / "empty" and len(problems) == 2
    assert image_io.is_image_path(Path("x.TIFF")) and not image_io.is_image_path(Path("x.gif"))


def test_assert_not_input(tmp_path, monkeypatch):
    src = write_image(tmp_path / "in.png", _rgb())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadImage, match="in.png"):
        assert_not_input(Path("sub/../in.png"), {src})
    assert_not_input(tmp_path / "out.png", {src})


def test_assert_not_input_refuses_every_other_path_to_an_input(tmp_path):
    """A link to an input, a hard link, `..`, other letter case on a case-insensitive disk: each is the
    input itself, and each is refused by the one lookup an InputPaths makes."""
    src = write_image(tmp_path / "in.png", _rgb())
    (tmp_path / "link.png").symlink_to(src)
    os.link(src, tmp_path / "hard.png")
    (tmp_path / "sub").mkdir()
    inputs = image_io.InputPaths({src.resolve()})
    for path, what in [(src, "is an input"), (tmp_path / "link.png", "is a link to the input"),
                       (tmp_path / "hard.png", "is the input .* by another path"), (tmp_path / "sub" / ".." / "in.png", "is an input")]:
        with pytest.raises(BadImage, match=what):
            assert_not_input(path, inputs)
        with pytest.raises(BadImage, match=what):  # a plain set, as clean-dataset and degrade pass
            assert_not_input(path, {src.resolve()})
    upper = tmp_path / "IN.png"
    if upper.exists():  # a case-insensitive disk (macOS, Windows): the same file
        with pytest.raises(BadImage, match="by another path"):
            assert_not_input(upper, inputs)
    assert_not_input(tmp_path / "out.png", inputs)
    assert_not_input(write_image(tmp_path / "other.png", _rgb()), inputs)  # an existing file that is no input


def test_assert_not_input_does_not_stat_every_input_per_output(tmp_path, monkeypatch):
    """It resolved and samefile'd every input for each output: 0.1 s per output with 2,000 inputs,
    13 minutes more for a run of 2,000 photos. The inputs are indexed once; each output costs the same
    few calls however many inputs there are."""
    inputs = [write_image(tmp_path / f"in{i}.png", _rgb(4, 4)).resolve() for i in range(50)]
    outputs = [write_image(tmp_path / f"out{i}.png", _rgb(4, 4)) for i in range(20)] + [tmp_path / f"new{i}.png" for i in range(20)]
    index = image_io.InputPaths(set(inputs))
    calls = []
    real_stat = os.stat

    def counting_stat(*args, **kwargs):
        calls.append(args[0])
        return real_stat(*args, **kwargs)

    monkeypatch.setattr(image_io.os, "stat", counting_stat)
    monkeypatch.setattr(image_io.os.path, "samefile", lambda *a: pytest.fail("samefile per input"))
    monkeypatch.setattr(Path, "resolve", lambda self, *a, **k: Path(os.path.realpath(self)))  # realpath is not os.stat
    for path in outputs:
        assert_not_input(path, index)
    assert len(calls) <= len(outputs)


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason="needs ../shared/data/photos")
def test_reads_shared_photos():
    found, _ = list_images([SHARED_PHOTOS])
    for p in found[:3]:
        pic = read_image(p)
        assert pic.rgb.ndim == 3 and 0 <= pic.rgb.min() and pic.rgb.max() <= 1


def test_list_images_follows_linked_folders_once_and_reports_broken_links(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "b.png", np.zeros((4, 4, 3), np.float32))
    root = tmp_path / "data"
    write_image(root / "a.png", np.zeros((4, 4, 3), np.float32))
    (root / "linked").symlink_to(elsewhere)
    (root / "loop").symlink_to(root)  # a link to an ancestor: walked once, not forever
    (root / "gone.png").symlink_to(tmp_path / "missing.png")
    found, problems = list_images([root])
    assert found == [root / "a.png", root / "linked" / "b.png"]
    assert problems == [(root / "gone.png", "is a broken link (its target does not exist)")]
    _, problems = list_images([root / "gone.png", tmp_path / "never.png"])  # named on the command line
    assert problems == [(root / "gone.png", "is a broken link (its target does not exist)"), (tmp_path / "never.png", "does not exist")]


def test_list_images_calls_a_link_loop_a_loop_not_a_missing_target(tmp_path):
    """`loop1.jpg -> loop2.jpg -> loop1.jpg` has no missing target: "broken link (its target does not
    exist)" sent the user looking for a file."""
    root = tmp_path / "data"
    write_image(root / "a.png", np.zeros((4, 4, 3), np.float32))
    (root / "loop1.jpg").symlink_to("loop2.jpg")
    (root / "loop2.jpg").symlink_to("loop1.jpg")
    loop = "is a link loop (its links lead back to each other, never to a file)"
    found, problems = list_images([root])
    assert found == [root / "a.png"]
    assert problems == [(root / "loop1.jpg", loop), (root / "loop2.jpg", loop)]
    _, problems = list_images([root / "loop1.jpg"])  # named on the command line
    assert problems == [(root / "loop1.jpg", loop)]
    assert problem_line(root / "loop1.jpg", loop) == f"{root / 'loop1.jpg'} {loop}; fix the link or remove it"


def test_list_images_skips_excluded_folders_inside_a_walk_but_not_named_ones(tmp_path):
    for rel in ["a.png", "out/cmp/a.png", "out/keep.png", "cmp/b.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    exclude = [tmp_path / "out" / "cmp", tmp_path / "cmp"]
    found, _ = list_images([tmp_path], exclude=exclude)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.png", "out/keep.png"]
    found, _ = list_images([tmp_path / "cmp"], exclude=exclude)  # named as an input: read
    assert [p.name for p in found] == ["b.png"]


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_encoding_holds_at_most_two_copies_of_the_photo(tmp_path, monkeypatch, ext, with_alpha):
    """OpenCV formats reordered RGB to BGR by fancy indexing (a strided copy) that imencode copied
    again, and kept the samples and that copy alive beside the encoded buffer and its bytes: four
    photo-sized arrays at once for a PNG (576 MB for a 12 MP photo at -s 2). Now each is dropped once
    the next exists: at most two at a time, with the same bytes written."""
    import tracemalloc

    monkeypatch.setattr(image_io, "BAND_VALUES", 1 << 14)  # a float scratch far smaller than the photo
    rgb = np.random.default_rng(5).random((600, 800, 3), dtype=np.float32)  # noise: PNG and BMP as large as the photo
    alpha = np.random.default_rng(6).random((600, 800), dtype=np.float32) if with_alpha else None
    photo_bytes = 600 * 800 * (4 if with_alpha and ext == ".png" else 3)
    tracemalloc.start()
    written = write_image(tmp_path / f"out{ext}", rgb, alpha=alpha)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2.2 * photo_bytes, peak / photo_bytes
    read = cv2.imread(str(written), cv2.IMREAD_UNCHANGED)
    if ext != ".jpg":
        flattened = with_alpha and ext == ".bmp"  # onto white: BMP holds no alpha
        assert np.array_equal(read[:, :, 2::-1], to_uint8(rgb * alpha[:, :, None] + (1 - alpha[:, :, None]) if flattened else rgb))
    if with_alpha and ext == ".png":
        assert np.array_equal(read[:, :, 3], to_uint8(alpha))


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_a_read_photo_holds_its_samples_not_a_float_copy(tmp_path, bit_depth):
    """A decoded photo was float32 (576 MB at 48 MP, made through two float temporaries); now it is
    the file's own samples, and `rgb` gives the same floats as before on demand."""
    import tracemalloc

    rgb = np.random.default_rng(7).random((600, 800, 3), dtype=np.float32)
    path = write_image(tmp_path / "p.png", rgb, bit_depth=bit_depth)
    tracemalloc.start()
    picture = read_image(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    assert picture.samples.dtype == dtype and picture.samples.shape == (600, 800, 3)
    # the file's bytes, the samples (reordered from BGR in place) and the gray check's mask; a float copy alone is 2-4 times the samples
    assert peak < path.stat().st_size + 2 * picture.samples.nbytes, peak / picture.samples.nbytes
    top = np.float32(65535 if bit_depth == 16 else 255)
    np.testing.assert_array_equal(picture.rgb, picture.samples.astype(np.float32) / top)
    assert picture.rgb.dtype == np.float32 and (picture.width, picture.height) == (800, 600)


def test_quantizing_rounds_clips_and_zeroes_nan():
    values = np.array([np.nan, -np.inf, -0.2, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 1.3, np.inf], np.float32)
    assert to_uint8(values).tolist() == [0, 0, 0, 0, 0, 2, 128, 255, 255, 255]  # halves to even, as np.round
    assert image_io._to_uint16(values).tolist() == [0, 0, 0, 0, 128, 386, 32768, 65535, 65535, 65535]
    levels = np.arange(256, dtype=np.uint8)
    assert np.array_equal(to_uint8(levels.astype(np.float32) / 255), levels)  # exact round trip


def test_writing_a_large_photo_makes_no_photo_sized_float_copy(tmp_path, monkeypatch):
    """Writing quantized the whole photo through a float32 scratch as large as the photo (and a uint8
    photo was first turned into two float32 copies): 2.25 and 3.25 float copies at the peak, 1.4 GB
    and 2 GB for a 50 MP photo. Now it converts a band of rows at a time (uint8 written as it is)
    and needs less than one float copy, with the same pixels."""
    import tracemalloc

    monkeypatch.setattr(image_io, "BAND_VALUES", 1 << 18)  # bands of 87 rows: several bands, one uneven
    y, x = np.mgrid[0:1000, 0:1500].astype(np.float32)
    rgb = np.dstack([x / 1500, y / 1000, (x + y) / 2500 * 1.2 - 0.1])  # smooth (small PNGs), out of range in places
    rgb[3, 5] = np.nan
    floats = rgb.nbytes
    expected = np.rint(np.clip(np.nan_to_num(rgb * 255, nan=0.0), 0, 255)).astype(np.uint8)
    for source in (rgb, expected):
        tracemalloc.start()
        written = write_image(tmp_path / f"{source.dtype}.png", source)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < (0.8 if source is rgb else 0.6) * floats, (source.dtype, peak / floats)
        assert np.array_equal(cv2.imread(str(written))[:, :, ::-1], expected)
    luma = rgb.clip(0, 1)
    luma = np.nan_to_num(luma[:, :, 0] * 0.299 + luma[:, :, 1] * 0.587 + luma[:, :, 2] * 0.114, nan=0.0)
    written = cv2.imread(str(write_image(tmp_path / "gray.png", rgb.clip(0, 1), gray=True)), cv2.IMREAD_UNCHANGED)
    assert written.ndim == 2 and np.array_equal(written, np.rint(np.clip(luma * 255, 0, 255)).astype(np.uint8))
    deep = cv2.imread(str(write_image(tmp_path / "deep.png", expected, bit_depth=16)), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and np.array_equal(deep[:, :, ::-1], expected.astype(np.uint16) * 257)  # 8 -> 16 bits exactly


def test_lab_tiff_gains_no_alpha_and_float_tiff_keeps_its_values(tmp_path):
    """'A' in 'LAB' is the a* channel, not alpha; a float TIFF in 0..1 is read as 16-bit gray, not
    clipped to black."""
    Image.new("RGB", (30, 20), (200, 100, 50)).convert("LAB").save(tmp_path / "lab.tif")
    lab = read_image(tmp_path / "lab.tif")
    assert lab.alpha is None and np.abs(lab.rgb[0, 0] * 255 - (200, 100, 50)).max() <= 2
    values = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    picture = read_image(tmp_path / "f.tif")
    assert picture.gray and picture.bit_depth == 16
    assert np.abs(picture.rgb[..., 0] - values).max() < 1e-4


def test_float_and_32_bit_colour_tiffs_that_pillow_cannot_open_are_read(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    rgba = rng.random((20, 30, 4)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f32.tif", rgba[..., :3], photometric="rgb", iccprofile=b"fake-icc")
    tifffile.imwrite(tmp_path / "f16a.tif", rgba.astype(np.float16), photometric="rgb", extrasamples=[2])
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgba[..., :3], -1, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "u32.tif", (rgba[..., :3] * 65535).astype(np.uint32), photometric="rgb")
    tifffile.imwrite(tmp_path / "rot.tif", rgba[..., :3], photometric="rgb", extratags=[(274, 3, 1, 6, True)])  # 90 degrees clockwise
    f32 = read_image(tmp_path / "f32.tif")
    assert f32.bit_depth == 16 and f32.alpha is None and not f32.gray and f32.icc == b"fake-icc"
    assert np.abs(f32.rgb - rgba[..., :3]).max() <= 0.5 / 65535 + 1e-6
    f16a = read_image(tmp_path / "f16a.tif")
    assert np.abs(f16a.rgb - rgba[..., :3]).max() < 1e-3 and np.abs(f16a.alpha - rgba[..., 3]).max() < 1e-3
    assert np.array_equal(read_image(tmp_path / "planar.tif").rgb, f32.rgb)
    assert np.abs(read_image(tmp_path / "u32.tif").rgb - rgba[..., :3]).max() <= 1 / 65535 + 1e-6
    assert np.array_equal(read_image(tmp_path / "rot.tif").rgb, np.rot90(f32.rgb, -1))
    with pytest.raises(BadImage, match="over the"):
        read_image(tmp_path / "f32.tif", max_pixels=599)
    tifffile.imwrite(tmp_path / "cmyk.tif", rgba, photometric="separated")  # float CMYK: not guessed as RGBA
    with pytest.raises(BadImage, match="cmyk.tif is a SEPARATED TIFF with float32 samples, which cannot be read"):
        read_image(tmp_path / "cmyk.tif")
    (tmp_path / "bad.tif").write_bytes((tmp_path / "f32.tif").read_bytes()[:200])
    with pytest.raises(BadImage, match="is not an image file"):
        read_image(tmp_path / "bad.tif")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_not_a_regular_file_rather_than_missing(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    found, problems = list_images([tmp_path / "pipe.jpg"])
    assert found == [] and problems == [(tmp_path / "pipe.jpg", "is not a regular file")]


# ------------------------------------------------------------------ colour profiles and EXIF


def _profile(kind: str = "sRGB") -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile(kind)).tobytes()


def _camera_jpeg(path: Path, icc: bytes) -> Path:
    """A phone-style JPEG: orientation 6, camera make, capture date in the Exif sub-IFD, a thumbnail."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "OPPO"
    exif.get_ifd(0x8769)[0x9003] = "2018:07:16 17:15:19"
    image = Image.fromarray(_raw(40, 60))
    exif_bytes = exif.tobytes()
    image.save(path, exif=exif_bytes, icc_profile=icc)
    return path


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "tif"])
def test_outputs_carry_the_colour_profile_and_upright_exif(tmp_path, ext):
    """An Adobe RGB or P3 photo written without its profile is shown as sRGB (washed out); without its
    EXIF it loses date and camera. TIFF keeps the profile only."""
    icc = _profile("sRGB")
    pic = read_image(_camera_jpeg(tmp_path / "camera.jpg", icc))
    assert pic.rgb.shape[:2] == (60, 40) and pic.icc == icc and pic.exif  # turned upright on reading
    out = Image.open(write_image(tmp_path / f"out.{ext}", pic.rgb, **pic.encoding()))
    assert out.info.get("icc_profile") == icc
    exif = out.getexif()
    if ext == "tif":
        assert exif.get(0x010F) is None
    else:
        assert (exif.get(0x0112), exif.get(0x010F), exif.get_ifd(0x8769).get(0x9003)) == (1, "OPPO", "2018:07:16 17:15:19")
    assert out.size == (40, 60)  # stored upright: orientation 1, so no viewer turns it again
    assert not pic.encoding(exif=False)["exif"]


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_exif_pixel_size_is_the_size_written(tmp_path, ext):
    """A phone photo stored 4032x3024 with orientation 6, restored upright (and at -s 2), kept
    PixelXDimension 4032 / PixelYDimension 3024 in its Exif IFD: the size of the camera's pixels,
    not of the file's."""
    exif = Image.Exif()
    exif[0x0112], exif[0x0100], exif[0x0101] = 6, 60, 40
    exif.get_ifd(0x8769).update({0xA002: 60, 0xA003: 40, 0x9003: "2018:07:16 17:15:19"})
    Image.fromarray(_raw(40, 60)).save(tmp_path / "camera.jpg", exif=exif.tobytes())
    pic = read_image(tmp_path / "camera.jpg")
    for width, height in ((40, 60), (80, 120)):  # upright; upright and upscaled
        rgb = pic.rgb if width == 40 else resize(pic.rgb, width, height)
        out = Image.open(write_image(tmp_path / f"out{width}.{ext}", rgb, **pic.encoding())).getexif()
        sub = out.get_ifd(0x8769)
        assert (sub.get(0xA002), sub.get(0xA003), out.get(0x0100), out.get(0x0101)) == (width, height, width, height)
        assert (out.get(0x0112), sub.get(0x9003)) == (1, "2018:07:16 17:15:19")


def test_sized_exif_widens_a_short_size_tag_and_reads_both_byte_orders():
    import struct

    from facerestore.image_meta import sized_exif

    for order in ("<", ">"):
        head = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8)
        ifd0 = struct.pack(order + "H", 1) + struct.pack(order + "HHII", 0x8769, 4, 1, 26) + struct.pack(order + "I", 0)
        sub = struct.pack(order + "H", 2) + struct.pack(order + "HHIHH", 0xA002, 3, 1, 4032, 0) + struct.pack(order + "HHII", 0xA003, 4, 1, 3024)
        fixed = sized_exif(head + ifd0 + sub + struct.pack(order + "I", 0), 70000, 6048)
        assert struct.unpack_from(order + "HHII", fixed, 28) == (0xA002, 4, 1, 70000)  # over 65535: a LONG now
        assert struct.unpack_from(order + "HHII", fixed, 40) == (0xA003, 4, 1, 6048)
    assert sized_exif(b"II*\x00" + struct.pack("<I", 4000), 1, 1) == b"II*\x00" + struct.pack("<I", 4000)


def test_upright_exif_resets_orientation_and_unlinks_the_thumbnail():
    import struct

    from facerestore.image_meta import upright_exif

    for order in ("<", ">"):
        # header, IFD0 with one entry (orientation 8), next-IFD offset 99 (a thumbnail)
        head = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8)
        ifd = struct.pack(order + "H", 1) + struct.pack(order + "HHIHH", 0x0112, 3, 1, 8, 0) + struct.pack(order + "I", 99)
        fixed = upright_exif(head + ifd)
        assert struct.unpack_from(order + "H", fixed, 8 + 2 + 8)[0] == 1 and struct.unpack_from(order + "I", fixed, 8 + 2 + 12)[0] == 0
    assert upright_exif(b"not exif") is None and upright_exif(b"II*\x00" + struct.pack("<I", 4000)) is None


def test_a_gray_profile_is_not_put_into_a_colour_file(tmp_path):
    gray_icc = _profile("sRGB")[:16] + b"GRAY" + _profile("sRGB")[20:]  # header says GRAY
    path = write_image(tmp_path / "rgb.png", _rgb(), icc=gray_icc)
    assert "icc_profile" not in Image.open(path).info  # an invalid file otherwise
    path = write_image(tmp_path / "gray.png", _rgb(), icc=gray_icc, gray=True)
    assert Image.open(path).info.get("icc_profile") == gray_icc


def test_a_lossless_webp_stays_lossless(tmp_path):
    rgb = to_uint8(_rgb(32, 32)).astype(np.float32) / 255
    Image.fromarray(to_uint8(rgb)).save(tmp_path / "in.webp", lossless=True)
    pic = read_image(tmp_path / "in.webp")
    assert pic.webp_lossless and np.array_equal(pic.rgb, rgb)
    again = read_image(write_image(tmp_path / "out.webp", pic.rgb, **pic.encoding()))
    assert np.array_equal(again.rgb, rgb)  # lossy WebP at 95 would be some levels off
    Image.fromarray(to_uint8(rgb)).save(tmp_path / "lossy.webp", quality=90)
    assert not read_image(tmp_path / "lossy.webp").webp_lossless


def test_tiff_alpha_is_marked_as_alpha_and_read_back_unpremultiplied(tmp_path):
    alpha = np.linspace(0, 1, 24 * 40, dtype=np.float32).reshape(24, 40)
    rgb = to_uint8(_rgb()).astype(np.float32) / 255
    for depth in (8, 16):
        path = write_image(tmp_path / f"a{depth}.tif", rgb, alpha=alpha, bit_depth=depth)
        assert Image.open(path).tag_v2.get(338) == (2,)  # ExtraSamples: unassociated alpha
        pic = read_image(path)
        assert pic.bit_depth == depth and np.abs(pic.alpha - alpha).max() <= 1 / 255
        np.testing.assert_allclose(pic.rgb, rgb, atol=1 / 255)  # libtiff's RGBA reader would premultiply
    Image.fromarray(np.dstack([to_uint8(rgb), to_uint8(alpha)]), "RGBA").save(tmp_path / "pil.tif")  # as Photoshop writes
    np.testing.assert_allclose(read_image(tmp_path / "pil.tif").rgb, rgb, atol=1 / 255)


def test_a_jpeg_without_chroma_subsampling_keeps_full_colour_resolution(tmp_path):
    from PIL import JpegImagePlugin

    for sampling in (0, 2):  # 4:4:4, 4:2:0
        Image.fromarray(_raw(32, 32)).save(tmp_path / f"in{sampling}.jpg", quality=98, subsampling=sampling)
        pic = read_image(tmp_path / f"in{sampling}.jpg")
        assert pic.full_chroma == (sampling == 0)
        out = write_image(tmp_path / f"out{sampling}.jpg", pic.rgb, **pic.encoding())
        assert JpegImagePlugin.get_sampling(Image.open(out)) == sampling  # 4:4:4 stays 4:4:4; 4:2:0 is the default



def test_list_images_reports_a_sub_folder_it_cannot_read(tmp_path, monkeypatch):
    """os.walk skips a sub-folder it cannot list without a word: its images would silently be missing
    from a batch, a training set or a cleaned dataset. It is a problem line; the rest is still found."""
    root = tmp_path / "data"
    write_image(root / "a.png", np.zeros((4, 4, 3), np.float32))
    write_image(root / "locked" / "b.png", np.zeros((4, 4, 3), np.float32))
    real_scandir, real_access = os.scandir, os.access
    locked = root / "locked"

    def scandir(path=".", *args):
        if Path(path) == locked:  # root lists anything: simulate a folder this user may not open
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked else real_access(path, mode, **kw))
    found, problems = list_images([root])
    assert found == [root / "a.png"]
    assert problems == [(locked, "cannot be read (permission denied)")]


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _cmyk_profile(steps: int = 4) -> bytes:
    """A small valid CMYK printer profile (ICC v2, an AToB0 lut16 to XYZ) for inks that take linear
    light away multiplicatively: linear sRGB R = (1 - C)(1 - K), G = (1 - M)(1 - K), B = (1 - Y)(1 - K),
    turned into XYZ with the colorants of littlecms's own sRGB profile. The CLUT has `steps` nodes a
    side (0, 85, 170, 255 for 4), where littlecms reproduces these values exactly; between nodes its
    4-D interpolation does not (tetrahedral in three of the inks), so the tests use node values."""
    from PIL import ImageCms

    srgb = ImageCms.createProfile("sRGB")
    to_xyz = np.array([srgb.red_colorant[0], srgb.green_colorant[0], srgb.blue_colorant[0]]).T
    node = np.linspace(0.0, 1.0, steps)
    clut = b""
    for c, m, y, k in itertools.product(node, repeat=4):  # the first input varies slowest
        xyz = to_xyz @ np.array([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)])
        clut += struct.pack(">3H", *(round(v * 32768) for v in xyz))  # XYZ in lut16: 1.0 is 0x8000
    identity_curve = struct.pack(">2H", 0, 65535)
    a2b0 = (b"mft2" + bytes(4) + bytes([4, 3, steps, 0]) + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
            + struct.pack(">2H", 2, 2) + identity_curve * 4 + clut + identity_curve * 3)
    text = b"test CMYK\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    d50 = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"desc", desc), (b"wtpt", b"XYZ " + bytes(4) + d50), (b"A2B0", a2b0)]
    table, body, start = b"", b"", 128 + 4 + 12 * len(tags)
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">2I", start + len(body), len(data))
        body += data
    header = (struct.pack(">I", start + len(body)) + bytes(4) + bytes([2, 0x10, 0, 0]) + b"prtr" + b"CMYK" + b"XYZ "
              + bytes(12) + b"acsp" + bytes(28) + d50)
    return header + bytes(128 - len(header)) + struct.pack(">I", len(tags)) + table + body


def _cmyk_patches(steps: int = 4) -> np.ndarray:
    """Every combination of the profile's node values, each an 8x8 block (JPEG keeps flat blocks exact)."""
    nodes = np.round(np.linspace(0, 255, steps)).astype(np.uint8)
    combos = np.array(list(itertools.product(nodes, repeat=4)), np.uint8).reshape(steps**2, steps**2, 4)
    return np.repeat(np.repeat(combos, 8, axis=0), 8, axis=1)


def _srgb_through_test_profile(cmyk: np.ndarray) -> np.ndarray:
    """What _cmyk_profile maps ink amounts (uint8) to, as sRGB 0..255 floats (IEC 61966-2-1 encoding)."""
    ink = cmyk.astype(np.float64) / 255
    linear = (1 - ink[..., :3]) * (1 - ink[..., 3:])
    return 255 * np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def _naive(cmyk: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB"))


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_a_cmyk_photo_with_a_profile_is_converted_through_it_to_srgb(tmp_path, ext):
    from PIL import ImageCms

    cmyk = _cmyk_patches()
    src = tmp_path / f"print{ext}"
    Image.fromarray(cmyk, "CMYK").save(src, quality=100, icc_profile=_cmyk_profile())
    decoded = np.asarray(Image.open(src))
    if ext == ".jpg":
        # stored as Photoshop does, inverted under an APP14 Adobe marker: OpenCV, which assumes that
        # polarity, gives the naive complement of the inks written, and PIL hands back the inks themselves
        data = src.read_bytes()
        assert data[2:4] == b"\xff\xee" and data[6:11] == b"Adobe"
        opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert np.abs(opencv.astype(int) - _naive(cmyk)).max() <= 1
    assert np.array_equal(decoded, cmyk)

    pic = read_image(src)
    expected = _srgb_through_test_profile(cmyk)
    got = to_uint8(pic.rgb).astype(np.float64)
    # littlecms evaluates the whole conversion on its own 17-node grid: up to ~3 levels off between
    # its nodes for this profile's steep dark blues (0.33 with cmsFLAGS_NOOPTIMIZE, 5x slower)
    assert np.abs(got - expected).max() <= 4 and np.abs(got - expected).mean() < 0.5
    assert np.abs(_naive(cmyk) - expected).mean() > 30  # what the naive complement gave instead
    # the 33% cyan patch (row 4 of blocks): linear red 2/3 -> sRGB 0.836 = 213 (the naive complement: 170)
    assert cmyk[32, 0].tolist() == [85, 0, 0, 0] and _naive(cmyk)[32, 0].tolist() == [170, 255, 255]
    assert to_uint8(pic.rgb)[32, 0].tolist() == [213, 255, 255]
    assert pic.icc == image_io.srgb_icc() and pic.read_warnings == ()
    srgb = ImageCms.ImageCmsProfile(io.BytesIO(pic.icc)).profile
    # littlecms's sRGB, dated once for all (it stamps the current time): the same run writes the same bytes
    assert (srgb.profile_description, srgb.xcolor_space, srgb.creation_date.year) == ("sRGB built-in", "RGB ", 2000)

    for name in ("out.jpg", "out.png", "out.webp", "out.tif"):
        written = write_image(tmp_path / name, pic.rgb, **pic.encoding())
        assert Image.open(written).info.get("icc_profile") == image_io.srgb_icc(), name


def _damaged_profiles() -> dict[str, bytes]:
    good = _cmyk_profile()
    lut = good.index(b"mft2")
    return {
        "cut": good[:300],  # the tag table points past the end
        "no-lut": good.replace(b"A2B0", b"B2A0", 1),  # no CMYK -> PCS table at all
        "bad-lut": good[: lut + 8] + bytes([9]) + good[lut + 9 :],  # a LUT claiming 9 inputs
        "rgb": _profile("sRGB"),  # a profile of the wrong colour space
        "junk": b"not a profile" * 20,
    }


@pytest.mark.parametrize("damage", _damaged_profiles())
def test_a_cmyk_photo_with_an_unusable_profile_is_converted_naively_with_one_warning(tmp_path, capfd, damage):
    cmyk = _cmyk_patches()
    src = tmp_path / "print.jpg"
    Image.fromarray(cmyk, "CMYK").save(src, quality=100, icc_profile=_damaged_profiles()[damage])
    pic = read_image(src)
    assert np.array_equal(to_uint8(pic.rgb), _naive(cmyk))
    why = {"rgb": "it is a profile for RGB, not CMYK", "junk": "it is not an ICC profile"}.get(
        damage, "it is damaged or incomplete; littlecms: cannot build transform")
    assert pic.read_warnings == (f"{src}: the colour profile of its CMYK pixels cannot be used ({why}); "
                                 "they were converted to RGB without it, so colours may be off",)
    assert pic.icc is None  # not written into outputs: it does not describe their RGB values
    assert "icc_profile" not in Image.open(write_image(tmp_path / "out.jpg", pic.rgb, **pic.encoding())).info
    assert capfd.readouterr() == ("", "")  # nothing from littlecms on the terminal


def test_a_link_to_a_folder_above_is_named_not_followed(tmp_path):
    """`in/up -> ..` was followed out of the folder given: the walk read the folders beside it (a
    command's own outputs, on a rerun) and a link to / or ~ searched the whole disk. A link that holds
    the folder walked, or the folder it lies in (also inside a linked folder), is left out and named;
    a link to a folder elsewhere is still followed."""
    elsewhere, root = tmp_path / "elsewhere", tmp_path / "data"
    write_image(tmp_path / "beside" / "x.png", np.zeros((4, 4, 3), np.float32))
    write_image(elsewhere / "inner" / "b.png", np.zeros((4, 4, 3), np.float32))
    write_image(root / "a.png", np.zeros((4, 4, 3), np.float32))
    (root / "up").symlink_to("..")
    (root / "disk").symlink_to("/")
    (root / "linked").symlink_to(elsewhere)
    (elsewhere / "inner" / "back").symlink_to("..")  # holds the linked folder it lies in, not data: still a loop
    links: list = []
    found, problems = list_images([root], links=links)
    assert found == [root / "a.png", root / "linked" / "inner" / "b.png"] and problems == []
    assert sorted(link for link, _ in links) == [root / "disk", root / "linked" / "inner" / "back", root / "up"]
    reasons = dict(links)
    assert reasons[root / "up"] == (f"links to {tmp_path.resolve()}, which holds {root}: following it would search outside {root} "
                                    "and loop back into it (link to the folders you want instead)")
    assert reasons[root / "disk"].startswith("links to /, which holds")
    assert reasons[root / "linked" / "inner" / "back"] == f"links to {root / 'linked'}, a folder above it (a loop; remove the link)"


def test_a_link_to_its_own_folder_or_one_above_inside_the_walk_is_called_a_loop(tmp_path):
    """`d/self -> .` and `d/sub/up -> ..` were said to "search outside" the folder walked, which they
    do not: they lead back into it, and the warning now says so plainly."""
    root = tmp_path / "links"
    write_image(root / "d" / "sub" / "a.png", np.zeros((4, 4, 3), np.float32))
    (root / "d" / "self").symlink_to(".")
    (root / "d" / "sub" / "up").symlink_to("..")
    links: list = []
    found, problems = list_images([root], links=links)
    assert found == [root / "d" / "sub" / "a.png"] and problems == []
    assert dict(links) == {
        root / "d" / "self": "links to its own folder (a loop; remove the link)",
        root / "d" / "sub" / "up": f"links to {root / 'd'}, a folder above it (a loop; remove the link)",
    }


def test_a_walk_never_enters_an_excluded_folder_even_through_a_link(tmp_path, monkeypatch):
    """exclude only left out the files found under an excluded folder, after listing all of it (a
    large output tree was still walked); a link to the output folder (or to a file in it) must not
    read a command's own outputs back on a rerun."""
    root, out = tmp_path / "data", tmp_path / "out"
    write_image(root / "a.png", np.zeros((4, 4, 3), np.float32))
    write_image(out / "a.png", np.zeros((4, 4, 3), np.float32))
    (root / "results").symlink_to(out)
    (root / "one.png").symlink_to(out / "a.png")
    real_scandir, listed = os.scandir, []
    monkeypatch.setattr(os, "scandir", lambda path=".", *a: listed.append(os.path.realpath(path)) or real_scandir(path, *a))
    found, problems = list_images([root], exclude=[out])
    assert found == [root / "a.png"] and problems == [] and str(out.resolve()) not in listed
    monkeypatch.undo()
    found, _ = list_images([root])  # without the exclusion the link is a linked folder like any other
    assert found == [root / "a.png", root / "one.png"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_named_like_an_image_inside_a_folder_is_a_problem_and_never_read(tmp_path):
    """Inside a folder a pipe named x.png was dropped without a word (named on its own it is 'not a
    regular file'); and read_image on it would block forever."""
    write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    os.mkfifo(tmp_path / "pipe.png")
    found, problems = list_images([tmp_path])
    assert found == [tmp_path / "a.png"] and problems == [(tmp_path / "pipe.png", "is not a regular file")]
    with pytest.raises(BadImage) as caught:
        read_image(tmp_path / "pipe.png")
    assert caught.value.one_line() == f"{tmp_path / 'pipe.png'} is not a regular file (a pipe, socket or device); pass image files"


def test_reading_a_broken_link_says_so(tmp_path):
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(BadImage) as caught:
        read_image(tmp_path / "gone.png")
    assert caught.value.one_line() == f"{tmp_path / 'gone.png'} is a broken link (its target does not exist); fix or remove the link"


@pytest.mark.parametrize("link", ["a-link", "sublink"], ids=["link-listed-first", "link-listed-last"])
def test_a_folder_reached_by_a_link_too_is_read_under_its_own_path(tmp_path, link):
    """Which of the two was kept followed the file system's listing order (QA: `sublink` before `sub`)."""
    from facerestore.image_io import list_images

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / link).symlink_to("sub")
    found, problems = list_images([tmp_path])
    assert found == [tmp_path / "sub" / "a.png"] and problems == []
