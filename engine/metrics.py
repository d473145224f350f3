"""Prometheus metrics for the pipeline and service, in a registry object passed in (not global),
so tests and several engines in one process never collide."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self.rpc_errors = Counter("faceengine_rpc_errors", "RPCs ended with an error status", ["method", "code"],
                                  registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics over HTTP (prometheus-client's own server) until `close()`."""
        self._http, _ = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        """Stop the /metrics server and free its port (a restarted server in this process can bind it again)."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
