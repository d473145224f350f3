"""Scheduling: camera registry, bounded queues, drops, cross-camera batches, workers, replies.

Frames from every camera (gRPC-fed or pulled) wait in a small bounded queue per camera. Worker
threads take up to `batch_size` frames round-robin across cameras (waiting at most
`batch_wait_ms` to fill a batch), have the recognizer detect them in one call, then recognise
them and hand the decisions to the recorder, and answer each frame's `reply`.

Several workers may hold consecutive frames of one camera: they detect them at the same time
(on two cores), then recognise and record them strictly in capture order (each batch holds a
per-camera ticket and waits for its turn after detection).

When a camera's queue is full the oldest waiting frame is dropped (newest wins), counted and
answered with RESOURCE_EXHAUSTED. The scheduler knows no models and no storage: it only calls
the two parts below.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engine.errors import FaceEngineError, NotFoundError
from engine.metrics import EngineMetrics
from engine.store.base import MatchEvent
from engine.video.cameras import CameraPhase, CameraRegistry, CameraStatus, RateMeter
from engine.video.recognizer import Frame, FrameRecognition
from engine.vision.detections import Detections

log = logging.getLogger(__name__)

DROP_POLICY = "drop-oldest (newest wins), per camera"
IDLE_WAIT_S = 0.5
"""Longest sleep of an idle worker before it re-checks `running` (bounds shutdown latency)."""
TURN_WAIT_S = 1.0
"""Re-check interval while a batch waits for its camera's turn (woken by notify in the normal case)."""
DRAIN_POLL_S = 0.02
"""How often `stop` checks whether the queues have drained (short: shutdown waits on it)."""
JOIN_TIMEOUT_S = 5.0
"""How long `stop` waits for each worker thread to exit."""


@dataclass
class FaceOut:
    """One face of a frame result (original pixels) with its event, if the face or its track matched."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    track_id: int = -1
    quality: float = 0.0
    match: MatchEvent | None = None


@dataclass
class FrameOutcome:
    """The answer for one submitted frame: faces, or an in-band error (drop, bad frame, removed camera)."""

    camera_id: str
    seq: int
    faces: list[FaceOut] = field(default_factory=list)
    error: FaceEngineError | None = None
    latency_ms: float = 0.0
    capture_time: float = 0.0


Reply = Callable[[FrameOutcome], None]


@dataclass
class FrameJob(Frame):
    """A queued frame: the frame plus how to answer it and its place in its camera's order."""

    reply: Reply | None = None
    arrival: float = field(default_factory=time.monotonic)
    ticket: int = -1  # the camera's batch order, set by the workers (-1: process() called directly)


@dataclass
class CameraState(CameraStatus):
    """A registered camera: its queue, counters and status (tracking state lives in the recognizer)."""

    queue: deque[FrameJob] = field(default_factory=deque)  # type: ignore[assignment]
    inflight: int = 0  # batches of this camera being processed (several workers detect ahead)
    tickets_issued: int = 0
    tickets_done: int = 0
    collecting: bool = False  # a worker is still filling a batch with this camera's frames (others skip it)
    source: object | None = None


class FrameRecognizer(Protocol):
    """What the scheduler asks of recognition (`Recognizer` provides it)."""

    def detect(self, frames: Sequence[Frame]) -> list[Detections]: ...
    def recognize(self, frames: Sequence[Frame], detections: Sequence[Detections]) -> list[FrameRecognition]: ...


class DecisionSink(Protocol):
    """Where decisions go (`EventRecorder` provides it): per face, the event to report or None."""

    def record(self, frame: Frame, rec: FrameRecognition) -> list[MatchEvent | None]: ...


@dataclass(frozen=True)
class SchedulerSettings:
    """Queue and batching policy (see `PipelineConfig` for each field's meaning); values below 1 count as 1."""

    queue_size: int = 8
    batch_size: int = 1
    batch_wait_ms: float = 0.0
    workers: int = 2


class Scheduler:
    """Owns the cameras' queues and the worker threads; calls the recognizer and the recorder."""

    def __init__(self, settings: SchedulerSettings, recognizer: FrameRecognizer, recorder: DecisionSink,
                 metrics: EngineMetrics | None = None) -> None:
        self.settings = settings
        self.recognizer = recognizer
        self.recorder = recorder
        self.metrics = metrics or EngineMetrics()
        self.registry: CameraRegistry[CameraState] = CameraRegistry(CameraState)
        self._cams = self.registry.by_id
        self._order = self.registry.order
        self._cv = self.registry.cv
        self._workers: list[threading.Thread] = []
        self._running = False
        self._inflight = 0

    @property
    def running(self) -> bool:
        return self._running

    # ---- cameras ---------------------------------------------------------------------------------
    def add_camera(self, camera_id: str, uri: str = "push", options: dict[str, str] | None = None,
                   error: str = "") -> CameraState:
        """Register a camera (uri "push" for gateway frames, anything else is pulled by a source)."""
        return self.registry.add(camera_id, uri, options, error)

    def remove_camera(self, camera_id: str) -> CameraState:
        """Unregister a camera; its waiting frames are answered NOT_FOUND."""
        cam, pending = self.registry.remove(camera_id)
        for job in pending:
            self._reply(job, FrameOutcome(job.camera_id, job.seq, error=NotFoundError("camera removed")))
        return cam

    def find(self, camera_id: str) -> CameraState | None:
        """The camera, or None if it is not registered."""
        return self.registry.find(camera_id)

    def cameras(self) -> list[CameraState]:
        return self.registry.all()

    # ---- ingest ----------------------------------------------------------------------------------
    def submit(self, job: FrameJob) -> None:
        """Queue a frame; if the camera's queue is full, the oldest waiting frame is dropped."""
        cam = self.registry.get(job.camera_id)
        dropped: FrameJob | None = self.registry.enqueue(cam, job, self.settings.queue_size)
        self.metrics.frames_in.labels(job.camera_id).inc()
        if dropped is not None:
            self.metrics.frames_dropped.labels(job.camera_id).inc()
            self._reply(dropped, FrameOutcome(dropped.camera_id, dropped.seq,
                                              error=_Dropped(f"frame {dropped.seq} dropped: engine behind")))

    def pending(self) -> int:
        """Frames queued or being processed."""
        with self._cv:
            return sum(len(c.queue) for c in self._cams.values()) + self._inflight

    # ---- workers ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._running:
            return
        self._running = True
        for i in range(max(1, self.settings.workers)):
            t = threading.Thread(target=self._work, name=f"pipeline-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, drain_s: float = 5.0) -> None:
        """Process what is queued (up to drain_s), then stop the workers."""
        deadline = time.monotonic() + drain_s
        while self.pending() and time.monotonic() < deadline and self._running:
            time.sleep(DRAIN_POLL_S)
        self._running = False
        with self._cv:
            self._cv.notify_all()
        for t in self._workers:
            t.join(timeout=JOIN_TIMEOUT_S)
        self._workers.clear()

    def _collect(self) -> list[tuple[CameraState, FrameJob]]:
        s = self.settings
        with self._cv:
            depth = max(1, s.workers)  # batches of one camera in flight at once (detection runs ahead)
            while self._running and not any(c.queue and c.inflight < depth and not c.collecting
                                            for c in self._cams.values()):
                self._cv.wait(IDLE_WAIT_S)
            if not self._running:
                return []
            deadline = time.monotonic() + s.batch_wait_ms / 1000
            batch: list[tuple[CameraState, FrameJob]] = []
            mine: set[str] = set()  # cameras this worker owns for the batch (others skip them: order)
            # With several workers, leave a share of the ready cameras to the others: on CPU a big
            # batch is no cheaper per frame, but two workers run the models on two cores at once.
            workers = max(1, s.workers)
            ready = sum(1 for c in self._cams.values() if c.queue and c.inflight < depth and not c.collecting)
            max_cams = max(1, -(-ready // workers)) if workers > 1 else len(self._order)
            batch_size = max(1, s.batch_size)
            while len(batch) < batch_size:
                taken = False
                for _ in range(len(self._order)):
                    cid = self._order[0]
                    self._order.rotate(-1)
                    cam = self._cams[cid]
                    # A camera another worker is still collecting is skipped: its later frames would
                    # otherwise land in two open batches at once, the earlier ticket getting later frames.
                    if cam.queue and (cid in mine or (cam.inflight < depth and len(mine) < max_cams
                                                      and not cam.collecting)):
                        job = cam.queue.popleft()
                        job.backlog = len(cam.queue)  # the recognizer raises the detection interval on it
                        if cid not in mine:
                            cam.inflight += 1
                            cam.busy = True
                            cam.collecting = True
                            mine.add(cid)
                            job.ticket = cam.tickets_issued
                            cam.tickets_issued += 1
                        else:
                            job.ticket = next(j.ticket for c, j in batch if c is cam)
                        batch.append((cam, job))
                        taken = True
                        if len(batch) >= batch_size:
                            break
                if taken:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            for cam, _ in batch:
                cam.collecting = False
            if mine:
                self._cv.notify_all()  # workers that skipped these cameras may take their next frames
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
            self._cv.wait(TURN_WAIT_S)

    # ---- one batch -------------------------------------------------------------------------------
    def process(self, batch: list[tuple[CameraState, FrameJob]]) -> list[FrameOutcome]:
        """Detect a batch, wait for its cameras' turn, recognise, record and answer each frame.

        Frames of one camera must come in capture order; they are recognised in that order."""
        t0 = time.perf_counter()
        jobs = [job for _, job in batch]
        dets = self.recognizer.detect(jobs)
        if any(job.ticket >= 0 for job in jobs):  # from the workers: recognise in capture order
            with self._cv:
                self._wait_turn(batch)
        recs = self.recognizer.recognize(jobs, dets)
        outcomes: list[FrameOutcome] = []
        m = self.metrics
        now = time.monotonic()
        record_s = 0.0
        for (cam, job), rec in zip(batch, recs, strict=True):
            tr = time.perf_counter()
            events = self.recorder.record(job, rec)
            record_s += time.perf_counter() - tr
            d = rec.detections
            faces = [FaceOut(d.boxes[k], d.landmarks[k], float(d.scores[k]), int(rec.track_ids[k]),
                             float(rec.quality[k]), events[k]) for k in range(len(d))]
            cam.frames_processed += 1
            cam.fps_out.tick(now)
            cam.last_frame_time = job.capture_time
            if cam.kind == "push":
                cam.set_state(CameraPhase.RUNNING)
            m.frames_processed.labels(cam.camera_id).inc()
            latency = now - job.arrival
            m.frame_latency.observe(latency)
            out = FrameOutcome(cam.camera_id, job.seq, faces, None, latency * 1000, job.capture_time)
            outcomes.append(out)
            self._reply(job, out)
        m.stage_seconds.labels("record").observe(record_s)
        m.stage_seconds.labels("total").observe(time.perf_counter() - t0)
        return outcomes

    def _reply(self, job: FrameJob, out: FrameOutcome) -> None:
        if job.reply is not None:
            try:
                job.reply(out)
            except Exception:  # a closed stream must not break the pipeline
                log.debug("reply for %s/%s failed", job.camera_id, job.seq, exc_info=True)


class _Dropped(FaceEngineError):
    grpc_code = "RESOURCE_EXHAUSTED"


def is_drop(err: FaceEngineError | None) -> bool:
    """True when a frame's error means the drop-oldest policy discarded it."""
    return isinstance(err, _Dropped)


__all__ = ["DROP_POLICY", "CameraState", "CameraStatus", "DecisionSink", "FaceOut", "FrameJob", "FrameOutcome",
           "FrameRecognizer", "RateMeter", "Scheduler", "SchedulerSettings", "is_drop"]
