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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.cluster.worker import FRAMES_GROUP, WireFrame, ray_worker_class, worker_config
from engine.config import Config
from engine.errors import (
    FaceEngineError,
    NotFoundError,
    UnavailableError,
)
from engine.metrics import EngineMetrics
from engine.store.base import MatchEvent
from engine.video.cameras import CameraPhase, CameraRegistry, CameraStatus
from engine.video.engine_api import EncodedFrame, Reply, VideoEngine
from engine.video.events import EventBus, PublishOnce
from engine.video.scheduler import FrameJob, _Dropped

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    frame: WireFrame
    reply: Callable[[Any], None] | None
    arrival: float = field(default_factory=time.monotonic)


@dataclass
class ClusterCamera(CameraStatus):
    """A camera as the front end sees it: status counters, its queue and the worker serving it."""

    queue: deque[_Pending] = field(default_factory=deque)  # type: ignore[assignment]
    worker: int = -1
    moves: int = 0  # times the camera moved to another worker after a failure


@dataclass
class _Worker:
    index: int
    handle: Any
    alive: bool = True
    failures: int = 0


def model_threads(cfg: Config, workers: int) -> tuple[int, int]:
    """(model threads the workers may run at once, intra-op threads a session): workers x frame calls a worker
    processes at once x intra-op threads, with `runtime.intra_op_threads = 0` sized as `worker_config` sizes it."""
    intra = cfg.runtime.intra_op_threads or max(1, int(cfg.cluster.cpus_per_worker))
    at_once = max(1, min(cfg.cluster.worker_threads, cfg.cluster.calls_per_worker))
    return workers * at_once * intra, intra


class ClusterEngine(VideoEngine):
    """Front-end engine that schedules cameras onto Ray worker actors (they decode and run frames)."""

    def __init__(self, cfg: Config, metrics: EngineMetrics | None = None, workers: list[Any] | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or EngineMetrics()
        self.bus = EventBus()
        self.publisher = PublishOnce(self.bus)
        self.published: OrderedDict[str, float] = self.publisher.published
        self.registry: CameraRegistry[ClusterCamera] = CameraRegistry(ClusterCamera, cfg.cameras.offline_after_s)
        self._cams = self.registry.by_id
        self._cv = self.registry.cv
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
        cls = ray_worker_class(c.worker_threads)
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
        self._check_thread_budget(ray)

    def _check_thread_budget(self, ray: Any) -> None:
        """Warn when the workers' model threads (workers x calls in flight x intra-op threads) exceed the
        CPUs Ray has: the extra threads contend for cores and every worker slows down."""
        c = self.cfg.cluster
        if c.gpus_per_worker > 0:
            return  # models run on GPUs; CPU threads are not the budget
        threads, intra = model_threads(self.cfg, len(self._workers))
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        if cpus and threads > cpus:
            log.warning("cluster: %d workers x %d frame calls at once x %d intra-op threads = %d model threads on "
                        "%g CPUs; lower cluster.worker_threads or runtime.intra_op_threads so they fit",
                        len(self._workers), min(c.worker_threads, c.calls_per_worker), intra, threads, cpus)

    def stats(self) -> dict[str, float]:
        """Cumulative counters for benchmarks (deltas over a window give rates): frames answered by a
        worker call, calls, queue_wait_s (frames' seconds queued here before their call, summed) and call_s
        (calls' round trips, summed: the worker's own time plus Ray's transfer and scheduling)."""
        with self._stats_lock:
            return dict(self._stats)

    def workers(self) -> list[Any]:
        """The worker actor handles (for benchmarks and tests)."""
        return [w.handle for w in self._workers]

    def live_workers(self) -> int:
        """Workers serving now (a failed one counts again once Ray has restarted it)."""
        return sum(1 for w in self._workers if w.alive)

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
        if cam.state is CameraPhase.ERROR:  # refused by the config: listed, never started
            return
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
            cam.set_state(CameraPhase.CONNECTING)

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
    def add_camera(self, camera_id: str, uri: str = "push", options: dict[str, str] | None = None,
                   error: str = "") -> ClusterCamera:
        cam = self.registry.add(camera_id, uri, options, error)
        if cam.kind == "pull":
            cam.fps_in.value = cam.fps_out.value = 0.0
        with self._cv:
            if self._running:
                self._assign(cam)
        return cam

    def remove_camera(self, camera_id: str) -> ClusterCamera:
        cam, pending = self.registry.remove(camera_id)
        if cam.worker >= 0 and self._workers:
            self._workers[cam.worker].handle.stop_camera.remote(camera_id)
        for p in pending:
            self._answer(p, self._outcome(p.frame, NotFoundError("camera removed")))
        return cam

    def refresh(self, cams: Sequence[CameraStatus]) -> None:
        """Pull cameras run inside their workers: read their counters from there (a Ray call, up to 2 s)."""
        self._refresh_pulls([c for c in cams if isinstance(c, ClusterCamera) and c.kind == "pull"])

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
                cam.set_state(cam.state, f"worker unreachable: {type(exc).__name__}")
                continue
            self._apply_status(cam, st)

    @staticmethod
    def _apply_status(cam: ClusterCamera, st: dict[str, Any]) -> None:
        cam.set_state(st["state"], st["last_error"])
        cam.reconnects = st["reconnects"]
        cam.frames_in, cam.frames_processed, cam.frames_dropped = (st["frames_in"], st["frames_processed"],
                                                                    st["frames_dropped"])
        cam.fps_in.value, cam.fps_out.value, cam.last_frame_time = st["fps_in"], st["fps_out"], st["last_frame_time"]

    # ---- ingest --------------------------------------------------------------------------------
    def submit_wire(self, frame: WireFrame, reply: Callable[[Any], None] | None) -> None:
        """Queue a frame for its camera's worker; a full queue drops its oldest frame (newest wins)."""
        cam = self.registry.get(frame.camera_id)
        dropped: _Pending | None = self.registry.enqueue(cam, _Pending(frame, reply), self.cfg.pipeline.queue_size)
        self.metrics.frames_in.labels(frame.camera_id).inc()
        if dropped is not None:
            self.metrics.frames_dropped.labels(frame.camera_id).inc()
            self._answer(dropped, self._outcome(dropped.frame,
                                                _Dropped(f"frame {dropped.frame.seq} dropped: engine behind")))

    def submit_encoded(self, frame: EncodedFrame, reply: Reply | None) -> None:
        """The gateway's compressed bytes go to the worker as received: it decodes them."""
        self.submit_wire(WireFrame(frame.camera_id, frame.seq, frame.capture_time, encoded=frame.data), reply)

    def submit(self, job: FrameJob) -> None:
        """A decoded frame (raw gateway pixels): sent as pixels."""
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
                    ref = w.handle.process.options(concurrency_group=FRAMES_GROUP).remote([p.frame for p in batch])
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
                        cam.set_state(CameraPhase.RUNNING)
                        self.metrics.frames_processed.labels(cam.camera_id).inc()
                        out.latency_ms = (now - p.arrival) * 1000
                        self.metrics.frame_latency.observe(now - p.arrival)
                        for face in out.faces:
                            if face.match is not None:
                                self._publish_once(face.match)
                    else:
                        cam.set_state(cam.state, str(out.error))
                    self._answer(p, out)
            finally:
                with self._cv:
                    cam.busy = False
                    self._inflight -= len(batch)
                    self._cv.notify_all()

    # ---- events ----------------------------------------------------------------------------------
    def _publish_once(self, ev: MatchEvent) -> None:
        """Publish a worker's event (new, or updated with a higher score) once to local subscribers."""
        update = ev.event_id in self.publisher.published
        if self.publisher.publish(ev, update):
            self.metrics.matches.labels("update" if update else "new").inc()

    def relay(self, events: list[MatchEvent]) -> int:
        """Publish events read from the store's change feed that no result brought here."""
        return self.publisher.relay(events)

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

    def describe(self) -> str:
        return f"cluster front end, {len(self._workers)} Ray workers (they decode and run frames)"

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
