"""`ClusterEngine`: the front end's engine in cluster mode.

It offers the local `Engine`'s camera/ingest/event surface to the gRPC servicers, but runs no models: each
camera is served by one Ray worker actor (`engine.cluster.worker.CameraWorker`) that holds its tracking
state. Frames travel to the worker as the compressed bytes the gateway sent, a camera's frames in order
(one call per camera in flight), several cameras' calls at once per worker. Matches come back with the
results and are published to this front end's live subscribers; other front ends see them through the
store's change feed (`relay`).

When a worker dies, the frames in flight get UNAVAILABLE, its cameras move to a live worker (tracks start
afresh there) and Ray restarts the dead actor, which then takes new cameras again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.cluster.worker import WireFrame, ray_worker_class, worker_config
from engine.config import Config
from engine.errors import (
    AlreadyExistsError,
    FaceEngineError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from engine.metrics import EngineMetrics
from engine.store.base import MatchEvent
from engine.video.events import EventBus
from engine.video.scheduler import CameraStatus, _Dropped
from engine.video.scheduler import RateMeter as SchedulerRateMeter

log = logging.getLogger(__name__)


class RateMeter(SchedulerRateMeter):
    """The scheduler's sliding-window rate, or the figure a worker reported (pull cameras run there)."""

    def __init__(self) -> None:
        super().__init__()
        self.value: float | None = None

    def rate(self) -> float:
        return self.value if self.value is not None else super().rate()


@dataclass
class _Pending:
    frame: WireFrame
    reply: Callable[[Any], None] | None
    arrival: float = field(default_factory=time.monotonic)


@dataclass
class ClusterCamera(CameraStatus):
    """A camera as the front end sees it: status counters, its queue and the worker serving it."""

    queue: deque[_Pending] = field(default_factory=deque)
    worker: int = -1
    fps_in: RateMeter = field(default_factory=RateMeter)
    fps_out: RateMeter = field(default_factory=RateMeter)
    moves: int = 0  # times the camera moved to another worker after a failure


@dataclass
class _Worker:
    index: int
    handle: Any
    alive: bool = True
    failures: int = 0


class ClusterEngine:
    """Front-end engine that schedules cameras onto Ray worker actors."""

    remote_decode = True  # the servicer hands compressed frames over as they came

    def __init__(self, cfg: Config, metrics: EngineMetrics | None = None, workers: list[Any] | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or EngineMetrics()
        self.bus = EventBus()
        self.published: OrderedDict[str, float] = OrderedDict()
        self._cams: dict[str, ClusterCamera] = {}
        self._cv = threading.Condition()
        self._events_lock = threading.Lock()
        self._given = workers
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._running = False
        self._inflight = 0
        self._stats = {"frames": 0, "calls": 0, "queue_wait_s": 0.0, "call_s": 0.0}
        self._stats_lock = threading.Lock()

    # ---- workers ---------------------------------------------------------------------------------
    def _spawn(self) -> list[Any]:
        c = self.cfg.cluster
        cls = ray_worker_class()
        data = worker_config(self.cfg)  # model threads sized to the worker's CPUs
        opts: dict[str, Any] = {"num_cpus": c.cpus_per_worker}
        if c.gpus_per_worker > 0:
            opts["num_gpus"] = c.gpus_per_worker
        return [cls.options(**opts).remote(data, f"worker-{i}") for i in range(max(1, c.workers))]

    def start(self) -> None:
        """Start (or adopt) the worker actors, wait until they have loaded their models, start dispatching."""
        if self._running:
            return
        import ray

        handles = self._given if self._given is not None else self._spawn()
        try:
            ray.get([h.ping.remote() for h in handles], timeout=max(60.0, self.cfg.cluster.call_timeout_s * 4))
        except Exception as exc:  # noqa: BLE001 - any failure here means the cluster cannot serve
            raise UnavailableError(f"cluster workers did not start: {exc}") from None
        self._workers = [_Worker(i, h) for i, h in enumerate(handles)]
        self._running = True
        for w in self._workers:
            for k in range(max(1, self.cfg.cluster.calls_per_worker)):
                t = threading.Thread(target=self._dispatch, args=(w,), name=f"cluster-{w.index}-{k}", daemon=True)
                t.start()
                self._threads.append(t)
        with self._cv:
            for cam in self._cams.values():
                if cam.worker < 0:
                    self._assign(cam)
        log.info("cluster: %d workers serving", len(self._workers))

    def stats(self) -> dict[str, float]:
        """Cumulative counters for benchmarks (deltas over a window give rates): frames answered by a
        worker call, calls, queue_wait_s (frames' seconds queued here before their call, summed) and call_s
        (calls' round trips, summed: the worker's own time plus Ray's transfer and scheduling)."""
        with self._stats_lock:
            return dict(self._stats)

    def workers(self) -> list[Any]:
        """The worker actor handles (for benchmarks and tests)."""
        return [w.handle for w in self._workers]

    def worker_info(self) -> list[dict[str, Any]]:
        """Each live worker's pid, host, RSS and cameras."""
        import ray

        out = []
        for w in self._workers:
            try:
                info = ray.get(w.handle.info.remote(), timeout=10)
            except Exception as exc:  # noqa: BLE001 - a dead worker is reported, not raised
                info = {"worker_id": f"worker-{w.index}", "error": str(exc)}
            out.append(info)
        return out

    def _assign(self, cam: ClusterCamera) -> None:
        """Give the camera to the live worker with the fewest cameras (holding self._cv)."""
        live = [w for w in self._workers if w.alive]
        if not live:
            cam.worker = -1
            return
        load = {w.index: 0 for w in live}
        for c in self._cams.values():
            if c.worker in load and c is not cam:
                load[c.worker] += 1
        cam.worker = min(load, key=lambda i: (load[i], i))
        if cam.kind == "pull":
            h = self._workers[cam.worker].handle
            h.start_pull.remote(cam.camera_id, cam.uri, cam.options)
            cam.state = "connecting"

    def _fail_worker(self, w: _Worker, exc: BaseException) -> None:
        """A worker call failed at the Ray level: move its cameras, watch for its restart."""
        with self._cv:
            if not w.alive:
                return
            w.alive = False
            w.failures += 1
            moved = [c for c in self._cams.values() if c.worker == w.index]
            for cam in moved:
                cam.worker = -1
                cam.moves += 1
                self._assign(cam)
            self._cv.notify_all()
        log.warning("cluster: worker %d failed (%s); %d cameras moved", w.index, type(exc).__name__, len(moved))
        threading.Thread(target=self._await_restart, args=(w,), name=f"cluster-revive-{w.index}",
                         daemon=True).start()

    def _await_restart(self, w: _Worker) -> None:
        import ray

        while self._running:
            try:
                ray.get(w.handle.ping.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - still restarting
                time.sleep(0.5)
                continue
            with self._cv:
                w.alive = True
                for cam in self._cams.values():
                    if cam.worker < 0:
                        self._assign(cam)
                self._cv.notify_all()
            log.info("cluster: worker %d is back", w.index)
            return

    # ---- cameras -------------------------------------------------------------------------------
    def add_camera(self, camera_id: str, uri: str = "push", options: dict[str, str] | None = None) -> ClusterCamera:
        if not camera_id or len(camera_id) > 128:
            raise InvalidArgumentError("camera id must be 1-128 characters")
        kind = "push" if uri in ("", "push", "push://") else "pull"
        cam = ClusterCamera(camera_id, uri or "push", kind, dict(options or {}))
        with self._cv:
            if camera_id in self._cams:
                raise AlreadyExistsError(f"camera {camera_id!r} already exists; remove it first")
            self._cams[camera_id] = cam
            if self._running:
                self._assign(cam)
        if kind == "pull":
            cam.fps_in.value = cam.fps_out.value = 0.0
        return cam

    def remove_camera(self, camera_id: str) -> ClusterCamera:
        with self._cv:
            cam = self._cams.pop(camera_id, None)
            if cam is None:
                raise NotFoundError(f"camera {camera_id!r} not found")
            pending = list(cam.queue)
            cam.queue.clear()
        cam.state = "stopped"
        if cam.worker >= 0 and self._workers:
            self._workers[cam.worker].handle.stop_camera.remote(camera_id)
        for p in pending:
            self._answer(p, self._outcome(p.frame, NotFoundError("camera removed")))
        return cam

    def camera(self, camera_id: str, live: bool = True) -> ClusterCamera:
        """The camera from this front end's table, or NotFoundError with the fix. `live` reads a pull
        camera's counters from the worker that runs it (a Ray call, up to 2 s): status queries only; the
        ingest path passes live=False, since kind and URI are known here."""
        cam = self._cams.get(camera_id)
        if cam is None:
            raise NotFoundError(f"camera {camera_id!r} not found; register it with AddCamera "
                                "(uri 'push' for a gateway camera)")
        if live and cam.kind == "pull":
            self._refresh_pulls([cam])
        return cam

    def cameras(self) -> list[ClusterCamera]:
        with self._cv:
            cams = list(self._cams.values())
        self._refresh_pulls([c for c in cams if c.kind == "pull"])
        return cams

    def has_camera(self, camera_id: str) -> bool:
        return camera_id in self._cams

    def find_camera(self, camera_id: str) -> ClusterCamera | None:
        """The camera (last known counters, no worker call), or None if this front end does not run it."""
        return self._cams.get(camera_id)

    def camera_ids(self) -> list[str]:
        with self._cv:
            return list(self._cams)

    def _refresh_pulls(self, cams: list[ClusterCamera]) -> None:
        """Pull cameras run inside their workers: read their status from there. Every call is sent
        first, then all are awaited under one 2 s deadline: one round trip for a long camera list."""
        cams = [c for c in cams if 0 <= c.worker < len(self._workers)]
        if not cams:
            return
        import ray

        refs = [self._workers[c.worker].handle.camera_status.remote(c.camera_id) for c in cams]
        deadline = time.monotonic() + 2.0
        for cam, ref in zip(cams, refs, strict=True):
            try:
                st = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - report, don't fail a status read
                cam.last_error = f"worker unreachable: {type(exc).__name__}"
                continue
            self._apply_status(cam, st)

    @staticmethod
    def _apply_status(cam: ClusterCamera, st: dict[str, Any]) -> None:
        cam.state, cam.last_error, cam.reconnects = st["state"], st["last_error"], st["reconnects"]
        cam.frames_in, cam.frames_processed, cam.frames_dropped = (st["frames_in"], st["frames_processed"],
                                                                    st["frames_dropped"])
        cam.fps_in.value, cam.fps_out.value, cam.last_frame_time = st["fps_in"], st["fps_out"], st["last_frame_time"]

    # ---- ingest --------------------------------------------------------------------------------
    def submit_wire(self, frame: WireFrame, reply: Callable[[Any], None] | None) -> None:
        """Queue a frame for its camera's worker; a full queue drops its oldest frame (newest wins)."""
        cam = self.camera(frame.camera_id, live=False)
        dropped: _Pending | None = None
        with self._cv:
            cam.frames_in += 1
            cam.fps_in.tick()
            if len(cam.queue) >= max(1, self.cfg.pipeline.queue_size):
                dropped = cam.queue.popleft()
                cam.frames_dropped += 1
            cam.queue.append(_Pending(frame, reply))
            self._cv.notify_all()
        self.metrics.frames_in.labels(frame.camera_id).inc()
        if dropped is not None:
            self.metrics.frames_dropped.labels(frame.camera_id).inc()
            self._answer(dropped, self._outcome(dropped.frame,
                                                _Dropped(f"frame {dropped.frame.seq} dropped: engine behind")))

    def submit(self, job: Any) -> None:
        """A decoded frame (from code that decodes itself): sent as raw pixels."""
        self.submit_wire(WireFrame(job.camera_id, job.seq, job.capture_time, raw=job.image), job.reply)

    def pending(self) -> int:
        with self._cv:
            return sum(len(c.queue) for c in self._cams.values()) + self._inflight

    def _take(self, w: _Worker) -> tuple[ClusterCamera, list[_Pending]] | None:
        """Wait for a camera of this worker with frames and no call in flight; take its frames."""
        with self._cv:
            while self._running:
                if w.alive:
                    for cam in self._cams.values():
                        if cam.worker == w.index and cam.queue and not cam.busy:
                            n = max(1, self.cfg.cluster.frames_per_call)
                            batch = [cam.queue.popleft() for _ in range(min(n, len(cam.queue)))]
                            cam.busy = True
                            self._inflight += len(batch)
                            return cam, batch
                self._cv.wait(0.5)
        return None

    def _dispatch(self, w: _Worker) -> None:
        import ray

        while self._running:
            got = self._take(w)
            if got is None:
                return
            cam, batch = got
            try:
                try:
                    sent = time.monotonic()
                    ref = w.handle.process.remote([p.frame for p in batch])
                    outs = ray.get(ref, timeout=self.cfg.cluster.call_timeout_s + 5)
                    back = time.monotonic()
                    with self._stats_lock:
                        st = self._stats
                        st["frames"] += len(batch)
                        st["calls"] += 1
                        st["call_s"] += back - sent
                        st["queue_wait_s"] += sum(sent - p.arrival for p in batch)
                except Exception as exc:  # noqa: BLE001 - Ray errors: the worker died or hangs
                    self._fail_worker(w, exc)
                    err = UnavailableError(f"worker {w.index} failed while processing; camera "
                                           f"{cam.camera_id!r} moved to another worker: resend")
                    outs = [self._outcome(p.frame, err) for p in batch]
                now = time.monotonic()
                for p, out in zip(batch, outs, strict=True):
                    if out.error is None:
                        cam.frames_processed += 1
                        cam.fps_out.tick(now)
                        cam.last_frame_time = p.frame.capture_time
                        cam.state = "running"
                        self.metrics.frames_processed.labels(cam.camera_id).inc()
                        out.latency_ms = (now - p.arrival) * 1000
                        self.metrics.frame_latency.observe(now - p.arrival)
                        for face in out.faces:
                            if face.match is not None:
                                self._publish_once(face.match)
                    else:
                        cam.last_error = str(out.error)
                    self._answer(p, out)
            finally:
                with self._cv:
                    cam.busy = False
                    self._inflight -= len(batch)
                    self._cv.notify_all()

    # ---- events ----------------------------------------------------------------------------------
    def _publish_once(self, ev: MatchEvent) -> None:
        """Publish a worker's event (new, or updated with a higher score) once to local subscribers."""
        with self._events_lock:
            if self.published.get(ev.event_id) == ev.updated:
                return
            update = ev.event_id in self.published
            self.published[ev.event_id] = ev.updated
            self.published.move_to_end(ev.event_id)
            while len(self.published) > 10_000:
                self.published.popitem(last=False)
        self.metrics.matches.labels("update" if update else "new").inc()
        self.bus.publish(ev, update)

    def relay(self, events: list[MatchEvent]) -> int:
        """Publish events read from the store's change feed that no result brought here."""
        n = 0
        for ev in events:
            with self._events_lock:
                known = self.published.get(ev.event_id) == ev.updated
            if not known:
                self._publish_once(ev)
                n += 1
        return n

    def forget_person(self, watchlist: str, person_id: str) -> None:
        """Tell every worker to drop live caches of an erased person."""
        for w in self._workers:
            if w.alive:
                w.handle.forget_person.remote(watchlist, person_id)

    # ---- lifecycle -------------------------------------------------------------------------------
    def stop(self, drain_s: float = 5.0) -> None:
        deadline = time.monotonic() + drain_s
        while self.pending() and time.monotonic() < deadline and self._running:
            time.sleep(0.02)
        self._running = False
        with self._cv:
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if self._given is None and self._workers:
            import ray

            for w in self._workers:
                try:
                    ray.get(w.handle.shutdown.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                ray.kill(w.handle, no_restart=True)
        self.bus.close()

    @staticmethod
    def _outcome(frame: WireFrame, err: FaceEngineError) -> Any:
        from engine.video.pipeline import FrameOutcome

        return FrameOutcome(frame.camera_id, frame.seq, error=err)

    @staticmethod
    def _answer(p: _Pending, out: Any) -> None:
        if p.reply is not None:
            try:
                p.reply(out)
            except Exception:  # a closed stream must not break dispatching
                log.debug("reply for %s/%s failed", p.frame.camera_id, p.frame.seq, exc_info=True)
