#!/usr/bin/env python
"""Memory soak of the server: does `faceengine serve`'s RSS grow under steady gRPC ingest?

A real `faceengine serve --dev` process (its own store, persons of the clip enrolled from held-out
frames plus photo and LFW distractors, so match events are raised and stored) is fed by camera
gateways in another process (gateway_worker.py) over loopback gRPC, JPEG frames of the video.

Paced so that nothing is dropped: a short saturating calibration measures the server's capacity,
then the cameras are paced at `--load` (default 50 %) of it. A soak with dropped frames measures
queue fill rather than leaks, so drops make the verdict INVALID.

RSS of the server process is read from /proc/<pid>/statm every `--interval` seconds; after the
warm-up the slope is the least-squares fit in MB per minute. Verdict: PASS when the slope is below
`TARGET_SLOPE_MB_PER_MIN` and nothing was dropped.

With a GPU (NVML or nvidia-smi, `gpu_monitor.GpuMonitor`) the GPU memory is sampled at the same times:
the server process's own (NVML / nvidia-smi compute apps) where the driver reports it, else the device's
memory in use; it gets the same fit and its own verdict (`gpu.verdict`: issue 13 asks for GPU memory that
is stable over a 5-minute run). Without a GPU those fields are None and the verdict says "no GPU".
`--provider cuda` runs the server (and the enrolment) on that provider.

Usage:
  python benchmarks/bench_memory.py [--seconds 600] [--warmup 60] [--interval 5] [--cameras 4]
                                    [--load 0.5] [--provider cuda] [--video FILE] [--out bench-results/memory]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_VIDEO,
    ROOT,
    bench_config,
    enroll_distractors,
    enroll_heldout,
    load_frames,
    machine,
    open_gallery,
    pyplot,
    split_clip,
    write_results,
)
from gpu_monitor import GpuMonitor  # noqa: E402

from engine.client import Client  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402

TARGET_SLOPE_MB_PER_MIN = 1.0
CALIBRATION_S = 20.0


def rss_mb(pid: int) -> float:
    """Resident set size of process `pid` in MB, from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _gateways(address: str, cameras: int, payloads: list[bytes], fps: float, rate: float, seconds: float,
              window: int) -> subprocess.Popen[str]:
    """Start gateway_worker.py (its own process) streaming `payloads` on `cameras` push cameras."""
    cams = [f"soak{i}" for i in range(cameras)]
    n = len(payloads)
    job = {"address": address, "cameras": cams, "fps": fps, "window": window, "payloads": payloads, "raws": None,
           "rate": rate, "seconds": seconds, "order": [[(i * n // cameras + j) % n for j in range(n)]
                                                       for i in range(cameras)]}
    fd, path = tempfile.mkstemp(prefix="fe-soak-", suffix=".pkl")
    with os.fdopen(fd, "wb") as fh:
        pickle.dump(job, fh)
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("gateway_worker.py")), path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"gateway process failed: {err[-2000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def run(video: str | Path = DEFAULT_VIDEO, cameras: int = 4, seconds: float = 600.0, warmup_s: float = 60.0,
        interval_s: float = 5.0, load: float = 0.5, out: str | Path | None = "bench-results/memory",
        model_dir: str | None = None, lfw_distractors: int = 200, provider: str | None = None) -> dict[str, Any]:
    """Soak a `faceengine serve` process; writes `<out>.json` and `<out>.png` unless `out` is None."""
    mach = machine()
    work = Path(tempfile.mkdtemp(prefix="fe-soak-"))
    cfg = bench_config(model_dir, str(work / "soak.db"))
    if provider:
        cfg.update({"runtime": {"provider": provider}}, source="bench_memory --provider")
    clip, fps = load_frames(video)
    timed_idx, held_idx = split_clip(clip)
    analyzer = FaceAnalyzer.from_config(cfg)
    store, gallery = open_gallery(cfg, analyzer)
    persons = enroll_heldout(analyzer, gallery, cfg, clip, held_idx)
    n_clip = len(persons)
    persons.update(enroll_distractors(analyzer, gallery, lfw_distractors))
    store.close()
    payloads = [cv2.imencode(".jpg", clip[i], [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for i in timed_idx]
    del clip, analyzer, gallery
    ready = work / "ready"
    cmd = [sys.executable, "-m", "engine.cli.main", "serve", "--dev", "--port", "0", "--metrics-port", "0",
           "--ready-file", str(ready), "--db", cfg.store.path, "--model-dir", cfg.models.dir]
    if cfg.models.mirror:
        cmd += ["--mirror", cfg.models.mirror]
    cmd += ["--provider", cfg.runtime.provider]
    log_file = (work / "server.log").open("w")
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    samples: list[tuple[float, float]] = []
    gpu_samples: list[tuple[float, float, float | None]] = []  # (t, device MB in use, server process MB)
    gpu = GpuMonitor(device=cfg.runtime.device_id, pid=server.pid)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"faceengine serve did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        address = ready.read_text().strip()
        with Client(address, token="") as client:
            client.wait_ready(30)
            for i in range(cameras):
                client.ensure_push_camera(f"soak{i}")
        print(f"faceengine serve pid {server.pid} on {address}; {n_clip} clip persons (held-out frames) + "
              f"{len(persons) - n_clip} distractors enrolled", flush=True)
        # capacity: saturating gateways for a short while (this also warms the server up)
        cal = _finish(_gateways(address, cameras, payloads, fps, 0.0, CALIBRATION_S, 4), CALIBRATION_S + 180)
        if cal["errors"] and cal["errors"] == cal["frames"]:
            raise RuntimeError(f"every calibration frame failed ({cal['errors']} errors); see the server log")
        capacity = (cal["frames"] - cal["errors"]) / max(1e-9, cal["last_recv"] - cal["first_send"])
        rate = load * capacity / cameras
        print(f"capacity {capacity:.1f} fps (saturated, {cal['frames']} frames); soak at {load:.0%}: "
              f"{cameras} cameras x {rate:.2f} fps for {seconds:g} s, warm-up {warmup_s:g} s", flush=True)
        gw = _gateways(address, cameras, payloads, fps, rate, seconds, 64)
        t0 = time.monotonic()
        next_t = t0
        while gw.poll() is None and time.monotonic() - t0 < seconds:
            now = time.monotonic()
            if now >= next_t:
                samples.append((now - t0, rss_mb(server.pid)))
                g = gpu.sample()
                if g is not None:
                    gpu_samples.append((now - t0, g.mem_used_mb, g.proc_mem_mb))
                if len(samples) % 12 == 1:
                    print(f"t={samples[-1][0]:6.0f} s  server RSS {samples[-1][1]:7.1f} MB"
                          + (f", GPU memory {g.mem_used_mb:.0f} MB (server {g.proc_mem_mb} MB)" if g else ""),
                          flush=True)
                next_t += interval_s
            time.sleep(max(0.0, min(next_t, t0 + seconds) - time.monotonic()))
        soak = _finish(gw, 180)
    finally:
        gpu.stop()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log_file.close()
    summary = _summarise(samples, warmup_s, soak)
    summary["gpu"] = gpu_summary(gpu_samples, warmup_s, gpu.name, gpu.why_none)
    summary.update(capacity_fps=capacity, load=load, fps_per_camera=rate, offered_fps=rate * cameras,
                   calibration={"seconds": CALIBRATION_S, "frames": cal["frames"], "dropped": cal["dropped"],
                                "errors": cal["errors"]})
    summary["meta"] = {"video": Path(video).name, "cameras": cameras, "seconds": seconds, "warmup_s": warmup_s,
                       "interval_s": interval_s, "default_seconds": 600.0, "shortened": seconds < 600.0,
                       "process": "faceengine serve --dev (its own process), gateways in another process, JPEG q85",
                       "persons": {"clip": n_clip, "distractors": len(persons) - n_clip}, "machine": mach}
    print(f"server RSS after warm-up {summary['rss_first_mb']:.1f} -> {summary['rss_last_mb']:.1f} MB, slope "
          f"{summary['slope_mb_per_min']:+.3f} MB/min (target < {TARGET_SLOPE_MB_PER_MIN}); "
          f"{soak['frames']} results, {soak['dropped']} dropped, {soak['errors']} errors: {summary['verdict']}",
          flush=True)
    gs = summary["gpu"]
    if gs["gpu"] is not None:
        print(f"GPU memory ({gs['source']}) after warm-up {gs['first_mb']} -> {gs['last_mb']} MB, slope "
              f"{gs['slope_mb_per_min']:+.3f} MB/min: {gs['verdict']}", flush=True)
    if out is not None:
        jp, pp = write_results(summary, out, _plot)
        print(f"wrote {jp} and {pp}")
    return summary


def _summarise(samples: list[tuple[float, float]], warmup_s: float, soak: dict[str, Any]) -> dict[str, Any]:
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    keep = t >= warmup_s
    tk, rk = t[keep], rss[keep]
    slope = float(np.polyfit(tk / 60, rk, 1)[0]) if len(tk) >= 3 else float("nan")
    k = min(5, len(rk))
    first = float(np.median(rk[:k])) if k else float("nan")
    last = float(np.median(rk[-k:])) if k else float("nan")
    lat = np.asarray(soak["latencies_ms"], np.float64)
    if soak["dropped"] or soak["errors"]:
        verdict = f"INVALID ({soak['dropped']} dropped, {soak['errors']} errors: lower --load)"
    elif slope != slope:
        verdict = "INVALID (too few samples after warm-up)"
    else:
        verdict = "PASS" if slope < TARGET_SLOPE_MB_PER_MIN else "GROWING"
    return {"verdict": verdict, "slope_mb_per_min": slope, "target_slope_mb_per_min": TARGET_SLOPE_MB_PER_MIN,
            "rss_first_mb": first, "rss_last_mb": last,
            "rss_min_mb": float(rk.min()) if len(rk) else float("nan"),
            "rss_max_mb": float(rk.max()) if len(rk) else float("nan"),
            "frames": soak["frames"], "dropped": soak["dropped"], "errors": soak["errors"],
            "p50_latency_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_latency_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "events_by_person": soak["tracks"],
            "samples": [{"t_s": round(a, 1), "rss_mb": round(b, 2)} for a, b in samples]}


def gpu_summary(samples: list[tuple[float, float, float | None]], warmup_s: float, name: str | None,
                why_none: str = "") -> dict[str, Any]:
    """GPU memory over the soak with a least-squares slope after the warm-up, like the RSS one.

    Fits the server process's own GPU memory when every sample has it, else the device's memory in use
    (then other processes on the GPU count too). No GPU: every figure None, verdict "no GPU"."""
    if name is None or not samples:
        return {"gpu": name, "verdict": "no GPU" if name is None else "INVALID (no GPU sample)",
                "why_none": why_none or None, "source": None, "slope_mb_per_min": None, "first_mb": None,
                "last_mb": None, "max_mb": None, "target_slope_mb_per_min": TARGET_SLOPE_MB_PER_MIN, "samples": []}
    per_proc = all(p is not None for _, _, p in samples)
    vals = np.array([(p if per_proc else d) for _, d, p in samples], np.float64)
    t = np.array([s[0] for s in samples])
    keep = t >= warmup_s
    tk, vk = t[keep], vals[keep]
    slope = float(np.polyfit(tk / 60, vk, 1)[0]) if len(tk) >= 3 else float("nan")
    k = min(5, len(vk))
    verdict = ("INVALID (too few samples after warm-up)" if slope != slope
               else "PASS" if slope < TARGET_SLOPE_MB_PER_MIN else "GROWING")
    return {"gpu": name, "verdict": verdict, "why_none": None,
            "source": "server process" if per_proc else "device memory in use (all processes)",
            "slope_mb_per_min": slope, "first_mb": float(np.median(vk[:k])) if k else None,
            "last_mb": float(np.median(vk[-k:])) if k else None, "max_mb": float(vals.max()),
            "target_slope_mb_per_min": TARGET_SLOPE_MB_PER_MIN,
            "samples": [{"t_s": round(a, 1), "device_mb": b, "process_mb": c} for a, b, c in samples]}


def _plot(s: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    t = np.array([p["t_s"] for p in s["samples"]])
    rss = np.array([p["rss_mb"] for p in s["samples"]])
    ax.plot(t, rss, marker=".", lw=1, label="faceengine serve RSS")
    w = s["meta"]["warmup_s"]
    ax.axvspan(0, w, color="#ddd", label="warm-up (not in the fit)")
    keep = t >= w
    if keep.sum() >= 3:
        a, b = np.polyfit(t[keep] / 60, rss[keep], 1)
        ax.plot(t[keep], a * t[keep] / 60 + b, "r--", lw=1, label=f"fit {a:+.2f} MB/min")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS MB")
    gs = s.get("gpu") or {}
    if gs.get("samples"):
        ax2 = ax.twinx()
        key = "process_mb" if gs["source"] == "server process" else "device_mb"
        ax2.plot([p["t_s"] for p in gs["samples"]], [p[key] for p in gs["samples"]], color="#a3a", lw=1,
                 label=f"GPU memory ({gs['source']}), {gs['slope_mb_per_min']:+.2f} MB/min")
        ax2.set_ylabel("GPU MB")
        ax2.legend(loc="upper left")
    ax.set_title(f"server soak, {s['meta']['cameras']} cameras at {s['load']:.0%} of capacity, "
                 f"{s['meta']['seconds']:g} s: {s['verdict']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO), help="video whose frames the gateways send (as JPEG)")
    p.add_argument("--cameras", type=int, default=4, help="gateway streams (default 4)")
    p.add_argument("--seconds", "--duration", type=float, default=600.0,
                   help="soak seconds after calibration (default 600)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the fit (default 60)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    p.add_argument("--load", type=float, default=0.5, help="share of the measured capacity to send (default 0.5)")
    p.add_argument("--lfw-distractors", type=int, default=200, help="LFW identities enrolled as distractors")
    p.add_argument("--model-dir", help="model folder")
    p.add_argument("--provider", help="runtime.provider of the server and the enrolment (default: the config's)")
    p.add_argument("--out", default="bench-results/memory", help="output prefix for .json and .png")
    a = p.parse_args(argv)
    s = run(a.video, a.cameras, a.seconds, a.warmup, a.interval, a.load, a.out, a.model_dir, a.lfw_distractors,
            a.provider)
    return 0 if s["verdict"] == "PASS" and s["gpu"]["verdict"] in ("PASS", "no GPU") else 1


if __name__ == "__main__":
    sys.exit(main())
