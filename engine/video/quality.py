"""Face quality scoring for best-shot selection.

Every face of every frame gets a score in [0, 1] so a track can be embedded from its best
shots only (embedding is the expensive step, and blurred, tiny or profile faces match badly).
The score is the product of four factors, each in [0, 1], so any one of them can veto a face:

* detector confidence,
* face size: shorter box side over ``min_face_size``, capped at 1, so the size floor the config
  states is the real one (a face at the floor is not also marked down for being small; the old
  size / (2 x floor) factor let only 2 % of 32 px faces through a 32 px floor, though 79 % of them
  were recognised),
* frontal pose from the five landmarks (yaw, roll and pitch proxies),
* sharpness (variance of the Laplacian of a small grayscale crop of the box).

Calibrated against match correctness, per embedder (``benchmarks/bench_quality_gate.py``: the
``faceengine eval watchlist`` protocol's per-probe records, lfw-dev, seed 3, 200 mated probes a
condition, 1,398 detected over 7 conditions; both embedders on the same faces, which get the same
quality scores; raw records in ``benchmarks/results/quality-gate-records.json``):

* MobileFaceNet (22 % wrong rank-1s): sharpness is the factor that predicts a wrong rank-1 (AUC 0.77;
  detector score 0.62, size 0.50, pose 0.49); at 0.30, 90 % of correctly recognised faces pass and 66 % of
  wrong ones, and of the faces it rejects 49 % would have been wrong.
* SFace (5 % wrong): it survives blur (rank-1 0.92 at blur 1.5 against MobileFaceNet's 0.44), so no
  factor predicts its errors well (sharpness, detector score and pitch AUC 0.61; pose 0.49); at 0.30
  only 85 % of its right faces pass (bootstrap 95 %: 83-87 %) and 76 % of wrong ones, and of the faces
  rejected 7 % would have been wrong. Its gate is therefore 0.25 (interval 0.23-0.26), which keeps the
  same 90 % of right faces as MobileFaceNet at 0.30 (83 % of wrong ones pass).

At the derived match thresholds no wrong rank-1 of either embedder scored above the threshold, so on
these probes the gate's cost is matches lost (SFace keeps 93 % of its matches at 0.25, 89 % at 0.30)
and its use is best-shot selection and embedding cost. The gate is per embedder: ``min_quality`` in
the model manifest, used when ``pipeline.min_quality`` is "auto" (the default; see
``engine.gallery.calibration.effective_min_quality``); an embedder without one gets 0.30.
Pose did not predict correctness on these near-frontal photos and is kept for best-shot ranking.

Cost: numpy over all faces for score, size and pose; one crop, one 64x64 resize and one
Laplacian per face for sharpness (tens of microseconds each).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.vision.detections import Detections

SHARPNESS_SIZE = 64
"""Side of the square grayscale crop the Laplacian runs on (fixed, so scores compare across sizes)."""

SHARPNESS_SCALE = 100.0
"""Laplacian variance giving sharpness 1 - 1/e (about 0.63) on the 64x64 crop. Sharp, well-lit
faces measure 400-1500; dark or defocused CCTV faces 2-60 (calibrated on the test media)."""

YAW_TOLERANCE = 0.25
"""Nose offset from the eye midpoint, in inter-ocular distances, giving yaw factor 1/sqrt(e) (~0.61)."""

ROLL_TOLERANCE_DEG = 30.0
"""Eye-line angle giving roll factor ~0.61; lenient because alignment undoes roll."""

PITCH_TOLERANCE = 0.15
"""Deviation of the eye-nose / eye-mouth vertical ratio from frontal giving pitch factor ~0.61."""

FRONTAL_PITCH_RATIO = 0.56
"""Eye-to-nose over eye-to-mouth vertical distance of a frontal face as detectors report it.
YuNet measures 0.52-0.62 on frontal stills (median ~0.57); the ArcFace template has 0.495."""


@dataclass(frozen=True)
class QualityBreakdown:
    """Per-face quality factors (each (N,) float32) and the raw measurements behind them.

    ``total`` = ``score * size * pose * sharpness``; ``pose`` = ``yaw_f * roll_f * pitch_f``
    (the per-axis factors are not stored). Raw values: ``yaw`` (signed nose offset in
    inter-ocular distances), ``roll_deg`` (eye-line angle), ``pitch`` (signed deviation of the
    vertical ratio from frontal, positive = nose nearer the mouth, i.e. looking down),
    ``laplacian_var`` (on the 64x64 crop).
    """

    total: np.ndarray
    score: np.ndarray
    size: np.ndarray
    pose: np.ndarray
    sharpness: np.ndarray
    yaw: np.ndarray
    roll_deg: np.ndarray
    pitch: np.ndarray
    laplacian_var: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """All columns by name, e.g. for logging or ``Detections.with_extra(**...)``."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _gauss(x: np.ndarray, tolerance: float) -> np.ndarray:
    """exp(-x^2 / (2 tol^2)): 1 at x = 0, smooth falloff, never negative."""
    return np.exp(-0.5 * np.square(x / tolerance))


def pose_measures(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(yaw, roll_deg, pitch) proxies from (N, 5, 2) landmarks in ArcFace order.

    The landmarks are de-rotated about the eye midpoint by the eye-line angle first, so
    the yaw and pitch proxies do not pick up roll. Faces with (near) coincident eyes get NaN.
    """
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    eye_r, eye_l = lm[:, 0], lm[:, 1]
    mid = 0.5 * (eye_r + eye_l)
    d = eye_l - eye_r
    iod = np.hypot(d[:, 0], d[:, 1])
    roll = np.arctan2(d[:, 1], d[:, 0])
    cos, sin = np.cos(roll), np.sin(roll)
    rel = lm - mid[:, None, :]
    # Rotate by -roll so the eye line is horizontal.
    x = rel[..., 0] * cos[:, None] + rel[..., 1] * sin[:, None]
    y = -rel[..., 0] * sin[:, None] + rel[..., 1] * cos[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        valid = iod > 1e-3
        yaw = np.where(valid, x[:, 2] / iod, np.nan)
        mouth_y = 0.5 * (y[:, 3] + y[:, 4])
        ratio = np.where(valid & (mouth_y > 1e-3), y[:, 2] / mouth_y, np.nan)
    return yaw, np.degrees(roll), ratio - FRONTAL_PITCH_RATIO


def _resize_square(gray: np.ndarray, side: int) -> np.ndarray:
    """Resize a grayscale crop to side x side, anti-aliased when shrinking.

    Shrinking goes bilinear to the nearest integer multiple of ``side`` and then INTER_AREA
    by that integer factor: close to INTER_AREA directly, but OpenCV's integer path is
    several times faster than its fractional one. Enlarging is bilinear (INTER_AREA enlarges
    blocky, and the block edges would read as sharpness on tiny faces).
    """
    h, w = gray.shape[:2]
    kx, ky = max(1, w // side), max(1, h // side)
    if kx == 1 and ky == 1:
        return cv2.resize(gray, (side, side), interpolation=cv2.INTER_LINEAR)
    if (w, h) != (kx * side, ky * side):
        gray = cv2.resize(gray, (kx * side, ky * side), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA)


def laplacian_variance(image_bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each box's crop, resized to SHARPNESS_SIZE^2 grayscale.

    Boxes are clipped to the image; an empty crop gives 0. Resizing to a fixed size makes
    the value comparable between faces and penalises small faces, which upscale blurry.
    """
    h, w = image_bgr.shape[:2]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = np.zeros(len(boxes), np.float32)
    if len(boxes) == 0:
        return out
    x1 = np.clip(np.floor(boxes[:, 0]), 0, w).astype(np.int64)
    y1 = np.clip(np.floor(boxes[:, 1]), 0, h).astype(np.int64)
    x2 = np.clip(np.ceil(boxes[:, 2]), 0, w).astype(np.int64)
    y2 = np.clip(np.ceil(boxes[:, 3]), 0, h).astype(np.int64)
    side = SHARPNESS_SIZE
    for i in range(len(boxes)):
        if x2[i] - x1[i] < 2 or y2[i] - y1[i] < 2:
            continue
        crop = image_bgr[y1[i] : y2[i], x1[i] : x2[i]]
        if crop.ndim == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGRA2GRAY if crop.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        out[i] = float(cv2.Laplacian(_resize_square(crop, side), cv2.CV_32F).var())
    return out


def quality_components(
    image_bgr: np.ndarray, dets: Detections, min_face_size: float = 40.0
) -> QualityBreakdown:
    """All quality factors for every face in ``dets`` (boxes in ``image_bgr`` pixels)."""
    if min_face_size <= 0:
        raise ValueError(f"min_face_size must be > 0, got {min_face_size}")
    score = np.clip(dets.scores.astype(np.float32), 0.0, 1.0)
    size = np.clip(dets.sizes.astype(np.float32) / float(min_face_size), 0.0, 1.0)
    yaw, roll_deg, pitch = pose_measures(dets.landmarks)
    pose = _gauss(yaw, YAW_TOLERANCE) * _gauss(roll_deg, ROLL_TOLERANCE_DEG) * _gauss(pitch, PITCH_TOLERANCE)
    pose = np.nan_to_num(pose, nan=0.0).astype(np.float32)
    lap_var = laplacian_variance(image_bgr, dets.boxes)
    sharpness = (1.0 - np.exp(-lap_var / SHARPNESS_SCALE)).astype(np.float32)
    total = np.clip(score * size * pose * sharpness, 0.0, 1.0).astype(np.float32)
    f32 = np.float32
    return QualityBreakdown(
        total=total,
        score=score,
        size=size,
        pose=pose,
        sharpness=sharpness,
        yaw=yaw.astype(f32),
        roll_deg=roll_deg.astype(f32),
        pitch=pitch.astype(f32),
        laplacian_var=lap_var,
    )


def face_quality(image_bgr: np.ndarray, dets: Detections, min_face_size: float = 40.0) -> np.ndarray:
    """(N,) float32 quality in [0, 1] for every face; see ``quality_components`` for the parts."""
    return quality_components(image_bgr, dets, min_face_size).total


@dataclass(frozen=True)
class QualityGate:
    """Hard floor before embedding: faces too small or of too low quality are never matched."""

    min_face_size: float = 32.0
    min_quality: float = 0.30

    def passes(self, dets: Detections, quality: np.ndarray) -> np.ndarray:
        """(N,) bool: shorter box side >= min_face_size and quality >= min_quality."""
        quality = np.asarray(quality, np.float32).reshape(-1)
        if quality.shape[0] != len(dets):
            raise ValueError(f"quality has {quality.shape[0]} rows, expected {len(dets)}")
        return (dets.sizes >= self.min_face_size) & (quality >= self.min_quality)


__all__ = [
    "FRONTAL_PITCH_RATIO",
    "QualityBreakdown",
    "QualityGate",
    "face_quality",
    "laplacian_variance",
    "pose_measures",
    "quality_components",
]
