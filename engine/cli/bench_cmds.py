"""`faceengine bench` (video pipeline throughput/latency), `bench faiss` (1:N search), `bench cluster`
(fps against Ray workers), `bench models` (detector / embedder throughput on the configured provider)
and `bench sightings` (sightings insert rate, search latency over 24 h of partitions, recall).

Both run the scripts in the source tree's `benchmarks/` folder, so the command and the script
measure with the same code."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.cli.common import add_config_args, load_config
from engine.errors import FaceEngineError

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def _bench_module(name: str) -> ModuleType:
    """Import benchmarks/<name>.py (they live next to the package in a source checkout)."""
    if not (BENCH_DIR / f"{name}.py").is_file():
        raise FaceEngineError(f"benchmark {name} not found in {BENCH_DIR}; run from a source checkout")
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


def register(sub: Any, lazy: Callable[[str, str], Callable[[argparse.Namespace], int]]) -> None:
    b = sub.add_parser("bench", help="benchmarks: video pipeline (default), `bench models`, `bench faiss` or "
                                     "`bench cluster`",
                       description="Video pipeline benchmark: naive per-face loop (1 and N cameras) vs OpenCV loop "
                                   "vs the engine in-process (1..N cameras, pre-decoded and fed the gateways' JPEG) "
                                   "and over gRPC, identities checked on every pass, gRPC latency at 50/80/100 %% "
                                   "load, per-stage times and GPU utilisation. `faceengine bench models` for "
                                   "detector frames/s and embedder faces/s at several batch sizes on the "
                                   "configured provider; `faceengine bench faiss` for the gallery search "
                                   "benchmark (real LFW embeddings and synthetic vectors).")
    add_config_args(b)
    b.add_argument("target", nargs="?", choices=["pipeline", "models", "faiss", "cluster", "sightings", "cctv"],
                   default="pipeline",
                   help="which benchmark (default pipeline; models: detector/embedder throughput; cluster: fps "
                        "against Ray worker processes; sightings: insert rate, search p99 over 24 h of partitions, "
                        "recall@10 by identity; cctv: generated static-camera clips, motion gating against "
                        "full-frame detection, CPU a frame and cameras per core)")
    b.add_argument("--sizes", default=None, help="sightings: synthetic sightings per size (default 1000000,10000000)")
    b.add_argument("--queries", type=int, default=None, help="sightings: real query photos (default 300)")
    b.add_argument("--clips", type=int, default=3, help="cctv: generated clips, one camera each (default 3)")
    b.add_argument("--clip-seconds", type=float, default=20.0, help="cctv: seconds a clip (default 20)")
    b.add_argument("--data", default="bench-results/cctv", help="cctv: folder of the generated clips")
    b.add_argument("--workers", default="1,2", help="cluster: comma-separated worker counts (default 1,2)")
    b.add_argument("--video", default=None, help="video file (default shared multiface_1080p.mp4)")
    b.add_argument("--cameras", type=int, default=4, help="simulated cameras: the engine runs 1..N (default 4)")
    b.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds; medians reported (default 3; cluster: 1)")
    b.add_argument("--window", type=int, default=None,
                   help="frames in flight per camera (default 4; cluster with the fake runner: 32)")
    b.add_argument("--runner", choices=["onnx", "fake"], default="onnx",
                   help="cluster: fake = canned detections and embeddings on small frames: the cluster's own "
                        "ceiling (frames in and results back a second through one front end)")
    b.add_argument("--fake-cost-ms", default="0", help="cluster, fake runner: ms slept an image a model call")
    b.add_argument("--fake-faces", default="1", help="cluster, fake runner: faces in every frame (default 1)")
    b.add_argument("--frame-size", default="64x48", help="cluster, fake runner: frames resized to WxH")
    b.add_argument("--warmup", default="5", help="cluster: seconds run before a point is measured (default 5)")
    b.add_argument("--frames-per-call", default="0",
                   help="cluster: cluster.frames_per_call (0 = configured; 32 with the fake runner)")
    b.add_argument("--calls-per-worker", default="0", help="cluster: cluster.calls_per_worker (0 = configured)")
    b.add_argument("--no-single", action="store_true", help="cluster: skip the single-process pass")
    b.add_argument("--max-frames", type=int, default=0, help="use only the first N frames (0 = all)")
    b.add_argument("--out", default=None, help="output prefix for .json and .png (default bench-results/<target>)")
    b.add_argument("--no-grpc", action="store_true", help="skip the gRPC passes (and the engine-jpeg pass)")
    b.add_argument("--no-baselines", action="store_true", help="skip the naive, cv2 and peer loops")
    b.add_argument("--no-peer", action="store_true", help="skip the insightface peer even when it is installed")
    b.add_argument("--no-load-latency", action="store_true",
                   help="skip the gRPC latency passes at 50/80/100 %% of the measured capacity")
    b.add_argument("--lfw-distractors", type=int, default=200,
                   help="LFW people enrolled as distractors, so false matches show (default 200)")
    b.add_argument("--batches", default=None, help="models: detector frames a call, comma-separated (default 1,8,32)")
    b.add_argument("--face-batches", default=None, help="models: embedder faces a call (default 1,32,256)")
    b.add_argument("--seconds", type=float, default=None,
                   help="models: timed seconds a point (default 2); cluster: steady-state seconds a point (20)")
    b.add_argument("--embedders", default=None,
                   help="models: embedders to time, comma-separated (default mobilefacenet + the configured one)")
    b.add_argument("--quick", action="store_true",
                   help="faiss: only 10k and 100k galleries; models: batches 1,4 / 1,16, 0.3 s a point")
    b.add_argument("--json", action="store_true", help="table on stderr; end with one JSON summary line")
    b.set_defaults(func=lazy("engine.cli.bench_cmds", "cmd_bench"))


def cmd_bench(args: argparse.Namespace) -> int:
    if args.target == "faiss":
        mod = _bench_module("bench_faiss")
        argv = ["--out", args.out or "bench-results/faiss"] + (["--quick"] if args.quick else [])
        return int(mod.main(argv) or 0)
    if args.target == "sightings":
        mod = _bench_module("bench_sightings")
        cfg = load_config(args)
        mirror = mod.SHARED / "models"
        if not cfg.models.mirror and mirror.is_dir():
            cfg.models.mirror = str(mirror)  # missing models are copied (hash-checked) from ../shared/models
        argv = ["--out", args.out or "bench-results/sightings"] + (["--quick"] if args.quick else [])
        argv += (["--sizes", args.sizes] if args.sizes else []) + (["--json"] if args.json else [])
        argv += ["--queries", str(args.queries)] if args.queries else []
        return int(mod.main(argv, cfg=cfg) or 0)
    if args.target == "cluster":
        mod = _bench_module("bench_cluster")
        argv = ["--workers", args.workers, "--cameras", str(args.cameras), "--rounds", str(args.rounds or 1),
                "--out", args.out or "bench-results/cluster.json", "--runner", args.runner,
                "--fake-cost-ms", args.fake_cost_ms, "--fake-faces", args.fake_faces, "--frame-size", args.frame_size,
                "--warmup", args.warmup, "--seconds", str(args.seconds or 20), "--frames-per-call",
                args.frames_per_call, "--calls-per-worker", args.calls_per_worker]
        argv += (["--window", str(args.window)] if args.window else []) + (["--no-single"] if args.no_single else [])
        argv += ["--max-frames", str(args.max_frames or 120)] + (["--video", args.video] if args.video else [])
        return int(mod.main(argv + (["--json"] if args.json else [])) or 0)
    args.rounds = args.rounds or 3
    args.window = args.window or 4
    if args.target == "cctv":
        mod = _bench_module("bench_cctv")
        ns = argparse.Namespace(data=args.data, clips=args.clips, seconds=args.clip_seconds, seed=20,
                                rounds=args.rounds, window=args.window, out=args.out or "bench-results/cctv-bench",
                                no_grpc=args.no_grpc, no_overload=args.no_load_latency,
                                lfw_distractors=args.lfw_distractors, json=args.json)
        return int(mod.main_args(ns, cfg=load_config(args)))
    mod = _bench_module("bench_models" if args.target == "models" else "bench_pipeline")
    cfg = load_config(args)
    mirror = Path(mod.DEFAULT_VIDEO).parents[2] / "models"  # ../shared/testdata/videos -> ../shared/models
    if not cfg.models.mirror and mirror.is_dir():
        cfg.models.mirror = str(mirror)  # missing models are copied (hash-checked) from ../shared/models
    if args.target == "models":
        args.out = args.out or "bench-results/models"
        if args.video is not None and not Path(args.video).is_file():
            raise FaceEngineError(f"video {args.video} not found")
        try:
            return int(mod.main_args(args, cfg=cfg))
        except ValueError as exc:  # a malformed --batches / --face-batches
            raise FaceEngineError(str(exc)) from None
    if args.video is None:
        args.video = str(mod.DEFAULT_VIDEO)
    if not Path(args.video).is_file():
        raise FaceEngineError(f"video {args.video} not found")
    args.out = args.out or "bench-results/pipeline"
    return int(mod.main_args(args, cfg=cfg))
