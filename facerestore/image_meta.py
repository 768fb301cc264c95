"""Colour profile (ICC) and EXIF carried from an input file into the files made from it.

OpenCV, which encodes our PNG and JPEG outputs, writes neither. Without the profile an Adobe RGB or
Display P3 photo is shown as sRGB, visibly washed out; without EXIF a restored photo loses its date,
camera and GPS data and sorts wrongly in a photo library. So the bytes are read once with the image
and put back into the encoded file: an APP1/APP2 segment in JPEG, an eXIf/iCCP chunk in PNG (WebP
and TIFF are written by Pillow and tifffile, which take them as arguments).

EXIF is made to describe the output: the orientation is set to 1 (the pixels are stored upright),
the embedded thumbnail (IFD1) is unlinked, since it shows the unrestored photo, and the pixel size
tags are set to the size written (`sized_exif`: an upright or upscaled photo has another size).
"""

from __future__ import annotations

import struct
import zlib

from PIL import Image

EXIF_HEADER = b"Exif\x00\x00"
_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769  # IFD0's pointer to the Exif sub-IFD
_IMAGE_WIDTH, _IMAGE_LENGTH = 0x0100, 0x0101  # IFD0 (some cameras record them in JPEG EXIF too)
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003  # Exif IFD: PixelXDimension, PixelYDimension
_SHORT, _LONG = 3, 4
JPEG_SEGMENT_MAX = 65533  # payload bytes of one JPEG marker segment (its length field counts itself)
ICC_CHUNK_MAX = JPEG_SEGMENT_MAX - 14  # "ICC_PROFILE\0" + sequence number + count


def icc_colour_space(icc: bytes | None) -> str | None:
    """'RGB', 'GRAY', 'CMYK', ... from the profile header (bytes 16-19), or None if not a profile."""
    if not icc or len(icc) < 128 or icc[36:40] != b"acsp":
        return None
    return icc[16:20].decode("ascii", "replace").strip()


def read_icc(img: Image.Image) -> bytes | None:
    icc = img.info.get("icc_profile")
    return bytes(icc) if icc_colour_space(icc) else None


def read_exif(img: Image.Image) -> bytes | None:
    """The file's EXIF as TIFF-structured bytes, made upright (see `upright_exif`), or None."""
    raw = img.info.get("exif")
    if not isinstance(raw, (bytes, bytearray)):
        return None
    raw = bytes(raw)
    if raw.startswith(EXIF_HEADER):
        raw = raw[len(EXIF_HEADER):]
    return upright_exif(raw)


def upright_exif(tiff: bytes) -> bytes | None:
    """Orientation set to 1 and IFD1 (the thumbnail) unlinked, everything else byte for byte; None
    for bytes that are not a well-formed TIFF header and first IFD."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    end = ifd + 2 + 12 * count
    if end + 4 > len(tiff):
        return None
    data = bytearray(tiff)
    for entry in range(ifd + 2, end, 12):
        tag, kind, number = struct.unpack_from(order + "HHI", data, entry)
        if tag == _ORIENTATION and kind == _SHORT and number == 1:
            struct.pack_into(order + "H", data, entry + 8, 1)
    struct.pack_into(order + "I", data, end, 0)  # no next IFD: the thumbnail is gone
    return bytes(data)


def sized_exif(tiff: bytes, width: int, height: int) -> bytes:
    """`tiff` (upright_exif's bytes) with PixelXDimension / PixelYDimension (Exif IFD) and ImageWidth /
    ImageLength (IFD0, where present) set to `width` x `height`, the size of the file it goes into: a
    rotated or upscaled photo kept its camera's 4032x3024. Each value fits its 4-byte field (a SHORT
    too small for the size becomes a LONG), so nothing moves; malformed IFDs are left as they are."""
    order = "<" if tiff[:2] == b"II" else ">"
    data = bytearray(tiff)

    def entries(ifd: int) -> range:
        if ifd < 8 or ifd + 2 > len(data):
            return range(0)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        end = ifd + 2 + 12 * count
        return range(ifd + 2, end, 12) if end <= len(data) else range(0)

    def set_size(ifd: int, sizes: dict[int, int]) -> int:
        """Sets the tags of `sizes` in the IFD at `ifd`; returns its Exif IFD pointer, 0 if none."""
        pointer = 0
        for entry in entries(ifd):
            tag, kind, number = struct.unpack_from(order + "HHI", data, entry)
            if tag == _EXIF_IFD and kind == _LONG and number == 1:
                (pointer,) = struct.unpack_from(order + "I", data, entry + 8)
            elif tag in sizes and kind in (_SHORT, _LONG) and number == 1:
                value = sizes[tag]
                if kind == _SHORT and value <= 0xFFFF:
                    struct.pack_into(order + "HH", data, entry + 8, value, 0)  # left-justified in the field
                else:
                    struct.pack_into(order + "HHII", data, entry, tag, _LONG, 1, value)
        return pointer

    if len(data) < 8:
        return tiff
    (first,) = struct.unpack_from(order + "I", data, 4)
    exif_ifd = set_size(first, {_IMAGE_WIDTH: width, _IMAGE_LENGTH: height})
    if exif_ifd and exif_ifd != first:
        set_size(exif_ifd, {_PIXEL_X: width, _PIXEL_Y: height})
    return bytes(data)


def embed_jpeg(jpeg: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """APP1 (EXIF) and APP2 (ICC, split as the ICC spec says) after SOI and the JFIF APP0."""
    if not icc and not exif:
        return jpeg
    at = 2
    if jpeg[2:4] == b"\xff\xe0":
        at = 4 + int.from_bytes(jpeg[4:6], "big")
    segments = b""
    if exif and len(EXIF_HEADER) + len(exif) <= JPEG_SEGMENT_MAX:  # larger EXIF (huge maker notes) does not fit one segment
        segments += _segment(0xE1, EXIF_HEADER + exif)
    if icc:
        chunks = [icc[i : i + ICC_CHUNK_MAX] for i in range(0, len(icc), ICC_CHUNK_MAX)]
        if len(chunks) <= 255:
            for number, chunk in enumerate(chunks, 1):
                segments += _segment(0xE2, b"ICC_PROFILE\x00" + bytes([number, len(chunks)]) + chunk)
    return jpeg[:at] + segments + jpeg[at:]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def embed_png(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """iCCP and eXIf chunks right after IHDR (both must precede the image data)."""
    if not icc and not exif:
        return png
    at = 8 + 8 + int.from_bytes(png[8:12], "big") + 4  # signature, then the whole IHDR chunk
    chunks = b""
    if icc:
        chunks += _chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    if exif:
        chunks += _chunk(b"eXIf", exif)
    return png[:at] + chunks + png[at:]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
