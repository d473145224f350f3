"""`Engine`: the video pipeline of one process, composed of three parts with one job each.

* `Scheduler` (engine/video/scheduler.py): camera registry, bounded per-camera queues with
  drop-oldest, cross-camera batches, worker threads, capture-order tickets, replies.
* `Recognizer` (engine/video/recognizer.py): per-frame detection, tracking, quality gate,
  best-shot embedding and gallery matching; no threads, queues or storage.
* `EventRecorder` (engine/video/recorder.py): one event per (track, person), persistence,
  thumbnails, live publishing and relay.

`Engine` wires them together and keeps the small API the service, the sources, the CLI and the
benchmarks use; it holds no pipeline logic of its own.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.config import Config
from engine.errors import NotFoundError
from engine.gallery.calibration import resolve_match_threshold, resolve_min_quality
from engine.gallery.gallery import Gallery
from engine.metrics import EngineMetrics
from engine.store.base import EventStore, MatchEvent
from engine.video.bestshot import TrackState
from engine.video.events import EventBus
from engine.video.recognizer import Recognizer, RecognizerSettings
from engine.video.recorder import EventRecorder, RecorderSettings
from engine.video.scheduler import (
    DROP_POLICY,
    CameraState,
    FaceOut,
    FrameJob,
    FrameOutcome,
    Scheduler,
    SchedulerSettings,
    _Dropped,
    is_drop,
)
from engine.vision.analyzer import FaceAnalyzer


class Engine:
    """Cameras in, frame results and match events out: a facade over scheduler, recognizer, recorder."""

    def __init__(self, cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery, store: EventStore,
                 metrics: EngineMetrics | None = None) -> None:
        self.cfg = cfg
        self.analyzer = analyzer
        resolve_match_threshold(cfg, analyzer.embedder.spec)  # gallery.match_threshold 0 = from match_fpir
        resolve_min_quality(cfg, analyzer.embedder.spec)  # pipeline.min_quality < 0 = the embedder's gate
        self.gallery = gallery
        self.store = store
        self.metrics = metrics or EngineMetrics()
        self.bus = EventBus()
        p = cfg.pipeline
        self.recognizer = Recognizer(analyzer, gallery, RecognizerSettings.from_config(cfg), self.metrics)
        self.recorder = EventRecorder(store, self.bus, RecorderSettings.from_config(cfg), self.metrics,
                                      still_enrolled=gallery.has_template)
        self.scheduler = Scheduler(SchedulerSettings(p.queue_size, p.batch_size, p.batch_wait_ms, p.workers),
                                   self.recognizer, self.recorder, self.metrics)

    # ---- cameras ---------------------------------------------------------------------------------
    def add_camera(self, camera_id: str, uri: str = "push", options: dict[str, str] | None = None) -> CameraState:
        """Register a camera; raises InvalidArgumentError / AlreadyExistsError."""
        cam = self.scheduler.add_camera(camera_id, uri, options)
        self.recognizer.add_camera(camera_id)
        return cam

    def remove_camera(self, camera_id: str) -> CameraState:
        """Unregister a camera: waiting frames answered NOT_FOUND, its tracks and cached events dropped."""
        cam = self.scheduler.remove_camera(camera_id)
        self.recognizer.remove_camera(camera_id)
        self.recorder.forget_camera(camera_id)
        return cam

    def camera(self, camera_id: str, live: bool = True) -> CameraState:
        """The camera, or NotFoundError with the fix. Its counters are always live in this process; `live`
        matters to the cluster front end (`ClusterEngine.camera`), which otherwise asks a worker."""
        cam = self.scheduler.find(camera_id)
        if cam is None:
            raise NotFoundError(f"camera {camera_id!r} not found; register it with AddCamera "
                                "(uri 'push' for a gateway camera)")
        return cam

    def find_camera(self, camera_id: str) -> CameraState | None:
        """The camera, or None if this process does not run it."""
        return self.scheduler.find(camera_id)

    def has_camera(self, camera_id: str) -> bool:
        return self.scheduler.find(camera_id) is not None

    def camera_ids(self) -> list[str]:
        return [c.camera_id for c in self.scheduler.cameras()]

    def cameras(self) -> list[CameraState]:
        return self.scheduler.cameras()

    def track(self, camera_id: str, track_id: int) -> TrackState | None:
        """Best-shot state of a live track (diagnostics and tests)."""
        return self.recognizer.track(camera_id, track_id)

    # ---- frames ----------------------------------------------------------------------------------
    def submit(self, job: FrameJob) -> None:
        """Queue a frame; if the camera's queue is full, the oldest waiting frame is dropped."""
        self.scheduler.submit(job)

    def pending(self) -> int:
        return self.scheduler.pending()

    def process(self, batch: list[tuple[CameraState, FrameJob]]) -> list[FrameOutcome]:
        """Process a batch now, on the caller's thread (the workers' code path, without tickets)."""
        return self.scheduler.process(batch)

    def start(self) -> None:
        self.scheduler.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Process what is queued (up to drain_s), stop the workers, end every track, close the bus."""
        self.scheduler.stop(drain_s)
        for cam in self.scheduler.cameras():
            self.recorder.tracks_ended(cam.camera_id, self.recognizer.end_tracks(cam.camera_id))
        self.bus.close()

    # ---- events ----------------------------------------------------------------------------------
    @property
    def published(self) -> OrderedDict[str, float]:
        """Event id -> `updated` of the events this process published."""
        return self.recorder.published

    def relay(self, events: list[MatchEvent]) -> int:
        """Publish to local subscribers the events other processes wrote to the shared store."""
        return self.recorder.relay(events)

    def forget_person(self, watchlist: str, person_id: str) -> None:
        """Drop live tracks' cached events of a removed person (they are erased from the store)."""
        self.recorder.forget_person(watchlist, person_id)


__all__ = ["DROP_POLICY", "CameraState", "Engine", "FaceOut", "FrameJob", "FrameOutcome", "TrackState", "_Dropped",
           "is_drop"]
