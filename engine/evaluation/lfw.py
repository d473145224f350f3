"""LFW View-2 verification: N-fold accuracy, TAR at FAR=1e-3 and a calibrated threshold.

End to end by default: detect on the raw 250x250 image, keep the face nearest the centre, align,
embed. With mode="landmarks" the given 5-point landmarks are used instead of the detector.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import InvalidArgumentError
from engine.vision.analyzer import FaceAnalyzer
from engine.vision.image import read_image

# Median 5-point landmarks of LFW's 250x250 deep-funnelled-free images, used when no face is found.
LFW_FALLBACK_LANDMARKS = np.array([[104, 113], [145, 113], [125, 137], [107, 157], [143, 157]], np.float32)


@dataclass
class Pair:
    a: str
    b: str
    same: bool
    fold: int


@dataclass
class LfwResult:
    accuracy: float
    accuracy_std: float
    tar_at_far: float
    far_threshold: float
    threshold: float
    folds: int
    pairs: int
    images: int
    no_face: list[str] = field(default_factory=list)
    fold_accuracies: list[float] = field(default_factory=list)

    def summary_line(self) -> str:
        return f"accuracy={self.accuracy:.4f} tar@far=1e-3:{self.tar_at_far:.4f} threshold={self.threshold:.4f}"


def read_pairs(path: Path) -> tuple[list[Pair], int]:
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 2:
        raise InvalidArgumentError(f"{path}: first line must be '<folds>\\t<pairs per class>'")
    folds, per = int(lines[0][0]), int(lines[0][1])
    pairs = []
    for n, parts in enumerate(lines[1:]):
        fold = n // (2 * per)
        if len(parts) == 3:
            name, i, j = parts
            pairs.append(Pair(f"{name}/{name}_{int(i):04d}.jpg", f"{name}/{name}_{int(j):04d}.jpg", True, fold))
        elif len(parts) == 4:
            n1, i, n2, j = parts
            pairs.append(Pair(f"{n1}/{n1}_{int(i):04d}.jpg", f"{n2}/{n2}_{int(j):04d}.jpg", False, fold))
        else:
            raise InvalidArgumentError(f"{path}: line {n + 2} is not a pair: {' '.join(parts)}")
    if len(pairs) != folds * 2 * per:
        raise InvalidArgumentError(f"{path}: header promises {folds * 2 * per} pairs, found {len(pairs)}")
    return pairs, folds


def read_landmarks(path: Path) -> dict[str, np.ndarray]:
    out = {}
    for ln in path.read_text().splitlines():
        parts = ln.split()
        if len(parts) == 11:
            out[parts[0]] = np.array(parts[1:], np.float32).reshape(5, 2)
    return out


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising accuracy on (scores, same); candidates are midpoints between sorted scores."""
    s = np.sort(scores)
    cands = np.concatenate([[s[0] - 1e-6], (s[1:] + s[:-1]) / 2, [s[-1] + 1e-6]])
    acc = [((scores >= t) == same).mean() for t in cands]
    return float(cands[int(np.argmax(acc))])


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float = 1e-3) -> tuple[float, float]:
    """(TAR, threshold): the lowest threshold whose false-accept rate on negatives is <= far."""
    neg = np.sort(scores[~same])[::-1]
    allowed = int(np.floor(far * len(neg)))
    thr = float(neg[allowed] + 1e-6) if allowed < len(neg) else float(neg[-1])
    return float((scores[same] >= thr).mean()), thr


def evaluate(analyzer: FaceAnalyzer, data: Path, mode: str = "e2e", batch: int = 16,
             progress: Callable[[int, int], None] | None = None) -> tuple[LfwResult, np.ndarray, list[Pair]]:
    pairs, folds = read_pairs(data / "pairs.txt")
    lm_file = data / "landmarks_5pt.txt"
    landmarks = read_landmarks(lm_file) if lm_file.is_file() else {}
    if mode == "landmarks" and not landmarks:
        raise InvalidArgumentError(f"mode=landmarks needs {lm_file}")
    names = sorted({p.a for p in pairs} | {p.b for p in pairs})
    emb: dict[str, np.ndarray] = {}
    no_face: list[str] = []
    for start in range(0, len(names), batch):
        chunk = names[start : start + batch]
        images = [read_image(data / "images" / n) for n in chunk]
        if mode == "landmarks":
            pts = [landmarks.get(n, LFW_FALLBACK_LANDMARKS) for n in chunk]
        else:
            pts = []
            for n, im, det in zip(chunk, images, analyzer.detect_batch(images), strict=True):
                if len(det) == 0:
                    no_face.append(n)
                    pts.append(landmarks.get(n, LFW_FALLBACK_LANDMARKS))
                    continue
                h, w = im.shape[:2]
                centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
                best = int(np.argmin(((centres - [w / 2, h / 2]) ** 2).sum(1)))
                pts.append(det.landmarks[best])
        crops = np.stack([analyzer.align(im, p) for im, p in zip(images, pts, strict=True)])
        for n, v in zip(chunk, analyzer.embed(crops), strict=True):
            emb[n] = v
        if progress:
            progress(min(start + batch, len(names)), len(names))
    scores = np.array([float(emb[p.a] @ emb[p.b]) for p in pairs], np.float32)
    same = np.array([p.same for p in pairs])
    fold_ids = np.array([p.fold for p in pairs])
    accs, thrs = [], []
    for f in range(folds):
        train, test = fold_ids != f, fold_ids == f
        t = best_threshold(scores[train], same[train])
        thrs.append(t)
        accs.append(float(((scores[test] >= t) == same[test]).mean()))
    tar, far_thr = tar_at_far(scores, same, 1e-3)
    res = LfwResult(float(np.mean(accs)), float(np.std(accs)), tar, far_thr, float(np.mean(thrs)), folds,
                    len(pairs), len(names), no_face, accs)
    return res, scores, pairs


def print_progress(done: int, total: int) -> None:
    print(f"\rembedding images {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
