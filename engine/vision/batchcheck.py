"""Judging a batched graph by what matters downstream, not by raw output bits.

On a GPU a batch of two differs from two single calls by up to ~3e-3 in raw outputs (other
kernels, other summation order), which an `allclose(atol=1e-4)` refused, leaving every model at
one image a call. What matters is the decoded faces and the embeddings:

- detectors: the same candidate boxes (IoU >= `MIN_IOU`, or corners within `BOX_SAME_PX`), scores
  within `SCORE_TOL`, landmarks within `KPS_TOL_PX` network-input pixels, over the `TOP_K`
  highest-scoring candidates scoring at least `MIN_SCORE`;
- embedders: cosine similarity >= `MIN_COSINE` for every row.

>>> import numpy as np
>>> e = np.eye(2, 4, dtype=np.float32)
>>> compare_embeddings(e, e).accepted
True
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.models.runner import BatchVerdict
from engine.vision.detections import box_iou

MIN_IOU = 0.99
"""Boxes this close are the same face to the tracker and the aligner (1% of a 100 px box is 1 px)."""
SCORE_TOL = 0.02
"""Scores move by less than this: only a face within 0.02 of the threshold might flip (YuNet's
sqrt(cls * obj) doubles small raw differences, which reach 3e-3 on CUDA)."""
KPS_TOL_PX = 0.5
"""Landmark shift in network-input pixels below which the aligned crop is the same."""
MIN_COSINE = 0.9999
"""Embedding agreement far tighter than any match threshold margin (identity scores move < 1e-4)."""
FP16_MIN_COSINE = 0.999
"""A float16 graph's embeddings against float32's: well inside any match threshold's margin."""
BOX_SAME_PX = 0.25
"""Boxes whose corners all agree this closely (network-input pixels) are the same whatever their size:
IoU punishes tiny boxes (a 2 px box moved 0.1 px has IoU 0.9; a zero-area box always has IoU 0)."""
TOP_K = 200
"""Candidates compared per image: the highest-scoring ones, where real faces are."""
MIN_SCORE = 0.1
"""Candidates scoring below this in both runs are background no threshold keeps: not compared
(their scores sit on the steep part of YuNet's sqrt(cls * obj) and their boxes are degenerate)."""

Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (M, 4), landmarks (M, 5, 2), scores (M,)


def compare_detections(ref: list[Decoded], cand: list[Decoded], *, min_iou: float = MIN_IOU,
                       score_tol: float = SCORE_TOL, kps_tol: float = KPS_TOL_PX, top_k: int = TOP_K,
                       min_score: float = MIN_SCORE) -> BatchVerdict:
    """Compare per-image decoded candidates of single calls (`ref`) and of the batched graph (`cand`).

    Both must be decoded with no score threshold, so candidate i is the same anchor in both; the
    top `top_k` candidates scoring `min_score` or more in either run are compared."""
    worst_iou, worst_score, worst_kps, compared = 1.0, 0.0, 0.0, 0
    for (rb, rk, rs), (cb, ck, cs) in zip(ref, cand, strict=True):
        if rs.shape != cs.shape:
            return BatchVerdict(False, f"candidate counts differ: {rs.shape[0]} single vs {cs.shape[0]} batched")
        live = np.nonzero(np.maximum(rs, cs) >= min_score)[0]
        if live.size == 0:
            return BatchVerdict(False, f"no candidate scored {min_score} or more: nothing to compare")
        compared += min(live.size, top_k)
        idx = live[np.argsort(-rs[live])[:top_k]]
        if idx.size == 0:
            continue
        iou = np.diagonal(box_iou(rb[idx], cb[idx]))
        same = np.abs(rb[idx] - cb[idx]).max(axis=1) <= BOX_SAME_PX
        iou = np.where(same, 1.0, iou)
        worst_iou = min(worst_iou, float(iou.min()))
        worst_score = max(worst_score, float(np.abs(rs[idx] - cs[idx]).max()))
        worst_kps = max(worst_kps, float(np.abs(rk[idx] - ck[idx]).max()))
    ok = bool(worst_iou >= min_iou and worst_score <= score_tol and worst_kps <= kps_tol)
    detail = (f"{compared} candidates: min box IoU {worst_iou:.5f} (>= {min_iou}), "
              f"max score diff {worst_score:.2e} (<= {score_tol}), max landmark diff {worst_kps:.3f} px (<= {kps_tol})")
    return BatchVerdict(ok, detail)


def compare_embeddings(ref: np.ndarray, cand: np.ndarray, *, min_cosine: float = MIN_COSINE) -> BatchVerdict:
    """Compare (N, dim) raw embeddings of single calls (`ref`) and of the batched graph (`cand`)."""
    ref = ref.reshape(ref.shape[0], -1).astype(np.float64)
    cand = cand.reshape(cand.shape[0], -1).astype(np.float64)
    if ref.shape != cand.shape:
        return BatchVerdict(False, f"output shapes differ: {ref.shape} single vs {cand.shape} batched")
    num = (ref * cand).sum(axis=1)
    den = np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-12)
    worst = float((num / den).min())
    return BatchVerdict(bool(worst >= min_cosine), f"min cosine {worst:.6f} (>= {min_cosine})")


def sample_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8 check images: a smooth random background (blobs and edges at several
    scales) with cartoon faces drawn on it, so detectors produce real candidates (scores 0.3-0.9
    on YuNet and SCRFD) next to background ones. Synthetic: no media ships with the package."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.zeros((h, w, 3), np.float32)
        for cells in (4, 12, 40):
            small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
            img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) / 3
        img = np.clip(img * 0.6 + 40, 0, 255).astype(np.uint8)
        side = min(h, w)
        for fx, fy, fr in ((0.25, 0.28, 0.16), (0.72, 0.3, 0.11), (0.5, 0.72, 0.19)):
            jitter = rng.uniform(-0.03, 0.03, 2)
            _draw_face(img, int((fx + jitter[0]) * w), int((fy + jitter[1]) * h), max(6, int(fr * side)))
        out[i] = img
    return out


def _draw_face(img: np.ndarray, cx: int, cy: int, r: int) -> None:
    """A frontal cartoon face of radius `r` (skin ellipse, brows, eyes, nose, mouth)."""
    t = max(1, int(0.05 * r))
    cv2.ellipse(img, (cx, cy), (int(r * 0.8), r), 0, 0, 360, (150, 180, 220), -1)
    for dx in (-0.35, 0.35):
        ex = int(cx + dx * r)
        cv2.ellipse(img, (ex, int(cy - 0.2 * r)), (int(0.15 * r), int(0.08 * r)), 0, 0, 360, (40, 30, 30), -1)
        cv2.line(img, (int(ex - 0.18 * r), int(cy - 0.38 * r)), (int(ex + 0.18 * r), int(cy - 0.38 * r)),
                 (40, 40, 60), t)
    cv2.line(img, (cx, int(cy - 0.1 * r)), (cx, int(cy + 0.2 * r)), (100, 120, 170), t)
    cv2.ellipse(img, (cx, int(cy + 0.45 * r)), (int(0.3 * r), int(0.08 * r)), 0, 0, 360, (60, 60, 150), -1)
