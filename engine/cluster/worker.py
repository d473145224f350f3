"""A camera worker: one process holding its own models, a gallery replica and its cameras' tracking state.

In cluster mode Ray runs several of these as actors (`ray_worker_class`). The worker is a plain class so it
can be tested and profiled without Ray: frames come in as the compressed bytes a gateway sent (decoded
here, where they are processed), results go back as `FrameOutcome`s, matches are written to the shared
store by the worker's own event recorder.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.config import Config
from engine.errors import FaceEngineError, InvalidImageError

log = logging.getLogger(__name__)


@dataclass
class WireFrame:
    """One frame on its way to a worker: the gateway's compressed bytes, or raw BGR pixels."""

    camera_id: str
    seq: int
    capture_time: float
    encoded: bytes = b""
    raw: np.ndarray | None = None


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """What a worker process is started with: the user's overrides (`Config.overrides`), never values
    resolved on the front end's machine, so what is left to auto is chosen where the worker runs."""
    return cfg.overrides()


def config_from_front(cfg_data: dict[str, dict[str, Any]], worker_id: str = "worker") -> Config:
    """The worker's configuration: defaults, then the front end's overrides (its [cluster] section aside)."""
    cfg = Config.load(env={})
    cfg.update({k: v for k, v in cfg_data.items() if k != "cluster"}, source=f"cluster worker {worker_id}")
    return cfg


def worker_config(cfg: Config) -> dict[str, dict[str, Any]]:
    """What a worker actor is started with: the configuration, with `runtime.intra_op_threads = 0` (auto)
    sized to the worker's Ray CPUs rather than to half the machine's cores (the single-process default):
    N workers each running a half-the-cores session would put N/2 threads on every core, and the extra
    threads then slow every worker down instead of adding throughput."""
    data = config_to_dict(cfg)
    if cfg.runtime.intra_op_threads == 0:
        data.setdefault("runtime", {})["intra_op_threads"] = max(1, int(cfg.cluster.cpus_per_worker))
    return data


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class CameraWorker:
    """Runs the local engine (batching across this worker's cameras) on frames sent by a front end."""

    def __init__(self, cfg_data: dict[str, dict[str, Any]], worker_id: str = "worker") -> None:
        import faiss

        from engine.runtime import build_runtime
        from engine.video.decode import build_decoders
        from engine.video.pipeline import Engine

        # one search at a time per call, as in the server: OpenMP threads (one per core of the machine, in every
        # worker) only fight the model threads for cores (profiled on a busy 2-core machine: a worker's search
        # of a one-template watchlist took 21 ms of wall time with them; with one thread it left the profile)
        faiss.omp_set_num_threads(1)
        cfg = config_from_front(cfg_data, worker_id)
        self.cfg = cfg
        self.worker_id = worker_id
        # store (SQLite on one machine, PostgreSQL across machines), models, settings resolved on this machine
        rt = build_runtime(cfg, engine=False)
        self.store, self.analyzer, self.gallery, self.metrics = rt.store, rt.analyzer, rt.gallery, rt.metrics
        self.settings = rt.settings
        self.decoders = build_decoders(cfg.decode, cfg.runtime.device_id)  # this process's frames and cameras
        # the local engine itself (not through build_engine): the worker runs batches on it directly
        self.engine = Engine(cfg, self.analyzer, self.gallery, self.store, self.metrics, self.decoders, rt.settings)
        self.engine.start()
        # PostgreSQL pushes gallery changes (LISTEN/NOTIFY): enrolments reach this worker's FAISS replica
        # at once rather than at its next poll; SQLite never calls back and the poll stays
        self._unsubscribe = self.store.subscribe_changes(
            lambda what: self.gallery.sync(force=True) if what in ("gallery", "reconnect") else None)
        self._lock = threading.Lock()
        self._active = 0  # calls in progress; busy time accrues while any is
        self._busy_since = 0.0
        self._busy_s = self._call_s = 0.0
        self._calls = self._frames = 0
        self.started = time.time()
        log.info("cluster worker %s ready (pid %d, decode %s)", worker_id, os.getpid(), self.decoders.describe())

    # ---- frames ----------------------------------------------------------------------------------
    def process(self, frames: list[WireFrame]) -> list[Any]:
        """Decode and run one camera's frames (in capture order) through the engine; one FrameOutcome per
        frame, in order.

        The frames are processed in the calling thread as one batch (`Engine.process`): the front end
        sends one call per camera at a time, so order holds without the engine's queue, and each frame
        skips two thread hand-offs (measured: half the worker's CPU a frame with the fake runner and no
        faces, 0.84 -> 0.39 ms). Calls for different cameras run at once (the actor's concurrency)."""
        from engine.video.decode import decode_pipeline_frame
        from engine.video.pipeline import FrameJob, FrameOutcome

        t0 = time.perf_counter()
        with self._lock:
            self._active += 1
            if self._active == 1:
                self._busy_since = t0
        try:
            results: list[FrameOutcome | None] = [None] * len(frames)
            batch: list[tuple[Any, FrameJob]] = []
            slots: list[int] = []
            for i, f in enumerate(frames):
                try:
                    cam = self._ensure_camera(f.camera_id)
                    scale, loader = 1.0, None
                    if f.raw is not None:
                        image = f.raw
                    else:  # decoded here, with this process's decoders
                        image, scale, loader = decode_pipeline_frame(self.decoders.jpeg, f.encoded, self.cfg)
                    cam.frames_in += 1
                    batch.append((cam, FrameJob(f.camera_id, f.seq, f.capture_time, image, None, scale=scale,
                                                loader=loader)))
                    slots.append(i)
                except InvalidImageError as exc:
                    results[i] = FrameOutcome(f.camera_id, f.seq, error=InvalidImageError(f"frame {f.seq}: {exc}"))
                except FaceEngineError as exc:
                    results[i] = FrameOutcome(f.camera_id, f.seq, error=exc)
            if batch:
                try:
                    outs = self.engine.process(batch)
                except Exception as exc:  # noqa: BLE001 - fail these frames with a typed error, keep serving
                    log.exception("cluster worker %s: batch failed", self.worker_id)
                    err = exc if isinstance(exc, FaceEngineError) else FaceEngineError(f"internal error: {exc}")
                    outs = [FrameOutcome(job.camera_id, job.seq, error=err) for _, job in batch]
                for i, out in zip(slots, outs, strict=True):
                    results[i] = out
            return list(results)
        finally:
            t1 = time.perf_counter()
            with self._lock:
                self._calls += 1
                self._frames += len(frames)
                self._call_s += t1 - t0
                self._active -= 1
                if self._active == 0:
                    self._busy_s += t1 - self._busy_since

    def stats(self) -> dict[str, float]:
        """Cumulative counters for benchmarks (deltas over a window give rates and shares): calls, frames,
        call_s (seconds inside `process`, summed over calls), busy_s (wall seconds with a call in progress),
        cpu_s (this process's CPU time), at `wall` (time.perf_counter of this process)."""
        now = time.perf_counter()
        with self._lock:
            busy = self._busy_s + (now - self._busy_since if self._active else 0.0)
            return {"calls": self._calls, "frames": self._frames, "call_s": self._call_s, "busy_s": busy,
                    "cpu_s": time.process_time(), "wall": now}

    def _ensure_camera(self, camera_id: str) -> Any:
        """The engine's state of a pushed camera, added on its first frame."""
        cam = self.engine.find_camera(camera_id)
        if cam is not None:
            return cam
        with self._lock:
            cam = self.engine.find_camera(camera_id)
            return cam if cam is not None else self.engine.add_camera(camera_id, "push")

    # ---- pull cameras run where they are processed ----------------------------------------------
    def start_pull(self, camera_id: str, uri: str, options: dict[str, str]) -> None:
        """Read a pull camera (RTSP/HTTP/file) in this worker: its frames never cross a process boundary."""
        with self._lock:
            if not self.engine.has_camera(camera_id):
                self.engine.add_camera(camera_id, uri, options)  # the engine starts its reader

    def stop_camera(self, camera_id: str) -> None:
        try:
            self.engine.remove_camera(camera_id)
        except FaceEngineError:
            pass

    def camera_status(self, camera_id: str) -> dict[str, Any]:
        """Counters and state of one camera as this worker sees it."""
        cam = self.engine.camera(camera_id)
        return {"state": cam.state, "frames_in": cam.frames_in, "frames_processed": cam.frames_processed,
                "frames_dropped": cam.frames_dropped, "last_error": cam.last_error, "reconnects": cam.reconnects,
                "fps_in": cam.fps_in.rate(), "fps_out": cam.fps_out.rate(), "last_frame_time": cam.last_frame_time}

    # ---- gallery and lifecycle -------------------------------------------------------------------
    def forget_person(self, watchlist: str, person_id: str) -> None:
        """A person was erased: drop live caches and see the gallery change at once."""
        self.engine.forget_person(watchlist, person_id)
        self.gallery.sync(force=True)

    def info(self) -> dict[str, Any]:
        """Who this worker is and what it holds (benchmarks read RSS from here)."""
        import socket

        node = ""
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except ImportError:  # plain use without Ray
            pass
        return {"node_id": node, "worker_id": self.worker_id, "pid": os.getpid(), "host": socket.gethostname(),
                "rss": rss_bytes(), "gallery_templates": self._gallery_size(),
                "cameras": [c.camera_id for c in self.engine.cameras()], "provider": _provider(self.analyzer),
                "decoders": self.decoders.info(),
                "uptime_s": time.time() - self.started}

    def _gallery_size(self) -> int:
        """Templates in this worker's gallery replica, after catching up with the store."""
        self.gallery.sync(force=True)
        return len(self.gallery)

    def ping(self) -> bool:
        return True

    def shutdown(self) -> None:
        for cid in self.engine.camera_ids():
            self.stop_camera(cid)
        self.engine.stop(drain_s=2.0)
        self._unsubscribe()
        self.store.close()


def _provider(analyzer: Any) -> str:
    """The provider the analyzer's models run on (the analyzer answers; its members are not asked)."""
    prov = getattr(analyzer, "provider", None)
    return prov if isinstance(prov, str) else "unknown"


FRAMES_GROUP = "frames"
"""The actor's concurrency group for frame calls (`process`); status, info and control calls run apart."""


def ray_worker_class(frame_threads: int = 1) -> Any:
    """`CameraWorker` as a Ray actor class, restarted by Ray: `frame_threads` frame calls run at once (the
    `frames` concurrency group; calls beyond it queue in Ray with their frames transferred), control calls
    (ping, status, info, pull cameras) on their own threads so they never wait behind frames."""
    import ray

    return ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=8,
                      concurrency_groups={FRAMES_GROUP: max(1, frame_threads)})(CameraWorker)
