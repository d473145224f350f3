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

import time
from collections import OrderedDict

from engine.config import Config
from engine.errors import InvalidImageError
from engine.gallery.gallery import Gallery
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store.base import EventStore, MatchEvent
from engine.video.bestshot import TrackState
from engine.video.decode import Decoders, cpu_decoders, decode_pipeline_frame
from engine.video.engine_api import EncodedFrame, Reply, VideoEngine
from engine.video.events import EventBus
from engine.video.recognizer import Recognizer, RecognizerSettings
from engine.video.recorder import EventRecorder, RecorderSettings, TrackObserver
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
from engine.video.sources import PullSource
from engine.vision.analyzer import FaceAnalyzer


class Engine(VideoEngine):
    """Cameras in, frame results and match events out: a facade over scheduler, recognizer, recorder,
    decoding gateway frames and reading pull cameras in this process."""

    def __init__(self, cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery, store: EventStore,
                 metrics: EngineMetrics | None = None, decoders: Decoders | None = None,
                 settings: Settings | None = None) -> None:
        """`decoders` decode gateway JPEG frames and read pull cameras (default: the CPU's); `settings`
        are `cfg` resolved for the analyzer's models (default: resolved here)."""
        self.cfg = cfg
        self.settings = settings or Settings.for_analyzer(cfg, analyzer)
        self.analyzer = analyzer
        self.gallery = gallery
        self.store = store
        self.metrics = metrics or EngineMetrics()
        self.decoders = decoders or cpu_decoders()
        self.bus = EventBus()
        p, b = cfg.pipeline, self.settings.batching
        self.recognizer = Recognizer(analyzer, gallery, RecognizerSettings.from_settings(self.settings), self.metrics)
        self.recorder = EventRecorder(store, self.bus, RecorderSettings.from_config(cfg), self.metrics,
                                      still_enrolled=gallery.has_template)
        self.scheduler = Scheduler(SchedulerSettings(p.queue_size, b.batch_size, b.batch_wait_ms, p.workers),
                                   self.recognizer, self.recorder, self.metrics)
        self.registry = self.scheduler.registry
        self.registry.offline_after_s = cfg.cameras.offline_after_s
        self.sources: dict[str, PullSource] = {}

    # ---- cameras ---------------------------------------------------------------------------------
    def add_camera(self, camera_id: str, uri: str = "push", options: dict[str, str] | None = None,
                   error: str = "") -> CameraState:
        """Register a camera (a pull camera's reader starts with the engine); raises InvalidArgumentError /
        AlreadyExistsError."""
        cam = self.scheduler.add_camera(camera_id, uri, options, error)
        self.recognizer.add_camera(camera_id)
        if cam.kind == "pull" and not error:
            src = PullSource(self, cam, file_roots=self.cfg.cameras.file_roots, video=self.decoders.video)
            cam.source = src
            self.sources[camera_id] = src
            if self.scheduler.running:
                src.start()
        return cam

    def remove_camera(self, camera_id: str) -> CameraState:
        """Unregister a camera: its reader stopped, waiting frames answered NOT_FOUND, its tracks and
        cached events dropped."""
        src = self.sources.pop(camera_id, None)
        if src is not None:
            src.stop()
        cam = self.scheduler.remove_camera(camera_id)
        self.recognizer.remove_camera(camera_id)
        self.recorder.forget_camera(camera_id)
        return cam

    def track(self, camera_id: str, track_id: int) -> TrackState | None:
        """Best-shot state of a live track (diagnostics and tests)."""
        return self.recognizer.track(camera_id, track_id)

    # ---- frames ----------------------------------------------------------------------------------
    def submit(self, job: FrameJob) -> None:
        """Queue a frame; if the camera's queue is full, the oldest waiting frame is dropped."""
        self.scheduler.submit(job)

    def submit_encoded(self, frame: EncodedFrame, reply: Reply | None) -> None:
        """Decode a gateway frame here (the configured JPEG decoder), then queue it."""
        t0 = time.perf_counter()
        try:
            image, scale, loader = decode_pipeline_frame(self.decoders.jpeg, frame.data, self.cfg)
        except InvalidImageError as exc:
            raise InvalidImageError(f"frame {frame.seq}: {exc}") from None
        self.metrics.stage_seconds.labels("decode").observe(time.perf_counter() - t0)
        self.scheduler.submit(FrameJob(frame.camera_id, frame.seq, frame.capture_time, image, reply, scale=scale,
                                       loader=loader))

    def pending(self) -> int:
        return self.scheduler.pending()

    def process(self, batch: list[tuple[CameraState, FrameJob]]) -> list[FrameOutcome]:
        """Process a batch now, on the caller's thread (the workers' code path, without tickets)."""
        return self.scheduler.process(batch)

    def start(self) -> None:
        """Start the worker threads and the pull cameras' readers."""
        if self.scheduler.running:
            return
        self.scheduler.start()
        for src in list(self.sources.values()):
            src.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop the readers, process what is queued (up to drain_s), stop the workers, end every track,
        close the bus."""
        for src in list(self.sources.values()):
            src.stop()
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

    def observe_tracks(self, observer: TrackObserver) -> None:
        self.recorder.observer = observer

    def describe(self) -> str:
        return f"local engine, decode {self.decoders.describe()}"


__all__ = ["DROP_POLICY", "CameraState", "Engine", "FaceOut", "FrameJob", "FrameOutcome", "TrackState", "_Dropped",
           "is_drop"]
