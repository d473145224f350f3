"""Building the runtime: `build_runtime(cfg)` opens the store, loads the models, resolves the settings once,
builds the gallery, the engine and the application services, for the server, cluster workers, the offline
CLI and the benchmarks alike; `build_engine` is the one place that chooses which `VideoEngine` serves the
cameras."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from engine.app.watchlists import WatchlistService
from engine.config import Config
from engine.gallery.gallery import Gallery
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store import open_store
from engine.store.base import EventStore, Store
from engine.video.decode import Decoders, build_decoders, cpu_decoders
from engine.video.engine_api import VideoEngine
from engine.vision.analyzer import FaceAnalyzer


def build_engine(settings: Settings, analyzer: FaceAnalyzer, gallery: Gallery, store: EventStore,
                 metrics: EngineMetrics, decoders: Decoders | None = None) -> VideoEngine:
    """The local `Engine`, or with `cluster.address` set the cluster front end whose Ray workers decode
    and run the frames. `decoders` (default: built from `[decode]`) serve the local engine."""
    cfg = settings.config
    if cfg.cluster.address:  # cameras served by Ray worker actors; this process is a front end
        from engine.cluster.frontend import ClusterEngine

        cluster = ClusterEngine(cfg, metrics)
        metrics.watch_cameras(cluster.registry.health)
        return cluster
    from engine.video.pipeline import Engine

    decoders = decoders or build_decoders(cfg.decode, cfg.runtime.device_id)
    metrics.watch_decoders(decoders)
    metrics.watch_sessions(analyzer.session_stats)
    local = Engine(cfg, analyzer, gallery, store, metrics, decoders, settings)
    metrics.watch_cameras(local.registry.health)
    return local




log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a process that recognises faces runs on, built once by `build_runtime`."""

    settings: Settings
    store: Store
    analyzer: FaceAnalyzer
    gallery: Gallery
    metrics: EngineMetrics
    engine: VideoEngine | None
    watchlists: WatchlistService

    @property
    def config(self) -> Config:
        """The user's configuration, as written."""
        return self.settings.config

    def close(self) -> None:
        """Stop the engine (if any) and close the store."""
        if self.engine is not None:
            self.engine.stop(drain_s=0)
        self.store.close()


def build_runtime(cfg: Config, *, analyzer: FaceAnalyzer | None = None, decoders: Decoders | None = None,
                  metrics: EngineMetrics | None = None, engine: bool = True, repair: bool = False) -> Runtime:
    """Open the store (`repair`: run the start-up consistency check), load the models (unless `analyzer` is
    given), resolve the settings, build the gallery and (with `engine`) the video engine. A damaged SQLite file
    raises StoreDamagedError saying what to do; on any failure the store is closed again."""
    from engine.store.sqlite import damaged
    from engine.vision.analyzer import FaceAnalyzer

    store = open_store(cfg.store.target(), cfg.store)
    try:
        if repair:  # index rebuild first, refusal if still damaged, every change audited
            fixed = store.repair()
            if any(fixed.values()):
                log.warning("store consistency check repaired %s (each change is in the audit log, action "
                            "store.repair)", fixed)
        analyzer = analyzer or FaceAnalyzer.from_config(cfg)
        gallery = Gallery(store, analyzer.dim, analyzer.model_name, cfg.gallery.index)
        settings = Settings.for_analyzer(cfg, analyzer)  # resolved once; cfg stays as written
        settings.log()
        metrics = metrics or EngineMetrics()
        eng = build_engine(settings, analyzer, gallery, store, metrics, decoders) if engine else None
    except sqlite3.DatabaseError as exc:  # pages damaged past the header: same advice, no traceback
        store.close()
        raise damaged(cfg.store.target(), exc) from exc
    except BaseException:
        store.close()
        raise
    return Runtime(settings, store, analyzer, gallery, metrics, eng, WatchlistService(cfg, analyzer, gallery, store))


__all__ = ["Runtime", "build_engine", "build_runtime", "cpu_decoders"]
