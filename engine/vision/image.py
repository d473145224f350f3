"""Image decoding with hostile-input limits: every failure is an InvalidImageError with the reason."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from engine.errors import InvalidImageError

RAW_FORMATS = {"BGR8": 3, "RGB8": 3, "GRAY8": 1, "BGRA8": 4, "RGBA8": 4}


# Formats accepted for encoded images, by their leading bytes. Each is sized from its header by
# Pillow's parser for that format (header only, nothing decoded) before OpenCV decodes it; any other
# format OpenCV could decode (PNM, PFM, Sun raster, HDR, JPEG 2000, AVIF, BigTIFF...) is refused.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WebP")
_PARSERS: dict[str, type[ImageFile.ImageFile]] = {
    "JPEG": JpegImagePlugin.JpegImageFile, "PNG": PngImagePlugin.PngImageFile, "BMP": BmpImagePlugin.BmpImageFile,
    "GIF": GifImagePlugin.GifImageFile, "TIFF": TiffImagePlugin.TiffImageFile,
    "WebP": WebPImagePlugin.WebPImageFile,
}
# TIFF modes with at most 8 bits a sample: OpenCV's TIFF reader buffers a strip in the source depth, so
# 16/32-bit or float TIFFs would cost several times the 3 bytes a pixel the limits are sized for.
_TIFF_MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LA", "PA"})


def sniff_format(data: bytes) -> str | None:
    """The accepted format the leading bytes announce (the same signatures OpenCV dispatches on), or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:2] == b"BM":
        return "BMP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def probe(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) read from the header without decoding the pixels.

    Raises InvalidImageError for a format the engine does not accept or a header it cannot read:
    an image whose size is unknown is never handed to a decoder."""
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageError(f"image could not be decoded ({len(data)} bytes, leading bytes {data[:8].hex()}): "
                                f"unsupported format; send {', '.join(ACCEPTED_FORMATS)}")
    if fmt == "PNG" and data[12:16] == b"IHDR" and len(data) >= 24:  # fixed place: what libpng reads too
        width, height = struct.unpack(">II", data[16:24])
        return fmt, int(width), int(height)
    if fmt == "JPEG":
        size = _jpeg_size(data)
        if size is not None:
            return fmt, *size
    try:
        # the plugin class reads the header only; Image.open would add Pillow's own bomb check, whose
        # exception hides the size (the limits below are the engine's, with a message naming them)
        with _PARSERS[fmt](io.BytesIO(data)) as im:
            width, height = im.size
            for tile in im.tile:  # a frame drawn outside the declared canvas (GIF) counts too
                if tile[1] is not None:
                    width, height = max(width, tile[1][2]), max(height, tile[1][3])
            mode = im.mode
    except Exception as exc:  # noqa: BLE001 - any parser failure means: size unknown, refuse
        raise InvalidImageError(f"image could not be decoded ({fmt}, {len(data)} bytes): header unreadable "
                                f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if fmt == "TIFF" and mode not in _TIFF_MODES:
        raise InvalidImageError(f"image could not be decoded (TIFF, mode {mode}): only 8-bit TIFF is accepted")
    return fmt, int(width), int(height)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first SOF marker, walking the segments (fast path), or None."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        seg_len = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + seg_len
    return None


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of an accepted format, or None when it cannot be read."""
    try:
        return probe(data)[1:]
    except InvalidImageError:
        return None


def check_dims(width: int, height: int, max_side: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image is {width}x{height}: width and height must be positive")
    if width > max_side or height > max_side:
        raise InvalidImageError(f"image is {width}x{height}: a side exceeds the limit of {max_side} px")
    if width * height > max_pixels:
        raise InvalidImageError(f"image is {width}x{height}: more than the limit of {max_pixels} pixels")


# Decode work of a JPEG grows with its scans: a progressive decoder passes over every block of the image
# once per scan, so a file inside the pixel limit whose last scan is repeated thousands of times (a few
# hundred kB) costs tens of CPU-seconds. The scans are counted from the bytes before anything is decoded.
MAX_JPEG_SCANS = 100
"""Most scans accepted in one JPEG (baseline: 1, or 3 non-interleaved; progressive encoders: about 10)."""
JPEG_SCAN_PIXEL_BUDGET = 24
"""Scans x pixels accepted, in images of the size limit: a largest image may have 24 scans, a smaller one
proportionally more (up to MAX_JPEG_SCANS). Bounds a decode to about twice a normal progressive one."""
def jpeg_scans(data: bytes) -> int:
    """Scans (SOS markers) in a JPEG: the header segments up to the first scan are skipped by their
    lengths (an EXIF thumbnail's scans do not count), then every FF DA from there on is counted, at
    memchr speed (about a millisecond for a 2 MB file). Inside entropy-coded data an FF byte is only
    ever followed by 00, a restart or a real marker, so no scan is missed; a table or comment between
    scans holding those two bytes counts extra, which can only refuse a file, never admit one."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return data.count(b"\xff\xda", pos)  # not a segment where one should start: count everything
        code = data[pos + 1]
        if code == 0xFF:  # fill byte
            pos += 1
            continue
        if code == 0xDA:
            return data.count(b"\xff\xda", pos)
        if code in (0x01, 0xD8) or 0xD0 <= code <= 0xD7:  # markers without a length
            pos += 2
            continue
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return 0


def check_work(fmt: str, data: bytes, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image whose decode would cost far more than its size says (InvalidImageError): a JPEG
    with more scans than MAX_JPEG_SCANS, or more scans x pixels than JPEG_SCAN_PIXEL_BUDGET images of
    the pixel limit."""
    if fmt != "JPEG":
        return
    budget = min(MAX_JPEG_SCANS, max(1, JPEG_SCAN_PIXEL_BUDGET * max_pixels // max(1, width * height)))
    scans = jpeg_scans(data)
    if scans > budget:
        raise InvalidImageError(
            f"JPEG {width}x{height} has {scans} scans, more than the limit of {budget} for its size (decode work grows "
            f"with scans; a progressive JPEG has about 10): re-encode it (baseline JPEG or PNG)")


def check_image(data: bytes, max_side: int, max_pixels: int) -> tuple[str, int, int]:
    """probe + check_dims + check_work: (format, width, height) of an image within every limit; what
    each decoder calls before it decodes."""
    fmt, width, height = probe(data)
    check_dims(width, height, max_side, max_pixels)
    check_work(fmt, data, width, height, max_pixels)
    return fmt, width, height


def decode_image(data: bytes, max_side: int = 8192, max_pixels: int = 16_777_216) -> np.ndarray:
    """Decode JPEG/PNG/BMP/GIF/TIFF/WebP bytes to a BGR uint8 array.

    The size is read from the header first and checked against the limits: the decoder only ever
    allocates for an image within them (about 3 bytes a pixel, plus its working memory)."""
    if not data:
        raise InvalidImageError("image data is empty (0 bytes)")
    fmt, width, height = check_image(data, max_side, max_pixels)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise InvalidImageError(f"image could not be decoded: {exc.msg if hasattr(exc, 'msg') else exc}") from exc
    if img is None:
        raise InvalidImageError(f"image could not be decoded ({fmt}, {len(data)} bytes): corrupt or unsupported")
    check_dims(img.shape[1], img.shape[0], max_side, max_pixels)
    return img


def decode_for_detection(data: bytes, min_long_side: int, max_side: int = 8192, max_pixels: int = 16_777_216,
                         factor: int = 2) -> tuple[np.ndarray, float, Callable[[], np.ndarray] | None]:
    """Decode a frame for the video pipeline: (image, scale, full-resolution loader or None).

    A JPEG whose long side is at least `min_long_side` (twice the detector's input side) is decoded
    at half size in the DCT domain, about twice as fast as a full decode and still larger than what
    the detector looks at; `scale` maps its pixels back to the original, and the loader decodes the
    full frame only when a face in it is worth embedding (a best shot: a few frames in a hundred).
    `factor` 4 or 8 decodes smaller still (motion gating looks at the reduced frame and cuts the regions it
    detects from the full one)."""
    if not data:
        raise InvalidImageError("image data is empty (0 bytes)")
    fmt, width, height = check_image(data, max_side, max_pixels)
    if fmt != "JPEG" or max(width, height) < min_long_side:
        return decode_image(data, max_side, max_pixels), 1.0, None
    try:
        flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
        small = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:
        small = None
    if small is None:
        return decode_image(data, max_side, max_pixels), 1.0, None  # let the full decoder give the reason
    return small, width / small.shape[1], lambda: decode_image(data, max_side, max_pixels)


def read_image(path: str | Path, max_side: int = 8192, max_pixels: int = 16_777_216) -> np.ndarray:
    """Read an image file; a missing, empty, truncated or corrupt file raises InvalidImageError."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidImageError(f"{p}: no such file") from exc
    except IsADirectoryError as exc:
        raise InvalidImageError(f"{p}: is a directory, not an image") from exc
    except OSError as exc:
        raise InvalidImageError(f"{p}: cannot read: {exc.strerror}") from exc
    try:
        img = decode_image(data, max_side, max_pixels)
    except InvalidImageError as exc:
        raise InvalidImageError(f"{p}: {exc}") from None
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InvalidImageError(f"{p}: JPEG is truncated (no end-of-image marker)")
    return img


def raw_to_bgr(data: bytes, width: int, height: int, fmt: str, max_side: int = 8192,
               max_pixels: int = 16_777_216) -> np.ndarray:
    """Raw pixel bytes (BGR8, RGB8, GRAY8, BGRA8, RGBA8; rows packed) to a BGR uint8 array."""
    fmt = (fmt or "BGR8").upper()
    if fmt not in RAW_FORMATS:
        raise InvalidImageError(f"raw pixel format {fmt!r} unsupported; use one of {', '.join(RAW_FORMATS)}")
    check_dims(width, height, max_side, max_pixels)
    channels = RAW_FORMATS[fmt]
    expected = width * height * channels
    if len(data) != expected:
        raise InvalidImageError(
            f"raw {fmt} frame {width}x{height} needs {expected} bytes, got {len(data)}"
        )
    arr = np.frombuffer(data, np.uint8).reshape(height, width, channels)
    if fmt == "BGR8":
        return arr
    conv = {"RGB8": cv2.COLOR_RGB2BGR, "GRAY8": cv2.COLOR_GRAY2BGR, "BGRA8": cv2.COLOR_BGRA2BGR,
            "RGBA8": cv2.COLOR_RGBA2BGR}[fmt]
    return cv2.cvtColor(arr, conv)


def check_array(image: np.ndarray) -> np.ndarray:
    """Validate an in-memory image: HxWx3 uint8 BGR with positive size (gray is converted)."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidImageError(f"image must be HxWx3 BGR, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"image is {image.shape[1]}x{image.shape[0]}: it has no pixels")
    if image.dtype != np.uint8:
        raise InvalidImageError(f"image must be uint8, got {image.dtype}")
    if image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image
