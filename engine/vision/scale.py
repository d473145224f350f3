"""Scale-aware detector input: how many network pixels an image gets.

A fixed network side (640) shrinks a 1280x720 CCTV frame by 2 and a 1080p frame by 3, so a 24 px face
reaches the network at 8-12 px, below what the detectors find reliably (~16-20 px at their finest
stride). The side is therefore chosen per image so that a face of ``detector.min_face_size`` pixels
reaches the network at the model's smallest reliable size (``min_face_px`` in the manifest), up to the
image's own resolution (never upscaling a frame) and at most ``detector.max_input_side``. Images no
larger than ``detector.input_size`` (ID photos, crops) keep the old behaviour: letterboxed to
``input_size``; upscaling them further finds nothing more (SCRFD at 1280 lost most 250 px photos).
"""

from __future__ import annotations

import math

from engine.config import DetectorConfig

DEFAULT_MIN_FACE_PX = 20.0
"""Smallest face (network pixels) a detector finds reliably when the manifest does not say."""


def network_side(w: int, h: int, cfg: DetectorConfig, min_face_px: float = DEFAULT_MIN_FACE_PX) -> int:
    """Long side of the network input for a w x h image (see the module docstring)."""
    long_side = max(w, h)
    base = cfg.input_size
    if not cfg.auto_scale or long_side <= base or cfg.min_face_size <= 0:
        return base
    need = math.ceil(long_side * min_face_px / cfg.min_face_size)
    cap = min(long_side, max(base, cfg.max_input_side))
    # a multiple of 32 (down: never upscaling), so the padded network size has the frame's aspect and the
    # letterbox scale is side / long side exactly (the graph letterbox computes the same)
    return int(max(base, min(need, cap) // 32 * 32))


def input_size(w: int, h: int, side: int) -> tuple[int, int]:
    """Network (width, height): long side scaled to `side`, each padded up to a multiple of 32."""
    scale = side / max(w, h)
    return (max(32, math.ceil(w * scale / 32) * 32), max(32, math.ceil(h * scale / 32) * 32))


def reduced_decode_min_side(cfg: DetectorConfig) -> int:
    """Smallest JPEG long side worth a half-size DCT decode (`pipeline.fast_decode`): twice the largest
    network side the detector may use, so the reduced decode never drops pixels the detector would see."""
    side = max(cfg.input_size, cfg.max_input_side) if cfg.auto_scale else cfg.input_size
    return 2 * side
