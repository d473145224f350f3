"""`FaceEngineServer`: builds the engine from a Config and serves it over gRPC, with health
checking, reflection, a Prometheus endpoint and graceful shutdown that flushes events."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.app.cameras import CameraService
from engine.config import Config
from engine.errors import ConfigError
from engine.retention import RetentionWorker
from engine.runtime import build_runtime
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
from engine.sightings.service import Sightings
from engine.video.cameras import CameraStatus
from engine.video.decode import Decoders
from engine.video.engine_api import VideoEngine
from engine.video.recorder import EventRecorder, RecorderSettings
from engine.vision.analyzer import FaceAnalyzer
from engine.workers import EventRelayWorker, StoreHealthWorker

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
        # store (consistency-checked), models, settings resolved once, gallery, engine, services
        rt = build_runtime(cfg, analyzer=analyzer, decoders=decoders, repair=True)
        assert rt.engine is not None
        self.runtime = rt
        self.store, self.analyzer, self.gallery, self.metrics = rt.store, rt.analyzer, rt.gallery, rt.metrics
        self.settings, self.watchlists = rt.settings, rt.watchlists
        self.engine: VideoEngine = rt.engine
        try:
            self.auth = AuthInterceptor(self.store, cfg.auth, max_metadata_bytes=cfg.limits.max_metadata_bytes)
        except BaseException:
            self.store.close()
            raise
        self.slots = StreamSlots(cfg.server)
        self.cameras = CameraService(cfg, self.engine, self.store)
        self.sightings: Sightings | None = None
        if cfg.sightings.enabled:  # every track's best shot kept: a policy decision, off by default
            thumbnail = EventRecorder(self.store, self.engine.bus, RecorderSettings.from_config(cfg)).thumbnail
            self.sightings = Sightings(cfg, self.store, self.analyzer.dim, self.analyzer.model_name,
                                       thumbnail, self.analyzer.embedder.spec)
            self.engine.observe_tracks(self.sightings.recorder)  # ConfigError where the engine cannot
            log.info("sightings on: %d loaded into the search index", self.sightings.load())
        self.retention = RetentionWorker(self.store, cfg.retention,
                                         self.sightings.purge_expired if self.sightings is not None else None)
        self.relay = EventRelayWorker(self.store, self.engine, cfg.server.event_relay_s)
        self.store_health = StoreHealthWorker(self.store, cfg.server.health_probe_s, self._store_serving)
        self.running = False
        self._stopped = threading.Event()
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
        """See `CameraService.add`."""
        return self.cameras.add(camera_id, uri, options, persist)

    def remove_camera(self, camera_id: str) -> None:
        self.cameras.remove(camera_id)

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FaceEngineServer:
        self.cameras.load_saved()  # cameras survive restarts
        self.engine.start()
        self.running = True
        if self.sightings is not None:
            self.sightings.start()
        self.grpc.start()
        self.retention.start()
        self.relay.start()
        self.store_health.start()
        self._unsubscribe = self.store.subscribe_changes(self._on_store_change)  # PostgreSQL: pushed at once
        if self.cfg.server.metrics_port:
            try:
                self.metrics.serve(self.cfg.server.metrics_port, self.cfg.server.host)
            except OSError as exc:
                log.warning("metrics endpoint not started on port %s: %s", self.cfg.server.metrics_port, exc)
        self._set_health(True)
        host = self.cfg.server.host
        listening = "all addresses" if host in ("", "0.0.0.0", "::", "[::]") else host
        log.info("faceengine serving on %s, clients dial %s (detector=%s, embedder=%s, provider=%s, %s, "
                 "gallery=%d templates, match threshold %.4f for FPIR %g at %d people)",
                 listening, self.address, self.analyzer.detector.name, self.analyzer.embedder.name,
                 self.analyzer.provider, self.engine.describe(), len(self.gallery), self.settings.match_threshold,
                 self.cfg.gallery.match_fpir, self.cfg.gallery.watchlist_size)
        return self

    def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for s in ("", *[_service_name(n) for n in SERVICES]):
            self.health.set(s, status)

    def _store_serving(self, serving: bool) -> None:
        """The store stopped or started serving (`StoreHealthWorker`): health follows; on recovery, catch
        up on what was missed meanwhile."""
        if not self.running:
            return
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
            self.relay.wake()

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
        self.relay.stop()
        self.store_health.stop()
        self.auth.close()
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.metrics.close()
        self.store.close()
        self._stopped.set()
        log.info("faceengine stopped")

    def wait(self) -> None:
        self._stopped.wait()
