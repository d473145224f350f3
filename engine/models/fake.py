"""A fake inference runner: canned detections and embeddings at a configurable cost.

It stands in for onnxruntime behind the `InferenceRunner` seam (chosen by `engine.models.factory` when
`runtime.runner = "fake"`), so everything around the models (decode, tracking, the quality gate,
FAISS, event recording, scheduling, Ray transfer) runs for real while the models cost a known, fixed
time. Uses: fast unit tests of orchestration that need no real faces, and benchmarks of the cluster's
own ceiling (`faceengine bench cluster --runner fake`). It recognises nobody in particular: every
frame shows the same canned faces and every crop embeds to the same unit vector, so a person enrolled
with the fake runner matches every face it reports. The canned faces sit where they sit in whatever image
the detector is given, so runs on it turn `pipeline.motion_gating` off (detection on regions would find
them at other places in every region).

The cost is spent sleeping (`runtime.fake_cost_ms` per image of a batch): like onnxruntime it releases
the GIL, and unlike it burns no CPU, so what a benchmark measures is the orchestration alone.

>>> import numpy as np
>>> r = FakeRunner("fake.onnx", "yunet", faces=1)
>>> outs = r.run(np.zeros((2, 3, 320, 320), np.float32))
>>> len(outs), outs[0].shape
(12, (2, 1600, 1))
"""

from __future__ import annotations

import threading
import time
from typing import Literal

import numpy as np

from engine.models.runner import InferenceRunner

Layout = Literal["yunet", "scrfd", "embedding"]
"""What the outputs look like: a YuNet or SCRFD detector's heads, or an embedder's (B, dim) vectors."""

STRIDES = (8, 16, 32)
# ArcFace's five-point template on a 112 x 112 crop: eyes, nose tip, mouth corners (x, y)
_TEMPLATE = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]],
                     np.float32) / 112.0
_SCORE = 0.95


def canned_faces(width: int, height: int, faces: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The boxes (x1, y1, x2, y2) and 5x2 landmarks, in input pixels, that the fake detector reports
    for a width x height network input: `faces` squares side by side across the middle, each
    centred on a stride-32 cell (where the heads encode it exactly)."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    cols, rows = width // 32, height // 32
    if faces <= 0 or cols == 0 or rows == 0:
        return out
    side = max(8.0, min(width / (faces + 1), height * 0.5))
    for k in range(min(faces, cols)):
        col = int((k + 1) * cols / (faces + 1)) if faces > 1 else cols // 2
        cx, cy = (col + 0.5) * 32, (rows // 2 + 0.5) * 32
        box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)
        out.append((box, box[:2] + _TEMPLATE * side))
    return out


class FakeRunner(InferenceRunner):
    """Canned outputs in a model's own layout, after `cost_ms` per image (thread-safe)."""

    def __init__(self, model: str, layout: Layout, *, dim: int = 128, faces: int = 1, cost_ms: float = 0.0,
                 seed: int = 7) -> None:
        if layout not in ("yunet", "scrfd", "embedding"):
            raise ValueError(f"fake runner layout must be yunet, scrfd or embedding, not {layout!r}")
        self.model = model
        self.layout: Layout = layout
        self.dim = dim
        self.faces = faces
        self.cost_ms = cost_ms
        vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        self._vector = vec / np.linalg.norm(vec)
        self._cache: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.calls = 0
        """`run` calls so far (tests and benchmarks read it)."""
        self.images = 0
        """Images run so far."""

    @property
    def provider(self) -> str:
        return "fake"

    @property
    def batched(self) -> bool:
        return True

    @property
    def input_name(self) -> str:
        return "input"

    @property
    def input_shape(self) -> tuple[int | str | None, ...]:
        if self.layout == "embedding":
            return ("batch", 3, 112, 112)
        return ("batch", 3, "H", "W")

    def run(self, batch: np.ndarray, valid: int | None = None) -> list[np.ndarray]:
        """Canned outputs for a (B, 3, H, W) input (its first `valid` rows), after sleeping `cost_ms` per
        image. Outputs are cached per input shape and shared: callers read them, never write."""
        if valid is not None and valid < batch.shape[0]:
            batch = batch[:valid]
        n = int(batch.shape[0])
        with self._lock:
            self.calls += 1
            self.images += n
        if self.cost_ms > 0:
            time.sleep(self.cost_ms * n / 1000.0)
        key = tuple(int(d) for d in batch.shape)
        outs = self._cache.get(key)
        if outs is None:
            outs = self._build(n, int(batch.shape[-2]), int(batch.shape[-1]))
            with self._lock:
                if len(self._cache) > 16:
                    self._cache.clear()
                self._cache[key] = outs
        return outs

    def _build(self, n: int, h: int, w: int) -> list[np.ndarray]:
        if self.layout == "embedding":
            return [np.broadcast_to(self._vector, (n, self.dim)).copy()]
        faces = canned_faces(w, h, self.faces)
        return self._yunet(n, h, w, faces) if self.layout == "yunet" else self._scrfd(n, h, w, faces)

    @staticmethod
    def _yunet(n: int, h: int, w: int, faces: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """YuNet heads: cls[3], obj[3], bbox[3] (cell offset, log size), kps[3] (cell offsets)."""
        cls, obj, bbox, kps = [], [], [], []
        for s in STRIDES:
            cells = (h // s) * (w // s)
            cls.append(np.zeros((n, cells, 1), np.float32))
            obj.append(np.zeros((n, cells, 1), np.float32))
            bbox.append(np.zeros((n, cells, 4), np.float32))
            kps.append(np.zeros((n, cells, 10), np.float32))
        cols = w // 32
        for box, lm in faces:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            col, row = int(cx // 32), int(cy // 32)
            i = row * cols + col
            cls[2][:, i] = obj[2][:, i] = _SCORE
            bbox[2][:, i] = [cx / 32 - col, cy / 32 - row, np.log((box[2] - box[0]) / 32),
                             np.log((box[3] - box[1]) / 32)]
            kps[2][:, i] = (lm / 32 - np.array([col, row], np.float32)).reshape(-1)
        return cls + obj + bbox + kps

    @staticmethod
    def _scrfd(n: int, h: int, w: int, faces: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """SCRFD heads, two anchors a cell: scores[3], distance boxes[3], keypoint offsets[3] (in strides)."""
        scores, dist, kps = [], [], []
        for s in STRIDES:
            cells = (h // s) * (w // s) * 2
            scores.append(np.zeros((n, cells, 1), np.float32))
            dist.append(np.zeros((n, cells, 4), np.float32))
            kps.append(np.zeros((n, cells, 10), np.float32))
        cols = w // 32
        for box, lm in faces:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            col, row = int(cx // 32), int(cy // 32)
            i = (row * cols + col) * 2
            centre = np.array([col, row], np.float32) * 32  # SCRFD anchors sit on the cell's corner
            scores[2][:, i] = _SCORE
            dist[2][:, i] = np.concatenate([centre - box[:2], box[2:] - centre]) / 32
            kps[2][:, i] = ((lm - centre) / 32).reshape(-1)
        return scores + dist + kps
