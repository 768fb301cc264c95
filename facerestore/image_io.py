"""The one place where files become arrays and arrays become files.

Everything else in facerestore works on float32 RGB in [0, 1], except the photo the restore pipeline
pastes faces into, kept as uint8/uint16 samples (`to_samples`; 4 bytes a sample is 600 MB for a
50 MP photo), which write_image takes as they are. This module deals with what real files
carry so that the rest need not: EXIF orientation, alpha, 16-bit depth, grayscale, palette and CMYK
sources, corrupt or oversized inputs (one-line `BadImage`), and atomic writes (temp file + rename, so
an output is either the old file or the complete new one, never partial).

Decoding: PIL reads the header first (size, mode, orientation) so the pixel limit is enforced before
any pixels are decoded. PNG and TIFF are then decoded with OpenCV, which keeps 16-bit samples that
PIL truncates to 8 bits; other formats and odd modes (palette, CMYK, ...) are decoded with PIL, which
also raises on truncated JPEGs that some OpenCV builds silently fill with gray.

Colour: pixels keep the values stored in the file and outputs carry the source's profile, except CMYK,
which has to become RGB: through its embedded CMYK profile into sRGB when it has a usable one
(`_cmyk_to_srgb`), else by PIL's naive complement.
"""

from __future__ import annotations

import errno
import functools
import glob
import hashlib
import io
import os
import stat
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facerestore.errors import BadImage, UsageError
from facerestore.file_modes import new_file_mode
from facerestore.image_meta import EXIF_HEADER, embed_jpeg, embed_png, icc_colour_space, read_exif, read_icc, sized_exif

DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_ORIENTATION_TAG = 0x0112
# PIL modes whose samples OpenCV decodes faithfully (IMREAD_UNCHANGED gives 1/3/4 channels).
_CV2_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L"})
_CV2_FORMATS = frozenset({"PNG", "TIFF"})  # the formats where 16-bit matters
_JPEG_START = b"\xff\xd8\xff"  # start-of-image marker, then the first segment's marker
_ALPHA_EXTS = frozenset({".png", ".tif", ".tiff", ".webp"})
_DEEP_EXTS = frozenset({".png", ".tif", ".tiff"})
_PIL_LIMIT_LOCK = threading.Lock()


def holds_alpha(path: Path) -> bool:
    """Whether the format `path` names keeps transparency (JPEG and BMP do not)."""
    return path.suffix.lower() in _ALPHA_EXTS


@dataclass(frozen=True, eq=False)
class Picture:
    """A decoded image: display-oriented RGB samples plus what is needed to write it back alike.

    The pixels are kept as the file's own integer samples, not float32: a 48 MP photo is 144 MB in
    uint8 against 576 MB in float32, and the pipeline detects, aligns and pastes from the samples
    without ever holding a photo-sized float copy."""

    samples: np.ndarray  # uint8 (uint16 for a 16-bit source) HxWx3, RGB, EXIF orientation applied
    alpha: np.ndarray | None  # float32 HxW in [0, 1], or None when the source has no alpha
    bit_depth: int  # 8 or 16: write outputs at the depth the source had
    gray: bool  # single-channel source or identical channels: write the output gray too
    path: Path | None = None
    icc: bytes | None = None  # the profile of `rgb`, which outputs carry: the source's, or sRGB for a CMYK source converted through its profile
    exif: bytes | None = None  # the source's EXIF, upright (image_meta.upright_exif)
    webp_lossless: bool = False  # a lossless WebP source gives lossless WebP outputs
    full_chroma: bool = False  # a JPEG source without chroma subsampling (4:4:4) gives 4:4:4 JPEG outputs
    frames: int = 1  # an animated GIF or WebP, or a multi-page TIFF: only the first frame is read
    read_warnings: tuple[str, ...] = ()  # lines the user should see: read, but not as the file meant (an unusable CMYK profile)

    def encoding(self, *, exif: bool = True) -> dict:
        """write_image's keyword arguments that make an output like this source; `exif=False` for
        the face crops, whose camera data would describe another picture."""
        return dict(bit_depth=self.bit_depth, gray=self.gray, icc=self.icc, exif=self.exif if exif else None, lossless=self.webp_lossless,
                    full_chroma=self.full_chroma)

    def notes(self, action: str, written_as: Path | None = None) -> tuple[str, ...]:
        """The warning lines restore, degrade and clean-dataset print for this file: read, but not all
        of it or not as it meant; `action` is what was done to the first frame ("restored"), and
        `written_as` the file it goes to, whose format may hold no transparency."""
        frames = (f"{self.path} holds {self.frames} frames; only the first is {action}, and written as one still image",) if self.frames > 1 else ()
        flattened = ()
        if written_as is not None and not holds_alpha(written_as) and self.alpha is not None and float(self.alpha.min()) < 1.0:
            form = {"JPG": "JPEG"}.get(written_as.suffix.lstrip(".").upper(), written_as.suffix.lstrip(".").upper())
            flattened = (f"{self.path} has transparent pixels, which {form} cannot hold: {written_as.name} shows them on white "
                         f"(pass --ext png to keep the transparency)",)
        return frames + tuple(self.read_warnings) + flattened

    @property
    def rgb(self) -> np.ndarray:
        """The pixels as float32 HxWx3 in [0, 1]: a new copy at every access, 4 bytes per sample, for
        the face-sized images of training and evaluation; photo-sized work reads `samples`."""
        return from_samples(self.samples)

    @property
    def height(self) -> int:
        return int(self.samples.shape[0])

    @property
    def width(self) -> int:
        return int(self.samples.shape[1])


OUTPUT_FORMATS = ("auto", "png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp")


def output_format(ext: str) -> str:
    """An --ext value as the commands use it: 'PNG', '.png' and 'png' are the same format."""
    value = ext.strip().lower().lstrip(".")
    if value not in OUTPUT_FORMATS:
        raise UsageError(f"--ext {ext!r} is not supported", hint="use auto, png, jpg, webp, tif or bmp")
    return value


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a float image for a network or back: area averaging when shrinking (no aliasing),
    bicubic when enlarging, clipped to [0, 1] (bicubic overshoots); returned as is at its size."""
    if rgb.shape[:2] == (height, width):
        return rgb
    shrink = height * width < rgb.shape[0] * rgb.shape[1]
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.clip(resized, 0.0, 1.0).astype(np.float32, copy=False)


def is_image_path(path: Path) -> bool:
    """True when the extension (any case) is one we read and write."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


BAND_VALUES = 1 << 21  # samples converted at a time: an 8 MB float32 scratch, whatever the photo's size


def _bands(rows: int, values_per_row: int) -> Iterator[slice]:
    """Row ranges of about BAND_VALUES samples, for conversions that would otherwise need a
    photo-sized float scratch (a 50 MP photo is 600 MB per float32 copy)."""
    step = max(1, BAND_VALUES // max(1, values_per_row))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _quantize(x: np.ndarray, top: float, dtype: type) -> np.ndarray:
    """Float [0, 1] -> integers 0..top, rounded; NaN becomes 0. Converted a band of rows at a time,
    so the float scratch is BAND_VALUES samples, not the photo's size."""
    out = np.empty(x.shape, dtype)
    rows = x.shape[0] if x.ndim else 1
    flat_x, flat_out = (x, out) if x.ndim else (x.reshape(1), out.reshape(1))
    for band in _bands(rows, flat_x[:1].size):
        flat_out[band] = round_to_levels(flat_x[band], top)
    return out


def round_to_levels(values: np.ndarray, top: float, *, in_place: bool = False) -> np.ndarray:
    """Float [0, 1] -> 0..top as floats, rounded (half to even), clipped, NaN as 0: the one rule by
    which every written sample is rounded, also used by paste-back into an integer photo."""
    scaled = np.multiply(values, top, out=values if in_place else None)
    np.nan_to_num(scaled, copy=False, nan=0.0)
    np.clip(scaled, 0.0, top, out=scaled)
    return np.rint(scaled, out=scaled)


def to_samples(rgb: np.ndarray, dtype: type, gray: bool = False, over_white: np.ndarray | None = None) -> np.ndarray:
    """An HxWx3 float [0, 1], uint8 or uint16 image -> HxWx3 (HxWx1 when `gray`) samples of `dtype`
    (uint8 or uint16), rounded. Integer input of that dtype is used as it is (no copy), and other
    input is converted a band of rows at a time: a 50 MP uint8 photo no longer goes through two
    600 MB float32 copies to be written. `over_white`: an HxW alpha to flatten the image onto white
    with, as image editors export transparency to JPEG (dropping alpha alone would show whatever
    colours the transparent pixels hold)."""
    if rgb.dtype == dtype and not gray and over_white is None:
        return rgb
    top = float(np.iinfo(dtype).max)
    out = np.empty((*rgb.shape[:2], 1 if gray else 3), dtype)
    for band in _bands(rgb.shape[0], rgb.shape[1] * 3):
        part = rgb[band]
        if part.dtype == np.uint8:
            part = part.astype(np.float32) / 255.0
        elif part.dtype == np.uint16:
            part = part.astype(np.float32) / 65535.0
        if over_white is not None:
            weight = np.asarray(over_white[band], dtype=np.float32)[:, :, None]
            part = part * weight + (1.0 - weight)
        if gray:
            part = (part[:, :, 0] * 0.299 + part[:, :, 1] * 0.587 + part[:, :, 2] * 0.114)[:, :, None]
        out[band] = _quantize(part, top, dtype)
    return out


def from_samples(samples: np.ndarray) -> np.ndarray:
    """uint8 / uint16 samples -> float32 in [0, 1], the values read_image gives for them."""
    return samples.astype(np.float32) / np.float32(np.iinfo(samples.dtype).max)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8, rounding (not truncating) so a round trip is exact; NaN becomes 0."""
    return _quantize(rgb, 255.0, np.uint8)


def _to_uint16(x: np.ndarray) -> np.ndarray:
    return _quantize(x, 65535.0, np.uint16)


def pixel_counts(*counts: int) -> tuple[str, ...]:
    """Pixel counts as people read them in one message, all in one unit ("0.203 MP, over the 60000
    pixels limit" made them compare two units): megapixels once the largest reaches 0.1 MP, with as
    many digits as it takes to tell different counts apart, else pixels."""
    if max(counts) < 100_000:
        return tuple(f"{n} pixels" for n in counts)
    for digits in range(3, 13):
        shown = tuple(f"{_significant(n / 1e6, digits)} MP" for n in counts)
        if len(set(shown)) == len(set(counts)):
            break
    return shown


def _significant(value: float, digits: int) -> str:
    """`value` to `digits` significant digits, never in exponent form (a forged header's 10000 MP)."""
    decimals = max(0, digits - 1 - int(np.floor(np.log10(abs(value))))) if value else 0
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{value:.0f}"


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an HxW[xC] array, giving the image as viewers show it."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _read_orientation(img: Image.Image) -> int:
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # an eXIf chunk after the pixels would make getexif() decode the whole image
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a malformed EXIF block must not make the pixels unreadable
        return 1
    return value if 1 <= value <= 8 else 1


@functools.cache
def _tiff_decoders_orient() -> dict[str, bool]:
    """Whether each decoder already turns a TIFF by its orientation tag (recent Pillow and OpenCV do,
    older ones did not): probed once on a 2x1 TIFF, so that no version turns a photo twice."""
    buffer = io.BytesIO()
    Image.new("RGB", (2, 1)).save(buffer, "TIFF", tiffinfo={_ORIENTATION_TAG: 6})
    data = buffer.getvalue()
    probe = Image.open(io.BytesIO(data))
    probe.load()
    decoded = _decode_cv2(data)
    return {"pil": probe.size == (1, 2), "cv2": decoded is not None and decoded.shape[:2] == (2, 1)}


def _decode_cv2(data: bytes) -> np.ndarray | None:
    """OpenCV decode to RGB(A)/gray order, or None when OpenCV cannot give 8/16-bit 1/3/4 channels."""
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if arr is None or arr.dtype not in (np.uint8, np.uint16):
        return None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 3:  # reordered in place: a second photo-sized array would double the read's peak
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB, dst=arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA, dst=arr)
    return arr if arr.ndim == 2 else None


def _decode_pil(img: Image.Image) -> np.ndarray:
    """PIL decode to uint8/uint16 gray, RGB or RGBA (palette, CMYK, LA, 16-bit gray handled)."""
    mode = img.mode
    key = img.info.get("transparency")
    if isinstance(key, int) and mode == "1":  # the key is a 1-bit sample
        img, mode, key = img.convert("L"), "L", 255 if key else 0
    if isinstance(key, int) and (mode == "L" or mode.startswith("I")):  # gray PNG with a tRNS key colour
        gray = np.asarray(img)
        gray = gray.astype(np.uint8) if mode == "L" else np.clip(gray, 0, 65535).astype(np.uint16)
        opaque = np.iinfo(gray.dtype).max
        return np.dstack([gray, np.where(gray == key, 0, opaque).astype(gray.dtype)])
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)
    elif mode == "I":
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
    elif mode == "F":  # float TIFF: 0..1 as scientific tools write it, else 0..65535
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 65535.0 if values.size and values.max() <= 1.0 else 1.0
        return np.clip(np.round(values * scale), 0, 65535).astype(np.uint16)
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = mode.endswith(("A", "a")) or "transparency" in img.info  # RGBA, LA, RGBa...; not LAB
        img = img.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(img)


def _png_reaches_iend(data: bytes) -> bool:
    """Whether the chunk lengths lead to an IEND chunk inside the data (a cut-off download does not;
    bytes after IEND, which some tools append, do not matter)."""
    offset = 8  # the signature
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        if data[offset + 4 : offset + 8] == b"IEND":
            return True
        offset += 12 + length  # length, type, data, CRC
    return False


def read_image(path: Path, *, max_pixels: int | None = None) -> Picture:
    """Read any supported image into a `Picture`; every failure is a one-line `BadImage`.

    `max_pixels`: the command's --max-pixels; None: the default limit, for commands without that
    option (their message does not offer it)."""
    path = Path(path)
    limit_option = max_pixels is not None
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    try:
        info = path.stat()
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):  # a pipe would block the read, a device never end
            raise BadImage(f"{path} {NOT_REGULAR} (a pipe, socket or device)", hint="pass image files")
        data = path.read_bytes() if info.st_size else b""
    except FileNotFoundError:
        if path.is_symlink():
            raise BadImage(f"{path} {BROKEN_LINK}", hint="fix or remove the link") from None
        raise BadImage(f"{path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise BadImage(f"{path} is a folder, not an image", hint="pass the image files inside it") from None
    except OSError as e:
        raise BadImage(f"{path} cannot be read ({e.strerror or e})", hint="check its permissions") from None
    if not data:
        raise BadImage(f"{path} is empty (0 bytes)", hint="re-copy or re-export the file")
    known = path.suffix.lower() in IMAGE_EXTENSIONS
    not_image = BadImage(
        f"{path} is not an image file (or is corrupt)",
        hint="re-copy or re-export the file" if known else f"use one of {', '.join(IMAGE_EXTENSIONS)} or re-export the file",
    )

    try:
        # Our own pixel limit below replaces PIL's decompression-bomb check, which would otherwise
        # refuse sizes a user allowed with --max-pixels.
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, and "Corrupt EXIF data" lines before our one line
            old_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
        width, height = img.size
    except Exception:
        if data[:4] in (b"II*\0", b"MM\0*"):
            return _read_tiff_pillow_cannot(data, path, max_pixels, not_image, limit_option)
        if data.startswith(_JPEG_START):  # a JPEG cut inside its headers: an image, not "not an image"
            raise BadImage(f"{path} is truncated or damaged (a JPEG whose header cannot be read)", hint="re-copy or re-export the file") from None
        raise not_image from None
    _check_pixels(path, width, height, max_pixels, limit_option)
    if img.format == "PNG" and not _png_reaches_iend(data):  # said here rather than by libpng on stderr
        raise BadImage(f"{path} is truncated (the PNG ends before its last chunk)", hint="re-copy or re-export the file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about damaged metadata; the pixels decide
        return _decode(img, data, path, width, height, not_image)


def _check_pixels(path: Path, width: int, height: int, max_pixels: int, limit_option: bool) -> None:
    if width * height > max_pixels:
        size, limit = pixel_counts(width * height, max_pixels)
        raise BadImage(
            f"{path} is {width}x{height} = {size}, over the {limit} limit",
            hint="downscale it or pass --max-pixels" if limit_option else "downscale it",
        )


def _read_tiff_pillow_cannot(data: bytes, path: Path, max_pixels: int, not_image: BadImage, limit_option: bool) -> Picture:
    """Float (16/32/64-bit) colour TIFFs, as HDR and scientific tools write them, and 32-bit integer
    ones: Pillow has no mode for them, tifffile reads them. Floats in 0..1 (or integers above 16 bits)
    become 16-bit samples, as Pillow's float gray mode "F" does; EXIF is not read from these."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            if int(page.photometric) not in (1, 2):  # gray (min-is-black) and RGB; not CMYK, Lab, YCbCr...
                raise BadImage(f"{path} is a {page.photometric.name} TIFF with {page.dtype} samples, which cannot be read",
                               hint="export it as 8- or 16-bit RGB")
            _check_pixels(path, int(page.imagewidth), int(page.imagelength), max_pixels, limit_option)
            arr = page.asarray()
            if page.axes.startswith("S"):  # planar: one plane per sample
                arr = np.moveaxis(arr, 0, -1)
            icc_tag, orientation_tag = page.tags.get(34675), page.tags.get(_ORIENTATION_TAG)
            icc = bytes(icc_tag.value) if icc_tag is not None else None
            orientation = int(orientation_tag.value) if orientation_tag is not None else 1
            frames = len(tif.pages)
    except BadImage:
        raise
    except Exception:
        raise not_image from None
    if arr.dtype.kind == "f":
        values = np.nan_to_num(arr.astype(np.float64))
        scale = 65535.0 if values.size and values.max() <= 1.0 else 1.0
        arr = np.clip(np.round(values * scale), 0, 65535).astype(np.uint16)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype not in (np.uint8, np.uint16):
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    return _to_picture(arr, path=path, orientation=orientation, icc=icc, frames=frames, not_image=not_image)


def _decode(img: Image.Image, data: bytes, path: Path, width: int, height: int, not_image: BadImage) -> Picture:
    orientation = _read_orientation(img)

    arr, decoder = None, "cv2"
    # OpenCV ignores the tRNS key colour of gray PNGs (it honours it for RGB), and reads an 8-bit TIFF
    # with unassociated alpha through libtiff's RGBA interface, which premultiplies: Pillow reads those
    if img.format in _CV2_FORMATS and img.mode in _CV2_MODES and not (img.mode != "RGB" and "transparency" in img.info) \
            and not _tiff_8bit_alpha(img):
        arr = _decode_cv2(data)
        if arr is not None and arr.shape[:2] != (height, width):
            arr = None  # e.g. a multi-page TIFF where OpenCV picked another page
    icc, read_warnings = read_icc(img), ()
    if arr is None:
        decoder = "pil"
        try:
            img.load()
            pixels = img
            if img.mode == "CMYK":
                pixels, icc, read_warnings = _cmyk_to_srgb(img, path)
            arr = _decode_pil(pixels)
        except Exception as exc:
            if "truncated" in str(exc):  # Pillow's "image file is truncated (N bytes not processed)"
                raise BadImage(f"{path} is truncated (the {img.format} data ends early)", hint="re-copy or re-export the file") from None
            raise not_image from None
    if img.format == "TIFF" and orientation != 1 and _tiff_decoders_orient()[decoder]:
        orientation = 1  # the decoder has turned it already
    return _to_picture(arr, path=path, orientation=orientation, icc=icc, exif=read_exif(img), not_image=not_image,
                       webp_lossless=img.format == "WEBP" and _webp_is_lossless(data), full_chroma=_jpeg_full_chroma(img),
                       frames=int(getattr(img, "n_frames", 1) or 1), read_warnings=read_warnings)


# Fixed creation date (2000-01-01) for the sRGB profile: littlecms stamps the current time, which
# would make every output differ byte for byte from the same run's a second later.
_FIXED_ICC_DATE = (2000, 1, 1, 0, 0, 0)


@functools.cache
def srgb_icc() -> bytes:
    """littlecms's sRGB profile, serialized: what outputs of a CMYK source converted to sRGB carry."""
    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = b"".join(v.to_bytes(2, "big") for v in _FIXED_ICC_DATE)  # no profile ID (bytes 84-99) covers it
    return bytes(icc)


def _cmyk_to_srgb(img: Image.Image, path: Path) -> tuple[Image.Image, bytes | None, tuple[str, ...]]:
    """A decoded CMYK image -> (RGB image, its profile, warnings).

    PIL hands CMYK over as ink amounts (0 = no ink): it undoes the inverted values Photoshop writes
    with its APP14 Adobe marker (it assumes that polarity for every CMYK JPEG), and these are the
    values a CMYK ICC profile takes. With a usable embedded CMYK profile the pixels go through it into
    sRGB, relative colorimetric with black point compensation (Photoshop's default CMYK -> RGB
    conversion): paper white becomes display white, colours inside sRGB (nearly all of a press
    gamut) keep their measured values instead of a vendor's perceptual remapping, and the press's
    deepest black becomes black rather than a dark gray. The sRGB profile goes with the pixels, so
    that applications set to another RGB working space (Adobe RGB in prepress settings) do not
    misread the outputs. Without a profile, or with one that cannot be used, PIL's naive complement
    (R = (1 - C)(1 - K), in 0..1) as before; an unusable profile is one warning line, never an error.
    Either way 8-bit images like PIL's own convert(): no float copy of the photo.
    """
    from PIL import ImageCms

    raw = img.info.get("icc_profile")
    if not raw:
        return img.convert("RGB"), None, ()
    space = icc_colour_space(raw)
    if space != "CMYK":
        why = f"it is a profile for {space}, not CMYK" if space else "it is not an ICC profile"
    else:
        try:
            transform = ImageCms.buildTransform(
                ImageCms.ImageCmsProfile(io.BytesIO(raw)), ImageCms.ImageCmsProfile(io.BytesIO(srgb_icc())), "CMYK", "RGB",
                renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, flags=ImageCms.Flags.BLACKPOINTCOMPENSATION)
            return ImageCms.applyTransform(img, transform), srgb_icc(), ()
        except MemoryError:
            raise
        except Exception as exc:  # littlecms refuses damaged profiles in several ways; the pixels are still readable
            why = f"it is damaged or incomplete; littlecms: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
    return img.convert("RGB"), None, (f"{path}: the colour profile of its CMYK pixels cannot be used ({why}); "
                                      "they were converted to RGB without it, so colours may be off",)

def _to_picture(arr: np.ndarray, *, path: Path, orientation: int, not_image: BadImage, **meta) -> Picture:
    """Decoded 8/16-bit samples (gray, gray+alpha, RGB, RGBA) -> an upright Picture."""
    if arr.ndim not in (2, 3) or arr.size == 0 or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise not_image
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    arr = _orient(arr, orientation)
    bit_depth = 16 if arr.dtype == np.uint16 else 8
    scale = np.float32(65535.0 if bit_depth == 16 else 255.0)  # divide: x / 255 is what callers expect
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        luma = arr if arr.ndim == 2 else arr[:, :, 0]
        samples = np.repeat(luma[:, :, None], 3, axis=2)
        alpha = arr[:, :, 1].astype(np.float32) / scale if channels == 2 else None
        gray = True
    else:
        samples = arr if channels == 3 else np.ascontiguousarray(arr[:, :, :3])
        alpha = arr[:, :, 3].astype(np.float32) / scale if channels == 4 else None
        gray = bool(np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1], arr[:, :, 2]))
    return Picture(samples=samples, alpha=alpha, bit_depth=bit_depth, gray=gray, path=path, **meta)


def _jpeg_full_chroma(img: Image.Image) -> bool:
    from PIL import JpegImagePlugin

    return img.format == "JPEG" and img.mode in ("RGB", "YCbCr") and JpegImagePlugin.get_sampling(img) == 0


def _tiff_8bit_alpha(img: Image.Image) -> bool:
    if img.format != "TIFF" or img.mode not in ("RGBA", "LA"):
        return False
    bits = img.tag_v2.get(258, (8,))
    return all(b == 8 for b in (bits if isinstance(bits, tuple) else (bits,)))


def _webp_is_lossless(data: bytes) -> bool:
    """VP8L is the lossless bitstream, "VP8 " the lossy one (in a VP8X file, whichever comes first)."""
    lossless, lossy = data.find(b"VP8L", 12), data.find(b"VP8 ", 12)
    return lossless >= 0 and (lossy < 0 or lossless < lossy)


def _encode(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, bit_depth: int, gray: bool,
            jpeg_quality: int, icc: bytes | None = None, exif: bytes | None = None, lossless: bool = False,
            full_chroma: bool = False) -> bytes:
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise BadImage(f"cannot write {path}: unknown image extension {ext!r}",
                       hint=f"use one of {', '.join(IMAGE_EXTENSIONS)}")
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = rgb[:, :, None]
    if rgb.ndim != 3 or rgb.shape[2] not in (1, 3):
        raise BadImage(f"cannot write {path}: expected an HxWx3 array, got shape {rgb.shape}",
                       hint="this is a bug in the caller; please report it")
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    if alpha is not None:
        alpha = np.asarray(alpha, dtype=np.float32).reshape(rgb.shape[:2])
    over_white = alpha if ext not in _ALPHA_EXTS else None  # JPEG and BMP have no alpha channel: flattened
    if over_white is not None:
        alpha = None
    deep = bit_depth == 16 and ext in _DEEP_EXTS
    quantize = _to_uint16 if deep else to_uint8

    samples = to_samples(rgb, np.uint16 if deep else np.uint8, gray, over_white=over_white)
    if alpha is not None:
        samples = np.dstack([samples, quantize(alpha)])
    if gray and (ext == ".webp" or (alpha is not None and deep)):
        # WebP has no gray; 16-bit gray+alpha is a PNG Pillow and OpenCV cannot write and a TIFF they
        # cannot read: equal colour channels
        samples = samples[:, :, [0, 0, 0, 1] if alpha is not None else [0, 0, 0]]
    samples = np.ascontiguousarray(samples)
    space = "GRAY" if samples.shape[2] in (1, 2) else "RGB"
    icc = icc if icc_colour_space(icc) == space else None  # a profile of another colour space would be invalid
    exif = sized_exif(exif, samples.shape[1], samples.shape[0]) if exif else None  # the size written, not the camera's

    if ext == ".webp":
        return _encode_pillow_webp(samples, jpeg_quality, lossless, icc, exif)
    if ext in (".tif", ".tiff"):
        return _encode_tiff(samples, icc)
    if samples.shape[2] == 2:  # 8-bit gray + alpha PNG (JPEG and BMP have dropped alpha): OpenCV has no such PNG
        buffer = io.BytesIO()
        Image.fromarray(samples, "LA").save(buffer, "PNG", compress_level=3)
        return embed_png(buffer.getvalue(), icc, exif)
    # Photo-sized arrays are dropped as soon as the next one exists: cvtColor writes the reordered
    # channels straight into one contiguous array (fancy indexing made a strided copy that imencode
    # copied again), and neither samples nor bgr outlives its use, so a PNG peaks at two copies of the
    # photo's bytes, not four (a 12 MP photo at -s 2 held 4 x 144 MB)
    if samples.shape[2] == 1:
        bgr = samples[:, :, 0]
    else:
        bgr = cv2.cvtColor(samples, cv2.COLOR_RGB2BGR if samples.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    del samples
    params: list[int] = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        if full_chroma:
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    try:
        ok, buf = cv2.imencode(ext, bgr, params)
    except cv2.error as e:
        raise BadImage(f"cannot encode {path} ({str(e).strip().splitlines()[-1]})",
                       hint="try another --ext") from None
    del bgr
    if not ok:
        raise BadImage(f"cannot encode {path}", hint="try another --ext")
    if ext == ".png":
        return embed_png(buf.tobytes(), icc, exif)
    if ext in (".jpg", ".jpeg"):
        return embed_jpeg(buf.tobytes(), icc, exif)
    return buf.tobytes()


def _encode_pillow_webp(samples: np.ndarray, quality: int, lossless: bool, icc: bytes | None, exif: bytes | None) -> bytes:
    """WebP through Pillow, which writes the profile, EXIF and lossless files OpenCV cannot."""
    buffer = io.BytesIO()
    extra = {"icc_profile": icc} if icc else {}
    if exif:
        extra["exif"] = EXIF_HEADER + exif
    # exact: keep the colour under transparent pixels (libwebp would change it to compress better)
    Image.fromarray(samples).save(buffer, "WEBP", quality=int(quality), lossless=lossless, exact=True, **extra)
    return buffer.getvalue()


def _encode_tiff(samples: np.ndarray, icc: bytes | None) -> bytes:
    """TIFF through tifffile: alpha marked as such (ExtraSamples, which OpenCV leaves out), 8 or 16 bits,
    the profile, deflate compression."""
    import tifffile

    buffer = io.BytesIO()
    channels = samples.shape[2]
    tifffile.imwrite(
        buffer, samples if channels > 1 else samples[:, :, 0],
        photometric="minisblack" if channels in (1, 2) else "rgb",
        extrasamples=["unassalpha"] if channels in (2, 4) else None,
        iccprofile=icc, compression="zlib", metadata=None,
    )
    return buffer.getvalue()


NAME_MAX = 255  # bytes in a file name on ext4, APFS, NTFS, ...


def temp_prefix(path: Path) -> str:
    """The start of the temp file names write_image uses for `path` ('.NAME.' + 8 random + '.tmp'),
    or a fixed-length '.HASH.' when the name is too long for those 14 more bytes to fit."""
    name = Path(path).name
    if len(os.fsencode(name)) + 14 <= NAME_MAX:
        return f".{name}."
    return f".{hashlib.sha1(os.fsencode(name)).hexdigest()[:16]}."


def remove_stale_temps(targets: Iterable[Path]) -> int:
    """Delete the temp files a killed write_image left beside these targets; returns how many."""
    removed = 0
    for target in targets:
        target = Path(target)
        if target.parent.is_dir():
            for tmp in target.parent.glob(f"{glob.escape(temp_prefix(target))}*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


# The largest side each format can store (libjpeg: 16-bit sizes; libwebp: 14-bit sizes)
MAX_SIDE = {".jpg": 65535, ".jpeg": 65535, ".webp": 16383}


def check_encodable(path: Path, width: int, height: int) -> None:
    """BadImage when an image of this size cannot be stored in `path`'s format; cheap, so callers
    run it before the work that makes the image."""
    ext = Path(path).suffix.lower()
    limit = MAX_SIDE.get(ext)
    if limit and max(width, height) > limit:
        name = "JPEG" if ext in (".jpg", ".jpeg") else "WebP"
        raise BadImage(f"{path} would be {width}x{height}, over {name}'s limit of {limit} px per side",
                       hint="use --ext png or tif, or a smaller --upscale")


def write_image(path: Path, rgb: np.ndarray, *, alpha: np.ndarray | None = None, bit_depth: int = 8,
                gray: bool = False, jpeg_quality: int = 95, icc: bytes | None = None, exif: bytes | None = None,
                lossless: bool = False, full_chroma: bool = False, staged: StagedWrites | None = None) -> Path:
    """Encode by extension and write atomically; returns the path written (with `staged`: written
    to a temp file only, renamed into place by `staged.commit()`).

    Formats that cannot hold alpha (JPEG, BMP) get the image flattened onto white; formats that cannot hold 16 bits write 8.
    `icc` and `exif` (a source's, `Picture.encoding()`) are embedded where the format holds them
    (PNG, JPEG, WebP; TIFF the profile only); `lossless` applies to WebP, `full_chroma` (4:4:4) to JPEG.
    The file appears complete or not at all (encode, temp file in the same folder, fsync, rename).
    Writing over an input is NOT prevented here: callers check with `assert_not_input` first.
    """
    path = Path(path)
    height, width = np.shape(rgb)[:2]
    check_encodable(path, width, height)
    try:
        payload = _encode(path, rgb, alpha, bit_depth, gray, jpeg_quality, icc, exif, lossless, full_chroma)
    except BadImage:
        raise
    except (ValueError, OSError, MemoryError) as e:  # Pillow's and tifffile's encoders
        raise BadImage(f"cannot encode {path} ({str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__})",
                       hint="try another --ext") from None
    return write_bytes(path, payload) if staged is None else staged.add(path, payload)


def write_bytes(path: Path, payload: bytes) -> Path:
    """Write a file atomically (temp file in the same folder, fsync, rename); one-line BadImage on failure."""
    path = Path(path)
    _replace(_write_temp(path, payload), path)
    return path


def _write_temp(path: Path, payload: bytes) -> str:
    """`payload` written whole to a temp file beside `path` (named by temp_prefix, so that
    remove_stale_temps finds it after a kill); returns its name. Nothing is left on failure."""
    if path.is_dir():  # os.replace would fail with "Is a directory" after the encode, and the hint would be about free space
        raise BadImage(f"cannot write {path}: a folder of that name is in the way", hint="move that folder away, or choose another output folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=temp_prefix(path), suffix=".tmp")
    except OSError as e:
        raise BadImage(f"cannot write {path} ({e.strerror or e})", hint="check the output folder") from None
    try:
        with tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, new_file_mode())  # NamedTemporaryFile makes 0600 files
    except BaseException as e:
        _unlink_quietly(tmp.name)
        if isinstance(e, OSError):
            raise BadImage(f"cannot write {path} ({e.strerror or e})", hint="check free space and permissions") from None
        raise
    return tmp.name


def _replace(tmp: str, path: Path) -> None:
    """Rename a written temp file onto `path`; the temp is removed if that fails."""
    try:
        os.replace(tmp, path)
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise BadImage(f"cannot write {path} ({e.strerror or e})", hint="check free space and permissions") from None
        raise


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


class StagedWrites:
    """Files that belong together (a photo and its face files) written whole to temp files beside
    their targets and renamed into place only by `commit`: a set that fails or is interrupted
    part-way leaves the earlier run's files as they were (replacing each at once, then deleting the
    new ones on failure, lost them), and a finished set replaces them. Use as a context manager:
    leaving it without a commit (an exception, Ctrl-C) deletes the temps."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Path]] = []

    def add(self, path: Path, payload: bytes) -> Path:
        path = Path(path)
        self.pending.append((_write_temp(path, payload), path))
        return path

    def commit(self) -> list[Path]:
        """Rename every temp onto its target, in the order written; returns the targets."""
        done = []
        try:
            while self.pending:
                tmp, path = self.pending[0]
                _replace(tmp, path)
                self.pending.pop(0)
                done.append(path)
        finally:
            self.discard()  # after a failed rename: the temps not renamed
        return done

    def discard(self) -> None:
        """Delete the temps not yet committed."""
        while self.pending:
            _unlink_quietly(self.pending.pop()[0])

    def __enter__(self) -> StagedWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _within(path: str, folder: str) -> bool:
    """Whether the real path `path` is `folder` or lies below it (both from os.path.realpath)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _loop_reason(real: str, chain: Sequence[tuple[str, Path]], folder: Path, held: Path) -> str:
    """Why _walk leaves out a link to `real` that holds `held`, a folder on the way down (`chain`: real
    path, path walked). A link to the folder it lies in (`self -> .`) or to one above it inside the walk
    (`sub/up -> ..`) is said to be the loop it is: "search outside" would be wrong, it stays inside."""
    if chain and real == chain[-1][0]:
        return "links to its own folder (a loop; remove the link)"
    above = [shown for inner, shown in chain if inner == real]
    if above:
        return f"links to {above[0]}, a folder above it (a loop; remove the link)"
    return (f"links to {real}, which holds {held}: following it would search outside {folder} "
            "and loop back into it (link to the folders you want instead)")


def _walk(folder: Path, unreadable: list[Path] | None = None, *, exclude: Sequence[str] = (),
          links: list[tuple[Path, str]] | None = None) -> Iterator[Path]:
    """Every file below `folder`, following linked folders (a dataset assembled from links) but each
    real folder once; hidden names (".git", macOS "._x.jpg", our own temp files) and everything below
    them are left out. Sub-folders that cannot be listed go to `unreadable` (os.walk would skip them
    without a word).

    Two kinds of folder are never entered, whatever path leads to them (real paths are compared):
    those at or below an `exclude` folder (a command's own outputs: a rerun would read them back), and
    a link to a folder that holds the folder being walked or the folder the link lies in (`up -> ..`,
    a link to /tmp or ~): following it would leave the folder given, search the whole disk, and read a
    command's outputs beside it. Those links go to `links` with the reason, for one warning line each.
    """
    top = os.path.realpath(folder)
    visited = {top}
    chains = {os.fspath(folder): ((top, Path(folder)),)}  # each walked folder -> (real path, path walked) of it and the folders above it

    def note(error: OSError) -> None:
        if unreadable is not None and error.filename is not None:
            unreadable.append(Path(error.filename))

    for root, dirs, names in os.walk(folder, followlinks=True, onerror=note):
        chain = chains.pop(root, ())
        kept = []
        # sorted, real folders before links: a folder reached as `sub` and as `sublink -> sub` is read
        # once, as `sub`, whatever order the file system lists them in
        for name in sorted(dirs, key=lambda name: (os.path.islink(os.path.join(root, name)), name)):
            path = os.path.join(root, name)
            if name.startswith("."):
                continue
            real = os.path.realpath(path)
            if any(_within(real, e) for e in exclude):
                continue
            holds = [shown for inner, shown in chain if _within(inner, real)]
            if holds and os.path.islink(path):  # only a link can point up; bind mounts are left alone
                if links is not None:
                    links.append((Path(path), _loop_reason(real, chain, folder, holds[0])))
                continue
            if real in visited:
                continue
            visited.add(real)
            chains[path] = (*chain, (real, Path(path)))
            kept.append(name)
        dirs[:] = kept
        yield from (Path(root) / name for name in names if not name.startswith("."))


BROKEN_LINK = "is a broken link (its target does not exist)"
LINK_LOOP = "is a link loop (its links lead back to each other, never to a file)"
NOT_REGULAR = "is not a regular file"
NO_IMAGES = f"folder has no images ({', '.join(IMAGE_EXTENSIONS)})"
PROBLEM_HINTS = {  # what to do about each reason list_images gives, for the commands that fail an input for it
    BROKEN_LINK: "fix the link or remove it",
    LINK_LOOP: "fix the link or remove it",
    NOT_REGULAR: "pass image files (a pipe, socket or device is not read)",
    "does not exist": "check the path",
    "cannot be read (permission denied)": "make it readable (chmod a+rx), or copy it somewhere of yours",
    "cannot be listed": "check that the folder is still there and readable",
}


def _dead_link(path: Path) -> str:
    """Why a link leads to no file: LINK_LOOP where following it comes back to a link already
    followed (`a.jpg -> b.jpg -> a.jpg`: "target does not exist" sends the user looking for a file),
    else BROKEN_LINK."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return LINK_LOOP
    return BROKEN_LINK


def problem_text(path: Path, reason: str) -> str:
    """An input list_images could not use, and why, as one sentence led by the input: its reasons say
    what the input is or does (`x.png is a broken link ...`, `x does not exist`), so they follow the
    path without a colon; NO_IMAGES is a clause of its own (`in: folder has no images ...`)."""
    return f"{path}: {reason}" if reason == NO_IMAGES else f"{path} {reason}"


def problem_line(path: Path, reason: str, hint: str | None = None) -> str:
    """problem_text as its error line says it, with what to do (`hint`, else the one PROBLEM_HINTS has
    for the reason)."""
    hint = hint or PROBLEM_HINTS.get(reason)
    text = problem_text(path, reason)
    return f"{text}; {hint}" if hint else text


def list_images(inputs: Sequence[Path], exclude: Sequence[Path] = (), *, duplicates: list[Path] | None = None,
                links: list[tuple[Path, str]] | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand inputs into image files: (found, [(input, reason)] for inputs that yield nothing).

    Files named explicitly are kept whatever their extension (reading them gives the clear error).
    Folders are walked recursively (into linked folders too) in sorted order, keeping image extensions
    in any case and skipping hidden names; an image name that cannot be an image file (a link to a
    missing file, a pipe, a socket) is a problem, not silence. A file reached twice is listed once;
    `duplicates`, when given, receives the paths left out for that, so a caller can count them.
    A linked folder that holds the folder walked is not followed (`_walk`); `links`, when given,
    receives each such link and why, for the caller's warning line.
    A walk never enters the `exclude` folders (nor reads a file in them), also not through a link:
    the command's own output folders would otherwise feed a rerun its earlier results. A folder named
    as an input is always read, even an excluded one (the user asked for it).
    """
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    skipped = [os.path.realpath(e) for e in exclude]

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(p)
        elif duplicates is not None:
            duplicates.append(p)

    for item in map(Path, inputs):
        if item.is_dir() and not os.access(item, os.R_OK | os.X_OK):  # os.walk would skip it silently: "no images"
            problems.append((item, "cannot be read (permission denied)"))
        elif item.is_dir():
            inside = [e for e in skipped if not _within(os.path.realpath(item), e)]
            files, odd, unreadable = [], [], []
            for p in _walk(item, unreadable, exclude=inside, links=links):
                if not is_image_path(p) or any(_within(os.path.realpath(p), e) for e in inside):
                    continue
                if p.is_file():
                    files.append(p)
                elif p.is_symlink() and not p.exists():
                    odd.append((p, _dead_link(p)))
                elif p.exists() and not p.is_dir():  # a pipe, socket or device named like an image
                    odd.append((p, NOT_REGULAR))
            problems += sorted(odd) + [(d, "cannot be read (permission denied)" if not os.access(d, os.R_OK | os.X_OK) else "cannot be listed")
                                       for d in sorted(unreadable)]
            if not files and not odd and not unreadable:
                problems.append((item, NO_IMAGES))
            for p in sorted(files, key=lambda p: p.relative_to(item).parts):
                add(p)
        elif item.is_file():
            add(item)
        elif item.exists():  # a pipe, socket or device: reading it could block or never end
            problems.append((item, NOT_REGULAR))
        else:
            problems.append((item, _dead_link(item) if item.is_symlink() else "does not exist"))
    return found, problems


def assert_output_folder(path: Path, option: str = "--out") -> None:
    """Refuse an output folder that cannot be made or written (it, or a folder above it, is a file; the
    place is read-only), before any work, instead of failing every write (or with a traceback) after
    hours of restoring. Nothing is created here: a later usage error leaves no empty folder behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder", hint="pass a new or existing folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {path} cannot be made: {existing} is a file, not a folder", hint="pass a folder under an existing folder")
    where = "" if existing == path else f" ({existing} is not writable)"
    refusal = refuses_new_files(existing)
    if refusal == NOT_WRITABLE:
        raise UsageError(f"{option} {path} cannot be written{where}", hint="choose a folder you can write to")
    if refusal:
        raise UsageError(f"{option} {path} cannot be written ({existing} refuses new files: {refusal})", hint="choose a folder you can write to")


NOT_WRITABLE = "not writable"


def refuses_new_files(folder: Path) -> str | None:
    """Why an existing folder takes no new file (the file system's reason, or NOT_WRITABLE), or None
    when it takes them. A temp file is made (and deleted) to ask the file system itself, which names
    its reason ("Read-only file system", "Permission denied"): root passes access() whatever the
    permission bits, and /proc or /sys pass it too. access() still says no where the permissions
    do (a folder made for root only, seen by another user)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".facerestore-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(handle)
    os.unlink(probe)
    return NOT_WRITABLE if not os.access(folder, os.W_OK | os.X_OK) else None


def folder_relation(a: Path | str, b: Path | str) -> str | None:
    """How folder `a` stands to folder `b`, links and `..` resolved: "is" (the same folder), "lies
    inside", "holds", or None (apart). One answer for every command that keeps inputs, outputs and
    validation faces apart."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return "is" if a == b else "lies inside" if a.is_relative_to(b) else "holds" if b.is_relative_to(a) else None


def assert_outside(out: Path, folder: Path, where: str, hint: str) -> None:
    """Refuse an output folder at or below an input folder: a rerun would read its own results, and
    a run's files would land among the user's."""
    relation = folder_relation(out, folder)
    if relation in ("is", "lies inside"):  # "--out ds is the dataset ds", "--out ds/cl lies inside the dataset ds"
        raise UsageError(f"--out {out} {relation} {where}", hint=hint)


def assert_apart(out: Path, folder: Path, where: str, hint: str) -> None:
    """`assert_outside`, and also refuse an output folder that holds an input folder: outputs written
    under relative paths (OUT/targets/<rel>) could then overwrite the inputs (LQ_DIR = OUT/targets)."""
    assert_outside(out, folder, where, hint)
    if folder_relation(out, folder) == "holds":
        raise UsageError(f"--out {out} holds {where}: the outputs could overwrite it", hint=hint)


OUT_ONLY_HINT = "choose another --out folder"  # assert_not_input's hint for the commands with no --suffix (clean-dataset, degrade)


class InputPaths:
    """A run's inputs, indexed once by resolved path and by (device, inode): each output is then
    looked up in O(1) instead of resolving and stat-ing every input again (2,000 inputs made that
    0.1 s per output path, minutes per run). The inode catches another path to an input that
    resolving does not: a hard link, or other letter case on a case-insensitive disk."""

    def __init__(self, inputs: Iterable[Path]) -> None:
        self.by_path: dict[Path, Path] = {}
        self.by_inode: dict[tuple[int, int], Path] = {}
        for inp in map(Path, inputs):
            self.by_path.setdefault(inp.resolve(), inp)
            try:
                info = os.stat(inp)
            except OSError:  # gone, or unreadable: the resolved path still guards it
                continue
            self.by_inode.setdefault((info.st_dev, info.st_ino), inp)

    def match(self, path: Path) -> Path | None:
        """The input `path` is (the same file by any path), or None."""
        target = Path(path).resolve()
        if target in self.by_path:
            return self.by_path[target]
        try:
            info = os.stat(target)
        except OSError:  # not there yet: no input is it
            return None
        return self.by_inode.get((info.st_dev, info.st_ino))


def assert_not_input(path: Path, inputs: set[Path] | InputPaths, hint: str = "choose another output folder or --suffix") -> None:
    """Refuse an output path that is one of the inputs (after resolving links and `..`, or the same
    file by a hard link); `hint` names the options of the command that writes it. Callers that check
    many outputs pass an `InputPaths`, built once."""
    index = inputs if isinstance(inputs, InputPaths) else InputPaths(inputs)
    inp = index.match(path)
    if inp is not None:  # led by the output path: the line of an input whose output it is names it once
        if os.path.abspath(path) == os.path.abspath(inp):
            what = "is an input"
        elif Path(path).is_symlink():
            what = f"is a link to the input {inp}"
        else:
            what = f"is the input {inp} by another path"
        raise BadImage(f"{path} {what}, so writing an output there would overwrite the input", hint=hint)
