"""Load test over loopback: many gateway streams connecting and disconnecting, operators querying,
and a health probe throughout. Bounded in time and count; reports errors and latency percentiles.

    .venv/bin/python benchmarks/load_test.py --model-dir /path/to/models            # own server
    .venv/bin/python benchmarks/load_test.py --server 127.0.0.1:50051 --token ADMIN  # running server

Each of `--gateways` threads repeatedly opens a stream for its own push camera, sends
`--frames` frames (a real two-person photo; Obama is enrolled so matches and events are
written), reads the results and closes, until `--duration` seconds pass or `--max-sessions`
streams were opened. `--operators` threads alternate QueryMatches and SearchByImage. Every call
carries a token of the right role (gateway/operator), so authentication is under load too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.client import Client, encode_jpeg  # noqa: E402
from engine.service.proto import pb  # noqa: E402

DEFAULT_IMAGES = ROOT.parent / "shared" / "testdata" / "images"
# in-band frame errors that are the engine working as designed under load
EXPECTED_FRAME_ERRORS = {"RESOURCE_EXHAUSTED"}  # a frame dropped by the newest-wins queue policy


@dataclass
class Report:
    """Counters and latencies (seconds) gathered by all threads."""

    lat: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    health_not_serving: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: str, seconds: float) -> None:
        with self.lock:
            self.lat[op].append(seconds)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def error(self, key: str) -> None:
        with self.lock:
            self.errors[key] += 1

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"counts": dict(self.counts), "unexpected_errors": dict(self.errors),
                               "health_not_serving": self.health_not_serving, "latency_ms": {}}
        for op, xs in sorted(self.lat.items()):
            a = np.asarray(xs) * 1000
            out["latency_ms"][op] = {"n": len(a), "p50": round(float(np.percentile(a, 50)), 1),
                                     "p95": round(float(np.percentile(a, 95)), 1),
                                     "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}
        return out


def _jpeg(images: Path, name: str, width: int) -> bytes:
    img = cv2.imread(str(images / name))
    if img is None:
        raise FileNotFoundError(images / name)
    return encode_jpeg(cv2.resize(img, (width, int(img.shape[0] * width / img.shape[1]))))


def run_load(address: str, admin_token: str, *, gateways: int = 32, frames: int = 3, duration_s: float = 60.0,
             max_sessions: int = 10_000, operators: int = 2, health_interval_s: float = 0.1,
             images: Path = DEFAULT_IMAGES, ca_cert: str | None = None) -> dict[str, Any]:
    """Run the load against a server and return the summary (see `Report.summary`)."""
    rep = Report()
    admin = Client(address, token=admin_token, ca_cert=ca_cert)
    stamp = time.strftime("%H%M%S")
    tokens = {}
    for role in ("gateway", "operator"):
        scope = ["load-*"] if role == "gateway" else []  # a gateway token names the cameras it feeds
        tokens[role] = admin.admin.CreateToken(pb.CreateTokenRequest(name=f"load-{role}-{stamp}", role=role,
                                                                     cameras=scope, identities=bool(scope)),
                                               metadata=admin.metadata).token
    admin.ensure_watchlist("load")
    admin.enroll("load", "obama", [(images / "obama.jpg").read_bytes()], "Barack Obama", replace=True)
    for i in range(gateways):
        admin.ensure_push_camera(f"load-{i}")
    scene = _jpeg(images, "obama_and_biden.jpg", 640)
    probe = (images / "obama2.jpg").read_bytes()
    stop = threading.Event()
    sessions = iter(range(max_sessions))
    sessions_lock = threading.Lock()
    t_end = time.monotonic() + duration_s

    def gateway(i: int) -> None:
        c = Client(address, token=tokens["gateway"], ca_cert=ca_cert)
        seq = 0
        try:
            while not stop.is_set() and time.monotonic() < t_end:
                with sessions_lock:
                    if next(sessions, None) is None:
                        return
                batch = []
                for _ in range(frames):
                    seq += 1
                    batch.append(pb.Frame(camera_id=f"load-{i}", sequence=seq, capture_time=time.time(),
                                          encoded=scene))
                t0 = time.perf_counter()
                try:
                    got = 0
                    for r in c.stream(iter(batch)):
                        got += 1
                        code = r.error.code_name if r.HasField("error") else "OK"
                        if code == "OK":
                            rep.add("frame_server", r.latency_ms / 1000)
                            rep.count("frames_ok")
                            rep.count("matches", sum(1 for f in r.faces if f.match.event_id))
                        elif code in EXPECTED_FRAME_ERRORS:
                            rep.count("frames_dropped")
                        else:
                            rep.error(f"frame:{code}")
                    rep.add("stream_session", time.perf_counter() - t0)
                    rep.count("streams")
                    if got != len(batch):
                        rep.error("stream:missing_results")
                except grpc.RpcError as exc:
                    rep.error(f"stream:{exc.code().name}")
        finally:
            c.close()

    def operator(k: int) -> None:
        c = Client(address, token=tokens["operator"], ca_cert=ca_cert)
        n = 0
        try:
            while not stop.is_set() and time.monotonic() < t_end:
                n += 1
                t0 = time.perf_counter()
                try:
                    if (n + k) % 2:
                        c.matches.QueryMatches(pb.QueryMatchesRequest(watchlist="load", page_size=50),
                                               metadata=c.metadata, timeout=30)
                        rep.add("QueryMatches", time.perf_counter() - t0)
                    else:
                        resp = c.matches.SearchByImage(pb.SearchRequest(image=pb.Image(encoded=probe), top_k=3),
                                                       metadata=c.metadata, timeout=30)
                        rep.add("SearchByImage", time.perf_counter() - t0)
                        if not resp.hits or resp.hits[0].person_id != "obama":
                            rep.error("search:wrong_answer")
                except grpc.RpcError as exc:
                    rep.error(f"operator:{exc.code().name}")
                time.sleep(0.01)
        finally:
            c.close()

    def health() -> None:
        opts = [("grpc.enable_retries", 0)]
        ch = (grpc.secure_channel(address, grpc.ssl_channel_credentials(Path(ca_cert).read_bytes()), options=opts)
              if ca_cert else grpc.insecure_channel(address, options=opts))
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    st = stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                    rep.add("health", time.perf_counter() - t0)
                    if st != health_pb2.HealthCheckResponse.SERVING:
                        rep.health_not_serving += 1
                except grpc.RpcError as exc:
                    rep.error(f"health:{exc.code().name}")
                    rep.health_not_serving += 1
                stop.wait(health_interval_s)
        finally:
            ch.close()

    threads = [threading.Thread(target=gateway, args=(i,), daemon=True) for i in range(gateways)]
    threads += [threading.Thread(target=operator, args=(k,), daemon=True) for k in range(operators)]
    hthread = threading.Thread(target=health, daemon=True)
    hthread.start()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 120)
    wall = time.perf_counter() - t0
    stop.set()
    hthread.join(timeout=30)
    for role in ("gateway", "operator"):
        admin.admin.RevokeToken(pb.RevokeTokenRequest(name=f"load-{role}-{stamp}"), metadata=admin.metadata)
    admin.close()
    out = rep.summary()
    out["wall_s"] = round(wall, 2)
    out["config"] = {"gateways": gateways, "frames_per_stream": frames, "duration_s": duration_s,
                     "operators": operators}
    out["frames_per_s"] = round(out["counts"].get("frames_ok", 0) / wall, 1) if wall else 0.0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", help="address of a running server (default: start one in-process on loopback)")
    ap.add_argument("--token", default="", help="admin token for --server (creates and revokes load tokens)")
    ap.add_argument("--ca-cert", help="CA certificate for a TLS server")
    ap.add_argument("--model-dir", help="models for the in-process server (env FACEENGINE_MODEL_DIR)")
    ap.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder with obama.jpg, obama2.jpg, "
                    "obama_and_biden.jpg")
    ap.add_argument("--gateways", type=int, default=32, help="concurrent gateway threads")
    ap.add_argument("--frames", type=int, default=3, help="frames per stream before it closes")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds")
    ap.add_argument("--max-sessions", type=int, default=10_000, help="most streams opened in all")
    ap.add_argument("--operators", type=int, default=2)
    ap.add_argument("--max-workers", type=int, help="server.max_workers of the in-process server")
    ap.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = ap.parse_args(argv)
    srv = None
    address, token = args.server, args.token
    if not address:
        from engine.config import Config
        from engine.service.auth import create_token
        from engine.service.server import FaceEngineServer

        cfg = Config.load()
        if args.model_dir:
            cfg.models.dir = args.model_dir
        cfg.store.path = str(Path(tempfile.mkdtemp(prefix="faceengine-load-")) / "engine.db")
        cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
        if args.max_workers:
            cfg.server.max_workers = args.max_workers
        srv = FaceEngineServer(cfg).start()
        address = srv.address
        token = create_token(srv.store, "load-admin", "admin")[0]
    try:
        out = run_load(address, token, gateways=args.gateways, frames=args.frames, duration_s=args.duration,
                       max_sessions=args.max_sessions, operators=args.operators, images=Path(args.images),
                       ca_cert=args.ca_cert)
    finally:
        if srv is not None:
            srv.stop(grace=2)
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))
    return 1 if out["unexpected_errors"] or out["health_not_serving"] else 0


if __name__ == "__main__":
    sys.exit(main())
