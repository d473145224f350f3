#!/usr/bin/env python3
"""End-to-end points for the device kit: the engine in process at 1, then 4, then 16 cameras, each for a
fixed wall time (not a fixed frame count, so a slow provider still ends on time), then optionally one gRPC
point at the last camera count sized to the same time. Each point prints its figures while it runs
(every few seconds) and writes `<out>-<N>cam.json` (or `-grpc<N>cam.json`) the moment it ends, so a
timeout later loses nothing already measured. Every point's JSON has fps, per-stage ms a frame, GPU
utilisation, the sessions' distinct shapes against their buckets, the identities matched, and the machine.

  python benchmarks/device/e2e.py --provider cuda --cameras 1,4,16 --seconds 20 --out results/e2e-cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from bench_pipeline import STAGE_TABLE, _stage_sums, grpc_pass  # noqa: E402
from common import (  # noqa: E402
    DEFAULT_VIDEO,
    bench_config,
    enroll_distractors,
    enroll_heldout,
    jsonable,
    load_frames,
    machine,
    open_gallery,
    percentile,
    split_clip,
)
from gpu_monitor import GpuMonitor, describe  # noqa: E402

from engine.config import Config  # noqa: E402
from engine.gallery.gallery import Gallery  # noqa: E402
from engine.metrics import EngineMetrics  # noqa: E402
from engine.store.base import Store  # noqa: E402
from engine.video.pipeline import Engine, FrameJob, FrameOutcome  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402


def say(msg: str) -> None:
    print(msg, flush=True)


def timed_point(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery, store: Store, frames: Sequence[np.ndarray],
                fps: float, cameras: int, seconds: float, window: int, report_s: float = 5.0) -> dict[str, Any]:
    """Feed `cameras` simulated cameras (the clip looped, each from its own offset, `window` frames in flight)
    into a fresh Engine for `seconds` of wall time, then wait for what is in flight (at most 30 s).
    Prints frames done and fps every `report_s`."""
    metrics = EngineMetrics()
    eng = Engine(cfg, analyzer, gallery, store, metrics)
    cams = [f"cam{i}" for i in range(cameras)]
    for c in cams:
        eng.add_camera(c)
    lock = threading.Lock()
    lat: list[float] = []
    tracks: dict[str, set[tuple[str, int]]] = {}
    done, errors, sent = [0], [0], [0]
    stop = threading.Event()
    sems = [threading.Semaphore(window) for _ in cams]

    def reply(out: FrameOutcome, sem: threading.Semaphore) -> None:
        with lock:
            if out.error is not None:
                errors[0] += 1
            else:
                lat.append(out.latency_ms)
                for f in out.faces:
                    if f.match is not None:
                        tracks.setdefault(f.match.person_id, set()).add((out.camera_id, f.track_id))
            done[0] += 1
        sem.release()

    def feeder(i: int) -> None:
        n, j = len(frames), 0
        off = i * n // max(1, cameras)
        while not stop.is_set():
            if not sems[i].acquire(timeout=0.2):
                continue
            if stop.is_set():
                sems[i].release()
                break
            eng.submit(FrameJob(cams[i], j, 1.0 + j / fps, frames[(off + j) % n],
                                lambda out, s=sems[i]: reply(out, s)))
            with lock:
                sent[0] += 1
            j += 1

    eng.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=feeder, args=(i,), daemon=True) for i in range(cameras)]
    for t in threads:
        t.start()
    last = t0
    while (now := time.perf_counter()) - t0 < seconds:
        time.sleep(min(0.25, seconds - (now - t0)))
        if time.perf_counter() - last >= report_s:
            last = time.perf_counter()
            say(f"    {cameras} cameras, {last - t0:5.1f} s: {done[0]} frames, {done[0] / (last - t0):.1f} fps so far")
    stop.set()
    for t in threads:
        t.join(timeout=5)
    deadline = time.perf_counter() + 30
    while done[0] + errors[0] < sent[0] and time.perf_counter() < deadline:
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    eng.stop(drain_s=1.0)
    stages = _stage_sums(metrics)
    n = max(1, done[0])
    return {"cameras": cameras, "seconds": round(wall, 3), "frames": done[0], "fps": done[0] / wall if wall else 0.0,
            "in_flight_at_end": sent[0] - done[0], "errors": errors[0],
            "p50_latency_ms": percentile(lat, 50), "p95_latency_ms": percentile(lat, 95),
            "stages_ms_per_frame": {k: stages.get(k, 0.0) / n * 1000 for k in STAGE_TABLE},
            "embeddings": int(stages.get("embeddings", 0)),
            "identities": {k: len(v) for k, v in sorted(tracks.items())}}


def write_point(point: dict[str, Any], path: Path, copy_to: Path | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(point, indent=1, default=jsonable))
    tmp.replace(path)
    if copy_to is not None:  # e.g. the device tool's $OUT: back even if the call is cut short later
        copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy_to / path.name)
    say(f"  wrote {path}")


def run(args: argparse.Namespace) -> int:
    counts = [int(c) for c in args.cameras.split(",") if c.strip()]
    cfg = bench_config(db=str(Path(tempfile.mkdtemp(prefix="fe-e2e-")) / "e2e.db"))
    cfg.update({"runtime": {"provider": args.provider}}, source="e2e")
    if args.embedder:
        cfg.update({"models": {"embedder": args.embedder}}, source="e2e")
    mon = GpuMonitor(device=cfg.runtime.device_id).start()
    mach = machine()
    clip, fps = load_frames(args.video)
    timed_idx, held_idx = split_clip(clip, args.max_frames)
    frames = [clip[i] for i in timed_idx]
    h, w = frames[0].shape[:2]
    t = time.perf_counter()
    analyzer = FaceAnalyzer.from_config(cfg)
    load_s = time.perf_counter() - t
    sessions = analyzer.session_stats()
    say(f"e2e: {Path(args.video).name} {w}x{h}, {len(frames)} timed frames; models loaded in {load_s:.1f} s on "
        f"{analyzer.provider}; warm-up " + ", ".join(f"{r} {s['warmup_s']} s" for r, s in sessions.items())
        + "; fp16 " + ", ".join(f"{r}: {s.get('fp16')}" for r, s in sessions.items()))
    store, gallery = open_gallery(cfg, analyzer)
    persons = enroll_heldout(analyzer, gallery, cfg, clip, held_idx)
    clip_persons = set(persons)
    persons.update(enroll_distractors(analyzer, gallery, args.lfw_distractors))
    del clip
    say(f"e2e: enrolled {len(clip_persons)} clip persons + {len(persons) - len(clip_persons)} distractors")
    for f in frames[:4]:
        analyzer.analyze(f)
    out = Path(args.out)
    copy_to = Path(args.copy_to) if args.copy_to else None
    meta = {"machine": mach, "video": Path(args.video).name, "size": [w, h], "timed_frames": len(frames),
            "provider": analyzer.provider, "load_s": load_s, "models": [cfg.models.detector, cfg.models.embedder],
            "config_runtime": cfg.runtime.model_dump(), "pipeline": cfg.pipeline.model_dump()}
    last: dict[str, Any] | None = None
    for n in counts:
        say(f"e2e point: {n} cameras for {args.seconds:g} s")
        t0 = mon.now()
        pt = timed_point(cfg, analyzer, gallery, store, frames, fps, n, args.seconds, args.window)
        pt["gpu"] = mon.summary(t0, mon.now())
        pt["sessions"] = analyzer.session_stats()
        pt["false_matches"] = sorted(set(pt["identities"]) - clip_persons)
        pt["meta"] = meta
        st = pt["stages_ms_per_frame"]
        say(f"  {n} cameras: {pt['fps']:.1f} fps ({pt['frames']} frames in {pt['seconds']:.1f} s), p50 "
            f"{pt['p50_latency_ms']:.0f} ms; ms a frame: detect_model {st['detect_model']:.2f}, embed "
            f"{st['embed']:.2f}, total {st['total']:.2f}; GPU {describe(pt['gpu'])}; shapes "
            + ", ".join(f"{r} {s['distinct_shapes']}/{s['buckets']}" for r, s in pt["sessions"].items())
            + f"; identities {sorted(pt['identities'])}")
        write_point(pt, out.with_name(f"{out.name}-{n}cam.json"), copy_to)
        last = pt
    if args.grpc and last is not None:
        n = counts[-1]
        per_cam = int(max(4, min(len(frames), last["fps"] * args.seconds / n)))
        say(f"e2e point: gRPC, {n} cameras x {per_cam} frames (sized to ~{args.seconds:g} s at the in-process rate)")
        payloads = [__import__("cv2").imencode(".jpg", f, [1, 85])[1].tobytes() for f in frames[:per_cam]]
        t0 = mon.now()
        res = grpc_pass(cfg, analyzer, frames[:per_cam], payloads, fps, n, args.window)
        pt = {"cameras": n, "frames": res.frames, "seconds": res.seconds, "fps": res.fps, "errors": res.errors,
              "dropped": res.dropped, "p50_latency_ms": percentile(res.latencies_ms, 50),
              "stages_ms_per_frame": {k: res.stages.get(k, 0.0) / max(1, res.frames) * 1000 for k in STAGE_TABLE},
              "identities": res.counts, "false_matches": sorted(set(res.counts) - clip_persons),
              "gpu": mon.summary(t0, mon.now()), "sessions": analyzer.session_stats(), "meta": meta}
        say(f"  gRPC {n} cameras: {pt['fps']:.1f} fps, p50 {pt['p50_latency_ms']:.0f} ms, identities "
            f"{sorted(res.counts)}")
        write_point(pt, out.with_name(f"{out.name}-grpc{n}cam.json"), copy_to)
    store.close()
    mon.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", default="cuda")
    p.add_argument("--cameras", default="1,4,16", help="camera counts, in order (default 1,4,16)")
    p.add_argument("--seconds", type=float, default=20.0, help="wall time a point (default 20)")
    p.add_argument("--window", type=int, default=4, help="frames in flight per camera")
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--max-frames", type=int, default=0, help="timed frames of the clip (0 = all)")
    p.add_argument("--lfw-distractors", type=int, default=200)
    p.add_argument("--embedder", default="", help="embedder manifest name (default: the config's)")
    p.add_argument("--grpc", action="store_true", help="then one gRPC point at the last camera count")
    p.add_argument("--out", default="bench-results/e2e", help="prefix: <out>-<N>cam.json per point")
    p.add_argument("--copy-to", default="", help="also copy each point's JSON here at once (the call's $OUT)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
