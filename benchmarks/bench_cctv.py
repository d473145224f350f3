#!/usr/bin/env python
"""Static-camera benchmark: CPU a frame and cameras per core of the default video pipeline (motion gating and a
detection interval) against every frame detected whole, on generated CCTV-like clips (`make_cctv.py`).

Each generated clip is one camera, all fed at once. The gallery holds the clips' enrolled people (one LFW photo
each, never the one that walks) and `--lfw-distractors` other LFW identities. Every pass feeds the clips' JPEG
(q85) frames and decodes them as the server does (`decode_pipeline_frame`), so decode is part of the cost:

  gated    the default configuration, in process, `window` frames in flight per camera (saturating).
  full     the same with pipeline.motion_gating off and detect_interval 1: the engine before gating.
  grpc     the default configuration behind FaceEngineServer on loopback, the gateways in their own process
           (their CPU is not counted: gateways are other machines); CPU of the server process.
  overload the gRPC gateways paced at twice the grpc pass's throughput: the detection interval rises, frames
           dropped are counted, identities checked.

Per pass and clip: recall of ground-truth identities (enrolled people of the clip matched on that camera),
false alerts (match events, one per camera+track, naming anyone who is not an enrolled person of that clip),
CPU ms a frame (time.process_time: the machine is shared, CPU time is robust where wall time is not) and
cameras of 1080p@25 per core. Rounds interleave gated and full; `ratios.gated_vs_full` is the median of their
per-round CPU ratio.

Usage:
  python benchmarks/bench_cctv.py [--data bench-results/cctv] [--clips 3] [--seconds 20] [--rounds 2]
         [--out benchmarks/results/cctv] [--json]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    FULL_FRAME,
    SHARED,
    WATCHLIST,
    bench_config,
    cfg_copy,
    cost,
    embed_lfw,
    enroll_distractors,
    jsonable,
    machine,
    open_gallery,
    pyplot,
    section_dict,
    write_results,
)
from make_cctv import enrol_photo_path, lfw_identities, load_clip, make  # noqa: E402

from engine.config import Config  # noqa: E402
from engine.gallery.gallery import Gallery  # noqa: E402
from engine.metrics import EngineMetrics  # noqa: E402
from engine.store.base import Store  # noqa: E402
from engine.video.decode import build_decoders, decode_pipeline_frame  # noqa: E402
from engine.video.pipeline import Engine, FrameJob, FrameOutcome  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402

TARGET_RATIO = 3.0
TARGET_CAMERAS_PER_CORE = 2.0
MAX_RECALL_LOSS = 0.02


def _median(v: Sequence[float]) -> float:
    v = [x for x in v if x == x]
    return float(statistics.median(v)) if v else float("nan")


def engine_run(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery, store: Store, clips: list[list[bytes]],
               fps: float, window: int) -> dict[str, Any]:
    """All clips at once in a fresh in-process Engine (one camera each), each frame decoded like gRPC ingest."""
    metrics = EngineMetrics()
    eng = Engine(cfg, analyzer, gallery, store, metrics)
    cams = [f"cctv-{k}" for k in range(len(clips))]
    for c in cams:
        eng.add_camera(c)
    jpeg = build_decoders(cfg.decode, cfg.runtime.device_id).jpeg
    lock = threading.Lock()
    pairs: dict[str, set[tuple[int, str]]] = {c: set() for c in cams}
    errors = [0]

    def feeder(k: int) -> None:
        sem = threading.Semaphore(window)
        done = threading.Semaphore(0)

        def reply(out: FrameOutcome) -> None:
            with lock:
                if out.error is not None:
                    errors[0] += 1
                for f in out.faces:
                    if f.match is not None:
                        pairs[out.camera_id].add((f.track_id, f.match.person_id))
            sem.release()
            done.release()

        for j, data in enumerate(clips[k]):
            sem.acquire()
            image, scale, loader = decode_pipeline_frame(jpeg, data, cfg)
            eng.submit(FrameJob(cams[k], j, 1.0 + j / fps, image, reply, scale=scale, loader=loader))
        for _ in clips[k]:
            done.acquire()

    eng.start()
    t0, c0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=feeder, args=(k,), daemon=True) for k in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1800)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = max(eng.recognizer.detect_interval(c)[1] for c in cams)
    eng.stop(drain_s=1.0)
    reg = metrics.registry
    modes = {m: reg.get_sample_value("faceengine_detect_frames_total", {"mode": m}) or 0.0
             for m in ("full", "regions", "carried")}
    return {"frames": sum(len(c) for c in clips), "wall_s": wall, "cpu_s": cpu, "errors": errors[0], "dropped": 0,
            "pairs": {c: sorted(v) for c, v in pairs.items()}, "peak_interval": peak, "detect_frames": modes,
            "embeddings": reg.get_sample_value("faceengine_embeddings_total") or 0.0}


def grpc_run(cfg: Config, analyzer: FaceAnalyzer, clips: list[list[bytes]], fps: float, window: int,
             rate: float = 0.0) -> dict[str, Any]:
    """The clips streamed over loopback gRPC by gateway_worker.py (own process), one stream a clip; `rate` > 0
    paces each camera at that many frames/s (else `window` frames in flight)."""
    from engine.client import Client
    from engine.service.server import FaceEngineServer

    cfg = cfg_copy(cfg, server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "shutdown_grace_s": 1.0},
                   auth={"enabled": False})
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    client = Client(srv.address, token="")
    client.wait_ready(30)
    cams = [f"cctv-{k}" for k in range(len(clips))]
    for c in cams:
        client.ensure_push_camera(c)
    client.close()
    payloads = [p for c in clips for p in c]
    starts = np.cumsum([0] + [len(c) for c in clips])
    job = {"address": srv.address, "cameras": cams, "fps": fps, "clip_fps": fps, "window": window,
           "payloads": payloads, "raws": None, "rate": rate,
           "order": [list(range(int(starts[k]), int(starts[k + 1]))) for k in range(len(clips))]}
    c0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        job_file = Path(tmp) / "job.pkl"
        job_file.write_bytes(pickle.dumps(job))
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("gateway_worker.py")), str(job_file)],
                              capture_output=True, text=True, timeout=1800)
    cpu = time.process_time() - c0
    reg = srv.metrics.registry
    peak = max((int(s.value) for m in reg.collect() if m.name == "faceengine_detect_interval" for s in m.samples),
               default=0)
    modes = {m: reg.get_sample_value("faceengine_detect_frames_total", {"mode": m}) or 0.0
             for m in ("full", "regions", "carried")}
    peak_seen = _peak_interval(srv)
    srv.stop(grace=1.0)
    if proc.returncode != 0:
        raise RuntimeError(f"gateway process failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"frames": out["frames"], "wall_s": out["last_recv"] - out["first_send"], "cpu_s": cpu,
            "errors": out["errors"], "dropped": out["dropped"],
            "pairs": {c: sorted((int(t), p) for t, p in v) for c, v in out["camera_tracks"].items()},
            "peak_interval": max(peak, peak_seen), "detect_frames": modes, "rate_per_camera": rate,
            "p95_latency_ms": float(np.percentile(out["latencies_ms"], 95)) if out["latencies_ms"] else float("nan")}


def _peak_interval(srv: Any) -> int:
    """Highest detection interval any camera of an in-process server reached (0 when it keeps none)."""
    eng = getattr(srv, "engine", None)
    rec = getattr(eng, "recognizer", None)
    if rec is None:
        return 0
    return max((rec.detect_interval(c)[1] for c in rec.camera_ids()), default=0)


def score(res: dict[str, Any], gts: list[dict[str, Any]]) -> dict[str, Any]:
    """Recall of each clip's enrolled people and its false alerts (camera+track events naming anyone else)."""
    clips = []
    found_all = total_all = false_all = 0
    for k, gt in enumerate(gts):
        enrolled = {pid for pid, p in gt["persons"].items() if p["enrolled"]}
        pairs = res["pairs"].get(f"cctv-{k}", [])
        found = {p for _, p in pairs} & enrolled
        false = sorted({(t, p) for t, p in pairs if p not in enrolled})
        clips.append({"clip": gt["clip"], "enrolled": sorted(enrolled), "found": sorted(found),
                      "missed": sorted(enrolled - found), "recall": len(found) / max(1, len(enrolled)),
                      "false_alerts": len(false), "false_alert_events": false})
        found_all += len(found)
        total_all += len(enrolled)
        false_all += len(false)
    return {"recall": found_all / max(1, total_all), "found": found_all, "enrolled": total_all,
            "false_alerts": false_all, "clips": clips}


def run(data: Path, clips: int = 3, seconds: float = 20.0, seed: int = 20, rounds: int = 2, window: int = 4,
        out: str | Path | None = "bench-results/cctv", base_cfg: Config | None = None, grpc: bool = True,
        overload: bool = True, lfw_distractors: int = 200, log: Callable[[str], None] = print,
        engine_passes: bool = True) -> dict[str, Any]:
    """Generate the clips if needed, run the passes, write `<out>.json` / `.png`; returns the summary.
    `engine_passes` False: only the gRPC (and overload) passes."""
    gt_files = [data / f"cctv-{k}.json" for k in range(clips)]
    fresh = all(f.is_file() for f in gt_files) and all(
        (g := json.loads(f.read_text()))["seed"] == seed and g["seconds"] == seconds for f in gt_files)
    if not fresh:
        log(f"generating {clips} clips of {seconds:g} s (seed {seed}) in {data}")
        make(data, clips, seconds, seed)
    db = str(Path(tempfile.mkdtemp(prefix="fe-cctv-")) / "bench.db")
    cfg = (cfg_copy(base_cfg, store={"path": db}, server={"metrics_port": 0}) if base_cfg is not None
           else bench_config(None, db))
    if not cfg.models.mirror and (SHARED / "models").is_dir():
        cfg.models.mirror = str(SHARED / "models")  # missing models are copied (hash-checked) from the mirror
    full_cfg = cfg_copy(cfg, pipeline=FULL_FRAME)
    mach = machine()
    analyzer = FaceAnalyzer.from_config(cfg)
    store, gallery = open_gallery(cfg, analyzer)
    gallery.ensure_watchlist(WATCHLIST)
    gts: list[dict[str, Any]] = []
    payloads: list[list[bytes]] = []
    ids = lfw_identities()
    for f in gt_files:
        gt, frames = load_clip(f)
        gts.append(gt)
        payloads.append([cv2.imencode(".jpg", fr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for fr in frames])
        del frames
        for pid, p in gt["persons"].items():
            if p["enrolled"]:
                path = enrol_photo_path(gt, pid)
                lm = next(lm for q, lm in ids[p["lfw"]] if Path(q).name == path.name)
                gallery.enroll(WATCHLIST, pid, embed_lfw(analyzer, [(p["lfw"], str(path), lm)]), display_name=p["lfw"])
    distractors = enroll_distractors(analyzer, gallery, lfw_distractors)
    fps = float(gts[0]["fps"])
    w, h = gts[0]["size"]
    log(f"{clips} clips x {len(payloads[0])} frames {w}x{h}@{fps:g}; enrolled "
        f"{sum(p['enrolled'] for g in gts for p in g['persons'].values())} clip people and {len(distractors)} "
        f"distractors; match threshold {cfg.gallery.match_threshold}")
    warm = cv2.imdecode(np.frombuffer(payloads[0][0], np.uint8), cv2.IMREAD_COLOR)
    for _ in range(3):
        analyzer.analyze(warm)
    passes: list[dict[str, Any]] = []
    for r in range(rounds if engine_passes else 0):
        order = [("gated", cfg), ("full", full_cfg)] if r % 2 == 0 else [("full", full_cfg), ("gated", cfg)]
        for name, c in order:
            res = engine_run(c, analyzer, gallery, store, payloads, fps, window)
            res.update(mode=name, round=r + 1)
            passes.append(res)
            log(f"round {r + 1} {name}: {res['cpu_s'] / res['frames'] * 1000:.1f} CPU ms a frame, "
                f"{res['frames'] / res['wall_s']:.1f} fps wall, peak interval {res['peak_interval']}, "
                f"detect {res['detect_frames']}")
    if grpc:
        res = grpc_run(cfg, analyzer, payloads, fps, window)
        res.update(mode="grpc", round=1)
        passes.append(res)
        capacity = res["frames"] / res["wall_s"]
        log(f"grpc: {res['cpu_s'] / res['frames'] * 1000:.1f} CPU ms a frame (server process), {capacity:.1f} fps")
        if overload:
            rate = 2.0 * capacity / clips
            res = grpc_run(cfg, analyzer, payloads, fps, max(window, 64), rate=rate)
            res.update(mode="overload", round=1, offered_fps=2.0 * capacity)
            passes.append(res)
            log(f"overload at {2 * capacity:.1f} fps offered: dropped {res['dropped']}, peak interval "
                f"{res['peak_interval']}")
    store.close()
    for p in passes:
        p["cost"] = cost(p["cpu_s"], p["frames"], w, h)
        p["identities"] = score(p, gts)
    summary = summarise(passes, rounds)
    summary["meta"] = {"clips": [g["clip"] for g in gts], "seconds": seconds, "seed": seed, "size": [w, h],
                       "fps": fps, "window": window, "rounds": rounds, "machine": mach,
                       "distractors": len(distractors),
                       "persons": {g["clip"]: g["persons"] for g in gts},
                       "config": {"pipeline": section_dict(cfg.pipeline), "detector": section_dict(cfg.detector),
                                  "runtime": section_dict(cfg.runtime),
                                  "models": [cfg.models.detector, cfg.models.embedder]}}
    print_table(summary, log)
    if out is not None:
        jp, pp = write_results(summary, out, plot)
        log(f"wrote {jp} and {pp}")
    return summary


def summarise(passes: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    def mode(m: str) -> list[dict[str, Any]]:
        return [p for p in passes if p["mode"] == m]

    ratios_r = []
    for r in range(1, rounds + 1):
        g = [p for p in mode("gated") if p["round"] == r]
        f = [p for p in mode("full") if p["round"] == r]
        if g and f:
            ratios_r.append((f[0]["cpu_s"] / f[0]["frames"]) / (g[0]["cpu_s"] / g[0]["frames"]))
    ratio = _median(ratios_r)
    rec_g = _median([p["identities"]["recall"] for p in mode("gated")])
    rec_f = _median([p["identities"]["recall"] for p in mode("full")])
    fa_g = max((p["identities"]["false_alerts"] for p in mode("gated")), default=0)
    fa_f = min((p["identities"]["false_alerts"] for p in mode("full")), default=0)
    main_pass = mode("grpc")[0] if mode("grpc") else mode("gated")[0]
    c = dict(main_pass["cost"])
    c["pass"] = main_pass["mode"]
    c["by_mode"] = {m: _median([p["cost"]["cpu_ms_per_frame"] for p in mode(m)])
                    for m in ("gated", "full", "grpc", "overload") if mode(m)}
    s: dict[str, Any] = {
        "cost": c,
        "ratios": {"gated_vs_full": {
            "value": ratio, "rounds": ratios_r, "numerator": "full (CPU ms a frame)",
            "denominator": "gated (CPU ms a frame, the default)", "target": TARGET_RATIO,
            "verdict": "PASS" if ratio >= TARGET_RATIO and rec_g >= rec_f - MAX_RECALL_LOSS and fa_g <= fa_f
            else "MISSED"}},
        "recall": {"gated": rec_g, "full": rec_f, "false_alerts_gated_max": fa_g, "false_alerts_full_min": fa_f},
        "passes": [{k: v for k, v in p.items() if k != "pairs"} for p in passes],
    }
    if mode("grpc"):
        g = mode("grpc")[0]
        ok = g["cost"]["cameras_per_core"] >= TARGET_CAMERAS_PER_CORE and (
            g["identities"]["recall"] >= rec_f if rec_f == rec_f else g["identities"]["recall"] == 1.0)
        s["grpc"] = {"cameras_per_core": g["cost"]["cameras_per_core"], "recall": g["identities"]["recall"],
                     "false_alerts": g["identities"]["false_alerts"], "target": TARGET_CAMERAS_PER_CORE,
                     "verdict": "PASS" if ok else "MISSED"}
    if mode("overload"):
        o = mode("overload")[0]
        s["overload"] = {"offered_fps": o["offered_fps"], "frames": o["frames"], "dropped": o["dropped"],
                         "dropped_share": o["dropped"] / max(1, o["frames"]),
                         "peak_detect_interval": o["peak_interval"],
                         "recall": o["identities"]["recall"], "false_alerts": o["identities"]["false_alerts"],
                         "p95_latency_ms": o["p95_latency_ms"]}
    return s


def print_table(s: dict[str, Any], log: Callable[[str], None]) -> None:
    log(f"{'pass':<9} {'round':>5} {'CPU ms/fr':>9} {'cams/core':>9} {'recall':>7} {'false':>5} {'drop':>5} "
        f"{'peak k':>6}  missed")
    for p in s["passes"]:
        ids = p["identities"]
        missed = [m for c in ids["clips"] for m in c["missed"]]
        log(f"{p['mode']:<9} {p['round']:>5} {p['cost']['cpu_ms_per_frame']:>9.1f} "
            f"{p['cost']['cameras_per_core']:>9.2f} {ids['recall']:>7.3f} {ids['false_alerts']:>5} "
            f"{p['dropped']:>5} {p['peak_interval']:>6}  {missed}")
    r = s["ratios"]["gated_vs_full"]
    log(f"gated_vs_full {r['value']:.2f} (rounds {[round(v, 2) for v in r['rounds']]}), recall gated "
        f"{s['recall']['gated']:.3f} vs full {s['recall']['full']:.3f}: {r['verdict']} (target >= {r['target']})")
    c = s["cost"]
    log(f"cost ({c['pass']}): {c['cpu_ms_per_frame']:.1f} CPU ms a frame = {c['cameras_per_core']:.2f} cameras of "
        f"1080p@25 a core ({c['note']})")


def plot(s: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    by = s["cost"]["by_mode"]
    ax.bar(list(by), [40.0 / v if v else 0 for v in by.values()], color=["#3a7", "#999", "#37a", "#a73"][: len(by)])
    ax.axhline(TARGET_CAMERAS_PER_CORE, color="k", ls="--", lw=1)
    ax.set_ylabel("cameras of 1080p@25 per core (CPU time)")
    ax.set_title(f"static-camera clips: gated / full = {s['ratios']['gated_vs_full']['value']:.1f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main_args(args: argparse.Namespace, cfg: Config | None = None) -> int:
    log: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
    s = run(Path(args.data), args.clips, args.seconds, args.seed, args.rounds, args.window, args.out, cfg,
            grpc=not args.no_grpc, overload=not args.no_overload, lfw_distractors=args.lfw_distractors, log=log,
            engine_passes=not getattr(args, "grpc_only", False))
    if args.json:
        line = {"cost": {k: v for k, v in s["cost"].items() if k != "note"}, "ratios": s["ratios"],
                "recall": s["recall"], "grpc": s.get("grpc"), "overload": s.get("overload")}
        print(json.dumps(line, default=jsonable), flush=True)
    return 0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="bench-results/cctv", help="folder of the generated clips (made if missing)")
    p.add_argument("--clips", type=int, default=3, help="clips = cameras (default 3)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds a clip (default 20)")
    p.add_argument("--seed", type=int, default=20, help="generator seed (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved gated/full rounds (default 2)")
    p.add_argument("--window", type=int, default=4, help="frames in flight per camera (default 4)")
    p.add_argument("--out", default="bench-results/cctv-bench", help="output prefix for .json and .png")
    p.add_argument("--no-grpc", action="store_true", help="skip the gRPC and overload passes")
    p.add_argument("--no-overload", action="store_true", help="skip the overload pass")
    p.add_argument("--grpc-only", action="store_true", help="only the gRPC and overload passes (no gated/full)")
    p.add_argument("--lfw-distractors", type=int, default=200, help="LFW identities enrolled as distractors")
    p.add_argument("--json", action="store_true", help="table on stderr; end with one JSON summary line")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
