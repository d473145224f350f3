"""Shared helpers for the video benchmarks: config, frames in memory, enrolment, statistics, plots."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.config import Config  # noqa: E402
from engine.gallery.gallery import Gallery  # noqa: E402
from engine.store import open_store  # noqa: E402
from engine.store.base import Store  # noqa: E402
from engine.video.quality import face_quality  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402

SHARED = Path(os.environ.get("FACEENGINE_SHARED", ROOT.parent / "shared"))
VIDEOS = SHARED / "testdata" / "videos"
DEFAULT_VIDEO = VIDEOS / "multiface_1080p.mp4"
WATCHLIST = "bench"


def bench_config(model_dir: str | None = None, db: str | None = None, config_file: str | None = None) -> Config:
    """The engine's default (tuned) configuration, with a model folder and a throwaway store."""
    cfg = Config.load(config_file)
    if model_dir:
        cfg.models.dir = model_dir
    if not cfg.models.mirror and (SHARED / "models").is_dir():
        cfg.models.mirror = str(SHARED / "models")  # missing models are copied (hash-checked) from the mirror
    cfg.store.path = db or str(Path(tempfile.mkdtemp(prefix="fe-bench-")) / "bench.db")
    cfg.server.metrics_port = 0
    return cfg


def load_frames(path: str | os.PathLike[str], max_frames: int = 0) -> tuple[list[np.ndarray], float]:
    """Decode a whole video into memory once (BGR frames) and return them with the stated fps."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames: list[np.ndarray] = []
    while not max_frames or len(frames) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise OSError(f"{path}: no frames decoded")
    return frames, float(fps)


def enroll_from_frames(analyzer: FaceAnalyzer, gallery: Gallery, cfg: Config, frames: Sequence[np.ndarray],
                       picks: int = 3) -> list[str]:
    """Enrol the clear faces of `picks` frames spread over the clip as persons (one template each).

    A face is enrolled only if it is big and good enough for the engine to match at all (pipeline
    min_face_size / min_quality) and matches no person enrolled before it, so each person is one
    identity. Returns the person ids."""
    gallery.ensure_watchlist(WATCHLIST)
    p = cfg.pipeline
    persons: list[str] = []
    # frames 0, 1/3, 2/3 ... of the clip: not its last frame, whose face a tracker has only just seen
    idx = sorted({int(i * len(frames) / picks) for i in range(picks)})
    for i in idx:
        res = analyzer.analyze(frames[i])
        if not len(res.detections):
            continue
        quality = face_quality(frames[i], res.detections, float(p.min_face_size))
        for k in range(len(res.detections)):
            if res.detections.sizes[k] < p.min_face_size or quality[k] < p.min_quality:
                continue
            emb = res.embeddings[k]
            hit = gallery.search(emb[None], top_k=1, threshold=cfg.gallery.match_threshold)[0]
            if hit:
                continue
            pid = f"person-{len(persons):02d}"
            gallery.enroll(WATCHLIST, pid, emb[None], display_name=f"frame {i} face {k}")
            persons.append(pid)
    return persons


def open_gallery(cfg: Config, analyzer: FaceAnalyzer) -> tuple[Store, Gallery]:
    store = open_store(cfg.store.target())
    return store, Gallery(store, analyzer.dim, analyzer.model_name, cfg.gallery.index)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else float("nan")


def machine() -> dict[str, Any]:
    """What the numbers were measured on (they only compare within one run)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg_at_start": [round(v, 2) for v in load]}


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pyplot() -> Any:
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
