#!/usr/bin/env python
"""Model-level throughput: the engine's own detector and embedder classes on real frames and faces.

Detector: frames/s of `detect_batch` on real 1080p frames of multiface_1080p.mp4 at batch 1 / 8 / 32,
pre-processing included (the CPU letterbox, or the graph's own with `runtime.graph_preprocess`), each
point split into pre-process, model and post-process milliseconds a frame (`FaceDetector.last_timing`).
Embedder: faces/s of `embed` on real aligned face crops (the detector's faces of those frames, aligned by
the engine's aligner) at batch 1 / 32 / 256, split into blob (colour, float, normalise, transpose) and
model milliseconds a face. Models are built from the config (`load_detector` / `load_embedder`), so
`runtime.provider`, `runtime.graph_preprocess`, the batch check and whatever else `[runtime]` sets apply.

Targets (issue 13, for one H100): detector >= 2,000 frames/s at 1080p batch 32, MobileFaceNet >= 10,000
faces/s. With a GPU provider each reads MET or MISSED, judged on the unrounded value; on the CPU the
figures are reported and the verdict says the target is not for this provider.

Usage:
  faceengine bench models [--provider cuda] [--batches 1,8,32] [--face-batches 1,32,256] [--seconds 2]
                          [--quick] [--json] [--out bench-results/models]
  python benchmarks/bench_models.py --provider cpu --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_VIDEO,
    bench_config,
    cfg_copy,
    jsonable,
    load_frames,
    machine,
    pyplot,
    section_dict,
    write_results,
)
from gpu_monitor import GpuMonitor, describe  # noqa: E402

from engine.config import Config  # noqa: E402
from engine.models.registry import ModelRegistry  # noqa: E402
from engine.vision.align import Aligner  # noqa: E402
from engine.vision.detectors import OnnxFaceDetector, load_detector  # noqa: E402
from engine.vision.embedder import FaceEmbedder, l2_normalize, load_embedder  # noqa: E402
from engine.vision.graph_preprocess import letterbox_for  # noqa: E402

TARGET_DETECTOR_FPS = 2000.0
"""Detector frames/s at 1080p, batch 32, pre-processing included (issue 13, one H100)."""
TARGET_DETECTOR_BATCH = 32
TARGET_MOBILEFACENET_FPS = 10000.0
"""MobileFaceNet faces/s (issue 13, one H100), the best of the measured batches."""
TARGET_EMBEDDER = "mobilefacenet"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
DET_BATCHES = (1, 8, 32)
FACE_BATCHES = (1, 32, 256)
QUICK = {"batches": (1, 4), "face_batches": (1, 16), "seconds": 0.3, "frames": 8}
WARMUP_CALLS = 2
MIN_CALLS = 3


def verdict(value: float, target: float, provider: str) -> str:
    """MET / MISSED on the unrounded value for a GPU provider; on others the target does not apply."""
    if provider not in GPU_PROVIDERS:
        return f"n/a on {provider} (target is for an H100 GPU provider)"
    return "MET" if value == value and value >= target else "MISSED"


def _timed_loop(call: Callable[[int], None], seconds: float,
                on_start: Callable[[], None] | None = None) -> tuple[int, float]:
    """Call `call(i)` for at least `seconds` and MIN_CALLS calls, after WARMUP_CALLS untimed ones (first
    calls of a shape allocate and, on CUDA, pick kernels); `on_start` runs between. (calls, seconds)."""
    for i in range(WARMUP_CALLS):
        call(i)
    if on_start is not None:
        on_start()
    n, t0 = 0, time.perf_counter()
    while n < MIN_CALLS or time.perf_counter() - t0 < seconds:
        call(n)
        n += 1
    return n, time.perf_counter() - t0


def detector_point(det: OnnxFaceDetector, frames: Sequence[np.ndarray], batch: int, seconds: float) -> dict[str, Any]:
    """frames/s of `detect_batch` on `batch` frames a call (consecutive frames, a new start each call)."""
    sums = np.zeros(3)
    faces = [0]
    n_frames = len(frames)

    def call(i: int) -> None:
        chunk = [frames[(i * batch + k) % n_frames] for k in range(batch)]
        dets = det.detect_batch(chunk)
        t = det.last_timing()
        if t is not None:
            sums[:] += (t.preprocess, t.model, t.postprocess)
        faces[0] += sum(len(d) for d in dets)

    def reset() -> None:
        sums[:] = 0.0
        faces[0] = 0

    calls, secs = _timed_loop(call, seconds, reset)
    per = 1000.0 / (calls * batch)
    split_total = float(sums.sum()) or 1.0
    done = calls * batch
    return {"batch": batch, "calls": calls, "seconds": secs, "frames_per_s": done / secs,
            "ms_per_frame": secs / done * 1000,
            "preprocess_ms_per_frame": float(sums[0]) * per, "model_ms_per_frame": float(sums[1]) * per,
            "postprocess_ms_per_frame": float(sums[2]) * per,
            "model_share": float(sums[1]) / split_total,
            "faces_per_frame": faces[0] / (calls * batch)}


def embedder_point(emb: FaceEmbedder, crops: np.ndarray, batch: int, seconds: float) -> dict[str, Any]:
    """faces/s of `embed` on `batch` crops a call, then the blob / model split from the same pieces."""
    n = len(crops)
    chunks = [crops[np.arange(s, s + batch) % n] for s in range(0, max(n, batch), batch)][:8]

    def call(i: int) -> None:
        emb.embed(chunks[i % len(chunks)])

    calls, secs = _timed_loop(call, seconds)
    blob_s = model_s = 0.0
    split_calls = 0
    t_end = time.perf_counter() + max(seconds / 2, 0.05)
    while split_calls < MIN_CALLS or time.perf_counter() < t_end:  # the parts embed() runs, timed apart
        t0 = time.perf_counter()
        blob = emb._blob(chunks[split_calls % len(chunks)])
        t1 = time.perf_counter()
        l2_normalize(emb.runner.run(blob)[0].reshape(batch, -1))
        blob_s, model_s = blob_s + t1 - t0, model_s + time.perf_counter() - t1
        split_calls += 1
    done = calls * batch
    return {"batch": batch, "calls": calls, "seconds": secs, "faces_per_s": done / secs,
            "ms_per_face": secs / done * 1000,
            "blob_ms_per_face": blob_s / (split_calls * batch) * 1000,
            "model_ms_per_face": model_s / (split_calls * batch) * 1000}


def face_crops(det: OnnxFaceDetector, frames: Sequence[np.ndarray], want: int) -> np.ndarray:
    """Aligned 112x112 crops of the faces the detector finds in `frames` (real faces, engine's aligner)."""
    aligner = Aligner()
    crops: list[np.ndarray] = []
    for frame in frames:
        crops += list(aligner.align_all(frame, det.detect(frame)))
        if len(crops) >= want:
            break
    if not crops:
        raise RuntimeError("no face found in the benchmark frames: cannot time the embedder on real faces")
    return np.stack(crops)


def run(cfg: Config, batches: Sequence[int] = DET_BATCHES, face_batches: Sequence[int] = FACE_BATCHES,
        seconds: float = 2.0, video: str | Path = DEFAULT_VIDEO, max_frames: int = 32,
        embedders: Sequence[str] | None = None, out: str | Path | None = "bench-results/models",
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time the configured detector and the embedders (default: mobilefacenet and the configured one)."""
    mach = machine()
    mon = GpuMonitor(device=cfg.runtime.device_id).start()
    registry = ModelRegistry.from_config(cfg.models)
    frames, _fps = load_frames(video, max_frames)
    h, w = frames[0].shape[:2]
    log(f"{len(frames)} frames {w}x{h} of {Path(video).name}; provider {cfg.runtime.provider}, graph_preprocess "
        f"{cfg.runtime.graph_preprocess}; detector batches {list(batches)}, embedder batches {list(face_batches)}, "
        f"{seconds:g} s a point")
    t_load = time.perf_counter()
    det = load_detector(registry, cfg.models.detector, copy.deepcopy(cfg.detector), cfg.runtime)
    assert isinstance(det, OnnxFaceDetector)
    det_info = det.runner.info()
    graph = bool(det.graph_letterbox)
    _, tw, th = (letterbox_for(h, w, det.network_side(w, h)) if graph else (1.0, *det.target_size(w, h)))
    detector: dict[str, Any] = {"model": det.name, "file": det_info.model, "provider": det_info.provider,
                                "batched": det_info.batched, "batch_check": det_info.batch_check,
                                "graph_preprocess": graph, "network_input": [tw, th],
                                "load_s": time.perf_counter() - t_load, "points": []}
    log(f"detector {det.name} on {det_info.provider}: batched {det_info.batched} ({det_info.batch_check}); "
        f"{'graph' if graph else 'CPU'} letterbox to {tw}x{th}")
    for b in batches:
        t0 = mon.now()
        pt = detector_point(det, frames, b, seconds)
        pt["gpu"] = mon.summary(t0, mon.now())
        detector["points"].append(pt)
        log(f"  batch {b:>3}: {pt['frames_per_s']:8.1f} frames/s  ({pt['preprocess_ms_per_frame']:.2f} pre + "
            f"{pt['model_ms_per_frame']:.2f} model + {pt['postprocess_ms_per_frame']:.2f} post ms a frame, "
            f"{pt['faces_per_frame']:.1f} faces a frame; {describe(pt['gpu'])})")
    crops = face_crops(det, frames, max(face_batches))
    del det
    names = list(embedders) if embedders else list(dict.fromkeys([TARGET_EMBEDDER, cfg.models.embedder]))
    embs: dict[str, Any] = {}
    for name in names:
        t_load = time.perf_counter()
        ecfg = copy.deepcopy(cfg.embedder)
        ecfg.batch_size = max(face_batches)  # one model call a batch: the point's batch is the model's batch
        emb = load_embedder(registry, name, ecfg, cfg.runtime)
        info = emb.runner.info()
        e: dict[str, Any] = {"model": name, "file": info.model, "provider": info.provider, "batched": info.batched,
                             "batch_check": info.batch_check, "dim": emb.dim, "load_s": time.perf_counter() - t_load,
                             "distinct_crops": len(crops), "points": []}
        log(f"embedder {name} on {info.provider}: batched {info.batched} ({info.batch_check}); "
            f"{len(crops)} distinct real face crops")
        for b in face_batches:
            t0 = mon.now()
            pt = embedder_point(emb, crops, b, seconds)
            pt["gpu"] = mon.summary(t0, mon.now())
            e["points"].append(pt)
            log(f"  batch {b:>3}: {pt['faces_per_s']:8.1f} faces/s  ({pt['blob_ms_per_face']:.3f} blob + "
                f"{pt['model_ms_per_face']:.3f} model ms a face; {describe(pt['gpu'])})")
        embs[name] = e
        del emb
    mon.stop()
    summary: dict[str, Any] = {"detector": detector, "embedders": embs, "targets": _targets(detector, embs),
                               "gpu": mon.summary()}
    summary["meta"] = {"video": Path(video).name, "frames": len(frames), "size": [w, h], "seconds_per_point": seconds,
                       "batches": list(batches), "face_batches": list(face_batches), "machine": mach,
                       "config": {"runtime": section_dict(cfg.runtime), "detector": section_dict(cfg.detector),
                                  "models": [cfg.models.detector, cfg.models.embedder]},
                       "method": "engine classes built from the config (load_detector / load_embedder); detector "
                                 "timed through detect_batch (pre-processing, model, decode + NMS), embedder "
                                 "through embed (blob + model + normalise); warm-up calls untimed"}
    for t in summary["targets"]:
        log(f"target {t['what']}: {t['value']:.1f} {t['unit']} (target >= {t['target']:g}) on {t['provider']}: "
            f"{t['verdict']}" if t["value"] is not None else f"target {t['what']}: not measured ({t['verdict']})")
    if out is not None:
        jp, pp = write_results(summary, out, _plot)
        log(f"wrote {jp} and {pp}")
    return summary


def _targets(detector: dict[str, Any], embs: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue-13 targets against what was measured (None when that point was not run)."""
    out: list[dict[str, Any]] = []
    pts = {p["batch"]: p for p in detector["points"]}
    p = pts.get(TARGET_DETECTOR_BATCH)
    prov = detector["provider"]
    out.append({"what": f"detector {detector['model']} 1080p batch {TARGET_DETECTOR_BATCH}, pre-processing included",
                "value": p["frames_per_s"] if p else None, "unit": "frames/s", "target": TARGET_DETECTOR_FPS,
                "provider": prov,
                "verdict": verdict(p["frames_per_s"], TARGET_DETECTOR_FPS, prov) if p else
                f"batch {TARGET_DETECTOR_BATCH} not in --batches"})
    e = embs.get(TARGET_EMBEDDER)
    best = max(e["points"], key=lambda q: q["faces_per_s"]) if e and e["points"] else None
    eprov = e["provider"] if e else "-"
    out.append({"what": f"{TARGET_EMBEDDER} embedder, best batch" + (f" ({best['batch']})" if best else ""),
                "value": best["faces_per_s"] if best else None, "unit": "faces/s", "target": TARGET_MOBILEFACENET_FPS,
                "provider": eprov,
                "verdict": verdict(best["faces_per_s"], TARGET_MOBILEFACENET_FPS, eprov) if best else
                f"{TARGET_EMBEDDER} not measured"})
    return out


def _plot(s: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    d = s["detector"]
    xs = [str(p["batch"]) for p in d["points"]]
    pre = [p["preprocess_ms_per_frame"] for p in d["points"]]
    mod = [p["model_ms_per_frame"] for p in d["points"]]
    post = [p["postprocess_ms_per_frame"] for p in d["points"]]
    a1.bar(xs, pre, label="pre-process")
    a1.bar(xs, mod, bottom=pre, label="model")
    a1.bar(xs, post, bottom=np.add(pre, mod), label="post-process")
    for x, p in zip(xs, d["points"], strict=True):
        a1.annotate(f"{p['frames_per_s']:.0f} fps", (x, p["ms_per_frame"]), ha="center", va="bottom")
    a1.set_xlabel("frames a call")
    a1.set_ylabel("ms a frame")
    a1.set_title(f"{d['model']} on {d['provider']}, {s['meta']['size'][0]}x{s['meta']['size'][1]}")
    a1.legend()
    for name, e in s["embedders"].items():
        a2.plot([str(p["batch"]) for p in e["points"]], [p["faces_per_s"] for p in e["points"]], marker="o",
                label=f"{name} ({e['provider']})")
    a2.set_xlabel("faces a call")
    a2.set_ylabel("faces/s")
    a2.set_title("embedders, real aligned crops")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ints(text: str) -> list[int]:
    vals = [int(v) for v in str(text).split(",") if v.strip()]
    if not vals or min(vals) < 1:
        raise ValueError(f"batches must be positive integers, comma-separated: {text!r}")
    return vals


def main_args(args: argparse.Namespace, cfg: Config | None = None) -> int:
    """Run from parsed arguments (`faceengine bench models` or this script's own parser)."""
    log: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
    cfg = cfg if cfg is not None else bench_config(getattr(args, "model_dir", None))
    if getattr(args, "provider", None):
        cfg = cfg_copy(cfg, runtime={"provider": args.provider})
    quick = bool(getattr(args, "quick", False))
    batches = _ints(args.batches) if args.batches else list(QUICK["batches"] if quick else DET_BATCHES)
    face_batches = _ints(args.face_batches) if args.face_batches else list(QUICK["face_batches"] if quick
                                                                           else FACE_BATCHES)
    seconds = args.seconds if args.seconds is not None else (QUICK["seconds"] if quick else 2.0)
    max_frames = args.max_frames or (QUICK["frames"] if quick else 32)
    embedders = [e for e in args.embedders.split(",") if e] if getattr(args, "embedders", None) else (
        [TARGET_EMBEDDER] if quick else None)
    s = run(cfg, batches, face_batches, seconds, args.video or DEFAULT_VIDEO, max_frames, embedders, args.out, log)
    if args.json:
        line = {"detector": {"model": s["detector"]["model"], "provider": s["detector"]["provider"],
                             "frames_per_s": {str(p["batch"]): p["frames_per_s"] for p in s["detector"]["points"]}},
                "embedders": {k: {"provider": v["provider"],
                                  "faces_per_s": {str(p["batch"]): p["faces_per_s"] for p in v["points"]}}
                              for k, v in s["embedders"].items()},
                "targets": [{k: t[k] for k in ("what", "value", "target", "verdict")} for t in s["targets"]],
                "gpu": describe(s["gpu"])}
        print(json.dumps(line, default=jsonable), flush=True)
    return 0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", help="runtime.provider for this run: cpu, cuda, tensorrt, auto")
    p.add_argument("--batches", default=None, help="detector frames a call, comma-separated (default 1,8,32)")
    p.add_argument("--face-batches", default=None, help="embedder faces a call (default 1,32,256)")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds a point (default 2)")
    p.add_argument("--embedders", default=None, help="embedders to time (default mobilefacenet + the configured)")
    p.add_argument("--video", default=None, help="video whose frames are timed (default multiface_1080p.mp4)")
    p.add_argument("--max-frames", type=int, default=0, help="distinct frames held in memory (default 32)")
    p.add_argument("--quick", action="store_true", help="batches 1,4 / 1,16, 0.3 s a point, mobilefacenet only")
    p.add_argument("--out", default="bench-results/models", help="output prefix for .json and .png")
    p.add_argument("--json", action="store_true", help="log on stderr; end with one JSON summary line")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p)
    p.add_argument("--model-dir", help="model folder (default: config / FACEENGINE_MODEL_DIR)")
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
