"""Cluster scaling: frames per second against the number of Ray worker processes.

Both sides get the same work: every simulated camera sends the same JPEG payloads (the clip's frames,
encoded once before timing), and every frame is decoded where it is processed (the single-process engine
decodes in its feeder threads as the gRPC ingest does; a cluster worker decodes what the front end hands
it). Each pass reports its fps, the persons matched and events per person (the same identities must be
found by every pass), and the RSS of the front end and of each worker.

    faceengine bench cluster --workers 1,2 --cameras 4 --max-frames 120
    python benchmarks/bench_cluster.py --workers 1,2,4,8 --cameras 16      # on a 16-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_VIDEO,
    bench_config,
    enroll_distractors,
    enroll_heldout,
    load_frames,
    machine,
    open_gallery,
    rss_bytes,
    split_clip,
)

from engine.config import Config  # noqa: E402
from engine.metrics import EngineMetrics  # noqa: E402
from engine.video.decode import build_decoders, decode_pipeline_frame  # noqa: E402
from engine.video.pipeline import Engine, FrameJob  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402

TARGET_2CORE = 0.85  # cluster with 2 workers vs the single-process engine, on 2 cores
TARGET_8_WORKERS = 6.0  # 8 workers vs 1 worker on a 16-core machine


def _feed(submit: Any, cameras: int, payloads: Sequence[bytes], window: int) -> dict[str, Any]:
    """Send every payload once per camera, `window` frames in flight per camera; time until the last reply."""
    lock = threading.Lock()
    events: dict[str, str] = {}  # event id -> person
    errors: Counter[str] = Counter()
    remaining = [cameras * len(payloads)]
    done = threading.Event()
    last = [0.0]

    def camera(i: int) -> None:
        sem = threading.Semaphore(window)

        def reply(out: Any) -> None:
            with lock:
                if out.error is not None:
                    errors[type(out.error).__name__] += 1
                for f in out.faces:
                    if f.match is not None:
                        events[f.match.event_id] = f.match.person_id
                remaining[0] -= 1
                last[0] = time.perf_counter()
                if remaining[0] == 0:
                    done.set()
            sem.release()

        off = i * len(payloads) // max(1, cameras)
        for j in range(len(payloads)):
            sem.acquire()
            submit(f"cam{i}", j, 1.0 + j / 25.0, payloads[(off + j) % len(payloads)], reply)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(cameras)]
    for t in threads:
        t.start()
    done.wait(timeout=1800)
    seconds = last[0] - t0
    per_person = Counter(events.values())
    return {"frames": cameras * len(payloads), "seconds": seconds,
            "fps": cameras * len(payloads) / seconds if seconds > 0 else 0.0,
            "identities": sorted(per_person), "events_per_identity": dict(sorted(per_person.items())),
            "errors": dict(errors)}


def _payloads_and_gallery(cfg: Config, analyzer: FaceAnalyzer, video: str,
                          max_frames: int) -> tuple[list[bytes], list[str]]:
    """JPEG payloads of the timed frames, and a gallery of the clip's people enrolled from held-out frames
    (never timed) plus LFW distractors, as in bench_pipeline."""
    frames, _fps = load_frames(video)
    timed, held_out = split_clip(frames, max_frames)
    payloads = [cv2.imencode(".jpg", frames[i], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for i in timed]
    store, gallery = open_gallery(cfg, analyzer)
    persons = sorted(enroll_heldout(analyzer, gallery, cfg, frames, held_out))
    enroll_distractors(analyzer, gallery)
    store.close()
    return payloads, persons


def single_process_pass(cfg: Config, analyzer: FaceAnalyzer, payloads: Sequence[bytes], cameras: int,
                        window: int) -> dict[str, Any]:
    """The engine in one process, decoding each JPEG in the submitting thread (as gRPC ingest does)."""
    store, gallery = open_gallery(cfg, analyzer)
    eng = Engine(cfg, analyzer, gallery, store, EngineMetrics())
    for i in range(cameras):
        eng.add_camera(f"cam{i}")
    jpeg = build_decoders(cfg.decode, cfg.runtime.device_id).jpeg  # the server's decoder choice

    def submit(cam: str, seq: int, ts: float, payload: bytes, reply: Any) -> None:
        image, scale, loader = decode_pipeline_frame(jpeg, payload, cfg)
        eng.submit(FrameJob(cam, seq, ts, image, reply, scale=scale, loader=loader))

    eng.start()
    try:
        res = _feed(submit, cameras, payloads, window)
    finally:
        eng.stop(drain_s=1.0)
        store.close()
    res.update(mode="single-process", workers=0, rss_frontend=rss_bytes())
    return res


def cluster_pass(cfg: Config, workers: int, payloads: Sequence[bytes], cameras: int, window: int) -> dict[str, Any]:
    """The same cameras served by `workers` Ray worker actors (one CPU, one onnxruntime thread each)."""
    from engine.cluster.frontend import ClusterEngine
    from engine.cluster.worker import WireFrame

    cfg.cluster.workers = workers
    eng = ClusterEngine(cfg)
    for i in range(cameras):
        eng.add_camera(f"cam{i}")
    eng.start()

    def submit(cam: str, seq: int, ts: float, payload: bytes, reply: Any) -> None:
        eng.submit_wire(WireFrame(cam, seq, ts, encoded=payload), reply)

    try:
        res = _feed(submit, cameras, payloads, window)
        info = eng.worker_info()
    finally:
        eng.stop(drain_s=1.0)
    res.update(mode="cluster", workers=workers, rss_frontend=rss_bytes(),
               rss_workers=[w.get("rss", 0) for w in info], worker_cameras=[len(w.get("cameras", [])) for w in info])
    return res


def run(video: str, workers: list[int], cameras: int, max_frames: int, window: int, rounds: int,
        log: Any = print) -> dict[str, Any]:
    from engine.cluster.runtime import connect

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
    cfg = bench_config()
    cfg.runtime.intra_op_threads = 1  # one thread per worker process / per engine worker thread
    analyzer = FaceAnalyzer.from_config(cfg)
    payloads, persons = _payloads_and_gallery(cfg, analyzer, video, max_frames)
    log(f"{len(payloads)} frames x {cameras} cameras, {len(persons)} persons enrolled, workers {workers}")
    cores = os.cpu_count() or 1
    connect("local", num_cpus=max(cores, max(workers)))
    passes: list[dict[str, Any]] = []
    for r in range(rounds):
        p = single_process_pass(cfg, analyzer, payloads, cameras, window)
        p["round"] = r
        passes.append(p)
        log(f"round {r}: single process {p['fps']:.1f} fps, identities {p['identities']}")
        for w in workers:
            c = cluster_pass(cfg, w, payloads, cameras, window)
            c["round"] = r
            passes.append(c)
            log(f"round {r}: cluster {w} workers {c['fps']:.1f} fps, identities {c['identities']}, "
                f"worker RSS {[round(b / 2**20) for b in c['rss_workers']]} MB")
    return summarise(passes, workers, cores, persons)


def soak(video: str, workers: int, cameras: int, fps: float, seconds: float, max_frames: int,
         sample_s: float = 10.0, warmup_s: float = 60.0, log: Any = print) -> dict[str, Any]:
    """Cluster mode paced below capacity for `seconds`: RSS of the front end and of each worker sampled,
    with a least-squares slope after the warm-up and a verdict (growth under 1 MB/min per process)."""
    import numpy as np

    from engine.cluster.frontend import ClusterEngine
    from engine.cluster.runtime import connect
    from engine.cluster.worker import WireFrame

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    cfg = bench_config()
    cfg.runtime.intra_op_threads = 1
    analyzer = FaceAnalyzer.from_config(cfg)
    payloads, _persons = _payloads_and_gallery(cfg, analyzer, video, max_frames)
    connect("local", num_cpus=max(os.cpu_count() or 1, workers))
    cfg.cluster.workers = workers
    eng = ClusterEngine(cfg)
    for i in range(cameras):
        eng.add_camera(f"cam{i}")
    eng.start()
    stop = threading.Event()
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def reply(out: Any) -> None:
        with lock:
            counts["error:" + type(out.error).__name__ if out.error is not None else "ok"] += 1

    def camera(i: int) -> None:
        j, t0 = 0, time.monotonic()
        while not stop.is_set():
            eng.submit_wire(WireFrame(f"cam{i}", j, time.time(), encoded=payloads[j % len(payloads)]), reply)
            j += 1
            ahead = t0 + j / fps - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)

    threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(cameras)]
    for t in threads:
        t.start()
    samples: list[dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        while time.monotonic() - t_start < seconds:
            time.sleep(min(sample_s, max(0.0, seconds - (time.monotonic() - t_start))))
            info = eng.worker_info()
            with lock:
                done = dict(counts)
            samples.append({"t": time.monotonic() - t_start, "frontend": rss_bytes(),
                            "workers": [w.get("rss", 0) for w in info], "results": done})
            log(f"{samples[-1]['t']:6.0f} s  front end {rss_bytes() / 2**20:.0f} MB  workers "
                f"{[round(b / 2**20) for b in samples[-1]['workers']]} MB  {done}")
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        eng.stop(drain_s=2.0)

    def slope(values: list[float], ts: list[float]) -> float:
        if len(values) < 3:
            return float("nan")
        return float(np.polyfit(np.asarray(ts) / 60.0, np.asarray(values) / 2**20, 1)[0])

    def slopes(part: list[dict[str, Any]]) -> dict[str, float]:
        ts = [s["t"] for s in part]
        out = {"frontend": slope([s["frontend"] for s in part], ts)}
        for k in range(len(part[0]["workers"]) if part else 0):
            out[f"worker-{k}"] = slope([s["workers"][k] for s in part if len(s["workers"]) > k], ts)
        return out

    after = [s for s in samples if s["t"] >= warmup_s] or samples
    procs = slopes(after)
    # the verdict reads the second half: allocator and cache warm-up show as growth early on and then stop,
    # a leak keeps growing; both slopes are reported
    settled = slopes(after[len(after) // 2:])
    grows = {name: v for name, v in settled.items() if not v < 1.0}
    final = samples[-1]["results"] if samples else {}
    dropped = sum(v for k, v in final.items() if k.startswith("error"))
    return {"machine": machine(), "mode": "cluster-soak", "workers": workers, "cameras": cameras, "fps_per_camera": fps,
            "seconds": seconds, "warmup_s": warmup_s, "slope_mb_per_min": procs,
            "slope_mb_per_min_second_half": settled, "samples": samples,
            "frames_ok": final.get("ok", 0), "frames_failed_or_dropped": dropped,
            "verdict": "no growth trend" if not grows else f"growth in {sorted(grows)}"}


def summarise(passes: list[dict[str, Any]], workers: list[int], cores: int, persons: list[str]) -> dict[str, Any]:
    def med(vals: list[float]) -> float:
        return float(statistics.median(vals)) if vals else 0.0

    single = med([p["fps"] for p in passes if p["mode"] == "single-process"])
    by_w = {w: med([p["fps"] for p in passes if p["mode"] == "cluster" and p["workers"] == w]) for w in workers}
    one = by_w.get(1, 0.0)
    rows = []
    for w in workers:
        rows.append({"workers": w, "fps": by_w[w], "vs_single_process": by_w[w] / single if single else 0.0,
                     "speedup_vs_1_worker": by_w[w] / one if one else None,
                     "efficiency": by_w[w] / (w * one) if one else None})
    ids = {tuple(p["identities"]) for p in passes}
    for p in passes:  # each pass against the clip's people: who it missed, whom it matched falsely
        p["missed"] = sorted(set(persons) - set(p["identities"]))
        p["false_identities"] = sorted(set(p["identities"]) - set(persons))
    verdicts = {}
    if cores <= 2 and 2 in by_w:
        v = by_w[2] / single if single else 0.0
        verdicts["2_workers_vs_single_process_on_2_cores"] = {"value": v, "target": TARGET_2CORE,
                                                             "met": v >= TARGET_2CORE}
    if 8 in by_w and one:
        v = by_w[8] / one
        verdicts["8_workers_vs_1_worker"] = {"value": v, "target": TARGET_8_WORKERS, "met": v >= TARGET_8_WORKERS}
    return {"machine": machine(), "single_process_fps": single, "scaling": rows,
            "same_identities_every_pass": len(ids) == 1, "identities": sorted(set().union(*[set(i) for i in ids])),
            "enrolled": persons, "verdicts": verdicts, "passes": passes}


def print_table(s: dict[str, Any], log: Any = print) -> None:
    log(f"single process: {s['single_process_fps']:.1f} fps")
    log("workers | fps | vs single process | speedup vs 1 worker | efficiency")
    for r in s["scaling"]:
        sp = f"{r['speedup_vs_1_worker']:.2f}x" if r["speedup_vs_1_worker"] else "-"
        ef = f"{r['efficiency']:.2f}" if r["efficiency"] else "-"
        log(f"{r['workers']:>7} | {r['fps']:.1f} | {r['vs_single_process']:.2f} | {sp} | {ef}")
    log(f"same identities in every pass: {s['same_identities_every_pass']} ({s['identities']}); enrolled "
        f"clip people {s['enrolled']}")
    for p in s["passes"]:
        if p["missed"] or p["false_identities"]:
            log(f"  {p['mode']} {p['workers']} workers round {p['round']}: missed {p['missed']}, "
                f"false {p['false_identities']}")
    for name, v in s["verdicts"].items():
        log(f"{name}: {v['value']:.2f} (target {v['target']}): {'met' if v['met'] else 'MISSED'}")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--max-frames", type=int, default=120, help="frames of the clip each camera sends")
    p.add_argument("--window", type=int, default=4, help="frames in flight per camera")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="bench-results/cluster.json")
    p.add_argument("--json", action="store_true", help="end with one JSON summary line on stdout")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="instead: a paced soak of this many seconds on max(--workers) workers, RSS sampled")
    p.add_argument("--soak-fps", type=float, default=5.0, help="soak: frames per second per camera")


def main_args(args: argparse.Namespace) -> int:
    workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
    if args.soak:
        s = soak(args.video, max(workers), args.cameras, args.soak_fps, args.soak, args.max_frames, log=say)
        say(f"RSS slope MB/min after warm-up: {s['slope_mb_per_min']}; second half: "
            f"{s['slope_mb_per_min_second_half']}; verdict: {s['verdict']}")
    else:
        s = run(args.video, workers, args.cameras, args.max_frames, args.window, args.rounds, say)
        print_table(s, say)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(s, indent=1))
    say(f"raw results: {out}")
    if args.json:
        print(json.dumps({k: v for k, v in s.items() if k != "passes"}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
