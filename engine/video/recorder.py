"""Match events: one per (camera, track, person), persisted, with a thumbnail, published live.

`EventRecorder` turns the recognizer's match decisions into `MatchEvent`s. A track that matches
a person raises one event; later shots of the same track and person only update it (store and
bus) when the score rises, with the better shot's box and thumbnail. It writes through the
`EventStore` interface, publishes on the `EventBus`, relays events other processes wrote, and
forgets cached events of tracks that ended and of persons that were erased. It knows no models.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from engine.config import Config
from engine.errors import NotFoundError
from engine.metrics import EngineMetrics
from engine.store.base import EventStore, MatchEvent
from engine.video.events import PUBLISHED_MEMORY, EventBus, PublishOnce
from engine.video.recognizer import Frame, FrameRecognition, MatchDecision

SCORE_RISE_EPS = 1e-4
"""An update needs a real rise: float noise between two equally good shots must not re-publish."""


EventKey = tuple[int, str, str]  # (track id, watchlist, person id)


class TrackObserver(Protocol):
    """Something else kept per track from the same frames (the sightings recorder)."""

    def observe(self, frame: Frame, rec: FrameRecognition) -> None: ...
    def tracks_ended(self, camera_id: str, track_ids: list[int]) -> None: ...
    def forget_camera(self, camera_id: str) -> None: ...


@dataclass(frozen=True)
class RecorderSettings:
    """Thumbnail policy (see `PipelineConfig` for each field's meaning)."""

    thumbnail_size: int = 112
    thumbnail_margin: float = 0.2
    jpeg_quality: int = 85

    @classmethod
    def from_config(cls, cfg: Config) -> RecorderSettings:
        p = cfg.pipeline
        return cls(p.thumbnail_size, p.thumbnail_margin, p.thumbnail_jpeg_quality)


class EventRecorder:
    """Raises, updates, persists and publishes match events; safe to call from several workers."""

    def __init__(self, store: EventStore, bus: EventBus, settings: RecorderSettings | None = None,
                 metrics: EngineMetrics | None = None,
                 still_enrolled: Callable[[int], bool] | None = None) -> None:
        """still_enrolled(template_id): checked just before writing, so a person erased while a
        batch was in flight gets no event (the gallery's `has_template`)."""
        self.store = store
        self.bus = bus
        self.settings = settings or RecorderSettings()
        self.metrics = metrics
        self.still_enrolled = still_enrolled
        self.observer: TrackObserver | None = None  # sightings, when enabled
        self.publisher = PublishOnce(bus)
        self.published = self.publisher.published  # event id -> `updated` this process sent
        self._events: dict[str, dict[EventKey, MatchEvent]] = {}  # camera -> live tracks' events
        self._lock = threading.Lock()

    # ---- recording -------------------------------------------------------------------------------
    def record(self, frame: Frame, rec: FrameRecognition) -> list[MatchEvent | None]:
        """Record a frame's decisions; returns, per face, its event (new, updated or its track's best)."""
        if self.observer is not None:  # before the events: it closes this frame's ended tracks itself
            self.observer.observe(frame, rec)
        self._drop_tracks(rec.camera_id, rec.ended_tracks)
        out: list[MatchEvent | None] = [None] * len(rec.detections)
        for m in rec.matches:
            out[m.face] = self.record_match(frame, m)
        for k in range(len(out)):
            if out[k] is None and rec.track_ids[k] >= 0:
                out[k] = self.track_event(rec.camera_id, int(rec.track_ids[k]))
        return out

    def record_match(self, frame: Frame, m: MatchDecision) -> MatchEvent | None:
        """One event per (track, person); re-sent as an update when its score rises. None when the
        person is no longer enrolled."""
        hit = m.hit
        if self.still_enrolled is not None and not self.still_enrolled(hit.template_id):
            return None  # the person was removed while this batch was in flight: erased data stays erased
        key = (m.track_id, hit.watchlist, hit.person_id)
        with self._lock:
            ev = self._events.get(frame.camera_id, {}).get(key) if m.track_id >= 0 else None
        box_t = tuple(float(v) for v in m.box)
        if ev is not None and hit.score > ev.score + SCORE_RISE_EPS:
            thumb = self.thumbnail(frame.full_image(), m.box)
            ev.score, ev.box, ev.thumbnail = float(hit.score), box_t, thumb  # type: ignore[assignment]
            ev.timestamp, ev.frame_seq = frame.capture_time, frame.seq
            try:
                self.store.update_event(ev)
            except NotFoundError:  # purged by retention while the track lived on: record it afresh
                ev = None
            else:
                self._count("update")
                self._publish(ev, True)
                return ev
        elif ev is not None:
            return ev
        ev = MatchEvent(uuid.uuid4().hex, frame.camera_id, frame.capture_time, hit.watchlist, hit.person_id,
                        hit.display_name, float(hit.score), box_t, m.track_id, frame.seq,  # type: ignore[arg-type]
                        self.thumbnail(frame.full_image(), m.box))
        self.store.add_event(ev)
        if m.track_id >= 0:
            with self._lock:
                self._events.setdefault(frame.camera_id, {})[key] = ev
        self._count("new")
        self._publish(ev, False)
        return ev

    def track_event(self, camera_id: str, track_id: int) -> MatchEvent | None:
        """The highest-scoring event of a live track (any person), if it has one."""
        best = None
        with self._lock:
            for (tid, _, _), ev in self._events.get(camera_id, {}).items():
                if tid == track_id and (best is None or ev.score > best.score):
                    best = ev
        return best

    def events_of(self, camera_id: str) -> list[MatchEvent]:
        """The cached events of the camera's live tracks."""
        with self._lock:
            return list(self._events.get(camera_id, {}).values())

    # ---- forgetting ------------------------------------------------------------------------------
    def tracks_ended(self, camera_id: str, track_ids: list[int]) -> None:
        """Drop the cached events of ended tracks (a later match starts a new event)."""
        if self.observer is not None and track_ids:
            self.observer.tracks_ended(camera_id, track_ids)
        self._drop_tracks(camera_id, track_ids)

    def _drop_tracks(self, camera_id: str, track_ids: list[int]) -> None:
        if not track_ids:
            return
        gone = set(track_ids)
        with self._lock:
            cached = self._events.get(camera_id, {})
            for key in [k for k in cached if k[0] in gone]:
                del cached[key]

    def forget_camera(self, camera_id: str) -> None:
        if self.observer is not None:
            self.observer.forget_camera(camera_id)
        with self._lock:
            self._events.pop(camera_id, None)

    def forget_person(self, watchlist: str, person_id: str) -> None:
        """Drop live tracks' cached events of a removed person (they are erased from the store)."""
        with self._lock:
            for cached in self._events.values():
                for key in [k for k in cached if k[1] == watchlist and k[2] == person_id]:
                    del cached[key]

    # ---- publishing ------------------------------------------------------------------------------
    def relay(self, events: list[MatchEvent]) -> int:
        """Publish to local subscribers the events other processes wrote to the shared store."""
        return self.publisher.relay(events)

    def _publish(self, ev: MatchEvent, update: bool) -> None:
        self.publisher.announce(ev, update)

    def _count(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.matches.labels(kind).inc()

    # ---- thumbnails ------------------------------------------------------------------------------
    def thumbnail(self, image: np.ndarray, box: np.ndarray) -> bytes:
        """JPEG of the face box plus a margin, at most `thumbnail_size` on its longer side (b"" if empty)."""
        s = self.settings
        x1, y1, x2, y2 = (float(v) for v in box)
        mw, mh = s.thumbnail_margin * (x2 - x1), s.thumbnail_margin * (y2 - y1)
        x1, y1 = int(max(0, x1 - mw)), int(max(0, y1 - mh))
        x2, y2 = int(min(image.shape[1], x2 + mw)), int(min(image.shape[0], y2 + mh))
        crop = image[y1:y2, x1:x2]
        if crop.size == 0:
            return b""
        scale = s.thumbnail_size / max(crop.shape[:2])
        if scale < 1:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, s.jpeg_quality])
        return buf.tobytes() if ok else b""


__all__ = ["PUBLISHED_MEMORY", "SCORE_RISE_EPS", "EventRecorder", "RecorderSettings", "TrackObserver"]
