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
import numpy as np

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
TARGET_2_WORKERS_2CORE = 1.7  # 2 workers (one intra-op thread each) vs 1 worker, real models, on 2 cores
TARGET_8_WORKERS = 6.5  # 8 workers vs 1 worker on a 16-core machine
TARGET_14_WORKERS = 10.0  # 14 workers vs 1 worker on a 16-core machine
TARGET_CEILING_FPS = 2000.0  # one front end, fake runner: frames in and results back a second


class _Feed:
    """Closed-loop cameras: each keeps `window` frames in flight, cycling through the payloads with rising
    sequence numbers, until stopped. Counts results (and where they failed) as they come back."""

    def __init__(self, submit: Any, cameras: int, payloads: Sequence[bytes], window: int, prefix: str) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.events: dict[str, str] = {}  # event id -> person
        self.stop = threading.Event()
        self.latency_s = 0.0
        self._threads = [threading.Thread(target=self._camera, args=(submit, f"{prefix}cam{i}", i, cameras, payloads,
                                                                     window), daemon=True) for i in range(cameras)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _camera(self, submit: Any, cam: str, i: int, cameras: int, payloads: Sequence[bytes], window: int) -> None:
        sem = threading.Semaphore(window)

        def reply(out: Any) -> None:
            with self.lock:
                if out.error is not None:
                    self.errors[type(out.error).__name__] += 1
                else:
                    self.ok += 1
                    self.latency_s += (out.latency_ms or 0.0) / 1000
                for f in out.faces:
                    if f.match is not None:
                        self.events[f.match.event_id] = f.match.person_id
            sem.release()

        off = i * len(payloads) // max(1, cameras)
        j = 0
        while not self.stop.is_set():
            if not sem.acquire(timeout=0.5):
                continue
            submit(cam, j, 1.0 + j / 25.0, payloads[(off + j) % len(payloads)], reply)
            j += 1

    def counters(self) -> dict[str, Any]:
        with self.lock:
            return {"ok": self.ok, "errors": sum(self.errors.values()), "latency_s": self.latency_s,
                    "wall": time.perf_counter(), "cpu_s": time.process_time()}

    def finish(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=10)


def _steady(feed: _Feed, warmup_s: float, seconds: float, snapshot: Any = None) -> dict[str, Any]:
    """Run the feed, skip `warmup_s`, and measure `seconds` of steady state: results a second, front-end
    CPU ms a frame and whatever `snapshot()` (called at both edges) adds; events over the whole pass."""
    feed.start()
    time.sleep(warmup_s)
    a = feed.counters()
    sa = snapshot() if snapshot else None
    time.sleep(seconds)
    b = feed.counters()
    sb = snapshot() if snapshot else None
    feed.finish()
    frames = b["ok"] - a["ok"]
    wall = b["wall"] - a["wall"]
    per_person = Counter(feed.events.values())
    res = {"frames": frames, "seconds": wall, "fps": frames / wall if wall > 0 else 0.0,
           "warmup_s": warmup_s, "errors_in_window": b["errors"] - a["errors"],
           "frontend_cpu_ms_per_frame": 1000 * (b["cpu_s"] - a["cpu_s"]) / frames if frames else None,
           "frontend_cpu_cores": (b["cpu_s"] - a["cpu_s"]) / wall if wall > 0 else 0.0,
           "latency_ms_mean": 1000 * (b["latency_s"] - a["latency_s"]) / frames if frames else None,
           "identities": sorted(per_person), "events_per_identity": dict(sorted(per_person.items())),
           "events": len(feed.events), "errors": dict(feed.errors)}
    if snapshot:
        res["_edges"] = (sa, sb, frames, wall)
    return res


def _payloads_and_gallery(cfg: Config, analyzer: FaceAnalyzer, video: str, max_frames: int,
                          frame_size: tuple[int, int] | None = None) -> tuple[list[bytes], list[str]]:
    """JPEG payloads of the timed frames, and a gallery of the clip's people enrolled from held-out frames
    (never timed) plus LFW distractors, as in bench_pipeline. With the fake runner (which sees nobody in
    particular) the frames are resized to `frame_size` and one person is enrolled: every canned face is them."""
    frames, _fps = load_frames(video)
    timed, held_out = split_clip(frames, max_frames)
    if cfg.runtime.runner == "fake":
        w, h = frame_size or (64, 48)
        payloads = [cv2.imencode(".jpg", cv2.resize(frames[i], (w, h), interpolation=cv2.INTER_AREA),
                                 [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for i in timed]
        store, gallery = open_gallery(cfg, analyzer)
        gallery.ensure_watchlist("bench")
        emb = analyzer.embed(np.zeros((1, 112, 112, 3), np.uint8))  # any crop: the one canned vector
        gallery.enroll("bench", "fake-person", emb, display_name="fake person")
        store.close()
        return payloads, ["fake-person"]
    payloads = [cv2.imencode(".jpg", frames[i], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for i in timed]
    store, gallery = open_gallery(cfg, analyzer)
    persons = sorted(enroll_heldout(analyzer, gallery, cfg, frames, held_out))
    enroll_distractors(analyzer, gallery)
    store.close()
    return payloads, persons


def single_process_pass(cfg: Config, analyzer: FaceAnalyzer, payloads: Sequence[bytes], cameras: int,
                        window: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    """The engine in one process, decoding each JPEG in the submitting thread (as gRPC ingest does)."""
    store, gallery = open_gallery(cfg, analyzer)
    eng = Engine(cfg, analyzer, gallery, store, EngineMetrics())
    for i in range(cameras):
        eng.add_camera(f"sp-cam{i}")
    jpeg = build_decoders(cfg.decode, cfg.runtime.device_id).jpeg  # the server's decoder choice

    def submit(cam: str, seq: int, ts: float, payload: bytes, reply: Any) -> None:
        image, scale, loader = decode_pipeline_frame(jpeg, payload, cfg)
        eng.submit(FrameJob(cam, seq, ts, image, reply, scale=scale, loader=loader))

    eng.start()
    try:
        res = _steady(_Feed(submit, cameras, payloads, window, "sp-"), warmup_s, seconds)
    finally:
        eng.stop(drain_s=1.0)
        store.close()
    res.update(mode="single-process", workers=0, rss_frontend=rss_bytes())
    return res


def thread_budget(cfg: Config, workers: int, cores: float) -> dict[str, Any]:
    """Model threads the workers may run at once (frame calls a worker processes at once x intra-op threads
    a session) against the cores Ray has: above 1.0 the threads contend for cores."""
    from engine.cluster.frontend import model_threads

    threads, intra = model_threads(cfg, workers)
    return {"workers": workers, "calls_per_worker": cfg.cluster.calls_per_worker,
            "worker_threads": cfg.cluster.worker_threads, "intra_op_threads": intra,
            "model_threads": threads, "cores": cores, "threads_per_core": threads / cores if cores else None}


def cluster_pass(cfg: Config, handles: list[Any], payloads: Sequence[bytes], cameras: int, window: int,
                 warmup_s: float, seconds: float, cores: float) -> dict[str, Any]:
    """The same cameras served by the first len(handles) worker actors (started once for every point), with
    where the time went: front-end CPU, queue wait here, Ray's share of a call, each worker's busy share."""
    import ray

    from engine.cluster.frontend import ClusterEngine
    from engine.cluster.worker import WireFrame

    n = len(handles)
    eng = ClusterEngine(cfg, workers=handles)
    prefix = f"w{n}-"
    for i in range(cameras):
        eng.add_camera(f"{prefix}cam{i}")
    eng.start()

    def submit(cam: str, seq: int, ts: float, payload: bytes, reply: Any) -> None:
        eng.submit_wire(WireFrame(cam, seq, ts, encoded=payload), reply)

    def snapshot() -> dict[str, Any]:
        return {"fe": eng.stats(), "workers": ray.get([h.stats.remote() for h in handles], timeout=30)}

    try:
        res = _steady(_Feed(submit, cameras, payloads, window, prefix), warmup_s, seconds, snapshot)
        info = eng.worker_info()
    finally:
        eng.stop(drain_s=2.0)
    sa, sb, frames, wall = res.pop("_edges")
    fe = {k: sb["fe"][k] - sa["fe"][k] for k in sb["fe"]}
    ws = [{k: b[k] - a[k] for k in b} for a, b in zip(sa["workers"], sb["workers"], strict=True)]
    worker_call_s = sum(w["call_s"] for w in ws)
    calls = fe["calls"] or 1
    res.update(
        mode="cluster", workers=n, rss_frontend=rss_bytes(), rss_workers=[w.get("rss", 0) for w in info],
        worker_cameras=[len([c for c in w.get("cameras", []) if c.startswith(prefix)]) for w in info],
        frames_per_call=fe["frames"] / calls,
        queue_wait_ms_per_frame=1000 * fe["queue_wait_s"] / fe["frames"] if fe["frames"] else None,
        call_ms=1000 * fe["call_s"] / calls,
        worker_ms_per_call=1000 * worker_call_s / max(1, sum(w["calls"] for w in ws)),
        ray_ms_per_call=1000 * (fe["call_s"] - worker_call_s) / calls,
        worker_busy_share=[round(w["busy_s"] / w["wall"], 3) if w["wall"] else None for w in ws],
        worker_cpu_cores=[round(w["cpu_s"] / w["wall"], 3) if w["wall"] else None for w in ws],
        worker_cpu_ms_per_frame=[round(1000 * w["cpu_s"] / w["frames"], 3) if w["frames"] else None for w in ws],
        thread_budget=thread_budget(cfg, n, cores))
    return res


def start_workers(cfg: Config, count: int) -> list[Any]:
    """`count` worker actors, started and loaded once for every point (a point uses the first n)."""
    import ray

    from engine.cluster.worker import ray_worker_class, worker_config

    cls = ray_worker_class(cfg.cluster.worker_threads)
    data = worker_config(cfg)
    handles = [cls.options(num_cpus=cfg.cluster.cpus_per_worker).remote(data, f"worker-{i}") for i in range(count)]
    ray.get([h.ping.remote() for h in handles], timeout=600)
    return handles


def run(video: str, workers: list[int], cameras: int, max_frames: int, window: int, rounds: int,
        log: Any = print, runner: str = "onnx", warmup_s: float = 5.0, seconds: float = 20.0,
        fake_cost_ms: float = 0.0, fake_faces: int = 1, frame_size: tuple[int, int] | None = None,
        single: bool = True, frames_per_call: int = 0, calls_per_worker: int = 0) -> dict[str, Any]:
    import ray

    from engine.cluster.runtime import connect

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
    cfg = bench_config()
    cfg.runtime.intra_op_threads = 1  # one thread per worker process / per engine worker thread
    if frames_per_call:
        cfg.cluster.frames_per_call = frames_per_call
    if calls_per_worker:
        cfg.cluster.calls_per_worker = calls_per_worker
    # closed loop: a camera never has more than `window` frames out, so none is dropped for a full queue
    cfg.pipeline.queue_size = max(cfg.pipeline.queue_size, window)
    if runner == "fake":
        w, h = frame_size or (64, 48)
        side = max(64, -(-max(w, h) // 32) * 32)
        cfg.update({"runtime": {"runner": "fake", "fake_cost_ms": fake_cost_ms, "fake_faces": fake_faces},
                    "detector": {"input_size": side, "auto_scale": False, "min_face_size": 8},
                    "pipeline": {"min_face_size": 8, "min_quality": 0.0, "motion_gating": False}},
                   source="bench cluster --runner fake")
    analyzer = FaceAnalyzer.from_config(cfg)
    payloads, persons = _payloads_and_gallery(cfg, analyzer, video, max_frames, frame_size)
    log(f"{len(payloads)} frames x {cameras} cameras, {len(persons)} persons enrolled, workers {workers}, runner "
        f"{runner}, {warmup_s:g} s warm-up + {seconds:g} s measured a point")
    cores = os.cpu_count() or 1
    connect("local", num_cpus=max(cores, max(workers) * cfg.cluster.cpus_per_worker))
    passes: list[dict[str, Any]] = []
    handles = start_workers(cfg, max(workers))
    ray_cores = float(ray.cluster_resources().get("CPU", cores))
    try:
        for r in range(rounds):
            if single:
                p = single_process_pass(cfg, analyzer, payloads, cameras, window, warmup_s, seconds)
                p["round"] = r
                passes.append(p)
                log(f"round {r}: single process {p['fps']:.1f} fps, front-end CPU "
                    f"{_ms(p['frontend_cpu_ms_per_frame'])} ms/frame, identities {p['identities']}")
            for n in workers:
                c = cluster_pass(cfg, handles[:n], payloads, cameras, window, warmup_s, seconds, min(cores, ray_cores))
                c["round"] = r
                passes.append(c)
                log(f"round {r}: cluster {n} workers {c['fps']:.1f} fps; front end "
                    f"{_ms(c['frontend_cpu_ms_per_frame'])} CPU ms/frame, queue "
                    f"{_ms(c['queue_wait_ms_per_frame'])} ms/frame, call {c['call_ms']:.2f} ms "
                    f"(worker {c['worker_ms_per_call']:.2f}, Ray {c['ray_ms_per_call']:.2f}) for "
                    f"{c['frames_per_call']:.1f} frames; worker busy {c['worker_busy_share']}, identities "
                    f"{c['identities']}")
    finally:
        for h in handles:
            try:
                ray.get(h.shutdown.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - already gone
                pass
            ray.kill(h, no_restart=True)
        ray.shutdown()
    s = summarise(passes, workers, cores, persons)
    if runner == "fake":  # the 2-core targets are for the real models; the fake runner has its own
        for k in ("2_workers_vs_single_process_on_2_cores", "2_workers_vs_1_worker_on_2_cores"):
            s["verdicts"].pop(k, None)
    s.update(runner=runner, warmup_s=warmup_s, seconds_per_point=seconds, cameras=cameras, window=window,
             frame_size=list(frame_size or (64, 48)) if runner == "fake" else None,
             fake_cost_ms=fake_cost_ms if runner == "fake" else None,
             fake_faces=fake_faces if runner == "fake" else None)
    if runner == "fake" and s["scaling"]:
        best = max(s["scaling"], key=lambda r: r["fps"])
        row = next((b for b in s["breakdown"] if b["workers"] == best["workers"]), {})
        s["verdicts"]["one_front_end_fake_runner_fps"] = {
            "value": best["fps"], "target": TARGET_CEILING_FPS, "met": best["fps"] >= TARGET_CEILING_FPS,
            "workers": best["workers"], "frontend_fps_per_cpu_core": row.get("frontend_fps_per_cpu_core"),
            "worker_busy_share": row.get("worker_busy_share")}
    return s


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


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
    if cores <= 2 and 2 in by_w and single:
        v = by_w[2] / single
        verdicts["2_workers_vs_single_process_on_2_cores"] = {"value": v, "target": TARGET_2CORE,
                                                             "met": v >= TARGET_2CORE}
    if cores <= 2 and 2 in by_w and one:
        v = by_w[2] / one
        verdicts["2_workers_vs_1_worker_on_2_cores"] = {"value": v, "target": TARGET_2_WORKERS_2CORE,
                                                       "met": v >= TARGET_2_WORKERS_2CORE}
    for n, target in ((8, TARGET_8_WORKERS), (14, TARGET_14_WORKERS)):
        if n in by_w and one and cores >= 16:
            v = by_w[n] / one
            verdicts[f"{n}_workers_vs_1_worker"] = {"value": v, "target": target, "met": v >= target}
    breakdown = []
    for w in workers:  # where the time went, per point (medians over rounds)
        ps = [p for p in passes if p["mode"] == "cluster" and p["workers"] == w]
        if not ps:
            continue
        row: dict[str, Any] = {"workers": w}
        for k in ("frontend_cpu_ms_per_frame", "frontend_cpu_cores", "queue_wait_ms_per_frame", "call_ms",
                  "worker_ms_per_call", "ray_ms_per_call", "frames_per_call", "latency_ms_mean"):
            vals = [p[k] for p in ps if p.get(k) is not None]
            row[k] = med(vals) if vals else None
        cpu = row["frontend_cpu_ms_per_frame"]
        row["frontend_fps_per_cpu_core"] = 1000.0 / cpu if cpu else None  # what one front-end core could move
        row["worker_busy_share"] = ps[-1]["worker_busy_share"]
        row["worker_cpu_cores"] = ps[-1]["worker_cpu_cores"]
        row["worker_cpu_ms_per_frame"] = ps[-1]["worker_cpu_ms_per_frame"]
        row["thread_budget"] = ps[-1]["thread_budget"]
        breakdown.append(row)
    m = machine()
    load = (m.get("loadavg_at_start") or [0.0])[0]
    if load > 0.5 * cores:  # other jobs were running: say so in the result itself
        m["note"] = (f"load average {load:.1f} on {cores} cores at start: the machine was shared with other jobs, so "
                     "every process got only part of a core; rates are lower bounds, ratios within this run compare")
    return {"machine": m, "single_process_fps": single, "scaling": rows, "breakdown": breakdown,
            "same_identities_every_pass": len(ids) == 1, "identities": sorted(set().union(*[set(i) for i in ids])),
            "enrolled": persons, "verdicts": verdicts, "passes": passes}


def print_table(s: dict[str, Any], log: Any = print) -> None:
    log(f"single process: {s['single_process_fps']:.1f} fps")
    log("workers | fps | vs single process | speedup vs 1 worker | efficiency")
    for r in s["scaling"]:
        sp = f"{r['speedup_vs_1_worker']:.2f}x" if r["speedup_vs_1_worker"] else "-"
        ef = f"{r['efficiency']:.2f}" if r["efficiency"] else "-"
        log(f"{r['workers']:>7} | {r['fps']:.1f} | {r['vs_single_process']:.2f} | {sp} | {ef}")
    log("workers | front-end CPU ms/frame (cores) | queue ms/frame | call ms = worker + Ray | frames/call | "
        "worker busy share | worker CPU ms/frame | model threads / cores")
    for b in s.get("breakdown", []):
        tb = b["thread_budget"]
        log(f"{b['workers']:>7} | {_ms(b['frontend_cpu_ms_per_frame'])} ({b['frontend_cpu_cores']:.2f}) | "
            f"{_ms(b['queue_wait_ms_per_frame'])} | {b['call_ms']:.2f} = {b['worker_ms_per_call']:.2f} + "
            f"{b['ray_ms_per_call']:.2f} | {b['frames_per_call']:.1f} | {b['worker_busy_share']} | "
            f"{b['worker_cpu_ms_per_frame']} | {tb['model_threads']} / {tb['cores']:g}")
    log(f"same identities in every pass: {s['same_identities_every_pass']} ({s['identities']}); enrolled "
        f"clip people {s['enrolled']}")
    for p in s["passes"]:
        if p["missed"] or p["false_identities"]:
            log(f"  {p['mode']} {p['workers']} workers round {p['round']}: missed {p['missed']}, "
                f"false {p['false_identities']}")
    for name, v in s["verdicts"].items():
        log(f"{name}: {v['value']:.2f} (target {v['target']}): {'met' if v['met'] else 'MISSED'}")
    for b in s.get("breakdown", []):
        if b.get("frontend_fps_per_cpu_core"):
            log(f"{b['workers']} workers: the front end spent {_ms(b['frontend_cpu_ms_per_frame'])} CPU ms a frame, "
                f"i.e. one front-end core moves about {b['frontend_fps_per_cpu_core']:.0f} frames/s")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--max-frames", type=int, default=120, help="frames of the clip each camera sends")
    p.add_argument("--window", type=int, default=None,
                   help="frames in flight per camera (default 4; 32 with the fake runner)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="bench-results/cluster.json")
    p.add_argument("--json", action="store_true", help="end with one JSON summary line on stdout")
    p.add_argument("--runner", choices=["onnx", "fake"], default="onnx",
                   help="fake: canned detections and embeddings (runtime.runner = fake), small frames: the "
                        "cluster's own ceiling, frames in and results back a second")
    p.add_argument("--fake-cost-ms", type=float, default=0.0, help="fake runner: ms slept an image a model call")
    p.add_argument("--fake-faces", type=int, default=1, help="fake runner: faces in every frame (default 1)")
    p.add_argument("--frame-size", default="64x48",
                   help="fake runner: frames resized to WxH (default 64x48: decode and letterbox stay negligible)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds run before each point is measured")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds measured a point, steady state (default 20)")
    p.add_argument("--no-single", action="store_true", help="skip the single-process pass")
    p.add_argument("--frames-per-call", type=int, default=0,
                   help="cluster.frames_per_call (0 = configured; 32 with the fake runner)")
    p.add_argument("--calls-per-worker", type=int, default=0, help="cluster.calls_per_worker (0 = as configured)")
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
        fake = args.runner == "fake"
        window = args.window or (32 if fake else 4)
        fw, _, fh = str(args.frame_size).partition("x")
        s = run(args.video, workers, args.cameras, args.max_frames, window, args.rounds, say, runner=args.runner,
                warmup_s=args.warmup, seconds=args.seconds, fake_cost_ms=args.fake_cost_ms,
                fake_faces=args.fake_faces, frame_size=(int(fw), int(fh)), single=not args.no_single,
                frames_per_call=args.frames_per_call or (32 if fake else 0), calls_per_worker=args.calls_per_worker)
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
