"""`FaceEngineServer`: builds the engine from a Config and serves it over gRPC, with health
checking, reflection, a Prometheus endpoint and graceful shutdown that flushes events."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent import futures

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.app.watchlists import WatchlistService
from engine.config import Config
from engine.errors import ConfigError, InvalidArgumentError
from engine.gallery.gallery import Gallery
from engine.metrics import EngineMetrics
from engine.retention import RetentionWorker
from engine.runtime import build_engine
from engine.service import validate
from engine.service.auth import AdminServicer, AuthInterceptor
from engine.service.interceptors import ErrorCountInterceptor
from engine.service.proto import pb, rpc, spb, srpc
from engine.service.servicers import (
    CamerasServicer,
    IngestServicer,
    MatchesServicer,
    StreamSlots,
    WatchlistsServicer,
)
from engine.service.sightings_servicer import SightingsServicer
from engine.service.tls import is_loopback, server_credentials
from engine.settings import Settings
from engine.sightings.service import Sightings
from engine.store import open_store
from engine.store.sqlite import damaged
from engine.video.cameras import CameraStatus
from engine.video.decode import Decoders
from engine.video.engine_api import VideoEngine
from engine.video.recorder import EventRecorder, RecorderSettings
from engine.vision.analyzer import FaceAnalyzer

log = logging.getLogger(__name__)
SERVICES = ("Ingest", "Cameras", "Watchlists", "Matches", "Admin", "Sightings")


def _service_name(short: str) -> str:
    """Full name of one of SERVICES (the Sightings service has its own proto file)."""
    desc = spb.DESCRIPTOR if short == "Sightings" else pb.DESCRIPTOR
    return desc.services_by_name[short].full_name


class FaceEngineServer:
    def __init__(self, cfg: Config, analyzer: FaceAnalyzer | None = None,
                 interceptors: list[grpc.ServerInterceptor] | None = None,
                 credentials: grpc.ServerCredentials | None = None, decoders: Decoders | None = None) -> None:
        """`decoders` (default: built from `[decode]`) decode gateway JPEG frames and pull cameras."""
        self.cfg = cfg
        # one query at a time per caller: OpenMP threads in faiss only fight the model threads for cores
        faiss.omp_set_num_threads(1)
        if not cfg.auth.enabled and not is_loopback(cfg.server.host):
            raise ConfigError(f"refusing to serve on {cfg.server.host!r} with auth.enabled=false: without tokens "
                              "the API is open; bind to 127.0.0.1 (e.g. `faceengine serve --dev`) or enable auth")
        if cfg.limits.capture_time_policy not in ("refuse", "clamp"):
            raise ConfigError(f"limits.capture_time_policy = {cfg.limits.capture_time_policy!r}: use refuse or clamp")
        credentials = credentials or server_credentials(cfg.tls)
        if cfg.cluster.address:  # fail fast on a wrong Ray address, before anything is opened
            from engine.cluster.runtime import connect

            connect(cfg.cluster.address, cfg.cluster.connect_timeout_s)
        self.metrics = EngineMetrics()
        # a damaged SQLite file: StoreDamagedError saying what to do
        self.store = open_store(cfg.store.target(), cfg.store)
        try:
            # start-up consistency check (index rebuild first, refusal if still damaged, every change audited)
            fixed = self.store.repair()
            if any(fixed.values()):
                log.warning("store consistency check repaired %s (each change is in the audit log, action "
                            "store.repair)", fixed)
            self.auth = AuthInterceptor(self.store, cfg.auth, max_metadata_bytes=cfg.limits.max_metadata_bytes)
            self.analyzer = analyzer or FaceAnalyzer.from_config(cfg)
            self.gallery = Gallery(self.store, self.analyzer.dim, self.analyzer.model_name, cfg.gallery.index)
        except sqlite3.DatabaseError as exc:  # pages damaged past the header: same advice, no traceback
            self.store.close()
            raise damaged(cfg.store.target(), exc) from exc
        except BaseException:
            self.store.close()
            raise
        self.slots = StreamSlots(cfg.server)
        self.watchlists = WatchlistService(cfg, self.analyzer, self.gallery, self.store)
        self.settings = Settings.for_analyzer(cfg, self.analyzer)  # resolved once; cfg stays as written
        self.settings.log()
        self.engine: VideoEngine = build_engine(self.settings, self.analyzer, self.gallery, self.store, self.metrics,
                                                decoders)
        self.sightings: Sightings | None = None
        if cfg.sightings.enabled:  # every track's best shot kept: a policy decision, off by default
            thumbnail = EventRecorder(self.store, self.engine.bus, RecorderSettings.from_config(cfg)).thumbnail
            self.sightings = Sightings(cfg, self.store, self.analyzer.dim, self.analyzer.model_name,
                                       thumbnail, self.analyzer.embedder.spec)
            self.engine.observe_tracks(self.sightings.recorder)  # ConfigError where the engine cannot
            log.info("sightings on: %d loaded into the search index", self.sightings.load())
        self.retention = RetentionWorker(self.store, cfg.retention,
                                         self.sightings.purge_expired if self.sightings is not None else None)
        self.running = False
        self._stopped = threading.Event()
        self._relay_wake = threading.Event()
        self._unsubscribe: Callable[[], None] | None = None
        lim = cfg.limits.max_message_bytes
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.server.max_workers, thread_name_prefix="grpc"),
            # the error counter outermost: it also sees the refusals auth makes before a servicer runs
            interceptors=[ErrorCountInterceptor(self.metrics.rpc_errors), self.auth, *(interceptors or [])],
            options=[("grpc.max_receive_message_length", lim), ("grpc.max_send_message_length", lim),
                     ("grpc.so_reuseport", 0),
                     # metadata up to 4x the engine's limit reaches the interceptors, which audit, throttle and
                     # refuse it; gRPC's own soft limit refused a random share of such calls unseen
                     ("grpc.max_metadata_size", 4 * cfg.limits.max_metadata_bytes),
                     ("grpc.absolute_max_metadata_size", 4 * cfg.limits.max_metadata_bytes)],
            maximum_concurrent_rpcs=cfg.server.max_workers * 4,
        )
        rpc.add_IngestServicer_to_server(IngestServicer(self), self.grpc)
        rpc.add_CamerasServicer_to_server(CamerasServicer(self), self.grpc)
        rpc.add_WatchlistsServicer_to_server(WatchlistsServicer(self), self.grpc)
        rpc.add_MatchesServicer_to_server(MatchesServicer(self), self.grpc)
        rpc.add_AdminServicer_to_server(AdminServicer(self.store), self.grpc)
        srpc.add_SightingsServicer_to_server(SightingsServicer(self), self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = [_service_name(s) for s in SERVICES]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc)
        addr = f"{cfg.server.host}:{cfg.server.port}"
        self.port = (self.grpc.add_secure_port(addr, credentials) if credentials
                     else self.grpc.add_insecure_port(addr))
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {addr}")
        self.address = f"{'127.0.0.1' if cfg.server.host in ('0.0.0.0', '::', '') else cfg.server.host}:{self.port}"

    # ---- cameras (engine + persistence + pull threads) -----------------------------------------
    def add_camera(self, camera_id: str, uri: str, options: dict[str, str], persist: bool = True) -> CameraStatus:
        """Validate (URI policy, options, limits), register, save (persist) and start a camera.

        A new camera that fails validation raises InvalidArgumentError and nothing is saved; a saved
        one (persist=False, at start-up) is listed in state 'error' with the reason, never started."""
        try:
            validate.camera(camera_id, uri, options, self.cfg)
        except InvalidArgumentError as exc:
            if persist:
                raise
            log.error("camera %s not started: %s", camera_id, exc)
            return self.engine.add_camera(camera_id, uri, options,
                                          error=f"{exc}; fix the camera (remove and add it again) or the config")
        cam = self.engine.add_camera(camera_id, uri, options)
        if persist:
            self.store.save_camera(camera_id, cam.uri, cam.options)
        return cam

    def remove_camera(self, camera_id: str) -> None:
        self.engine.remove_camera(camera_id)
        self.store.delete_camera(camera_id)

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FaceEngineServer:
        for cid, uri, opts in self.store.list_camera_defs():  # cameras survive restarts
            if not self.engine.has_camera(cid):
                try:
                    self.add_camera(cid, uri, opts, persist=False)
                except Exception as exc:  # noqa: BLE001 - one bad saved camera never stops the server
                    log.error("saved camera %r not loaded: %s", cid[:128], exc)
        self.engine.start()
        self.running = True
        if self.sightings is not None:
            self.sightings.start()
        self.grpc.start()
        self.retention.start()
        if self.cfg.server.event_relay_s > 0:
            threading.Thread(target=self._relay_events, name="event-relay", daemon=True).start()
        threading.Thread(target=self._watch_storage, name="storage-health", daemon=True).start()
        self._unsubscribe = self.store.subscribe_changes(self._on_store_change)  # PostgreSQL: pushed at once
        if self.cfg.server.metrics_port:
            try:
                self.metrics.serve(self.cfg.server.metrics_port, self.cfg.server.host)
            except OSError as exc:
                log.warning("metrics endpoint not started on port %s: %s", self.cfg.server.metrics_port, exc)
        self._set_health(True)
        log.info("faceengine serving on %s (detector=%s, embedder=%s, provider=%s, %s, gallery=%d templates, "
                 "match threshold %.4f for FPIR %g at %d people)",
                 self.address, self.analyzer.detector.name, self.analyzer.embedder.name,
                 self.analyzer.provider, self.engine.describe(), len(self.gallery), self.settings.match_threshold,
                 self.cfg.gallery.match_fpir, self.cfg.gallery.watchlist_size)
        return self

    def _relay_events(self) -> None:
        """Live subscribers of this process also see matches raised by other processes on the same
        store (several stateless engine processes behind one operator endpoint)."""
        mark = self.store.event_change_head()  # keyed by the store's change sequence, not by clocks
        while not self._stopped.is_set() and self.running:
            self._relay_wake.wait(self.cfg.server.event_relay_s)  # a poll tick, or a store notification
            self._relay_wake.clear()
            if self._stopped.is_set() or not self.running:
                break
            try:
                events, mark = self.store.event_changes_since(mark)
            except Exception:  # store closing or busy: try again next tick
                log.debug("event relay: store read failed", exc_info=True)
                continue
            if events:
                self.engine.relay(events)

    def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for s in ("", *[_service_name(n) for n in SERVICES]):
            self.health.set(s, status)

    def _watch_storage(self) -> None:
        """Health follows the store: NOT_SERVING while it cannot serve (SQLite: writes fail for lack of
        space, a rolled-back write probe tells when there is room again; PostgreSQL: the server does not
        answer), SERVING again without a restart once it can; then catch up on what was missed."""
        serving = True
        while not self._stopped.wait(self.cfg.server.health_probe_s) and self.running:
            try:
                problem = self.store.health()
            except Exception as exc:  # noqa: BLE001 - store closing or busy: report it, look again
                problem = str(exc) or type(exc).__name__
            if serving and problem:
                log.error("store %s cannot serve, health NOT_SERVING: %s", self.store.url, problem)
            elif not serving and not problem:
                log.warning("store %s works again, health SERVING", self.store.url)
            if serving != (not problem) and self.running:
                serving = not problem
                self._set_health(serving)
                if serving:
                    self._on_store_change("reconnect")  # changes made meanwhile were not announced

    def _on_store_change(self, what: str) -> None:
        """A store notification (another process changed the gallery or wrote events): act now
        rather than at the next poll. "reconnect" means notifications may have been missed."""
        if what in ("gallery", "reconnect"):
            try:
                self.gallery.sync(force=True)
            except Exception:  # the next search or poll catches up
                log.debug("gallery sync after a store notification failed", exc_info=True)
        if what in ("events", "reconnect"):
            self._relay_wake.set()

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, finish queued frames, flush events, close the store."""
        if self._stopped.is_set():
            return
        grace = self.cfg.server.shutdown_grace_s if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.engine.stop(drain_s=grace)
        if self.sightings is not None:  # the tracks the engine just ended are written before the store closes
            self.sightings.stop()
        self.running = False
        self.grpc.stop(grace).wait()
        self.retention.stop()
        self.auth.close()
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._relay_wake.set()
        self.metrics.close()
        self.store.close()
        self._stopped.set()
        log.info("faceengine stopped")

    def wait(self) -> None:
        self._stopped.wait()
