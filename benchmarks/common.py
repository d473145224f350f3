"""Shared helpers for the video benchmarks: config, frames in memory, enrolment, statistics, plots."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.config import Config  # noqa: E402
from engine.gallery.calibration import (  # noqa: E402
    effective_min_quality,
    effective_threshold,
    threshold_for_fpir,
)
from engine.gallery.gallery import Gallery  # noqa: E402
from engine.store.base import Store  # noqa: E402
from engine.video.quality import face_quality  # noqa: E402
from engine.vision.analyzer import FaceAnalyzer  # noqa: E402

SHARED = Path(os.environ.get("FACEENGINE_SHARED", ROOT.parent / "shared"))
VIDEOS = SHARED / "testdata" / "videos"
DEFAULT_VIDEO = VIDEOS / "multiface_1080p.mp4"
IMAGES = SHARED / "testdata" / "images"
LFW = SHARED / "testdata" / "lfw-dev"
RESULTS = ROOT / "benchmarks" / "results"
WATCHLIST = "bench"
# which frames of a clip are enrolled and which are timed: the enrolment frames are held out,
# never fed to a timed pass, and a gap of 10 % of the clip separates them from the last timed frame.
# (The last 20 % of stage_360p is a group shot with no face clear enough to enrol.)
TIMED_FRACTION = 0.55  # frames [0, 55 %) are timed
HOLDOUT = (0.65, 0.8)  # frames [65 %, 80 %) are enrolled from


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


def split_clip(frames: Sequence[np.ndarray], max_frames: int = 0) -> tuple[list[int], list[int]]:
    """(timed frame indices, held-out enrolment frame indices) of a clip, disjoint with a gap between."""
    n = len(frames)
    timed = list(range(int(n * TIMED_FRACTION)))
    if max_frames:
        timed = timed[:max_frames]
    return timed, list(range(int(n * HOLDOUT[0]), int(n * HOLDOUT[1])))


SAME_PERSON_FMR = 1e-3
"""Held-out faces scoring above the embedder's threshold at this false-match rate count as one person."""
MAX_TEMPLATES = 3
"""Templates a clip person gets at most (its first shot, then shots the gallery did not yet match)."""


def same_person_bar(cfg: Config, analyzer: FaceAnalyzer) -> float:
    """Cosine at which two held-out faces are taken for one person: the embedder's threshold at
    FMR 1e-3 (a clip has a handful of people, so a wrong merge is unlikely), never above the match
    threshold. Falls back to the match threshold for an embedder without a calibration."""
    thr = effective_threshold(cfg, analyzer.embedder.spec)[0]
    bar = threshold_for_fpir(analyzer.embedder.spec, SAME_PERSON_FMR, 1)
    return thr if bar is None else min(bar, thr)


def enroll_heldout(analyzer: FaceAnalyzer, gallery: Gallery, cfg: Config, frames: Sequence[np.ndarray],
                   indices: Sequence[int], step: int = 5, log: Any = None) -> dict[str, str]:
    """Enrol the clear faces of every `step`-th held-out frame (never timed) as persons `clip-NN`.

    Only faces big and sharp enough for the engine to embed. One person, one identity: a face
    scoring at least `same_person_bar` against a clip person enrolled before it is that person; it
    becomes another of their templates (up to `MAX_TEMPLATES`) when the gallery does not yet match it
    at the match threshold, else it is skipped. (With the match threshold as the only bar, one
    performer of stage_360p was enrolled twice, from frames 178 and 203 at cosine 0.53 < 0.54, and
    each identity check then asked for a second person the clip does not have.)
    Returns person id -> where it came from."""
    gallery.ensure_watchlist(WATCHLIST)
    p = cfg.pipeline
    min_q = effective_min_quality(cfg, analyzer.embedder.spec)[0]  # the gate the engine applies
    thr = effective_threshold(cfg, analyzer.embedder.spec)[0]
    bar = same_person_bar(cfg, analyzer)
    out: dict[str, str] = {}
    for i in indices[::step]:
        res = analyzer.analyze(frames[i])
        if not len(res.detections):
            continue
        quality = face_quality(frames[i], res.detections, float(p.min_face_size))
        for k in range(len(res.detections)):
            if res.detections.sizes[k] < p.min_face_size or quality[k] < min_q:
                continue
            emb = res.embeddings[k]
            hit = gallery.search(emb[None], top_k=1, threshold=bar)[0]
            if not hit:
                pid = f"clip-{len(out):02d}"
                gallery.enroll(WATCHLIST, pid, emb[None], display_name=f"held-out frame {i} face {k}")
                out[pid] = f"held-out frame {i} (not timed)"
                what = "new person"
            else:
                best = hit[0]
                person = gallery.get_person(WATCHLIST, best.person_id)
                if best.score < thr and person.template_count < MAX_TEMPLATES:
                    gallery.enroll(WATCHLIST, person.person_id, emb[None], display_name=person.display_name)
                    out[person.person_id] += f", {i}"
                    what = f"template {person.template_count + 1} of {person.person_id} ({best.score:.3f})"
                else:
                    what = f"skipped: {person.person_id} at {best.score:.3f}"
            if log is not None:
                log(f"held-out frame {i} face {k}: {what}")
    return out


def lfw_faces(limit: int = 0, per_identity: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """(identity, image path, 5 landmarks) of LFW dev images, from landmarks_5pt.txt (sorted, stable)."""
    rows: list[tuple[str, str, np.ndarray]] = []
    seen: dict[str, int] = {}
    lm_file = LFW / "landmarks_5pt.txt"
    if not lm_file.is_file():
        raise FileNotFoundError(f"{lm_file} not found (LFW dev set under ../shared/testdata/lfw-dev)")
    for line in sorted(lm_file.read_text().splitlines()):
        parts = line.split()
        if len(parts) != 11:
            continue
        ident = parts[0].split("/")[0]
        if per_identity and seen.get(ident, 0) >= per_identity:
            continue
        seen[ident] = seen.get(ident, 0) + 1
        rows.append((ident, str(LFW / "images" / parts[0]), np.array(parts[1:], np.float32).reshape(5, 2)))
        if limit and len(rows) >= limit:
            break
    return rows


def embed_lfw(analyzer: FaceAnalyzer, faces: Sequence[tuple[str, str, np.ndarray]]) -> np.ndarray:
    """The engine's embeddings of LFW faces: aligned on the dataset's 5 landmarks, embedded in batches."""
    out: list[np.ndarray] = []
    for s in range(0, len(faces), 32):
        crops = [analyzer.aligner.align(cv2.imread(path), lm) for _, path, lm in faces[s:s + 32]]
        out.append(analyzer.embedder.embed(np.stack(crops)))
    return np.concatenate(out) if out else np.empty((0, analyzer.dim), np.float32)


def enroll_distractors(analyzer: FaceAnalyzer, gallery: Gallery, lfw_count: int = 200) -> dict[str, str]:
    """Enrol people who are not in the clips, so a false match shows up as one of them.

    Every face of the photos in testdata/images (`photo-<file>-<k>`) and one image each of
    `lfw_count` LFW identities (`lfw-<Name>`). Returns person id -> where it came from."""
    gallery.ensure_watchlist(WATCHLIST)
    out: dict[str, str] = {}
    for path in sorted(IMAGES.glob("*.jpg")):
        res = analyzer.analyze(cv2.imread(str(path)))
        for k in range(len(res.detections)):
            pid = f"photo-{path.stem}-{k}"
            gallery.enroll(WATCHLIST, pid, res.embeddings[k][None], display_name=f"{path.name} face {k}")
            out[pid] = f"photo {path.name} (distractor)"
    if lfw_count and (LFW / "landmarks_5pt.txt").is_file():
        faces = lfw_faces(lfw_count, per_identity=1)
        embs = embed_lfw(analyzer, faces)
        for (ident, path, _), emb in zip(faces, embs, strict=True):
            gallery.enroll(WATCHLIST, f"lfw-{ident}", emb[None], display_name=Path(path).name)
            out[f"lfw-{ident}"] = "LFW (distractor)"
    return out


def cfg_copy(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A validated copy of the config with some fields changed: {section: {field: value}}."""
    if hasattr(cfg, "with_overrides"):
        return cfg.with_overrides(dict(sections), source="benchmark")
    new = copy.deepcopy(cfg)
    if sections:
        new.update(sections, source="benchmark")
    return new


def section_dict(section: Any) -> dict[str, Any]:
    """One config section as a plain dict (pydantic model or dataclass)."""
    if hasattr(section, "model_dump"):
        return dict(section.model_dump())
    return dataclasses.asdict(section)


def open_gallery(cfg: Config, analyzer: FaceAnalyzer) -> tuple[Store, Gallery]:
    """The store and gallery as the engine builds them (`build_runtime`, without a video engine)."""
    from engine.runtime import build_runtime

    rt = build_runtime(cfg, analyzer=analyzer, engine=False)
    return rt.store, rt.gallery


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else float("nan")


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - an optional package that is missing or broken
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _gpu() -> str:
    """GPU model(s) from nvidia-smi, or 'none' (the benchmarks here run on CPU unless configured)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "none (no nvidia-smi)"
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "none (nvidia-smi failed)"
    return ", ".join(out.stdout.split("\n")).strip(", ") or "none"


def git_commit() -> str:
    """The source tree's commit (with '+dirty' when it has uncommitted changes); where the tree is a copy
    without git (the device kit's machine) FACEENGINE_GIT_COMMIT names it; else 'unknown'."""
    if not (ROOT / ".git").exists() and os.environ.get("FACEENGINE_GIT_COMMIT"):
        return os.environ["FACEENGINE_GIT_COMMIT"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("+dirty" if dirty else "")) if rev else os.environ.get("FACEENGINE_GIT_COMMIT", "unknown")


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


FULL_FRAME = {"motion_gating": False, "detect_interval": 1, "max_detect_interval": 1}
"""pipeline overrides for the reference: every frame of every camera detected whole (the engine before gating)."""
CAMERA_BUDGET_MS = 1000.0 / 25.0
"""CPU milliseconds a 1080p@25 camera may cost per frame for one core to serve it."""
CPU_TIME_NOTE = ("CPU time (time.process_time of the engine process: every thread, decode included where the pass "
                 "decodes), not wall time: the machine was shared with other jobs, which stretch wall time but "
                 "hardly the CPU time a frame costs")


def cost(cpu_s: float, frames: int, width: int, height: int) -> dict[str, Any]:
    """CPU cost of a pass: ms a frame, the same scaled to 1080p by pixel count (exact for 1080p clips) and the
    1080p@25 cameras one core serves at that cost."""
    ms = cpu_s / max(1, frames) * 1000.0
    ms_1080 = ms * (1920 * 1080) / max(1, width * height)
    return {"cpu_ms_per_frame": ms, "cpu_ms_per_frame_1080p": ms_1080,
            "cameras_per_core": CAMERA_BUDGET_MS / ms_1080 if ms_1080 > 0 else float("nan"), "frames": frames,
            "note": CPU_TIME_NOTE}


def machine() -> dict[str, Any]:
    """What the numbers were measured on (they only compare within one run): CPU, cores, GPU,
    package versions and the load average (the project's VMs are shared: load from other jobs)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {m: _version(m) for m in ("onnxruntime", "faiss", "numpy", "cv2", "grpc", "insightface")}
    versions["opencv"] = versions.pop("cv2")
    versions["grpcio"] = versions.pop("grpc")
    return {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu": cpu, "cores": os.cpu_count(), "gpu": _gpu(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "versions": versions, "git_commit": git_commit(),
            "loadavg_at_start": loadavg()}


def write_results(summary: dict[str, Any], out: str | os.PathLike[str], plot: Any) -> tuple[Path, Path]:
    """Write `<out>.json` (with the load average at the end added to meta.machine) and `<out>.png`."""
    base = Path(out)
    base.parent.mkdir(parents=True, exist_ok=True)
    summary.setdefault("meta", {}).setdefault("machine", machine())["loadavg_at_end"] = loadavg()
    jp, pp = base.with_name(base.name + ".json"), base.with_name(base.name + ".png")
    jp.write_text(json.dumps(summary, indent=2, default=jsonable) + "\n")
    plot(summary, pp)
    return jp, pp


def jsonable(o: Any) -> Any:
    if isinstance(o, set):
        return sorted(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


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
