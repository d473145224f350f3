"""Per-camera multi-face tracker (ByteTrack-style association on box IoU).

Tracking lets the pipeline embed and match a face a few times per track (its best shots)
instead of on every frame. Each ``update`` runs two association stages, solved with
``lap.lapjv`` on a ``1 - IoU`` cost:

1. high-score detections (``score >= high_score``) against all live tracks, whose boxes are
   first moved forward by their damped constant velocity to the frame's timestamp;
2. low-score detections (``low_score <= score < high_score``) against the tracks still
   unmatched, with a stricter IoU. Low-score faces (blurred, occluded, turning away) so keep
   their track alive and carry its id, but never start a track of their own.

Unmatched high-score detections start new tracks. A track ends when it has not been matched
for more than ``max_age_s`` seconds of frame time; ``update`` returns the ids that ended so
per-track state (best shots, embeddings) can be finalised and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lap
import numpy as np

from engine.vision.detections import Detections, box_iou


@dataclass(frozen=True)
class TrackUpdate:
    """Result of one ``FaceTracker.update``.

    dets: the input detections, same order and length, with ``extra["track_id"]`` (int64,
        -1 for a detection not assigned to a reported track).
    started: ids first reported in this call (in ``dets``), ascending.
    ended: ids of reported tracks that ended in this call, ascending; they will never
        appear again.
    """

    dets: Detections
    started: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Track:
    """Mutable state of one live track (internal)."""

    track_id: int
    box: np.ndarray  # (4,) float64, last matched box
    velocity: np.ndarray  # (4,) float64, box coordinates per second
    first_seen: float
    last_seen: float
    score: float
    hits: int = 1
    confirmed: bool = False
    landmarks: np.ndarray | None = None  # (5, 2) float64 of the last matched detection, if it had them

    def predict(self, timestamp: float, horizon_s: float) -> np.ndarray:
        """The box moved by its velocity to ``timestamp`` (extrapolating at most ``horizon_s``)."""
        dt = min(max(timestamp - self.last_seen, 0.0), horizon_s)
        box = self.box + self.velocity * dt
        # Keep the box valid if the width or height velocity would invert it.
        x1, y1 = box[0], box[1]
        box[2] = max(box[2], x1 + 1.0)
        box[3] = max(box[3], y1 + 1.0)
        return box


class FaceTracker:
    """Tracks faces of one camera across frames; see the module docstring for the algorithm.

    Args:
        iou_threshold: least IoU (against the predicted box) for a high-score match.
        high_score: detections at or above this score are matched first and may start tracks.
        low_score: detections below this score are ignored (track_id -1).
        max_age_s: a track unmatched for longer than this (frame time, seconds) ends.
        min_hits: matches needed before a track is reported; until then its detections get
            track_id -1, and a track that misses a frame before reaching it is dropped
            silently (never reported as ended). With 1 every track is reported at once.
        low_iou_threshold: least IoU for the second (low-score) stage; stricter than the first
            so uncertain detections only continue tracks they clearly overlap.
        velocity_smoothing: weight of the newest velocity measurement in the running
            estimate (1 = no smoothing, 0 = no motion model).
        max_predict_s: longest extrapolation of a track's motion, so a long-lost track
            does not drift away from where the face was last seen.

    Track ids start at 1 and only increase, for the tracker's lifetime (``reset`` does not
    reuse them). With ``min_hits > 1`` the reported ids may have gaps.
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        high_score: float = 0.6,
        low_score: float = 0.3,
        max_age_s: float = 1.0,
        min_hits: int = 1,
        *,
        low_iou_threshold: float = 0.5,
        velocity_smoothing: float = 0.5,
        max_predict_s: float = 0.5,
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0 or not 0.0 < low_iou_threshold <= 1.0:
            raise ValueError("IoU thresholds must be in (0, 1]")
        if not 0.0 <= low_score <= high_score:
            raise ValueError(f"need 0 <= low_score <= high_score, got {low_score}, {high_score}")
        if max_age_s < 0 or max_predict_s < 0:
            raise ValueError("max_age_s and max_predict_s must be >= 0")
        if min_hits < 1:
            raise ValueError(f"min_hits must be >= 1, got {min_hits}")
        if not 0.0 <= velocity_smoothing <= 1.0:
            raise ValueError(f"velocity_smoothing must be in [0, 1], got {velocity_smoothing}")
        self.iou_threshold = float(iou_threshold)
        self.low_iou_threshold = float(low_iou_threshold)
        self.high_score = float(high_score)
        self.low_score = float(low_score)
        self.max_age_s = float(max_age_s)
        self.min_hits = int(min_hits)
        self.velocity_smoothing = float(velocity_smoothing)
        self.max_predict_s = float(max_predict_s)
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._last_timestamp: float | None = None

    def __len__(self) -> int:
        """Number of live tracks, reported or not."""
        return len(self._tracks)

    def active_tracks(self) -> list[int]:
        """Ids of the live, reported tracks, ascending."""
        return sorted(tid for tid, t in self._tracks.items() if t.confirmed)

    def track_box(self, track_id: int) -> np.ndarray | None:
        """Last matched box (4,) float32 of a live track, or None if it is not live."""
        track = self._tracks.get(track_id)
        return None if track is None else track.box.astype(np.float32)

    def predicted_boxes(self, timestamp: float) -> np.ndarray:
        """(M, 4) float32 boxes of the live, reported tracks moved to ``timestamp`` (read-only: no state changes)."""
        tracks = [t for t in list(self._tracks.values()) if t.confirmed]
        if not tracks:
            return np.zeros((0, 4), np.float32)
        return np.stack([t.predict(timestamp, self.max_predict_s) for t in tracks]).astype(np.float32)

    def carry(self, timestamp: float) -> Detections:
        """The live, reported tracks matched in the last detected frame, as detections at ``timestamp``, for
        a frame that was not detected (a detection interval above 1): boxes moved by each track's velocity,
        landmarks moved with the box centre and scaled with its size, the last score, ``extra["track_id"]``.
        No state changes: tracks age and end only on detected frames (``update``)."""
        last = self._last_timestamp
        tracks = [t for t in list(self._tracks.values()) if t.confirmed and t.last_seen == last]  # seen last time
        if not tracks:
            return Detections.empty().with_extra(track_id=np.zeros(0, np.int64))
        boxes = np.stack([t.predict(timestamp, self.max_predict_s) for t in tracks])
        lms = np.zeros((len(tracks), 5, 2), np.float64)
        for k, t in enumerate(tracks):
            if t.landmarks is None:
                continue
            old, new = t.box, boxes[k]
            sx = (new[2] - new[0]) / max(old[2] - old[0], 1e-6)
            sy = (new[3] - new[1]) / max(old[3] - old[1], 1e-6)
            lms[k, :, 0] = new[0] + (t.landmarks[:, 0] - old[0]) * sx
            lms[k, :, 1] = new[1] + (t.landmarks[:, 1] - old[1]) * sy
        return Detections(boxes.astype(np.float32), lms.astype(np.float32),
                          np.asarray([t.score for t in tracks], np.float32),
                          {"track_id": np.asarray([t.track_id for t in tracks], np.int64)})

    def reset(self) -> list[int]:
        """End every track (e.g. on a stream restart or scene cut); returns the reported ids ended."""
        ended = self.active_tracks()
        self._tracks.clear()
        self._last_timestamp = None
        return ended

    def update(self, dets: Detections, timestamp: float) -> TrackUpdate:
        """Associate one frame's detections to tracks; ``timestamp`` is frame time in seconds.

        Raises ValueError if ``timestamp`` is earlier than the previous frame's (call ``reset``
        after a stream restart).
        """
        timestamp = float(timestamp)
        if self._last_timestamp is not None and timestamp < self._last_timestamp:
            raise ValueError(
                f"timestamp {timestamp} is before the previous frame's {self._last_timestamp}; "
                "call reset() when a stream restarts"
            )
        self._last_timestamp = timestamp

        # 1. End tracks unseen for too long, so they can no longer be matched.
        ended = self._expire(timestamp)

        n = len(dets)
        assigned = np.full(n, -1, np.int64)
        scores = dets.scores.astype(np.float64)
        high = np.flatnonzero(scores >= self.high_score)
        low = np.flatnonzero((scores >= self.low_score) & (scores < self.high_score))

        track_ids = list(self._tracks)
        predicted = (
            np.stack([self._tracks[t].predict(timestamp, self.max_predict_s) for t in track_ids])
            if track_ids
            else np.zeros((0, 4), np.float64)
        )

        # 2. Stage one: high-score detections against every live track.
        pairs_hi, free_tracks, free_high = _associate(predicted, dets.boxes[high], self.iou_threshold)
        # 3. Stage two: low-score detections against the tracks left over.
        pairs_lo, free_tracks2, _ = _associate(
            predicted[free_tracks], dets.boxes[low], self.low_iou_threshold
        )

        matched: list[tuple[int, int]] = [(track_ids[t], int(high[d])) for t, d in pairs_hi]
        matched += [(track_ids[free_tracks[t]], int(low[d])) for t, d in pairs_lo]
        for tid, det in matched:
            self._observe(self._tracks[tid], dets.boxes[det], float(scores[det]), timestamp, dets.landmarks[det])

        # Tentative tracks must be matched in consecutive frames (ByteTrack's rule).
        for t in free_tracks[free_tracks2]:
            track = self._tracks[track_ids[t]]
            if not track.confirmed:
                del self._tracks[track.track_id]

        started: list[int] = []
        for tid, det in matched:
            track = self._tracks[tid]
            if not track.confirmed and track.hits >= self.min_hits:
                track.confirmed = True
                started.append(tid)
            if track.confirmed:
                assigned[det] = tid

        # 4. Unmatched high-score detections start new tracks.
        for d in high[free_high]:
            tid = self._start(dets.boxes[d], float(scores[d]), timestamp)
            self._tracks[tid].landmarks = np.asarray(dets.landmarks[d], np.float64).copy()
            if self._tracks[tid].confirmed:
                assigned[d] = tid
                started.append(tid)

        return TrackUpdate(dets.with_extra(track_id=assigned), sorted(started), ended)

    def _expire(self, timestamp: float) -> list[int]:
        """Drop tracks whose last match is more than max_age_s before ``timestamp``."""
        ended: list[int] = []
        for tid in [t for t, tr in self._tracks.items() if timestamp - tr.last_seen > self.max_age_s]:
            if self._tracks.pop(tid).confirmed:
                ended.append(tid)
        return sorted(ended)

    def _start(self, box: np.ndarray, score: float, timestamp: float) -> int:
        tid = self._next_id
        self._next_id += 1
        self._tracks[tid] = _Track(
            track_id=tid,
            box=np.asarray(box, np.float64).copy(),
            velocity=np.zeros(4, np.float64),
            first_seen=timestamp,
            last_seen=timestamp,
            score=score,
            confirmed=self.min_hits <= 1,
        )
        return tid

    def _observe(self, track: _Track, box: np.ndarray, score: float, timestamp: float,
                 landmarks: np.ndarray | None = None) -> None:
        """Move a matched track to its new box and refresh its damped velocity estimate."""
        box = np.asarray(box, np.float64)
        dt = timestamp - track.last_seen
        if dt > 0:
            measured = (box - track.box) / dt
            a = self.velocity_smoothing
            track.velocity = a * measured + (1.0 - a) * track.velocity
        track.box = box.copy()
        if landmarks is not None:
            track.landmarks = np.asarray(landmarks, np.float64).copy()
        track.last_seen = timestamp
        track.score = score
        track.hits += 1


def _associate(
    track_boxes: np.ndarray, det_boxes: np.ndarray, min_iou: float
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of track and detection boxes with IoU >= min_iou.

    Returns (pairs of (track row, detection row), unmatched track rows, unmatched detection rows).
    """
    n_t, n_d = len(track_boxes), len(det_boxes)
    if n_t == 0 or n_d == 0:
        return [], np.arange(n_t), np.arange(n_d)
    iou = box_iou(track_boxes, det_boxes).astype(np.float64)
    cost = np.ascontiguousarray(1.0 - iou)
    # cost_limit makes lapjv leave a row unmatched rather than take a pair costing more.
    _, row_to_col, _ = lap.lapjv(cost, extend_cost=True, cost_limit=1.0 - min_iou + 1e-9)
    pairs = [(r, int(c)) for r, c in enumerate(row_to_col) if c >= 0 and iou[r, c] >= min_iou]
    used_t = np.zeros(n_t, bool)
    used_d = np.zeros(n_d, bool)
    for r, c in pairs:
        used_t[r] = used_d[c] = True
    return pairs, np.flatnonzero(~used_t), np.flatnonzero(~used_d)


__all__ = ["FaceTracker", "TrackUpdate"]
