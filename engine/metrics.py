"""Prometheus metrics for the pipeline and service, in a registry object passed in (not global),
so tests and several engines in one process never collide."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._http: WSGIServer | None = None
        r = self.registry
        self.frames_in = Counter("faceengine_frames_in", "Frames received per camera", ["camera"], registry=r)
        self.frames_processed = Counter("faceengine_frames_processed", "Frames processed per camera", ["camera"],
                                        registry=r)
        self.frames_dropped = Counter("faceengine_frames_dropped", "Frames dropped under overload per camera",
                                      ["camera"], registry=r)
        self.frame_errors = Counter("faceengine_frame_errors", "Frames rejected (bad image, unknown camera)",
                                    ["reason"], registry=r)
        # stages: decode (gRPC ingest), detect = preprocess + detect_model + detect_post, track, align, embed,
        # search, record, total (a batch from detection to its last reply)
        self.stage_seconds = Histogram("faceengine_stage_seconds", "Per-stage latency", ["stage"],
                                       buckets=STAGE_BUCKETS, registry=r)
        self.frame_latency = Histogram("faceengine_frame_latency_seconds", "Frame arrival to result",
                                       buckets=STAGE_BUCKETS, registry=r)
        self.queue_depth = Gauge("faceengine_queue_depth", "Frames waiting per camera", ["camera"], registry=r)
        self.batch_size = Histogram("faceengine_batch_frames", "Frames per detection batch",
                                    buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.faces = Counter("faceengine_faces", "Faces detected", registry=r)
        self.embeddings = Counter("faceengine_embeddings", "Faces embedded (best shots)", registry=r)
        self.matches = Counter("faceengine_matches", "Match events raised or updated", ["kind"], registry=r)
        self.active_streams = Gauge("faceengine_active_streams", "Open ingest streams", registry=r)
        self.subscribers = Gauge("faceengine_subscribers", "Live match subscribers", registry=r)
        self.detect_frames = Counter("faceengine_detect_frames", "Video frames by how they were detected: full "
                                     "(whole frame), regions (motion regions, possibly none), carried (not detected: "
                                     "the tracker carried the boxes)", ["mode"], registry=r)
        self.detect_interval = Gauge("faceengine_detect_interval", "Current detection interval per camera "
                                     "(raised under overload before frames are dropped)", ["camera"], registry=r)
        self.rpc_errors = Counter("faceengine_rpc_errors", "RPCs ended with an error status", ["method", "code"],
                                  registry=r)

    def watch_decoders(self, decoders: Any) -> None:  # noqa: ANN401 - an engine.video.decode.Decoders
        """Publish which decoders run (faceengine_decoder{input,decoder} = 1) and how many frames or streams a
        GPU decoder handed to the CPU (faceengine_decode_fallbacks{input}, read when scraped). Once per registry."""
        used = Gauge("faceengine_decoder", "Decoder in use, per input (jpeg: gateway frames, video: pull cameras)",
                     ["input", "decoder"], registry=self.registry)
        fallbacks = Gauge("faceengine_decode_fallbacks", "Frames (jpeg) or streams (video) a GPU decoder handed to "
                          "the CPU decoder", ["input"], registry=self.registry)
        for name in ("jpeg", "video"):
            dec = getattr(decoders, name)
            used.labels(name, dec.name).set(1)
            fallbacks.labels(name).set_function(functools.partial(_float_attr, dec, "fallbacks"))

    def watch_sessions(self, sessions: Callable[[], dict[str, dict[str, Any]]]) -> None:
        """Publish, read when scraped, each inference session's distinct input shapes
        (faceengine_session_distinct_shapes{role,model}) and the bucket shapes allowed for the input sizes it
        saw (faceengine_session_buckets{role,model}; 0 when it does not pad). `sessions()` is e.g.
        `FaceAnalyzer.session_stats`. Once per registry."""
        shapes = Gauge("faceengine_session_distinct_shapes", "Distinct input shapes an inference session ran "
                       "(each new one costs a GPU provider an algorithm search and allocations)", ["role", "model"],
                       registry=self.registry)
        buckets = Gauge("faceengine_session_buckets", "Bucket shapes allowed for the input sizes the session saw "
                        "(runtime.shape_buckets; 0 = not padding)", ["role", "model"], registry=self.registry)
        for role, st in sessions().items():
            shapes.labels(role, st["model"]).set_function(functools.partial(_session_figure, sessions, role,
                                                                            "distinct_shapes"))
            buckets.labels(role, st["model"]).set_function(functools.partial(_session_figure, sessions, role,
                                                                             "buckets"))

    def watch_cameras(self, health: Callable[[], list[tuple[str, bool, float | None]]]) -> None:
        """Publish, read when scraped, faceengine_camera_up{camera} (1 while frames come, 0 when offline,
        idle, retrying...) and faceengine_camera_last_frame_age_seconds{camera} (cameras that received a
        frame). `health()` is e.g. `CameraRegistry.health`. Once per registry."""
        self.registry.register(_CameraHealth(health))

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics over HTTP (prometheus-client's own server) until `close()`."""
        self._http, _ = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        """Stop the /metrics server and free its port (a restarted server in this process can bind it again)."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()


class _CameraHealth:
    """Collector of the per-camera health gauges (cameras come and go, so they are built per scrape)."""

    def __init__(self, health: Callable[[], list[tuple[str, bool, float | None]]]) -> None:
        self.health = health

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("faceengine_camera_up", "", labels=["camera"]),
                GaugeMetricFamily("faceengine_camera_last_frame_age_seconds", "", labels=["camera"])]

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("faceengine_camera_up", "1 while the camera's frames come (state running), 0 "
                               "otherwise (offline: a push camera's gateway went away; idle, retrying, ...)",
                               labels=["camera"])
        age = GaugeMetricFamily("faceengine_camera_last_frame_age_seconds", "Seconds since the camera's last "
                                "frame arrived (cameras that received one)", labels=["camera"])
        for camera, is_up, last in self.health():
            up.add_metric([camera], 1.0 if is_up else 0.0)
            if last is not None:
                age.add_metric([camera], last)
        yield up
        yield age


def _float_attr(obj: object, name: str) -> float:
    """A numeric attribute read when scraped (0 when the object has none)."""
    return float(getattr(obj, name, 0))


def _session_figure(sessions: Callable[[], dict[str, dict[str, Any]]], role: str, key: str) -> float:
    """One inference session's figure, read when scraped."""
    return float(sessions()[role][key] or 0)
