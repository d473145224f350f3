"""Scale-aware detector input: frames get the resolution small faces need, photos are not upscaled further."""

from __future__ import annotations

from engine.config import DetectorConfig
from engine.vision.scale import input_size, network_side, reduced_decode_min_side


def test_network_side_follows_min_face_size_and_caps() -> None:
    cfg = DetectorConfig()  # input 640, min face 20, max side 1280
    assert network_side(1280, 720, cfg, 20.0) == 1280  # 720p: full resolution (a 20 px face stays 20 px)
    assert network_side(1920, 1080, cfg, 20.0) == 1280  # 1080p: capped at max_input_side
    assert network_side(250, 250, cfg, 20.0) == 640  # ID photo: letterboxed to input_size as before
    assert network_side(1200, 630, cfg, 20.0) == 1184  # a multiple of 32, rounded down: never upscaled
    cfg.min_face_size = 40
    assert network_side(1280, 720, cfg, 20.0) == 640  # bigger faces only: the old cost
    cfg.min_face_size, cfg.max_input_side = 20, 1920
    assert network_side(3840, 2160, cfg, 20.0) == 1920
    cfg.auto_scale = False
    assert network_side(3840, 2160, cfg, 20.0) == 640
    assert input_size(1280, 720, 1280) == (1280, 736)


def test_reduced_decode_never_drops_pixels_the_detector_uses() -> None:
    cfg = DetectorConfig()
    assert reduced_decode_min_side(cfg) == 2560  # 1080p JPEG decoded in full for a 1280 network side
    cfg.auto_scale = False
    assert reduced_decode_min_side(cfg) == 1280  # the old rule: twice input_size
