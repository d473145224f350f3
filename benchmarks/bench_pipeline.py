#!/usr/bin/env python
"""End-to-end video throughput and latency: naive per-face loop vs OpenCV loop vs the engine.

The clip is split: frames [0, 55 %) are the timed frames, frames [65 %, 80 %) are held out and only
used to enrol the people of the clip (never fed to a timed pass; no photo of these people exists
in testdata/images or LFW). Distractors are enrolled too:
every face of the photos in testdata/images and one image each of 200 LFW identities, so a false
match shows up as a named person. Then, in interleaved rounds on the same frames and model
sessions (the machine is shared and noisy, so every ratio is taken within one round and the median
over rounds reported):

  naive1 / naiveN   for every frame: detect, then align + embed each face alone (batch 1) and
          search it: how face libraries are commonly used from Python. naive1 is one camera, once
          with onnxruntime's usual thread per core and once with 1 thread (the faster is `naive1`);
          naiveN runs N cameras, one thread each, so the speedup has the same camera count on
          both sides.
  cv2     cv2.FaceDetectorYN (the same YuNet file) + the same per-face loop, one camera.
  insightface  (peer, only when `insightface` is importable) FaceAnalysis with the engine's
          embedder file and SCRFD, one camera, the same per-face search.
  engineK Engine in-process, K = 1..N simulated cameras (the timed frames with a different start
          offset per camera), frames pre-decoded in memory, `window` frames in flight per camera
          (closed loop: saturating, no drops): the pipeline's ceiling.
  engine-jpeg  the N-camera in-process run fed the same JPEG (q85) payloads that the gRPC gateways
          send, each decoded by the feeder with the server's own path (`decode_for_detection`
          with `pipeline.fast_decode`): the same decode work as gRPC ingest.
  grpc-jpeg  `FaceEngineServer` on 127.0.0.1 (auth off), N streams from gateway_worker.py (its own
          process), the same JPEG payloads; latency = gateway send -> FrameResult received.

Ratios: grpc-jpeg / engine-jpeg (like for like: same payloads, same decode) and grpc-jpeg /
engineN (pre-decoded). Speedups: engine1 / naive1 and engineN / naiveN (same camera count),
and the best engine mode / the best naive mode (labelled). Targets missed print MISSED.

Identities: every pass (each camera count, each round, gRPC included) records match events per
person (distinct camera+track pairs; the naive loops count matched faces). The reference is the
set of clip persons the naive loop matches on faces that pass the engine's quality gate; each pass
is checked against it, and any distractor matched is a false match.

Latency at load: after the rounds, gRPC streams paced at 50 %, 80 % and 100 % of the grpc-jpeg
capacity measured in this run: p50/p95/p99 and drops.

Usage:
  python benchmarks/bench_pipeline.py [--video FILE] [--cameras 4] [--rounds 3] [--out PREFIX] [--json]
  faceengine bench --video FILE --cameras N --json      (same code)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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
    DEFAULT_VIDEO,
    FULL_FRAME,
    bench_config,
    cfg_copy,
    cost,
    enroll_distractors,
    enroll_heldout,
    jsonable,
    load_frames,
    machine,
    open_gallery,
    percentile,
    pyplot,
    section_dict,
    split_clip,
    write_results,
)
from gpu_monitor import GpuMonitor, describe  # noqa: E402

from engine.config import Config  # noqa: E402
from engine.errors import FaceEngineError  # noqa: E402
from engine.gallery.gallery import Gallery  # noqa: E402
from engine.metrics import EngineMetrics  # noqa: E402
from engine.models.registry import ModelRegistry  # noqa: E402
from engine.settings import Settings  # noqa: E402
from engine.store.base import Store  # noqa: E402
from engine.video.decode import build_decoders, decode_pipeline_frame  # noqa: E402
from engine.video.pipeline import Engine, FrameJob, FrameOutcome  # noqa: E402
from engine.video.quality import face_quality  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402
from engine.vision.detections import Detections  # noqa: E402

TARGET_SPEEDUP = 4.0
TARGET_GRPC_RATIO = 0.85
LOADS = (0.5, 0.8, 1.0)
STAGES = ("decode", "preprocess", "detect_model", "detect_post", "detect", "track", "align", "embed", "search",
          "record", "total")
"""Stages of `faceengine_stage_seconds`: decode (JPEG/PNG of the gRPC path, or the engine-jpeg feeder),
detect = preprocess + detect_model + detect_post (letterbox, runner call, head decoding + NMS), track
(tracker, quality, best-shot policy), align (crop warps, and the full-resolution decode of a reduced frame
when a best shot needs it), embed, search (gallery), record (events to the store), total (one batch from
detect to the last reply; worker time, so it overlaps across workers)."""
STAGE_TABLE = ("decode", "preprocess", "detect_model", "detect_post", "track", "align", "embed", "search", "record",
               "total")


def verdict(value: float, target: float) -> str:
    """PASS or MISSED, on the unrounded value."""
    return "PASS" if value == value and value >= target else "MISSED"


@dataclasses.dataclass
class PassResult:
    """One timed pass of one mode."""

    mode: str
    cameras: int
    frames: int
    seconds: float
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # person -> events (naive: matched faces)
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    embeddings: int = 0
    stages: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> seconds summed
    gated_identities: set[str] = dataclasses.field(default_factory=set)
    round: int = 0
    dropped: int = 0
    gpu: dict[str, Any] | None = None  # GPU utilisation / memory over the pass (GpuMonitor.summary)
    cpu_s: float = 0.0  # CPU time of this process over the pass (every thread; the gRPC server runs in it too)
    peak_interval: int = 0  # highest detection interval any camera reached (engine passes)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def identities(self) -> set[str]:
        return set(self.counts)


def _camera_frames(n_frames: int, cameras: int, i: int) -> list[int]:
    """Frame indices of simulated camera i: the timed frames once, starting at an offset."""
    off = i * n_frames // max(1, cameras)
    return [(off + j) % n_frames for j in range(n_frames)]


# ---- the baselines -------------------------------------------------------------------------------
def naive_pass(frames: Sequence[np.ndarray], analyzer: FaceAnalyzer, gallery: Gallery, threshold: float,
               gate: tuple[float, float] | None = None, cameras: int = 1) -> PassResult:
    """Detect each frame, then align, embed (batch 1) and search every face on its own; one thread a camera.

    `gate` (min face size, min quality): also collect the persons matched on faces passing the
    engine's quality gate (computed after timing), to tell false matches on blurred faces apart."""
    lock = threading.Lock()
    counts: dict[str, int] = {}
    n_emb = [0]
    hits: list[tuple[int, Detections, int, str]] = []  # (frame, detections, face, person) for the gate check

    def camera(i: int) -> None:
        for fi in _camera_frames(len(frames), cameras, i):
            frame = frames[fi]
            dets = analyzer.detector.detect(frame)
            for k in range(len(dets)):
                crop = analyzer.aligner.align(frame, dets.landmarks[k])
                emb = analyzer.embedder.embed(crop[None])
                hit = gallery.search(emb, top_k=1, threshold=threshold)[0]
                with lock:
                    n_emb[0] += 1
                    if hit:
                        pid = hit[0].person_id
                        counts[pid] = counts.get(pid, 0) + 1
                        hits.append((fi, dets, k, pid))

    t0 = time.perf_counter()
    if cameras == 1:
        camera(0)
    else:
        threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(cameras)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    res = PassResult("naive", cameras, cameras * len(frames), time.perf_counter() - t0, counts, embeddings=n_emb[0])
    if gate is not None:  # after the clock stopped: which matches were on faces the engine would embed
        min_size, min_q = gate
        for i, dets, k, pid in hits:
            q = face_quality(frames[i], dets[k], float(min_size))[0]
            if dets.sizes[k] >= min_size and q >= min_q:
                res.gated_identities.add(pid)
    return res


def cv2_pass(frames: Sequence[np.ndarray], analyzer: FaceAnalyzer, gallery: Gallery, cfg: Config) -> PassResult:
    """cv2.FaceDetectorYN on the frame resized to the detector side, then the per-face loop."""
    h, w = frames[0].shape[:2]
    scale = cfg.detector.input_size / max(w, h)
    size = (round(w * scale), round(h * scale))
    path = str(Path(cfg.models.dir) / analyzer.detector.spec.file)  # type: ignore[attr-defined]
    yn = cv2.FaceDetectorYN.create(path, "", size, analyzer.detector.score_threshold, cfg.detector.nms_threshold,
                                 5000)
    counts: dict[str, int] = {}
    n_emb = 0
    t0 = time.perf_counter()
    for frame in frames:
        small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        _, faces = yn.detect(small)
        for row in faces if faces is not None else ():
            if min(row[2], row[3]) / scale < cfg.detector.min_face_size:
                continue
            crop = analyzer.aligner.align(frame, row[4:14].reshape(5, 2) / scale)
            emb = analyzer.embedder.embed(crop[None])
            n_emb += 1
            hit = gallery.search(emb, top_k=1, threshold=Settings.for_analyzer(cfg, analyzer).match_threshold)[0]
            if hit:
                counts[hit[0].person_id] = counts.get(hit[0].person_id, 0) + 1
    return PassResult("cv2", 1, len(frames), time.perf_counter() - t0, counts, embeddings=n_emb)


def insightface_peer(cfg: Config) -> tuple[Any | None, str]:
    """InsightFace's FaceAnalysis on the engine's model files, or (None, why it is skipped).

    FaceAnalysis loads every ONNX file of <root>/models/<name>/ and picks detection and recognition
    models by their outputs; it cannot load YuNet, so the peer gets the shipped SCRFD-2.5G detector
    and the engine's embedder file (symbolic links, no copies)."""
    try:
        from insightface.app import FaceAnalysis  # type: ignore[import-not-found]
    except ImportError as exc:
        return None, f"insightface is not importable ({exc}); `pip install insightface` to add the peer"
    registry = ModelRegistry.from_config(cfg.models)
    try:  # the manifest's files, hash-checked (copied from the mirror when missing), as the engine loads them
        emb_file, det_file = registry.path(cfg.models.embedder), registry.path("scrfd_2.5g")
    except FaceEngineError as exc:
        return None, f"model files for the insightface peer: {exc}"
    root = Path(tempfile.mkdtemp(prefix="fe-insightface-"))
    pack = root / "models" / "bench"
    pack.mkdir(parents=True)
    for f in (emb_file, det_file):
        (pack / f.name).symlink_to(f.resolve())
    try:
        app = FaceAnalysis(name="bench", root=str(root), allowed_modules=["detection", "recognition"],
                           providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1, det_size=(cfg.detector.input_size, cfg.detector.input_size))
    except Exception as exc:  # noqa: BLE001 - the peer is optional; say why it could not run
        return None, f"insightface FaceAnalysis failed to load the model files: {exc}"
    return app, f"insightface {getattr(sys.modules.get('insightface'), '__version__', '?')}: scrfd_2.5g + " \
                f"{emb_file.name}"


def insightface_pass(app: Any, frames: Sequence[np.ndarray], gallery: Gallery, threshold: float) -> PassResult:
    """FaceAnalysis.get on every frame (detect + embed every face), then the same gallery search per face."""
    counts: dict[str, int] = {}
    n_emb = 0
    t0 = time.perf_counter()
    for frame in frames:
        for face in app.get(frame):
            n_emb += 1
            hit = gallery.search(np.asarray(face.normed_embedding, np.float32)[None], top_k=1, threshold=threshold)[0]
            if hit:
                counts[hit[0].person_id] = counts.get(hit[0].person_id, 0) + 1
    return PassResult("insightface", 1, len(frames), time.perf_counter() - t0, counts, embeddings=n_emb)


# ---- the engine ----------------------------------------------------------------------------------
def _stage_sums(metrics: EngineMetrics) -> dict[str, float]:
    reg = metrics.registry
    out = {s: reg.get_sample_value("faceengine_stage_seconds_sum", {"stage": s}) or 0.0 for s in STAGES}
    out["embeddings"] = reg.get_sample_value("faceengine_embeddings_total") or 0.0
    return out


def engine_pass(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery, store: Store,
                frames: Sequence[np.ndarray], fps: float, cameras: int, window: int,
                payloads: Sequence[bytes] | None = None) -> PassResult:
    """Feed `cameras` simulated cameras into a fresh in-process Engine; `window` frames in flight each.

    With `payloads` (the JPEG bytes the gRPC gateways send) each camera's feeder decodes every frame
    the way the gRPC server does (`decode_for_detection` when `pipeline.fast_decode`, else a full
    decode), with the decoder `[decode]` picks as the server does: the like-for-like baseline for gRPC ingest."""
    metrics = EngineMetrics()
    eng = Engine(cfg, analyzer, gallery, store, metrics)
    cams = [f"cam{i}" for i in range(cameras)]
    for c in cams:
        eng.add_camera(c)
    lock = threading.Lock()
    lat: list[float] = []
    tracks: dict[str, set[tuple[str, int]]] = {}
    errors = [0]
    done = threading.Event()
    remaining = [cameras * len(frames)]
    last = [0.0]
    jpeg = build_decoders(cfg.decode, cfg.runtime.device_id).jpeg if payloads is not None else None

    def feeder(i: int) -> None:
        sem = threading.Semaphore(window)

        def reply(out: FrameOutcome) -> None:
            now = time.perf_counter()
            with lock:
                if out.error is not None:
                    errors[0] += 1
                else:
                    lat.append(out.latency_ms)
                    for f in out.faces:
                        if f.match is not None:
                            tracks.setdefault(f.match.person_id, set()).add((out.camera_id, f.track_id))
                remaining[0] -= 1
                last[0] = now
                if remaining[0] == 0:
                    done.set()
            sem.release()

        for j, fi in enumerate(_camera_frames(len(frames), cameras, i)):
            sem.acquire()
            if payloads is None:
                eng.submit(FrameJob(cams[i], j, 1.0 + j / fps, frames[fi], reply))
                continue
            assert jpeg is not None
            t0 = time.perf_counter()
            image, scale, loader = decode_pipeline_frame(jpeg, payloads[fi], cfg)
            metrics.stage_seconds.labels("decode").observe(time.perf_counter() - t0)  # as the gRPC servicer does
            eng.submit(FrameJob(cams[i], j, 1.0 + j / fps, image, reply, scale=scale, loader=loader))

    eng.start()
    t0 = time.perf_counter()
    c0 = time.process_time()
    threads = [threading.Thread(target=feeder, args=(i,), daemon=True) for i in range(cameras)]
    for t in threads:
        t.start()
    done.wait(timeout=900)
    seconds = last[0] - t0
    cpu_s = time.process_time() - c0
    peak = max(eng.recognizer.detect_interval(c)[1] for c in cams)
    eng.stop(drain_s=1.0)
    stages = _stage_sums(metrics)
    return PassResult("engine-jpeg" if payloads is not None else "engine", cameras, cameras * len(frames), seconds,
                      {k: len(v) for k, v in sorted(tracks.items())}, lat, errors[0], int(stages.pop("embeddings")),
                      stages, cpu_s=cpu_s, peak_interval=peak)


def grpc_pass(cfg: Config, analyzer: FaceAnalyzer, frames: Sequence[np.ndarray], payloads: Sequence[bytes],
              fps: float, cameras: int, window: int, rate: float = 0.0) -> PassResult:
    """Stream the JPEG payloads over loopback gRPC, one stream per camera, from a gateway process.

    `rate` > 0 paces each camera at that many frames/s (latency at a stated load) instead of
    keeping `window` frames in flight (saturating)."""
    from engine.service.server import FaceEngineServer

    cfg = cfg_copy(cfg, server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "shutdown_grace_s": 1.0},
                   auth={"enabled": False})
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    from engine.client import Client

    client = Client(srv.address, token="")
    client.wait_ready(30)
    cams = [f"grpc{i}" for i in range(cameras)]
    for c in cams:
        client.ensure_push_camera(c)
    client.close()
    # clip_fps: frames carry the clip's timeline, as in the in-process passes (wall time at send would space
    # them by the engine's speed, and re-embedding after pipeline.reembed_interval_s would differ)
    job = {"address": srv.address, "cameras": cams, "fps": fps, "clip_fps": fps, "window": window,
           "payloads": list(payloads),
           "raws": None, "rate": rate, "order": [_camera_frames(len(frames), cameras, i) for i in range(cameras)]}
    c0 = time.process_time()  # the server (decode, engine) runs in this process; the gateways in their own
    with tempfile.TemporaryDirectory() as tmp:
        job_file = Path(tmp) / "job.pkl"
        job_file.write_bytes(pickle.dumps(job))
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("gateway_worker.py")), str(job_file)],
                              capture_output=True, text=True, timeout=900)
    cpu_s = time.process_time() - c0
    stages = _stage_sums(srv.metrics)  # the server's own histograms: its decode included
    peak = max((int(v) for v in _interval_gauges(srv.metrics)), default=0)
    srv.stop(grace=1.0)
    if proc.returncode != 0:
        raise RuntimeError(f"gateway process failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    seconds = out["last_recv"] - out["first_send"]
    return PassResult("grpc-jpeg", cameras, out["frames"], seconds, dict(out["tracks"]), out["latencies_ms"],
                      out["errors"], int(stages.pop("embeddings")), stages, dropped=out["dropped"], cpu_s=cpu_s,
                      peak_interval=peak)


def _interval_gauges(metrics: EngineMetrics) -> list[float]:
    """The cameras' current detection intervals (faceengine_detect_interval) in a metrics registry."""
    return [s.value for m in metrics.registry.collect() if m.name == "faceengine_detect_interval" for s in m.samples]


# ---- engine stages vs the bare models ---------------------------------------------------------------
def stage_pass(cfg: Config, analyzer: FaceAnalyzer, gallery: Gallery, store: Store,
               frames: Sequence[np.ndarray], fps: float, payloads: Sequence[bytes]) -> dict[str, float]:
    """Engine stage cost vs onnxruntime alone, back to back on the same frames (no concurrency).

    The engine runs one camera through `Engine.process` frame by frame (its stage histograms);
    then `session.run` alone is timed on every frame's preprocessed detector input and on the
    aligned crops of the faces the engine embedded, at batch 1 and at the batch the engine used."""
    metrics = EngineMetrics()
    eng = Engine(cfg, analyzer, gallery, store, metrics)
    cam = eng.add_camera("stages")
    for j, frame in enumerate(frames):
        eng.process([(cam, FrameJob("stages", j, 1.0 + j / fps, frame))])
    eng.stop(drain_s=0)
    st = _stage_sums(metrics)
    n, n_emb = len(frames), st.pop("embeddings")
    batches = metrics.registry.get_sample_value("faceengine_stage_seconds_count", {"stage": "embed"}) or 1.0
    out = {f"engine_{k}_ms_per_frame": v / n * 1000 for k, v in st.items()}
    out["engine_embed_ms_per_face"] = st["embed"] / n_emb * 1000 if n_emb else float("nan")
    out["embeddings_per_frame"] = n_emb / n
    det = analyzer.detector
    h, w = frames[0].shape[:2]
    tw, th = det.target_size(w, h)  # type: ignore[attr-defined]
    buf = np.empty((1, 3, th, tw), np.float32)
    pre = run_s = 0.0
    graph_pre = getattr(det, "graph_letterbox", False)  # pre-processing inside the graph: time it with the model
    for frame in frames:
        t0 = time.perf_counter()
        if not graph_pre:
            det.preprocess(frame, (tw, th), buf[0])  # type: ignore[attr-defined]
        t1 = time.perf_counter()
        det.runner.run(frame[None] if graph_pre else buf)
        pre, run_s = pre + t1 - t0, run_s + time.perf_counter() - t1
    out["detector_preprocess_ms_per_frame"] = pre / n * 1000
    out["raw_detector_ms_per_frame"] = run_s / n * 1000
    out["detect_overhead_ratio"] = out["engine_detect_ms_per_frame"] / out["raw_detector_ms_per_frame"]
    crops = [c for f in frames[:: max(1, n // 8)] for c in analyzer.aligner.align_all(f, det.detect(f))]
    if crops:
        emb = analyzer.embedder
        per_call = max(1, round(n_emb / batches)) if n_emb else 1
        for b in sorted({1, per_call}):
            blobs = [emb._blob(np.stack(crops[i : i + b])) for i in range(0, len(crops) - b + 1, b)]
            t0 = time.perf_counter()
            for blob in blobs:
                emb.runner.run(blob)
            out[f"raw_embedder_ms_per_face_b{b}"] = (time.perf_counter() - t0) / (len(blobs) * b) * 1000
        out["embed_overhead_ratio"] = out["engine_embed_ms_per_face"] / out[f"raw_embedder_ms_per_face_b{per_call}"]
    if payloads:
        t0 = time.perf_counter()
        for p in payloads[:20]:
            cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR)
        out["jpeg_decode_ms_per_frame"] = (time.perf_counter() - t0) / min(20, len(payloads)) * 1000
    return out


# ---- orchestration -------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]
    return float(statistics.median(vals)) if vals else float("nan")


def check_identities(p: PassResult, reference: set[str], clip_persons: set[str]) -> dict[str, Any]:
    """One pass against the reference set: found, missed, false matches (distractors), events each."""
    own = p.gated_identities if p.mode.startswith("naive") else p.identities
    found = own & clip_persons
    false = sorted(p.identities - clip_persons)
    return {"mode": p.mode, "cameras": p.cameras, "round": p.round, "events": dict(sorted(p.counts.items())),
            "found": sorted(found), "missed": sorted(reference - found), "extra": sorted(found - reference),
            "false_matches": false, "ok": found == reference and not false}


def run(video: str | Path = DEFAULT_VIDEO, cameras: int = 4, rounds: int = 3, window: int = 4,
        out: str | Path | None = "bench-results/pipeline", model_dir: str | None = None,
        config_file: str | None = None, grpc: bool = True, baselines: bool = True,
        max_frames: int = 0, log: Callable[[str], None] = print, base_cfg: Config | None = None,
        peer: bool = True, latency_loads: Sequence[float] = LOADS, lfw_distractors: int = 200) -> dict[str, Any]:
    """Run the benchmark; writes `<out>.json` and `<out>.png` unless `out` is None. Returns the summary.

    `base_cfg` (e.g. the CLI's config with its flags applied) replaces the default configuration;
    the store is always a throwaway database."""
    db = str(Path(tempfile.mkdtemp(prefix="fe-bench-")) / "bench.db")
    if base_cfg is not None:
        cfg = cfg_copy(base_cfg, store={"path": db}, server={"metrics_port": 0})
    else:
        cfg = bench_config(model_dir, db, config_file)
    mach = machine()
    mon = GpuMonitor(device=cfg.runtime.device_id).start()  # utilisation per pass; inert without a GPU
    clip, fps = load_frames(video)
    timed_idx, held_idx = split_clip(clip, max_frames)
    frames = [clip[i] for i in timed_idx]
    h, w = frames[0].shape[:2]
    log(f"video {Path(video).name}: {len(clip)} frames {w}x{h} @ {fps:g} fps; timed frames {timed_idx[0]}-"
        f"{timed_idx[-1]}, enrolment from held-out frames {held_idx[0]}-{held_idx[-1]} (never timed)")
    analyzer = FaceAnalyzer.from_config(cfg)
    lib_analyzer = analyzer
    if baselines:  # how libraries run onnxruntime: a (spinning) thread per core for every call
        lib_analyzer = FaceAnalyzer.from_config(cfg_copy(cfg, runtime={"intra_op_threads": os.cpu_count() or 1}))
    store, gallery = open_gallery(cfg, analyzer)
    persons = enroll_heldout(analyzer, gallery, cfg, clip, held_idx)
    clip_persons = set(persons)
    persons.update(enroll_distractors(analyzer, gallery, lfw_distractors))
    del clip
    settings = Settings.for_analyzer(cfg, analyzer)
    log(f"enrolled {len(clip_persons)} persons from held-out frames and {len(persons) - len(clip_persons)} "
        f"distractors (photos + LFW); match threshold {settings.match_threshold}")
    payloads = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for f in frames]
    app, peer_note = insightface_peer(cfg) if peer and baselines else (None, "peer mode off")
    log(f"peer: {peer_note}" if app is not None else f"peer skipped: {peer_note}")
    for f in frames[: min(16, len(frames))]:  # warm-up: allocator, onnxruntime arenas, caches
        analyzer.analyze(f)
        lib_analyzer.analyze(f)
    cam_counts = list(range(1, cameras + 1))
    passes: list[PassResult] = []
    per_round: list[dict[str, float]] = []
    stage_rounds: list[dict[str, float]] = []
    gate = (cfg.pipeline.min_face_size, settings.min_quality)
    thr = settings.match_threshold
    full_cfg = cfg_copy(cfg, pipeline=FULL_FRAME)

    def add(res: PassResult, r: int, row: dict[str, float], key: str) -> None:
        res.round = r + 1
        passes.append(res)
        row[key] = res.fps

    def on_gpu(fn: Callable[[], PassResult]) -> PassResult:
        """Run one pass and attach the GPU utilisation / memory seen while it ran."""
        t0 = mon.now()
        res = fn()
        res.gpu = mon.summary(t0, mon.now())
        return res

    for r in range(rounds):
        row: dict[str, float] = {}
        stage_rounds.append(stage_pass(cfg, analyzer, gallery, store, frames, fps, payloads))
        if baselines:  # naive1 gets the better of both thread settings, each round
            best: tuple[PassResult, FaceAnalyzer] | None = None
            for name, an in (("naive-ortdefault", lib_analyzer), ("naive-1thread", analyzer)):
                res = naive_pass(frames, an, gallery, thr, gate)
                add(dataclasses.replace(res, mode=name), r, row, name)
                if best is None or res.fps > best[0].fps:
                    best = (res, an)
            assert best is not None
            add(dataclasses.replace(best[0], mode="naive1"), r, row, "naive1")
            if cameras > 1:
                add(dataclasses.replace(naive_pass(frames, best[1], gallery, thr, gate, cameras),
                                        mode=f"naive{cameras}"), r, row, f"naive{cameras}")
            if analyzer.detector.spec.family == "yunet":  # type: ignore[attr-defined]  # FaceDetectorYN runs YuNet only
                add(cv2_pass(frames, best[1], gallery, cfg), r, row, "cv2")
            if app is not None:
                add(insightface_pass(app, frames, gallery, thr), r, row, "insightface")
        for n in cam_counts:
            res = on_gpu(lambda n=n: engine_pass(cfg, analyzer, gallery, store, frames, fps, n, window))
            add(dataclasses.replace(res, mode=f"engine{n}"), r, row, f"engine{n}")
        # the reference of ratios.gated_vs_full: every frame detected whole, same frames, same cameras, this round
        res = on_gpu(lambda: engine_pass(full_cfg, analyzer, gallery, store, frames, fps, cameras, window))
        add(dataclasses.replace(res, mode="engine-full"), r, row, "engine-full")
        if grpc:
            add(on_gpu(lambda: engine_pass(cfg, analyzer, gallery, store, frames, fps, cameras, window, payloads)),
                r, row, "engine-jpeg")
            add(on_gpu(lambda: grpc_pass(cfg, analyzer, frames, payloads, fps, cameras, window)), r, row,
                "grpc-jpeg")
        per_round.append(row)
        log(f"round {r + 1}/{rounds}: " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()) + " fps")
    load_passes: list[dict[str, Any]] = []
    if grpc and latency_loads:
        capacity = _median([row["grpc-jpeg"] for row in per_round])
        for load in latency_loads:
            rate = load * capacity / cameras
            res = on_gpu(lambda rate=rate: grpc_pass(cfg, analyzer, frames, payloads, fps, cameras, max(window, 64),
                                                     rate=rate))
            res.mode, res.round = f"grpc-load{round(load * 100)}", 0
            passes.append(res)
            lp = {"load": load, "capacity_fps": capacity, "offered_fps": load * capacity, "cameras": cameras,
                  "fps_per_camera": rate, "achieved_fps": res.fps, "frames": res.frames,
                  "p50_latency_ms": percentile(res.latencies_ms, 50),
                  "p95_latency_ms": percentile(res.latencies_ms, 95),
                  "p99_latency_ms": percentile(res.latencies_ms, 99), "errors": res.errors, "dropped": res.dropped,
                  "gpu": res.gpu}
            load_passes.append(lp)
            log(f"gRPC at {load:.0%} of capacity ({lp['offered_fps']:.1f} fps offered over {cameras} cameras): "
                f"p50 {lp['p50_latency_ms']:.1f} / p95 {lp['p95_latency_ms']:.1f} / p99 {lp['p99_latency_ms']:.1f} "
                f"ms, {res.dropped} dropped, {res.errors} errors")
    store.close()
    mon.stop()
    reference = (set().union(*[p.gated_identities for p in passes if p.mode == "naive1"]) & clip_persons
                 if baselines else set().union(*[p.identities for p in passes if p.mode == "engine1"]) & clip_persons)
    checks = [check_identities(p, reference, clip_persons) for p in passes]
    summary = _summarise(passes, per_round, cam_counts, cameras, stage_rounds, baselines, grpc, (w, h))
    summary["latency_at_load"] = load_passes
    summary["sessions"] = analyzer.session_stats()  # distinct shapes each session ran vs its buckets
    summary["gpu"] = mon.summary()
    summary["identities"] = {
        "reference": sorted(reference),
        "reference_from": "clip persons matched by naive1 on faces passing the quality gate" if baselines
                          else "clip persons matched by engine1",
        "all_passes_ok": all(c["ok"] for c in checks), "passes": checks}
    summary["enrolled"] = {"clip_persons": sorted(clip_persons), "distractors": len(persons) - len(clip_persons),
                           "sources": persons}
    summary["peer"] = {"ran": app is not None, "note": peer_note}
    summary["meta"] = {"video": Path(video).name, "clip_frames": len(timed_idx) + len(held_idx),
                       "timed_frames": [timed_idx[0], timed_idx[-1]], "heldout_frames": [held_idx[0], held_idx[-1]],
                       "size": [w, h], "video_fps": fps, "rounds": rounds, "window": window, "machine": mach,
                       "config": {"pipeline": section_dict(cfg.pipeline), "runtime": section_dict(cfg.runtime),
                                  "detector": section_dict(cfg.detector),
                                  "models": [cfg.models.detector, cfg.models.embedder]}}
    _print_table(summary, log)
    if out is not None:
        jp, pp = write_results(summary, out, _plot)
        log(f"wrote {jp} and {pp}")
    return summary


def _cpu_ms(passes: list[PassResult], mode: str) -> tuple[float, int]:
    """Median over rounds of a mode's CPU ms a frame, and the frames a pass."""
    ps = [p for p in passes if p.mode == mode and p.frames and p.cpu_s > 0]
    return _median([p.cpu_s / p.frames * 1000 for p in ps]), (ps[0].frames if ps else 0)


def cost_summary(passes: list[PassResult], cameras: int, size: tuple[int, int]) -> dict[str, Any]:
    """`cost` (CPU a frame and 1080p@25 cameras a core, of the default pipeline: the gRPC pass when it ran, as
    it decodes the gateways' JPEG, else the N-camera in-process pass) and `gated_vs_full` (CPU a frame of the
    every-frame full-frame pass over the default pass, same frames and cameras, per round, median)."""
    mode = "grpc-jpeg" if any(p.mode == "grpc-jpeg" for p in passes) else f"engine{cameras}"
    ms, frames = _cpu_ms(passes, mode)
    out = cost(ms * frames / 1000, frames, *size)
    out["pass"] = mode
    out["by_mode"] = {m: cost(v * f / 1000, f, *size)["cpu_ms_per_frame"]
                      for m in sorted({p.mode for p in passes if p.cpu_s > 0}) for v, f in [_cpu_ms(passes, m)]}
    rounds = sorted({p.round for p in passes})
    per_round = []
    for r in rounds:
        full = [p for p in passes if p.round == r and p.mode == "engine-full" and p.cpu_s > 0]
        gated = [p for p in passes if p.round == r and p.mode == f"engine{cameras}" and p.cpu_s > 0]
        if full and gated:
            per_round.append((full[0].cpu_s / full[0].frames) / (gated[0].cpu_s / gated[0].frames))
    ratio = {"value": _median(per_round), "rounds": per_round, "numerator": "engine-full (CPU ms a frame)",
             "denominator": f"engine{cameras} (CPU ms a frame, the default: motion gating + detection interval)"}
    return {"cost": out, "gated_vs_full": ratio}


def _summarise(passes: list[PassResult], per_round: list[dict[str, float]], cam_counts: list[int], cameras: int,
               stage_rounds: list[dict[str, float]], baselines: bool, grpc: bool,
               size: tuple[int, int] = (1920, 1080)) -> dict[str, Any]:
    def modestat(mode: str) -> dict[str, Any]:
        ps = [p for p in passes if p.mode == mode]
        lat = [v for p in ps for v in p.latencies_ms]
        return {"cameras": ps[0].cameras if ps else 0, "fps": _median([p.fps for p in ps]),
                "fps_rounds": [round(p.fps, 2) for p in ps],
                "p50_latency_ms": percentile(lat, 50), "p95_latency_ms": percentile(lat, 95),
                "p99_latency_ms": percentile(lat, 99), "errors": sum(p.errors for p in ps),
                "embeddings_per_pass": _median([p.embeddings for p in ps]),
                "stages_ms_per_frame": {k: _median([p.stages.get(k, 0.0) / p.frames * 1000 for p in ps if p.frames])
                                        for k in STAGE_TABLE} if any(p.stages for p in ps) else {},
                "gpu": ps[-1].gpu if ps else None}

    modes = [m for m in per_round[0]] if per_round else []
    s: dict[str, Any] = {"modes": {m: modestat(m) for m in modes}, "cameras": cameras}
    eng_n = f"engine{cameras}"
    s["fps"] = s["modes"][eng_n]["fps"]
    ratios: dict[str, Any] = {}
    if baselines:
        naive_n = f"naive{cameras}" if cameras > 1 else "naive1"
        same = {"1": _median([r["engine1"] / r["naive1"] for r in per_round]),
                str(cameras): _median([r[eng_n] / r[naive_n] for r in per_round])}
        eng_modes = [f"engine{n}" for n in cam_counts]
        naive_modes = [m for m in ("naive1", naive_n) if m in modes]
        best_e = max(eng_modes, key=lambda m: s["modes"][m]["fps"])
        best_n = max(naive_modes, key=lambda m: s["modes"][m]["fps"])
        ratios["speedup_1_camera"] = {"value": same["1"], "numerator": "engine1", "denominator": "naive1"}
        ratios[f"speedup_{cameras}_cameras"] = {"value": same[str(cameras)], "numerator": eng_n,
                                                "denominator": naive_n, "target": TARGET_SPEEDUP,
                                                "verdict": verdict(same[str(cameras)], TARGET_SPEEDUP)}
        ratios["speedup_best_of_each"] = {"value": _median([r[best_e] / r[best_n] for r in per_round]),
                                          "numerator": best_e, "denominator": best_n}
        if "cv2" in modes:
            ratios["speedup_vs_cv2_1_camera"] = {"value": _median([r["engine1"] / r["cv2"] for r in per_round]),
                                                 "numerator": "engine1", "denominator": "cv2"}
        if "insightface" in modes:
            ratios["speedup_vs_insightface_1_camera"] = {
                "value": _median([r["engine1"] / r["insightface"] for r in per_round]),
                "numerator": "engine1", "denominator": "insightface"}
    if grpc:
        v = _median([r["grpc-jpeg"] / r["engine-jpeg"] for r in per_round])
        ratios["grpc_vs_inprocess_same_jpeg"] = {"value": v, "numerator": "grpc-jpeg", "denominator": "engine-jpeg",
                                                 "target": TARGET_GRPC_RATIO, "verdict": verdict(v, TARGET_GRPC_RATIO)}
        ratios["grpc_vs_predecoded"] = {"value": _median([r["grpc-jpeg"] / r[eng_n] for r in per_round]),
                                        "numerator": "grpc-jpeg", "denominator": eng_n}
    cs = cost_summary(passes, cameras, size)
    ratios["gated_vs_full"] = cs["gated_vs_full"]
    s["cost"] = cs["cost"]
    s["detect_interval_peak"] = max((p.peak_interval for p in passes), default=0)
    s["ratios"] = ratios
    keys = sorted({k for r in stage_rounds for k in r})
    s["stages"] = {k: _median([r[k] for r in stage_rounds if k in r]) for k in keys}
    eng = [p for p in passes if p.mode.startswith("engine") and p.mode[6:].isdigit()]
    s["stages"]["embeddings_per_frame_all_passes"] = sum(p.embeddings for p in eng) / max(1, sum(p.frames for p in eng))
    s["per_round_fps"] = per_round
    return s


def _print_table(s: dict[str, Any], log: Callable[[str], None]) -> None:
    log(f"{'mode':<17} {'cams':>4} {'fps':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'emb/pass':>9} {'err':>4}")
    for name, m in s["modes"].items():
        log(f"{name:<17} {m['cameras']:>4} {m['fps']:>8.1f} {m['p50_latency_ms']:>8.1f} {m['p95_latency_ms']:>8.1f} "
            f"{m['p99_latency_ms']:>8.1f} {m['embeddings_per_pass']:>9.0f} {m['errors']:>4}")
    c = s.get("cost") or {}
    if c:
        log(f"cost ({c['pass']}): {c['cpu_ms_per_frame']:.1f} CPU ms a frame, {c['cameras_per_core']:.2f} cameras "
            f"of 1080p@25 a core (CPU time, shared machine); by mode: "
            + ", ".join(f"{k} {v:.1f}" for k, v in c["by_mode"].items()))
    for key, r in s["ratios"].items():
        tail = f"  target >= {r['target']}: {r['verdict']}" if "target" in r else ""
        log(f"{key:<32} {r['numerator']} / {r['denominator']} = {r['value']:.3f}{tail}")
    ids = s["identities"]
    bad = sorted({c["mode"] for c in ids["passes"] if not c["ok"]})
    log(f"identities: reference {ids['reference']} ({ids['reference_from']}); "
        + ("every pass OK" if ids["all_passes_ok"] else f"passes NOT OK in modes {bad}"))
    for c in ids["passes"]:
        if not c["ok"] or c["mode"].startswith(("engine", "grpc")):
            log(f"  {c['mode']:<17} round {c['round']}: {'ok' if c['ok'] else 'MISMATCH'}  events {c['events']}"
                + (f"  missed {c['missed']}" if c["missed"] else "") + (f"  extra {c['extra']}" if c["extra"] else "")
                + (f"  FALSE MATCHES {c['false_matches']}" if c["false_matches"] else ""))
    log("per-stage worker time, ms a frame (summed over worker threads, so stages of concurrent batches add up):")
    log(f"{'mode':<17} " + " ".join(f"{k[:8]:>8}" for k in STAGE_TABLE) + "  GPU")
    for name, m in s["modes"].items():
        if m.get("stages_ms_per_frame"):
            log(f"{name:<17} " + " ".join(f"{m['stages_ms_per_frame'][k]:>8.2f}" for k in STAGE_TABLE)
                + f"  {describe(m.get('gpu'))}")
    st = s["stages"]
    log("engine stages (1 camera, sequential) ms/frame: " + ", ".join(
        f"{k[7:-13]} {st[k]:.2f}" for k in st if k.startswith("engine_") and k.endswith("_ms_per_frame")))
    log(f"bare onnxruntime: detector {st['raw_detector_ms_per_frame']:.2f} ms/frame (+ letterbox "
        f"{st['detector_preprocess_ms_per_frame']:.2f}); engine detect stage / model "
        f"{st['detect_overhead_ratio']:.2f}x")
    if "jpeg_decode_ms_per_frame" in st:
        log(f"full JPEG decode {st['jpeg_decode_ms_per_frame']:.2f} ms/frame")


def _plot(s: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    names = list(s["modes"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    a1.bar(names, [s["modes"][n]["fps"] for n in names],
           color=["#999" if n.startswith(("naive", "cv2", "insight")) else "#3a7" if n.startswith("engine")
                  else "#37a" for n in names])
    a1.set_ylabel("frames/s (all cameras)")
    a1.set_title(f"{s['meta']['video']}: throughput ({s['meta']['machine']['cores']} cores, "
                 f"load {s['meta']['machine']['loadavg_at_start'][0]})")
    a1.tick_params(axis="x", rotation=45)
    lp = s.get("latency_at_load") or []
    if lp:
        x = np.arange(len(lp))
        for off, q in ((-0.27, "p50"), (0, "p95"), (0.27, "p99")):
            a2.bar(x + off, [p[f"{q}_latency_ms"] for p in lp], 0.27, label=q)
        a2.set_xticks(x, [f"{p['load']:.0%}\n{p['offered_fps']:.0f} fps" for p in lp])
        a2.set_xlabel("gRPC load (share of measured gRPC capacity)")
        a2.set_ylabel("ms, gateway send -> result")
        a2.set_title("gRPC latency at stated loads")
        a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", default=str(DEFAULT_VIDEO), help="video file (default multiface_1080p.mp4)")
    p.add_argument("--cameras", type=int, default=4, help="simulated cameras: the engine runs 1..N (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    p.add_argument("--window", type=int, default=4, help="frames in flight per camera (default 4)")
    p.add_argument("--max-frames", type=int, default=0, help="time only the first N of the timed frames (0 = all)")
    p.add_argument("--out", default="bench-results/pipeline", help="output prefix for .json and .png")
    p.add_argument("--no-grpc", action="store_true", help="skip the gRPC passes (and engine-jpeg)")
    p.add_argument("--no-baselines", action="store_true", help="skip the naive, cv2 and peer loops")
    p.add_argument("--no-peer", action="store_true", help="skip the insightface peer even when installed")
    p.add_argument("--no-load-latency", action="store_true", help="skip the paced gRPC latency passes")
    p.add_argument("--lfw-distractors", type=int, default=200, help="LFW identities enrolled as distractors")
    p.add_argument("--json", action="store_true", help="table on stderr; end with one JSON summary line")


def main_args(args: argparse.Namespace, model_dir: str | None = None, config_file: str | None = None,
              cfg: Config | None = None) -> int:
    log: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
    s = run(args.video, args.cameras, args.rounds, args.window, args.out, model_dir, config_file,
            grpc=not args.no_grpc, baselines=not args.no_baselines, max_frames=args.max_frames, log=log,
            base_cfg=cfg, peer=not getattr(args, "no_peer", False),
            latency_loads=() if getattr(args, "no_load_latency", False) else LOADS,
            lfw_distractors=getattr(args, "lfw_distractors", 200))
    if args.json:
        line: dict[str, Any] = {"fps": s["fps"], "cameras": s["cameras"], "cost": s["cost"],
                                "fps_by_mode": {k: v["fps"] for k, v in s["modes"].items()},
                                "ratios": {k: {kk: vv for kk, vv in v.items()} for k, v in s["ratios"].items()},
                                "identities_ok": s["identities"]["all_passes_ok"],
                                "stages_ms_per_frame": s["modes"][f"engine{s['cameras']}"]["stages_ms_per_frame"],
                                "gpu": describe(s["gpu"]),
                                "sessions": {role: {k: st[k] for k in ("model", "distinct_shapes", "buckets",
                                                                       "bucketing", "warmup_s", "fp16")}
                                             for role, st in s["sessions"].items()},
                                "latency_at_load": [{k: p[k] for k in ("load", "p50_latency_ms", "p95_latency_ms",
                                                                       "p99_latency_ms", "dropped")}
                                                    for p in s["latency_at_load"]]}
        print(json.dumps(line, default=jsonable), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p)
    p.add_argument("--model-dir", help="model folder (default: config / FACEENGINE_MODEL_DIR)")
    p.add_argument("--config", help="engine TOML config (default: built-in tuned defaults)")
    args = p.parse_args(argv)
    return main_args(args, args.model_dir, args.config)


if __name__ == "__main__":
    sys.exit(main())
