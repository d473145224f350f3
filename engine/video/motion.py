"""Motion gating: where in a camera's frame something moves, as a few padded regions to detect.

A fixed camera mostly films a still scene. `MotionDetector` keeps a running-average background of a
small grey copy of the frame (`width` pixels wide) and marks the pixels that differ from it by more
than `threshold` grey levels; connected blobs become boxes in the frame's pixels. `plan_regions`
adds the boxes of the camera's live tracks, pads every box (a face sits above the moving body and a
face cut by a region's edge is not found), merges overlapping boxes and rounds each region so that,
at the detection scale, its sides are multiples of `REGION_ALIGN` network pixels: regions of many
cameras then fall into a few shapes the detector can batch. When the regions would cover most of the
frame, the caller detects the whole frame instead (`full_frame_share`).

Example::

    md = MotionDetector()
    for frame in frames:
        regions = plan_regions(md.update(frame), track_boxes, frame.shape[1], frame.shape[0], scale=1.0)
"""

from __future__ import annotations

import math

import cv2
import numpy as np

REGION_ALIGN = 64
"""Region sides are multiples of this many network pixels (fixed shapes to batch; a multiple of the stride 32)."""


class MotionDetector:
    """One camera's motion mask: running-average background of a small grey frame, thresholded difference.

    Args:
        width: width of the grey copy the mask is computed on (a few hundred pixels: cheap, and noise of
            single pixels averages out).
        threshold: grey levels (0-255) a pixel must differ from the background to count as moving.
        alpha: background learning rate per frame; something that stops moving fades into the
            background after about 1/alpha frames (live tracks keep it detected meanwhile).
        min_area: smallest blob kept, in pixels of the grey copy (drops sensor noise and leaves).
    """

    def __init__(self, width: int = 320, threshold: float = 20.0, alpha: float = 0.05, min_area: int = 12) -> None:
        if width < 16:
            raise ValueError(f"motion width must be >= 16, got {width}")
        self.width = int(width)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.min_area = int(min_area)
        self._bg: np.ndarray | None = None
        self.last_mask: np.ndarray | None = None
        """The last frame's moving-pixel mask (uint8 0/255, grey-copy size), for diagnostics and tests."""

    def reset(self) -> None:
        """Forget the background (a scene cut or a camera restart): the next frame starts it afresh."""
        self._bg = None
        self.last_mask = None

    @property
    def ready(self) -> bool:
        """Whether a background exists (False before the first frame: no mask can be computed yet)."""
        return self._bg is not None

    def small(self, image: np.ndarray) -> np.ndarray:
        """The blurred grey copy of `image` the mask is computed on (float32)."""
        h, w = image.shape[:2]
        sw = min(self.width, w)
        sh = max(1, round(h * sw / w))
        src = image
        if w > 4 * sw:  # nearest to twice the size first: INTER_AREA over a whole 1080p frame costs ~3 ms
            src = cv2.resize(image, (2 * sw, 2 * sh), interpolation=cv2.INTER_NEAREST)
        grey = cv2.cvtColor(cv2.resize(src, (sw, sh), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        return cv2.GaussianBlur(grey, (5, 5), 0).astype(np.float32)

    def update(self, image: np.ndarray) -> np.ndarray:
        """Boxes (M, 4) float32 x1y1x2y2 in `image` pixels where this frame moved against the background;
        the first frame (or a new frame size) only starts the background and returns no box."""
        small = self.small(image)
        if self._bg is None or self._bg.shape != small.shape:
            self._bg = small.copy()
            self.last_mask = np.zeros(small.shape, np.uint8)
            return np.zeros((0, 4), np.float32)
        diff = cv2.absdiff(small, self._bg)
        mask = (diff > self.threshold).astype(np.uint8) * 255
        cv2.accumulateWeighted(small, self._bg, self.alpha)
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=2)
        self.last_mask = mask
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= self.min_area]
        if not keep:
            return np.zeros((0, 4), np.float32)
        st = stats[keep]
        boxes = np.stack([st[:, 0], st[:, 1], st[:, 0] + st[:, 2], st[:, 1] + st[:, 3]], axis=1).astype(np.float32)
        return boxes * np.float32(image.shape[1] / small.shape[1])


def pad_boxes(boxes: np.ndarray, pad_frac: float, pad_px: float, up_frac: float = 0.0) -> np.ndarray:
    """Boxes grown by `pad_px` + `pad_frac` of their larger side on every side, and by a further
    `up_frac` of their height upwards (a moving body's head is at its top edge, sometimes above the blob)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    if len(b) == 0:
        return b
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    p = pad_px + pad_frac * side
    b[:, 0] -= p
    b[:, 1] -= p + up_frac * (b[:, 3] - b[:, 1])
    b[:, 2] += p
    b[:, 3] += p
    return b


def merge_boxes(boxes: np.ndarray) -> np.ndarray:
    """Unions of overlapping (or touching) boxes until no two overlap (few boxes: quadratic is fine)."""
    out = [list(map(float, b)) for b in np.asarray(boxes, np.float32).reshape(-1, 4)]
    merged = True
    while merged and len(out) > 1:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]:
                    out[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return np.asarray(out, np.float32).reshape(-1, 4)


def align_region(box: np.ndarray, width: int, height: int, scale: float, align: int = REGION_ALIGN) -> tuple[int, ...]:
    """An integer region (x1, y1, x2, y2) of the frame holding `box`, on the grid of `align` network pixels at
    `scale` (a cell is align / scale frame pixels, from the frame's top-left corner): it starts on a grid line and
    spans whole cells, cut at the frame's right and bottom edges. On that grid the region's resized pixels are
    the whole frame's resized pixels at the same scale and the detector's strides (<= 32) line up with the
    full-frame pass, so a face is found in a region as it is in the whole frame."""
    cell = align / scale
    x1, y1, x2, y2 = (float(v) for v in box)
    out = []
    for lo, hi, limit in ((x1, x2, width), (y1, y2, height)):
        k0 = max(0, int(math.floor(max(lo, 0.0) / cell)))
        k1 = max(k0 + 1, int(math.ceil(min(hi, limit) / cell)))
        out.append((min(int(round(k0 * cell)), max(0, limit - 1)), min(int(round(k1 * cell)), limit)))
    (ax1, ax2), (ay1, ay2) = out
    return ax1, ay1, ax2, ay2


def plan_regions(motion: np.ndarray, tracks: np.ndarray, width: int, height: int, scale: float, *,
                 pad_frac: float = 0.25, pad_px: float = 16.0, up_frac: float = 0.25,
                 track_pad_frac: float = 1.0) -> list[tuple[int, ...]]:
    """The regions to detect in a `width` x `height` frame: padded motion boxes and live track boxes (grown by
    `track_pad_frac` of their size, so a face moving until the next detection stays inside), merged, aligned
    (`align_region`) and merged again where alignment made them overlap. Empty: nothing to detect."""
    boxes = [pad_boxes(motion, pad_frac, pad_px, up_frac), pad_boxes(tracks, track_pad_frac, pad_px)]
    allb = np.concatenate(boxes) if any(len(b) for b in boxes) else np.zeros((0, 4), np.float32)
    if len(allb) == 0:
        return []
    allb[:, [0, 2]] = allb[:, [0, 2]].clip(0, width)
    allb[:, [1, 3]] = allb[:, [1, 3]].clip(0, height)
    allb = allb[(allb[:, 2] > allb[:, 0]) & (allb[:, 3] > allb[:, 1])]
    regions = merge_boxes(allb)
    for _ in range(4):  # aligning grows regions; merge those that now overlap, then align the unions again
        aligned = np.asarray([align_region(r, width, height, scale) for r in regions], np.float32).reshape(-1, 4)
        shrunk = aligned + np.array([1, 1, -1, -1], np.float32)  # only a real overlap merges (touching is fine)
        merged = merge_boxes(shrunk)
        if len(merged) == len(aligned):
            break
        regions = merged
    return sorted({tuple(int(v) for v in r) for r in aligned})


def region_share(regions: list[tuple[int, ...]], width: int, height: int) -> float:
    """Share of the frame's area the regions cover (they do not overlap after `plan_regions`)."""
    area = sum((r[2] - r[0]) * (r[3] - r[1]) for r in regions)
    return area / float(max(1, width * height))


__all__ = ["REGION_ALIGN", "MotionDetector", "align_region", "merge_boxes", "pad_boxes", "plan_regions",
           "region_share"]
