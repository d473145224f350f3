#!/usr/bin/env python
"""Memory soak: 4 looping cameras through the engine for a while; does the process's RSS grow?

The engine runs in-process with its default (tuned) configuration. Each camera is a pull source
on the video file (looping, paced at the file's frame rate like a live camera, decoded by the
source's own thread), persons enrolled from the clip so match events are raised and stored, and
one live subscriber drains the event bus (as SubscribeMatches does). After a warm-up (allocator
pools, onnxruntime arenas, track state reaching steady state) RSS is sampled from
/proc/self/statm every few seconds.

growth % = (median of the last 5 samples - median of the first 5 samples) / the first, in %
(target < 10 %); also the least-squares slope in MB per minute.

Usage:
  python benchmarks/bench_memory.py [--duration 600] [--warmup 60] [--interval 5] [--cameras 4]
                                    [--video FILE] [--out bench-results/memory]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_VIDEO,
    bench_config,
    enroll_from_frames,
    load_frames,
    machine,
    open_gallery,
    pyplot,
    rss_bytes,
)

from engine.config import Config  # noqa: E402
from engine.metrics import EngineMetrics  # noqa: E402
from engine.video.events import MatchFilterSpec  # noqa: E402
from engine.video.pipeline import Engine  # noqa: E402
from engine.video.sources import PullSource  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402

TARGET_GROWTH_PCT = 10.0


def run(video: str | Path = DEFAULT_VIDEO, cameras: int = 4, duration_s: float = 600.0, warmup_s: float = 60.0,
        interval_s: float = 5.0, out: str | Path | None = "bench-results/memory", model_dir: str | None = None,
        base_cfg: Config | None = None) -> dict[str, Any]:
    """Soak the engine; writes `<out>.json` and `<out>.png` unless `out` is None. Returns the summary."""
    db = str(Path(tempfile.mkdtemp(prefix="fe-mem-")) / "bench.db")
    cfg = (base_cfg.with_overrides({"store": {"path": db}}, source="bench_memory")
           if base_cfg is not None else bench_config(model_dir, db))
    analyzer = FaceAnalyzer.from_config(cfg)
    store, gallery = open_gallery(cfg, analyzer)
    enroll_frames, _ = load_frames(video, 120)
    persons = enroll_from_frames(analyzer, gallery, cfg, enroll_frames)
    del enroll_frames
    metrics = EngineMetrics()
    eng = Engine(cfg, analyzer, gallery, store, metrics)
    sources = []
    for i in range(cameras):
        cam = eng.add_camera(f"cam{i}", str(video), {"loop": "true", "realtime": "true"})
        src = PullSource(eng, cam)
        cam.source = src
        sources.append(src)
    sub = eng.bus.subscribe(MatchFilterSpec())
    stop = threading.Event()
    received = [0]

    def drain() -> None:  # a live operator console
        while not stop.is_set():
            try:
                item = sub.queue.get(timeout=0.5)
            except Exception:  # queue.Empty
                continue
            if item is None:
                return
            received[0] += 1

    drainer = threading.Thread(target=drain, name="subscriber", daemon=True)
    eng.start()
    for s in sources:
        s.start()
    drainer.start()
    t0 = time.monotonic()
    print(f"{cameras} cameras on {Path(video).name}, {len(persons)} persons enrolled; warm-up {warmup_s:g} s, "
          f"then {duration_s - warmup_s:g} s sampled every {interval_s:g} s", flush=True)
    samples: list[tuple[float, float, int, float]] = []  # (s since start, RSS MB, frames processed, queued MB)
    next_t = t0 + warmup_s
    while True:
        now = time.monotonic()
        if now - t0 >= duration_s:
            break
        time.sleep(max(0.0, min(next_t, t0 + duration_s) - now))
        if time.monotonic() >= next_t:
            cams_now = eng.cameras()
            processed = sum(c.frames_processed for c in cams_now)
            queued = sum(j.image.nbytes for c in cams_now for j in list(c.queue)) / 2**20
            samples.append((time.monotonic() - t0, rss_bytes() / 2**20, processed, queued))
            print(f"t={samples[-1][0]:6.0f} s  rss {samples[-1][1]:7.1f} MB  queued frames {queued:6.1f} MB  "
                  f"frames {processed}", flush=True)
            next_t += interval_s
    stop.set()
    for s in sources:
        s.stop()
    eng.stop(drain_s=2.0)
    cams = eng.cameras()
    store.close()
    summary = _summarise(samples, cams, received[0], len(persons), metrics)
    summary["meta"] = {"video": str(video), "cameras": cameras, "duration_s": duration_s, "warmup_s": warmup_s,
                       "interval_s": interval_s, "machine": machine(),
                       "pipeline": cfg.pipeline.model_dump()}
    print(f"RSS {summary['rss_first_mb']:.1f} -> {summary['rss_last_mb']:.1f} MB after warm-up: growth "
          f"{summary['growth_pct']:+.2f} % (target < {TARGET_GROWTH_PCT} %), slope {summary['slope_mb_per_min']:+.3f} "
          f"MB/min (without queued frames {summary['growth_excl_queued_pct']:+.2f} %, "
          f"{summary['slope_excl_queued_mb_per_min']:+.3f} MB/min); {summary['frames_processed']} frames "
          f"processed, {summary['frames_dropped']} dropped, {summary['events']} bus events", flush=True)
    if out is not None:
        base = Path(out)
        base.parent.mkdir(parents=True, exist_ok=True)
        jp, pp = base.with_name(base.name + ".json"), base.with_name(base.name + ".png")
        jp.write_text(json.dumps(summary, indent=2))
        _plot(summary, pp)
        print(f"wrote {jp} and {pp}")
    return summary


def _growth(t: np.ndarray, rss: np.ndarray) -> tuple[float, float, float, float]:
    """(first, last, growth %, slope MB/min): medians of the first and last 5 samples, least squares."""
    k = min(5, len(rss))
    if not k:
        return float("nan"), float("nan"), float("nan"), float("nan")
    first, last = float(np.median(rss[:k])), float(np.median(rss[-k:]))
    slope = float(np.polyfit(t / 60, rss, 1)[0]) if len(rss) >= 2 else float("nan")
    return first, last, (last - first) / first * 100 if first > 0 else float("nan"), slope


def _summarise(samples: list[tuple[float, float, int, float]], cams: list[Any], events: int, persons: int,
               metrics: EngineMetrics) -> dict[str, Any]:
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    # frames waiting in the camera queues (bounded by queue_size) swing RSS with the machine's load
    base = rss - np.array([s[3] for s in samples])
    _, _, base_growth, base_slope = _growth(t, base)
    first, last, growth, slope = _growth(t, rss)
    return {"growth_pct": growth, "target_growth_pct": TARGET_GROWTH_PCT, "pass": bool(growth < TARGET_GROWTH_PCT),
            "rss_first_mb": first, "rss_last_mb": last, "rss_max_mb": float(rss.max()) if len(rss) else float("nan"),
            "slope_mb_per_min": slope, "growth_excl_queued_pct": base_growth,
            "slope_excl_queued_mb_per_min": base_slope, "frames_processed": sum(c.frames_processed for c in cams),
            "frames_dropped": sum(c.frames_dropped for c in cams), "events": events, "persons": persons,
            "embeddings": metrics.registry.get_sample_value("faceengine_embeddings_total") or 0.0,
            "samples": [{"t_s": round(a, 1), "rss_mb": round(b, 2), "frames": c, "queued_mb": round(q, 2)}
                        for a, b, c, q in samples]}


def _plot(s: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    t = [p["t_s"] for p in s["samples"]]
    ax.plot(t, [p["rss_mb"] for p in s["samples"]], marker=".", lw=1, label="RSS")
    ax.plot(t, [p["rss_mb"] - p["queued_mb"] for p in s["samples"]], lw=1, label="RSS - frames queued")
    ax.axvspan(0, s["meta"]["warmup_s"], color="#ddd", label="warm-up (not sampled)")
    ax.set_xlim(0, s["meta"]["duration_s"])
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS MB")
    ax.set_title(f"{s['meta']['cameras']} looping cameras: RSS growth {s['growth_pct']:+.2f} % "
                 f"({s['slope_mb_per_min']:+.2f} MB/min)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO), help="video file each camera loops")
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--duration", type=float, default=600.0, help="total seconds, warm-up included (default 600)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before sampling starts (default 60)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    p.add_argument("--model-dir", help="model folder")
    p.add_argument("--out", default="bench-results/memory", help="output prefix for .json and .png")
    a = p.parse_args(argv)
    s = run(a.video, a.cameras, a.duration, a.warmup, a.interval, a.out, a.model_dir)
    return 0 if s["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
