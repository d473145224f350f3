"""Building the runtime: the one place that chooses which `VideoEngine` serves the cameras."""

from __future__ import annotations

from engine.gallery.gallery import Gallery
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store.base import EventStore
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

        return ClusterEngine(cfg, metrics)
    from engine.video.pipeline import Engine

    decoders = decoders or build_decoders(cfg.decode, cfg.runtime.device_id)
    metrics.watch_decoders(decoders)
    metrics.watch_sessions(analyzer.session_stats)
    return Engine(cfg, analyzer, gallery, store, metrics, decoders, settings)


__all__ = ["build_engine", "cpu_decoders"]
