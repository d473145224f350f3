"""5-point similarity alignment to the standard ArcFace 112x112 template."""

from __future__ import annotations

import cv2
import numpy as np

from engine.vision.detections import Detections

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def similarity_transform(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, shift) mapping 5 points to the template."""
    dst = ARCFACE_TEMPLATE * (size / 112.0)
    src = np.asarray(landmarks, np.float64).reshape(5, 2)
    # Umeyama closed form (what skimage.SimilarityTransform does); cv2.estimateAffinePartial2D
    # needs RANSAC/LMEDS, which drops points and makes embeddings less stable.
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / 5
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    rot = u @ e @ vt
    var = (s**2).sum() / 5
    scale = (sig * np.diag(e)).sum() / var if var > 0 else 1.0
    m = np.zeros((2, 3), np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m.astype(np.float32)


class Aligner:
    """Warps each detected face to a size x size crop (BGR uint8)."""

    def __init__(self, size: int = 112) -> None:
        self.size = size

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        m = similarity_transform(landmarks, self.size)
        return cv2.warpAffine(image, m, (self.size, self.size), flags=cv2.INTER_LINEAR, borderValue=0)

    def align_all(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """(N, size, size, 3) uint8 crops for every face in `dets`."""
        out = np.empty((len(dets), self.size, self.size, 3), np.uint8)
        for i in range(len(dets)):
            out[i] = self.align(image, dets.landmarks[i])
        return out
