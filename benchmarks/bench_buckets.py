"""Shape buckets on or off, measured on the configured provider: the detector on real frames and the
embedder on real crops, batch sizes varying call to call as in the video pipeline (the same random
sequence for both settings, interleaved in rounds). It reports process CPU time and wall time a frame /
a face, the first call at each new shape, and the distinct shapes each session ran. `runtime.shape_buckets
= auto` follows this measurement: on for GPU providers, off on the CPU (see the JSON's verdict).

  python benchmarks/bench_buckets.py --provider cpu --out benchmarks/results/buckets-cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine  # noqa: E402

from engine.config import Config  # noqa: E402
from engine.models.registry import ModelRegistry  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402
from engine.vision.image import read_image  # noqa: E402
from tests.shared_data import IMAGES, SHARED  # noqa: E402

MODELS = SHARED / "models"


def _analyzer(provider: str, buckets: str) -> FaceAnalyzer:
    cfg = Config.load(env={})
    cfg.update({"models": {"dir": str(MODELS)}, "runtime": {"provider": provider, "shape_buckets": buckets,
                                                             "warmup": "off", "fp16": "off"}}, source="bench")
    return FaceAnalyzer.from_config(cfg, ModelRegistry.from_config(cfg.models))


def _timed(fn: Any, *args: Any) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn(*args)
    return time.process_time() - c, time.perf_counter() - w


def run(provider: str, rounds: int, calls: int, seed: int = 0) -> dict[str, Any]:
    frame = read_image(IMAGES / "multiface.jpg")
    rng = np.random.default_rng(seed)
    det_sizes = rng.integers(1, 7, calls).tolist()
    face_sizes = rng.integers(1, 21, calls).tolist()
    base = _analyzer(provider, "off")
    crops = base.aligner.align_all(frame, base.detector.detect(frame))
    crops = np.concatenate([crops] * (20 // len(crops) + 1))[:20]
    out: dict[str, Any] = {}
    analyzers = {"off": base, "on": _analyzer(provider, "on")}
    first: dict[str, dict[str, list[float]]] = {k: {"detector": [], "embedder": []} for k in analyzers}
    seen: dict[str, set[tuple[str, int]]] = {k: set() for k in analyzers}
    sums = {k: {"det_cpu": 0.0, "det_wall": 0.0, "emb_cpu": 0.0, "emb_wall": 0.0} for k in analyzers}
    for _ in range(rounds):
        for name, an in analyzers.items():
            for n, f in zip(det_sizes, face_sizes, strict=True):
                c, w = _timed(an.detect_batch, [frame] * n)
                key = ("d", an.detector.runner.padded(n))
                if key not in seen[name]:
                    seen[name].add(key)
                    first[name]["detector"].append(round(w * 1000, 1))
                sums[name]["det_cpu"] += c
                sums[name]["det_wall"] += w
                c, w = _timed(an.embed, crops[:f])
                key = ("e", an.embedder.runner.padded(f))
                if key not in seen[name]:
                    seen[name].add(key)
                    first[name]["embedder"].append(round(w * 1000, 1))
                sums[name]["emb_cpu"] += c
                sums[name]["emb_wall"] += w
    frames, faces = rounds * sum(det_sizes), rounds * sum(face_sizes)
    for name, an in analyzers.items():
        s = sums[name]
        out[name] = {"detector_cpu_ms_per_frame": s["det_cpu"] / frames * 1000,
                     "detector_wall_ms_per_frame": s["det_wall"] / frames * 1000,
                     "embedder_cpu_ms_per_face": s["emb_cpu"] / faces * 1000,
                     "embedder_wall_ms_per_face": s["emb_wall"] / faces * 1000,
                     "first_call_ms_at_new_shape": first[name],
                     "sessions": {"detector": an.detector.runner.session_stats(),
                                  "embedder": an.embedder.runner.session_stats()}}
    ratio = {k: out["on"][k] / out["off"][k] for k in out["on"] if k.endswith(("frame", "face"))}
    return {"provider": provider, "rounds": rounds, "calls_per_round": calls, "detector_batches": det_sizes,
            "embedder_batches": face_sizes, "results": out, "on_vs_off": ratio,
            "verdict": ("buckets cost CPU time on this provider: auto keeps them off here"
                        if ratio["detector_cpu_ms_per_frame"] > 1.0 and ratio["embedder_cpu_ms_per_face"] > 1.0
                        else "buckets cost no CPU time here"),
            "machine": machine()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", default="cpu")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--calls", type=int, default=12, help="calls a round (random batch sizes)")
    p.add_argument("--out", default="bench-results/buckets.json")
    args = p.parse_args(argv)
    res = run(args.provider, args.rounds, args.calls)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({"on_vs_off": res["on_vs_off"], "verdict": res["verdict"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
