"""Image decoding with hostile-input limits: every failure is an InvalidImageError with the reason."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from engine.errors import InvalidImageError

RAW_FORMATS = {"BGR8": 3, "RGB8": 3, "GRAY8": 1, "BGRA8": 4, "RGBA8": 4}


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG or JPEG header without decoding, or None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
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


def check_dims(width: int, height: int, max_side: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image is {width}x{height}: width and height must be positive")
    if width > max_side or height > max_side:
        raise InvalidImageError(f"image is {width}x{height}: a side exceeds the limit of {max_side} px")
    if width * height > max_pixels:
        raise InvalidImageError(f"image is {width}x{height}: more than the limit of {max_pixels} pixels")


def decode_image(data: bytes, max_side: int = 8192, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode JPEG/PNG/BMP/WebP bytes to a BGR uint8 array, refusing oversized images before decoding."""
    if not data:
        raise InvalidImageError("image data is empty (0 bytes)")
    size = probe_size(data)
    if size is not None:
        check_dims(*size, max_side, max_pixels)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise InvalidImageError(f"image could not be decoded: {exc.msg if hasattr(exc, 'msg') else exc}") from exc
    if img is None:
        kind = "JPEG" if data[:2] == b"\xff\xd8" else "PNG" if data[:4] == b"\x89PNG" else "unknown format"
        raise InvalidImageError(f"image could not be decoded ({kind}, {len(data)} bytes): corrupt or unsupported")
    check_dims(img.shape[1], img.shape[0], max_side, max_pixels)
    return img


def decode_for_detection(data: bytes, min_long_side: int, max_side: int = 8192, max_pixels: int = 40_000_000,
                         ) -> tuple[np.ndarray, float, Callable[[], np.ndarray] | None]:
    """Decode a frame for the video pipeline: (image, scale, full-resolution loader or None).

    A JPEG whose long side is at least `min_long_side` (twice the detector's input side) is decoded
    at half size in the DCT domain, about twice as fast as a full decode and still larger than what
    the detector looks at; `scale` maps its pixels back to the original, and the loader decodes the
    full frame only when a face in it is worth embedding (a best shot: a few frames in a hundred)."""
    size = probe_size(data) if data[:2] == b"\xff\xd8" else None
    if size is None or max(size) < min_long_side:
        return decode_image(data, max_side, max_pixels), 1.0, None
    check_dims(*size, max_side, max_pixels)
    try:
        small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    except cv2.error:
        small = None
    if small is None:
        return decode_image(data, max_side, max_pixels), 1.0, None  # let the full decoder give the reason
    return small, size[0] / small.shape[1], lambda: decode_image(data, max_side, max_pixels)


def read_image(path: str | Path, max_side: int = 8192, max_pixels: int = 40_000_000) -> np.ndarray:
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
               max_pixels: int = 40_000_000) -> np.ndarray:
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
