"""`Detections`: one frame's faces as numpy arrays with checked shapes.

Every stage passes this container instead of lists of dicts, so shapes are checked once
and batched numpy operations stay cheap (like `supervision.Detections`).

>>> d = Detections.empty()
>>> len(d)
0
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, in original image pixel coordinates.

    boxes: (N, 4) float32 x1, y1, x2, y2.
    landmarks: (N, 5, 2) float32: right eye, left eye, nose, right mouth, left mouth
        (image-left first, the ArcFace template order).
    scores: (N,) float32 detector confidence in [0, 1].
    """

    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.scores.shape[0] if self.scores.ndim == 1 else -1
        if n < 0:
            raise ValueError(f"scores must be (N,), got {self.scores.shape}")
        if self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must be ({n}, 4), got {self.boxes.shape}")
        if self.landmarks.shape != (n, 5, 2):
            raise ValueError(f"landmarks must be ({n}, 5, 2), got {self.landmarks.shape}")
        for key, value in self.extra.items():
            if value.shape[0] != n:
                raise ValueError(f"extra[{key!r}] has {value.shape[0]} rows, expected {n}")

    @classmethod
    def empty(cls) -> Detections:
        """A container with no faces."""
        return cls(
            np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros((0,), np.float32)
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __getitem__(self, index: int | slice | np.ndarray) -> Detections:
        """Select faces by integer, slice, index array or boolean mask (always returns Detections)."""
        if isinstance(index, (int, np.integer)):
            index = np.array([index])
        return Detections(
            self.boxes[index],
            self.landmarks[index],
            self.scores[index],
            {k: v[index] for k, v in self.extra.items()},
        )

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]

    @property
    def heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]

    @property
    def sizes(self) -> np.ndarray:
        """Shorter side of each box in pixels."""
        return np.minimum(self.widths, self.heights)

    def with_extra(self, **columns: np.ndarray) -> Detections:
        """A copy with extra per-face columns (e.g. track_id, quality)."""
        return Detections(self.boxes, self.landmarks, self.scores, {**self.extra, **columns})


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x1y1x2y2 boxes -> (N, M)."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)
