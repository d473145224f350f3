"""`SightingRecorder`: turns each track's best shot into one `Sighting`, written off the hot path.

The event recorder hands it every frame's recognition (`observe`) and the tracks that ended. Per
live track it keeps, cheaply, the time span, a quality-weighted mean of the track's embeddings
(the same pooling the recognizer matches with), the best shot's thumbnail and box, and the best
match if the track matched anyone. When a track ends (or has lasted `max_track_s`) the sighting
goes to a bounded queue; one writer thread stores batches through the `SightingStore` interface
and adds them to the search index. A full queue drops the oldest sighting (counted), never
blocks a camera. Tracks that never produced an embedding (faces too small or poor) leave nothing.
Without tracking every embedded face is its own sighting.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.store.base import Sighting, SightingStore
from engine.video.recognizer import Frame, FrameRecognition

log = logging.getLogger(__name__)

Thumbnailer = Callable[[np.ndarray, np.ndarray], bytes]
"""(full frame, face box) -> JPEG bytes (the event recorder's `thumbnail`)."""


@dataclass
class _OpenTrack:
    """What is known of one live track so far."""

    first_seen: float
    last_seen: float
    emb_sum: np.ndarray | None = None
    weight: float = 0.0
    quality: float = -1.0
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    thumbnail: bytes = b""
    match: tuple[str, str, float] = field(default=("", "", 0.0))


class SightingRecorder:
    """Best shot per track -> bounded queue -> one writer thread -> store and index."""

    def __init__(self, store: SightingStore, model: str, thumbnail: Thumbnailer,
                 on_written: Callable[[list[Sighting]], None] | None = None, queue_size: int = 10_000,
                 max_track_s: float = 600.0, batch: int = 1024) -> None:
        """on_written(batch): called by the writer after each stored batch (ids set), e.g. to index it."""
        self.store = store
        self.model = model
        self.thumbnail = thumbnail
        self.on_written = on_written
        self.max_track_s = max_track_s
        self.batch = batch
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._open: dict[tuple[str, int], _OpenTrack] = {}
        self._queue: deque[Sighting] = deque(maxlen=queue_size)
        self._lock = threading.Lock()  # open tracks and the queue
        self._write_lock = threading.Lock()  # held while a batch is written (erasure waits for it)
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._busy = False
        self._thread: threading.Thread | None = None

    # ---- hot path --------------------------------------------------------------------------------
    def observe(self, frame: Frame, rec: FrameRecognition) -> None:
        """Fold one frame's recognition into its tracks (cheap: a sum per embedded face, a JPEG
        only when a track's best shot improves), then close the tracks that ended."""
        cam, t = rec.camera_id, rec.capture_time
        rows = np.flatnonzero(rec.embedded)
        emb_of = {int(k): rec.embeddings[j] for j, k in enumerate(rows)}
        matched = {m.face: m for m in rec.matches}
        done: list[Sighting] = []
        with self._lock:
            for k, tid in enumerate(rec.track_ids.tolist()):
                if tid < 0:
                    if k in emb_of:  # no tracking: each embedded face is its own sighting
                        single = _OpenTrack(t, t)
                        self._fold(single, frame, rec, k, emb_of[k], matched.get(k))
                        done.append(self._sighting(cam, -1, single))
                    continue
                tr = self._open.get((cam, tid))
                if tr is None:
                    if k not in emb_of:
                        continue  # not (yet) a best shot: nothing to keep
                    tr = self._open[(cam, tid)] = _OpenTrack(t, t)
                tr.last_seen = max(tr.last_seen, t)
                if k in emb_of:
                    self._fold(tr, frame, rec, k, emb_of[k], matched.get(k))
                elif k in matched:
                    self._match(tr, matched[k])
                if tr.last_seen - tr.first_seen >= self.max_track_s:  # a long track: write it, start afresh
                    done.append(self._sighting(cam, tid, self._open.pop((cam, tid))))
            for tid in rec.ended_tracks:
                tr = self._open.pop((cam, tid), None)
                if tr is not None:
                    done.append(self._sighting(cam, tid, tr))
            self._enqueue(done)

    def _fold(self, tr: _OpenTrack, frame: Frame, rec: FrameRecognition, k: int, emb: np.ndarray,
              m: object | None) -> None:
        q = float(rec.quality[k])
        w = max(q, 1e-6)
        vec = np.asarray(emb, np.float64) * w
        tr.emb_sum = vec if tr.emb_sum is None else tr.emb_sum + vec
        tr.weight += w
        if q > tr.quality:
            box = rec.detections.boxes[k][:4]
            tr.quality, tr.box = q, tuple(float(v) for v in box)  # type: ignore[assignment]
            tr.thumbnail = self.thumbnail(frame.full_image(), box)
        if m is not None:
            self._match(tr, m)

    @staticmethod
    def _match(tr: _OpenTrack, m: object) -> None:
        hit = m.hit  # type: ignore[attr-defined]
        if hit.score > tr.match[2]:
            tr.match = (hit.watchlist, hit.person_id, float(hit.score))

    def _sighting(self, cam: str, tid: int, tr: _OpenTrack) -> Sighting:
        assert tr.emb_sum is not None  # a written track has had at least one best shot
        emb = tr.emb_sum / max(np.linalg.norm(tr.emb_sum), 1e-12)
        return Sighting(cam, tr.first_seen, tr.last_seen, emb.astype(np.float32), self.model, max(tr.quality, 0.0),
                        tid, tr.box, tr.thumbnail, tr.match[0], tr.match[1], tr.match[2])

    def _enqueue(self, done: list[Sighting]) -> None:
        """Queue finished sightings (lock held); a full queue loses its oldest."""
        if not done:
            return
        over = len(self._queue) + len(done) - (self._queue.maxlen or 0)
        if over > 0:
            self.dropped += over
            log.warning("sightings queue full: %d oldest sightings dropped (raise sightings.queue_size)", over)
        self._queue.extend(done)
        self._wake.notify()

    def submit(self, sightings: list[Sighting]) -> None:
        """Queue finished sightings made elsewhere (imports, benchmarks) for the writer."""
        with self._lock:
            self._enqueue(list(sightings))

    # ---- track ends outside a frame --------------------------------------------------------------
    def tracks_ended(self, camera_id: str, track_ids: list[int]) -> None:
        with self._lock:
            self._enqueue([self._sighting(camera_id, t, tr) for t in track_ids
                           if (tr := self._open.pop((camera_id, t), None)) is not None])

    def forget_camera(self, camera_id: str) -> None:
        """A camera removed: its open tracks end now (they were seen; they are kept)."""
        with self._lock:
            keys = [k for k in self._open if k[0] == camera_id]
            self._enqueue([self._sighting(k[0], k[1], self._open.pop(k)) for k in keys])

    def forget_person(self, watchlist: str, person_id: str) -> None:
        """A person erased: drop open and queued sightings matched to them, and wait for a batch in
        flight, so the caller's erasure in the store that follows catches everything."""
        with self._lock:
            for key in [k for k, tr in self._open.items() if tr.match[:2] == (watchlist, person_id)]:
                del self._open[key]
            keep = [s for s in self._queue if (s.watchlist, s.person_id) != (watchlist, person_id)]
            self._queue.clear()
            self._queue.extend(keep)
        with self._write_lock:
            pass

    # ---- writer ----------------------------------------------------------------------------------
    def start(self) -> SightingRecorder:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="sightings-writer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop:
                    self._wake.wait(1.0)
                if not self._queue and self._stop:
                    return
                batch = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                self._busy = True
            try:
                self._write(batch)
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()

    def _write(self, batch: list[Sighting]) -> None:
        with self._write_lock:
            try:
                self.store.add_sightings(batch)
            except Exception:  # a full disk or a lost server: these sightings are lost, the next batch retries
                self.failed += len(batch)
                log.exception("writing %d sightings failed", len(batch))
                return
            self.written += len(batch)
            if self.on_written is not None:
                self.on_written(batch)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued sighting is written (or `timeout`); True when the queue is empty.
        Without a writer thread (not started) the queue is written on the caller's thread."""
        if self._thread is None:
            while True:
                with self._lock:
                    batch = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                if not batch:
                    return True
                self._write(batch)
        with self._lock:
            return self._wake.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close_tracks(self) -> None:
        """End every open track now (shutdown)."""
        with self._lock:
            self._enqueue([self._sighting(k[0], k[1], tr) for k, tr in self._open.items()])
            self._open.clear()

    def stop(self, timeout: float = 10.0) -> None:
        """Write every open track and everything queued, then stop the writer."""
        self.close_tracks()
        self.flush(timeout)
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


__all__ = ["SightingRecorder", "Thumbnailer"]
