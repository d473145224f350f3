"""The per-camera video pipeline with cross-camera micro-batching.

Frames from every camera (gRPC-fed or pulled) wait in a small bounded queue per camera. Worker
threads take up to `batch_size` frames round-robin across cameras (waiting at most
`batch_wait_ms` to fill a batch), detect them in one model call, track faces per camera, score
quality, embed only best shots of all cameras in one call, search the gallery once, and raise
one event per (track, person), updated when its score rises.

Several workers may hold consecutive frames of one camera: they detect them at the same time
(on two cores), then track, embed and match them strictly in capture order (each batch holds a
per-camera ticket and waits for its turn after detection).

When a camera's queue is full the oldest waiting frame is dropped (newest wins) and counted.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from engine.config import Config
from engine.errors import AlreadyExistsError, FaceEngineError, InvalidArgumentError, NotFoundError
from engine.gallery.gallery import Gallery
from engine.metrics import EngineMetrics
from engine.store.base import MatchEvent
from engine.store.sqlite import SQLiteStore
from engine.video.bestshot import BestShotPolicy, TrackRegistry, TrackState
from engine.video.events import EventBus
from engine.video.quality import face_quality
from engine.video.tracker import FaceTracker
from engine.vision.analyzer import FaceAnalyzer
from engine.vision.detections import Detections

log = logging.getLogger(__name__)

DROP_POLICY = "drop-oldest (newest wins), per camera"


@dataclass
class FaceOut:
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    track_id: int = -1
    quality: float = 0.0
    match: MatchEvent | None = None


@dataclass
class FrameOutcome:
    camera_id: str
    seq: int
    faces: list[FaceOut] = field(default_factory=list)
    error: FaceEngineError | None = None
    latency_ms: float = 0.0
    capture_time: float = 0.0


Reply = Callable[[FrameOutcome], None]


@dataclass
class FrameJob:
    camera_id: str
    seq: int
    capture_time: float
    image: np.ndarray
    reply: Reply | None = None
    arrival: float = field(default_factory=time.monotonic)
    ticket: int = -1  # the camera's batch order, set by the workers (-1: process() called directly)
    scale: float = 1.0  # original pixels per `image` pixel (> 1 when a large JPEG was decoded reduced)
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)  # full-resolution decode
    _full: np.ndarray | None = field(default=None, repr=False)

    def full_image(self) -> np.ndarray:
        """The frame at its original resolution (decoded on first use when `image` is reduced)."""
        if self.loader is None:
            return self.image
        if self._full is None:
            try:
                self._full = self.loader()
            except FaceEngineError:  # the reduced decode worked: fall back to it, upscaled
                h, w = self.image.shape[:2]
                self._full = cv2.resize(self.image, (round(w * self.scale), round(h * self.scale)))
        return self._full


class RateMeter:
    """Events per second over a sliding window (for camera status)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window = window_s
        self.times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.times.append(now)
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        if len(self.times) < 2:
            return 0.0
        return len(self.times) / self.window


@dataclass
class CameraState:
    camera_id: str
    uri: str
    kind: str  # push | pull
    options: dict[str, str]
    queue: deque[FrameJob]
    tracker: FaceTracker
    tracks: TrackRegistry = field(default_factory=TrackRegistry)
    events: dict[tuple[int, str, str], MatchEvent] = field(default_factory=dict)
    frames_in: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    last_error: str = ""
    reconnects: int = 0
    state: str = "idle"
    last_frame_time: float = 0.0
    last_time: float = float("-inf")
    busy: bool = False  # some worker holds frames of this camera
    inflight: int = 0  # batches of this camera being processed (several workers detect ahead)
    tickets_issued: int = 0
    tickets_done: int = 0
    fps_in: RateMeter = field(default_factory=RateMeter)
    fps_out: RateMeter = field(default_factory=RateMeter)
    source: object | None = None


class Engine:
    """Owns the cameras' queues, the worker threads, the event bus and event persistence."""

    def __init__(self, cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery, store: SQLiteStore,
                 metrics: EngineMetrics | None = None) -> None:
        self.cfg = cfg
        self.analyzer = analyzer
        self.gallery = gallery
        self.store = store
        self.metrics = metrics or EngineMetrics()
        self.bus = EventBus()
        p = cfg.pipeline
        self.policy = BestShotPolicy(p.min_quality, p.reembed_margin, p.reembed_interval_s)
        self._cams: dict[str, CameraState] = {}
        self._events_lock = threading.Lock()  # cameras' live event caches: workers vs RemovePerson
        self.published: OrderedDict[str, float] = OrderedDict()  # event id -> `updated` this process sent
        self._order: deque[str] = deque()
        self._cv = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._running = False
        self._inflight = 0

    # ---- cameras -------------------------------------------------------------------------------
    def add_camera(self, camera_id: str, uri: str = "push", options: dict[str, str] | None = None) -> CameraState:
        if not camera_id or len(camera_id) > 128:
            raise InvalidArgumentError("camera id must be 1-128 characters")
        kind = "push" if uri in ("", "push", "push://") else "pull"
        p = self.cfg.pipeline
        cam = CameraState(camera_id, uri or "push", kind, dict(options or {}), deque(),
                          FaceTracker(max_age_s=p.track_max_age_s, high_score=max(self.cfg.detector.score_threshold,
                                                                                  0.6)))
        with self._cv:
            if camera_id in self._cams:
                raise AlreadyExistsError(f"camera {camera_id!r} already exists; remove it first")
            self._cams[camera_id] = cam
            self._order.append(camera_id)
        cam.state = "idle" if kind == "push" else "connecting"
        return cam

    def remove_camera(self, camera_id: str) -> CameraState:
        with self._cv:
            cam = self._cams.pop(camera_id, None)
            if cam is None:
                raise NotFoundError(f"camera {camera_id!r} not found")
            self._order.remove(camera_id)
            pending = list(cam.queue)
            cam.queue.clear()
        cam.state = "stopped"
        for job in pending:
            self._reply(job, FrameOutcome(job.camera_id, job.seq, error=NotFoundError("camera removed")))
        return cam

    def camera(self, camera_id: str) -> CameraState:
        cam = self._cams.get(camera_id)
        if cam is None:
            raise NotFoundError(f"camera {camera_id!r} not found; register it with AddCamera "
                                "(uri 'push' for a gateway camera)")
        return cam

    def cameras(self) -> list[CameraState]:
        with self._cv:
            return [self._cams[c] for c in self._order]

    # ---- ingest --------------------------------------------------------------------------------
    def submit(self, job: FrameJob) -> None:
        """Queue a frame; if the camera's queue is full, the oldest waiting frame is dropped."""
        cam = self.camera(job.camera_id)
        dropped: FrameJob | None = None
        with self._cv:
            cam.frames_in += 1
            cam.fps_in.tick()
            if len(cam.queue) >= max(1, self.cfg.pipeline.queue_size):
                dropped = cam.queue.popleft()
                cam.frames_dropped += 1
            cam.queue.append(job)
            self._cv.notify()
        self.metrics.frames_in.labels(job.camera_id).inc()
        if dropped is not None:
            self.metrics.frames_dropped.labels(job.camera_id).inc()
            self._reply(dropped, FrameOutcome(dropped.camera_id, dropped.seq,
                                              error=_Dropped(f"frame {dropped.seq} dropped: engine behind")))

    def pending(self) -> int:
        with self._cv:
            return sum(len(c.queue) for c in self._cams.values()) + self._inflight

    # ---- workers -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._running:
            return
        self._running = True
        for i in range(max(1, self.cfg.pipeline.workers)):
            t = threading.Thread(target=self._work, name=f"pipeline-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, drain_s: float = 5.0) -> None:
        """Process what is queued (up to drain_s), then stop the workers."""
        deadline = time.monotonic() + drain_s
        while self.pending() and time.monotonic() < deadline and self._running:
            time.sleep(0.02)
        self._running = False
        with self._cv:
            self._cv.notify_all()
        for t in self._workers:
            t.join(timeout=5)
        self._workers.clear()
        for cam in self.cameras():
            self._finish_tracks(cam, list(cam.tracks._states))
        self.bus.close()

    def _collect(self) -> list[tuple[CameraState, FrameJob]]:
        p = self.cfg.pipeline
        with self._cv:
            depth = max(1, p.workers)  # batches of one camera in flight at once (detection runs ahead)
            while self._running and not any(c.queue and c.inflight < depth for c in self._cams.values()):
                self._cv.wait(0.5)
            if not self._running:
                return []
            deadline = time.monotonic() + p.batch_wait_ms / 1000
            batch: list[tuple[CameraState, FrameJob]] = []
            mine: set[str] = set()  # cameras this worker owns for the batch (others skip them: order)
            # With several workers, leave a share of the ready cameras to the others: on CPU a big
            # batch is no cheaper per frame, but two workers run the models on two cores at once.
            workers = max(1, p.workers)
            ready = sum(1 for c in self._cams.values() if c.queue and c.inflight < depth)
            max_cams = max(1, -(-ready // workers)) if workers > 1 else len(self._order)
            while len(batch) < p.batch_size:
                taken = False
                for _ in range(len(self._order)):
                    cid = self._order[0]
                    self._order.rotate(-1)
                    cam = self._cams[cid]
                    if cam.queue and (cid in mine or (cam.inflight < depth and len(mine) < max_cams)):
                        job = cam.queue.popleft()
                        if cid not in mine:
                            cam.inflight += 1
                            cam.busy = True
                            mine.add(cid)
                            job.ticket = cam.tickets_issued
                            cam.tickets_issued += 1
                        else:
                            job.ticket = next(j.ticket for c, j in batch if c is cam)
                        batch.append((cam, job))
                        taken = True
                        if len(batch) >= p.batch_size:
                            break
                if taken:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            self._inflight += len(batch)
            for cam in self._cams.values():
                self.metrics.queue_depth.labels(cam.camera_id).set(len(cam.queue))
            return batch

    def _work(self) -> None:
        while self._running:
            batch = self._collect()
            if not batch:
                continue
            try:
                self.process(batch)
            except Exception as exc:  # a bug must not kill the worker: fail these frames, keep going
                log.exception("pipeline batch failed")
                err = exc if isinstance(exc, FaceEngineError) else FaceEngineError(f"internal error: {exc}")
                for _, job in batch:  # a typed error (e.g. StorageFullError) keeps its precise code
                    self._reply(job, FrameOutcome(job.camera_id, job.seq, error=err))
            finally:
                with self._cv:
                    self._wait_turn(batch)  # a failed batch still hands the turn on in order
                    for cam in {id(c): c for c, _ in batch}.values():
                        cam.tickets_done += 1
                        cam.inflight -= 1
                        cam.busy = cam.inflight > 0
                    self._inflight -= len(batch)
                    self._cv.notify_all()

    def _wait_turn(self, batch: list[tuple[CameraState, FrameJob]]) -> None:
        """Block (holding self._cv) until every earlier batch of the batch's cameras is done.

        Tickets are issued under one lock in collection order, so the oldest unfinished batch
        never waits for a newer one: no deadlock."""
        while True:
            if all(job.ticket < 0 or cam.tickets_done >= job.ticket for cam, job in batch):
                return
            self._cv.wait(1.0)

    # ---- processing ----------------------------------------------------------------------------
    def process(self, batch: list[tuple[CameraState, FrameJob]]) -> list[FrameOutcome]:
        """Run detection, tracking, best-shot embedding and matching for a batch of frames.

        Frames of one camera must come in capture order; they are tracked in that order."""
        m = self.metrics
        p = self.cfg.pipeline
        t0 = time.perf_counter()
        dets_list = self.analyzer.detector.detect_batch([job.image for _, job in batch])
        t1 = time.perf_counter()
        m.stage_seconds.labels("detect").observe(t1 - t0)
        m.batch_size.observe(len(batch))
        if any(job.ticket >= 0 for _, job in batch):  # from the workers: track in capture order
            with self._cv:
                self._wait_turn(batch)
            t1 = time.perf_counter()
        outcomes: list[FrameOutcome] = []
        crops: list[np.ndarray] = []
        owners: list[tuple[int, int, float]] = []  # (frame index, face index, quality)
        per_frame: list[tuple[Detections, np.ndarray, np.ndarray]] = []
        scheduled: set[tuple[str, int]] = set()  # tracks already being embedded in this batch
        for fi, ((cam, job), dets) in enumerate(zip(batch, dets_list, strict=True)):
            dets = _scaled(dets[: self.cfg.limits.max_faces_per_frame], job.scale)  # original coordinates
            t = job.capture_time
            if p.tracking:
                if t < cam.last_time:  # clock went back (source restarted): start tracking afresh
                    self._finish_tracks(cam, cam.tracker.reset())
                upd = cam.tracker.update(dets, t)
                dets = upd.dets
                self._finish_tracks(cam, upd.ended)
                track_ids = dets.extra["track_id"]
            else:
                track_ids = np.full(len(dets), -1, np.int64)
            cam.last_time = t
            quality = (face_quality(job.image, _scaled(dets, 1 / job.scale), p.min_face_size / job.scale)
                       if len(dets) else np.zeros(0, np.float32))
            per_frame.append((dets, track_ids, quality))
            m.faces.inc(len(dets))
            for k in range(len(dets)):
                if dets.sizes[k] < p.min_face_size or quality[k] < p.min_quality:
                    continue  # tiny or poor faces are tracked but never matched
                if p.tracking:
                    if track_ids[k] < 0:
                        continue
                    state = cam.tracks.get_or_create(int(track_ids[k]))
                    state.observe(float(quality[k]), t)
                    if (cam.camera_id, int(track_ids[k])) in scheduled or not self.policy.should_embed(
                            state, float(quality[k]), t):
                        continue
                    scheduled.add((cam.camera_id, int(track_ids[k])))
                crops.append(self.analyzer.aligner.align(job.full_image(), dets.landmarks[k]))
                owners.append((fi, k, float(quality[k])))
        t2 = time.perf_counter()
        m.stage_seconds.labels("align").observe(t2 - t1)
        matches: dict[tuple[int, int], MatchEvent] = {}
        if crops:
            embs = self.analyzer.embedder.embed(np.stack(crops))
            t3 = time.perf_counter()
            m.stage_seconds.labels("embed").observe(t3 - t2)
            m.embeddings.inc(len(crops))
            probes = []
            for (fi, k, q), emb in zip(owners, embs, strict=True):
                cam, job = batch[fi]
                if p.tracking:
                    tid = int(per_frame[fi][1][k])
                    state = cam.tracks.get_or_create(tid)
                    sim = state.similarity(emb)
                    if sim is not None and sim < 0.2:  # the tracker handed the track to another face
                        cam.tracks.drop([tid])
                        state = cam.tracks.get_or_create(tid)
                        state.observe(q, job.capture_time)
                    probes.append(state.add_embedding(emb, q, job.capture_time))
                else:
                    probes.append(emb)
            hits = self.gallery.search(np.stack(probes), top_k=1, threshold=self.cfg.gallery.match_threshold)
            t4 = time.perf_counter()
            m.stage_seconds.labels("search").observe(t4 - t3)
            for (fi, k, _q), hit in zip(owners, hits, strict=True):
                if hit:
                    cam, job = batch[fi]
                    dets, tids, _ = per_frame[fi]
                    ev = self._raise_event(cam, job, int(tids[k]), dets.boxes[k], hit[0])
                    if ev is not None:
                        matches[(fi, k)] = ev
        now = time.monotonic()
        for fi, (cam, job) in enumerate(batch):
            dets, tids, quality = per_frame[fi]
            faces = []
            for k in range(len(dets)):
                ev = matches.get((fi, k))
                if ev is None and tids[k] >= 0:
                    ev = self._track_event(cam, int(tids[k]))
                faces.append(FaceOut(dets.boxes[k], dets.landmarks[k], float(dets.scores[k]), int(tids[k]),
                                     float(quality[k]), ev))
            cam.frames_processed += 1
            cam.fps_out.tick(now)
            cam.last_frame_time = job.capture_time
            if cam.kind == "push":
                cam.state = "running"
            m.frames_processed.labels(cam.camera_id).inc()
            latency = now - job.arrival
            m.frame_latency.observe(latency)
            out = FrameOutcome(cam.camera_id, job.seq, faces, None, latency * 1000, job.capture_time)
            outcomes.append(out)
            self._reply(job, out)
        m.stage_seconds.labels("total").observe(time.perf_counter() - t0)
        return outcomes

    def _track_event(self, cam: CameraState, track_id: int) -> MatchEvent | None:
        best = None
        with self._events_lock:
            for (tid, _, _), ev in cam.events.items():
                if tid == track_id and (best is None or ev.score > best.score):
                    best = ev
        return best

    def _raise_event(self, cam: CameraState, job: FrameJob, track_id: int, box: np.ndarray, hit) -> MatchEvent | None:  # noqa: ANN001
        """One event per (track, person); re-sent as an update when its score rises."""
        if not self.gallery.has_template(hit.template_id):
            return None  # the person was removed while this batch was in flight: erased data stays erased
        key = (track_id, hit.watchlist, hit.person_id)
        with self._events_lock:
            ev = cam.events.get(key) if track_id >= 0 else None
        box_t = tuple(float(v) for v in box)
        if ev is not None and hit.score > ev.score + 1e-4:
            thumb = self._thumbnail(job.full_image(), box)
            ev.score, ev.box, ev.thumbnail = float(hit.score), box_t, thumb  # type: ignore[assignment]
            ev.timestamp, ev.frame_seq = job.capture_time, job.seq
            try:
                self.store.update_event(ev)
            except NotFoundError:  # purged by retention while the track lived on: record it afresh
                ev = None
            else:
                self.metrics.matches.labels("update").inc()
                self._publish(ev, True)
                return ev
        elif ev is not None:
            return ev
        ev = MatchEvent(uuid.uuid4().hex, cam.camera_id, job.capture_time, hit.watchlist, hit.person_id,
                        hit.display_name, float(hit.score), box_t, track_id, job.seq,  # type: ignore[arg-type]
                        self._thumbnail(job.full_image(), box))
        self.store.add_event(ev)
        if track_id >= 0:
            with self._events_lock:
                cam.events[key] = ev
        self.metrics.matches.labels("new").inc()
        self._publish(ev, False)
        return ev

    def _publish(self, ev: MatchEvent, update: bool) -> None:
        with self._events_lock:
            self.published[ev.event_id] = ev.updated
            self.published.move_to_end(ev.event_id)
            while len(self.published) > 10_000:
                self.published.popitem(last=False)
        self.bus.publish(ev, update)

    def relay(self, events: list[MatchEvent]) -> int:
        """Publish to local subscribers the events other processes wrote to the shared store."""
        n = 0
        for ev in events:
            with self._events_lock:
                mine = self.published.get(ev.event_id) == ev.updated
            if not mine:
                self.bus.publish(ev, ev.updated > ev.created + 1e-6)
                n += 1
        return n

    def forget_person(self, watchlist: str, person_id: str) -> None:
        """Drop live tracks' cached events of a removed person (they are erased from the store)."""
        with self._events_lock:
            for cam in self._cams.values():
                for key in [k for k in cam.events if k[1] == watchlist and k[2] == person_id]:
                    del cam.events[key]

    def _thumbnail(self, image: np.ndarray, box: np.ndarray) -> bytes:
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        x1, y1 = int(max(0, x1 - 0.2 * w)), int(max(0, y1 - 0.2 * h))
        x2, y2 = int(min(image.shape[1], x2 + 0.2 * w)), int(min(image.shape[0], y2 + 0.2 * h))
        crop = image[y1:y2, x1:x2]
        if crop.size == 0:
            return b""
        side = self.cfg.pipeline.thumbnail_size
        scale = side / max(crop.shape[:2])
        if scale < 1:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
        return buf.tobytes() if ok else b""

    def _finish_tracks(self, cam: CameraState, ended: list[int]) -> None:
        if not ended:
            return
        cam.tracks.drop(ended)
        gone = set(ended)
        with self._events_lock:
            for key in [k for k in cam.events if k[0] in gone]:
                del cam.events[key]

    def _reply(self, job: FrameJob, out: FrameOutcome) -> None:
        if job.reply is not None:
            try:
                job.reply(out)
            except Exception:  # a closed stream must not break the pipeline
                log.debug("reply for %s/%s failed", job.camera_id, job.seq, exc_info=True)


def _scaled(dets: Detections, scale: float) -> Detections:
    """Detections with boxes and landmarks multiplied by `scale` (no copy when it is 1)."""
    if scale == 1.0:
        return dets
    return Detections(dets.boxes * np.float32(scale), dets.landmarks * np.float32(scale), dets.scores, dets.extra)


class _Dropped(FaceEngineError):
    grpc_code = "RESOURCE_EXHAUSTED"


def is_drop(err: FaceEngineError | None) -> bool:
    return isinstance(err, _Dropped)


__all__ = ["DROP_POLICY", "CameraState", "Engine", "FaceOut", "FrameJob", "FrameOutcome", "TrackState", "is_drop"]
