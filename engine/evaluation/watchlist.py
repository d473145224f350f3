"""Open-set 1:N watchlist evaluation (NIST FRVT 1:N style) on any `person/image.jpg` folder.

Protocol (seeded): people with >= 2 photos are shuffled; half of them are enrolled from one photo
each (the "ID photo"); another photo of each enrolled person is a mated probe. The other half, and
people with one photo, give one non-mated probe each (strangers). Every probe is rendered into a
1280x720 "CCTV frame": the whole photo is scaled so that its face measures the condition's size in
pixels and pasted into a cell of a textured background (several probes a frame, which also keeps the
detector cost low), then the whole frame is degraded (blur, JPEG, dark + noise). The engine detects
on the frame as the video pipeline does; the face whose box holds the pasted face's centre is aligned,
embedded and searched against the gallery.

Reported per condition: detection rate (mated probes whose face was found), rank-1 (top candidate
is the mate; undetected counts as wrong), FNIR at FPIR 1e-2 / 1e-3 (thresholds from the strangers'
top scores in the same condition), and at the configured threshold the matched rate (mate at rank 1
with score >= threshold) and false-alert rate (strangers whose top score >= threshold), each also
through the video pipeline's gates (size floor and quality gate).
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine.config import Config
from engine.errors import InvalidArgumentError
from engine.evaluation.lfw import read_landmarks
from engine.settings import Settings
from engine.video.quality import QualityGate, quality_components
from engine.vision.analyzer import FaceAnalyzer
from engine.vision.detections import Detections
from engine.vision.image import read_image

FRAME_W, FRAME_H = 1280, 720
FACE_PER_IOD = 2.27
"""Detector box side over inter-ocular distance (YuNet on LFW: ~93 px box, ~41 px between the eyes)."""


@dataclass(frozen=True)
class Condition:
    """How a probe is rendered: face size in frame pixels (0 = photo's own size) and a degradation."""

    name: str
    face_px: int = 0
    blur_sigma: float = 0.0
    jpeg_quality: int = 0
    dark: bool = False


CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("original"),
    Condition("48px", 48),
    Condition("32px", 32),
    Condition("24px", 24),
    Condition("48px_blur1.5", 48, blur_sigma=1.5),
    Condition("48px_jpeg20", 48, jpeg_quality=20),
    Condition("48px_dark_noisy", 48, dark=True),
)}


@dataclass
class Probe:
    path: str
    person: str
    mated: bool
    landmarks: np.ndarray | None = None  # 5x2 in the photo, if the data set gives them


@dataclass
class ConditionResult:
    condition: str
    mated: int
    nonmated: int
    detected: float
    rank1: float
    fnir_at_fpir_1e2: float
    fnir_at_fpir_1e3: float
    threshold_at_fpir_1e3: float
    matched: float
    false_alert: float
    gate_pass: float
    matched_gated: float
    false_alert_gated: float
    seconds: float


@dataclass
class WatchlistResult:
    enrolled: int
    enrol_failed: int
    threshold: float
    detector: str
    embedder: str
    conditions: list[ConditionResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def split_people(data: Path, seed: int) -> tuple[list[tuple[str, str]], list[Probe], list[Probe]]:
    """(gallery [(person, photo)], mated probes, non-mated probes) from `data/images/person/*.jpg`."""
    root = data / "images" if (data / "images").is_dir() else data
    people = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(str(f.relative_to(root)) for f in d.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if photos:
            people[d.name] = photos
    multi = [p for p, ph in people.items() if len(ph) >= 2]
    if len(multi) < 2:
        raise InvalidArgumentError(f"{root}: need at least 2 people with 2 or more photos (person/image.jpg)")
    rng = random.Random(seed)
    rng.shuffle(multi)
    enrolled = set(multi[: len(multi) // 2])
    gallery, mated, nonmated = [], [], []
    for person, photos in people.items():
        if person in enrolled:
            gallery.append((person, photos[0]))
            mated.append(Probe(photos[1], person, True))
        else:
            nonmated.append(Probe(photos[rng.randrange(len(photos))], person, False))
    return gallery, mated, nonmated


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth random texture (walls, street): low-frequency colour noise plus fine grain."""
    low = rng.integers(40, 200, (9, 16, 3)).astype(np.uint8)
    bg = cv2.resize(low, (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 4, bg.shape)
    return np.clip(bg + grain, 0, 255).astype(np.uint8)


def render_frame(photos: Sequence[np.ndarray], eye_boxes: Sequence[tuple[float, float, float]], cond: Condition,
                 rng: np.random.Generator, cols: int, rows: int) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """Paste each photo (scaled so its face is cond.face_px) into its own cell; degrade the frame.

    eye_boxes: (face centre x, y, face size) per photo. Returns the frame and where each face
    landed (centre x, y, size) in frame pixels."""
    frame = _background(rng)
    cw, ch = FRAME_W // cols, FRAME_H // rows
    placed = []
    for i, (im, (fx, fy, fs)) in enumerate(zip(photos, eye_boxes, strict=True)):
        s = cond.face_px / fs if cond.face_px else 1.0
        s = min(s, cw / im.shape[1], ch / im.shape[0])  # the whole photo must fit its cell
        w, h = max(1, round(im.shape[1] * s)), max(1, round(im.shape[0] * s))
        small = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        cx, cy = (i % cols) * cw, (i // cols) * ch
        ox = cx + int(rng.integers(0, max(1, cw - w + 1)))
        oy = cy + int(rng.integers(0, max(1, ch - h + 1)))
        frame[oy : oy + h, ox : ox + w] = small
        placed.append((ox + fx * w / im.shape[1], oy + fy * h / im.shape[0], fs * s))
    if cond.blur_sigma:
        frame = cv2.GaussianBlur(frame, (0, 0), cond.blur_sigma)
    if cond.dark:
        noise = rng.normal(0, 6.0, frame.shape)
        frame = np.clip(frame.astype(np.float32) * 0.3 + noise, 0, 255).astype(np.uint8)
    if cond.jpeg_quality:
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, cond.jpeg_quality])
        frame = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return frame, placed


def _face_geometry(im: np.ndarray, lm: np.ndarray | None, analyzer: FaceAnalyzer) -> tuple[float, float, float]:
    """(centre x, centre y, face size) of the photo's subject: from given landmarks, else the
    detected face nearest the centre, else the photo's centre at ~37 % of its width (LFW-like)."""
    if lm is None:
        det = analyzer.detector.detect(im)
        if len(det):
            h, w = im.shape[:2]
            c = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
            lm = det.landmarks[int(np.argmin(((c - [w / 2, h / 2]) ** 2).sum(1)))]
        else:
            h, w = im.shape[:2]
            return w / 2, h / 2, 0.37 * w
    iod = float(np.hypot(*(lm[1] - lm[0])))
    cx, cy = lm[:, 0].mean(), lm[:, 1].mean()
    return float(cx), float(cy), max(8.0, FACE_PER_IOD * iod)


def _pick(dets: Detections, x: float, y: float, size: float) -> int:
    """Index of the detection whose box holds (x, y) and is nearest it, or -1."""
    if len(dets) == 0:
        return -1
    b = dets.boxes
    inside = (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
    sizes = dets.sizes
    inside &= (sizes > 0.4 * size) & (sizes < 2.5 * size)
    if not inside.any():
        return -1
    c = (b[:, :2] + b[:, 2:]) / 2
    d = ((c - [x, y]) ** 2).sum(1)
    d[~inside] = np.inf
    return int(np.argmin(d))


def fnir_at_fpir(mate_score: np.ndarray, nonmated_top: np.ndarray, fpir: float) -> tuple[float, float]:
    """(FNIR, threshold): the lowest threshold with FPIR <= fpir on the strangers' top scores;
    FNIR = share of mated searches whose mate is not at rank 1 with a score at or above it.
    mate_score is the rank-1 score where rank 1 is the mate, -inf otherwise."""
    top = np.sort(nonmated_top)[::-1]
    allowed = int(math.floor(fpir * len(top)))
    thr = float(top[allowed] + 1e-6) if allowed < len(top) and np.isfinite(top[allowed]) else -1.0
    return float(1.0 - (mate_score >= thr).mean()), thr


def evaluate(analyzer: FaceAnalyzer, cfg: Config, data: Path, conditions: Sequence[Condition],
             max_probes: int = 0, max_gallery: int = 0, seed: int = 0, per_frame: int = 6,
             progress: Callable[[str], None] | None = None,
             records: list[dict[str, object]] | None = None,
             step: Callable[[int, int], None] | None = None) -> WatchlistResult:
    """Run the protocol; `max_probes` caps mated and non-mated probes each (0 = all). With `records`,
    every detected mated probe's quality factors and whether it was right at rank 1 are appended
    (what the quality gate is calibrated on). `progress` gets a line per stage, `step` (done, total) counts
    the faces handled (gallery photos, then every probe of every condition) for a progress bar."""
    import time

    gallery, mated, nonmated = split_people(data, seed)
    rng = random.Random(seed + 1)
    if max_gallery and len(gallery) > max_gallery:
        keep = set(rng.sample(range(len(gallery)), max_gallery))
        kept_people = {gallery[i][0] for i in keep}
        gallery = [g for i, g in enumerate(gallery) if i in keep]
        mated = [m for m in mated if m.person in kept_people]
    if max_probes:
        mated = rng.sample(mated, min(max_probes, len(mated)))
        nonmated = rng.sample(nonmated, min(max_probes, len(nonmated)))
    root = data / "images" if (data / "images").is_dir() else data
    lm_file = data / "landmarks_5pt.txt"
    landmarks = read_landmarks(lm_file) if lm_file.is_file() else {}

    # Gallery: one ID photo a person, its largest face.
    names, embs, failed = [], [], 0
    total = len(gallery) + len(conditions) * (len(mated) + len(nonmated))  # exact once the gallery is in
    for i, (person, photo) in enumerate(gallery):
        if step:
            step(i, total)
        try:
            _, e = analyzer.largest_face(read_image(root / photo), photo)
        except Exception:  # noqa: BLE001 - a photo with no face is counted, not fatal
            failed += 1
            continue
        names.append(person)
        embs.append(e)
        if progress and (i + 1) % 100 == 0:
            progress(f"enrolled {i + 1}/{len(gallery)}")
    if not embs:
        raise InvalidArgumentError(f"{data}: no gallery photo gave a face")
    gal = np.stack(embs)
    index = {n: i for i, n in enumerate(names)}
    settings = Settings.for_analyzer(cfg, analyzer)
    thr = settings.match_threshold
    gate = QualityGate(cfg.pipeline.min_face_size, settings.min_quality)
    probes = [p for p in mated if p.person in index] + nonmated
    photos = [read_image(root / p.path) for p in probes]
    geom = [_face_geometry(im, landmarks.get(p.path), analyzer) for im, p in zip(photos, probes, strict=True)]
    result = WatchlistResult(len(names), failed, thr, analyzer.detector.name, analyzer.embedder.name)
    cols, rows = {1: (1, 1), 2: (2, 1), 4: (2, 2)}.get(per_frame, (3, 2))
    per = cols * rows
    total = len(gallery) + len(conditions) * len(probes)
    for ci, cond in enumerate(conditions):
        t0 = time.monotonic()
        nrng = np.random.default_rng(seed + 7)
        top_score = np.full(len(probes), -np.inf, np.float32)
        top_id = np.full(len(probes), -1, np.int64)
        found = np.zeros(len(probes), bool)
        gated = np.zeros(len(probes), bool)
        for start in range(0, len(probes), per):
            idx = list(range(start, min(start + per, len(probes))))
            if step:
                step(len(gallery) + ci * len(probes) + start, total)
            frame, placed = render_frame([photos[i] for i in idx], [geom[i] for i in idx], cond, nrng, cols, rows)
            dets = analyzer.detector.detect(frame)
            picks = [_pick(dets, *pl) for pl in placed]
            sel = [k for k in picks if k >= 0]
            if not sel:
                continue
            chosen = dets[np.array(sel)]
            e = analyzer.embed_faces(frame, chosen)
            qc = quality_components(frame, chosen, cfg.pipeline.min_face_size)
            q = qc.total
            ok = gate.passes(chosen, q)
            sims = e @ gal.T
            j = 0
            for i, k in zip(idx, picks, strict=True):
                if k < 0:
                    continue
                found[i] = True
                top_id[i] = int(np.argmax(sims[j]))
                top_score[i] = float(sims[j, top_id[i]])
                gated[i] = bool(ok[j])
                if records is not None and probes[i].mated:
                    records.append({"condition": cond.name, "rank1": top_id[i] == index.get(probes[i].person, -2),
                                    "top": top_score[i], **{k: float(v[j]) for k, v in qc.as_dict().items()},
                                    "size_px": float(chosen.sizes[j])})
                j += 1
            if progress and (start // per) % 50 == 0:
                progress(f"{cond.name}: {min(start + per, len(probes))}/{len(probes)} probes")
        is_m = np.array([p.mated for p in probes])
        true_id = np.array([index.get(p.person, -2) for p in probes])
        hit = is_m & (top_id == true_id)
        mate_score = np.where(hit, top_score, -np.inf)
        nm_top = top_score[~is_m]
        f2, _ = fnir_at_fpir(mate_score[is_m], nm_top, 1e-2)
        f3, t3 = fnir_at_fpir(mate_score[is_m], nm_top, 1e-3)
        above = top_score >= thr
        nm = max(1, int((~is_m).sum()))
        mm = max(1, int(is_m.sum()))
        result.conditions.append(ConditionResult(
            cond.name, int(is_m.sum()), int((~is_m).sum()),
            detected=float(found[is_m].mean()), rank1=float(hit[is_m].mean()),
            fnir_at_fpir_1e2=f2, fnir_at_fpir_1e3=f3, threshold_at_fpir_1e3=t3,
            matched=float((hit & above).sum() / mm), false_alert=float((above & ~is_m).sum() / nm),
            gate_pass=float(gated[is_m & found].mean()) if (is_m & found).any() else 0.0,
            matched_gated=float((hit & above & gated).sum() / mm),
            false_alert_gated=float((above & ~is_m & gated).sum() / nm),
            seconds=round(time.monotonic() - t0, 1)))
        if step:
            step(len(gallery) + (ci + 1) * len(probes), total)
        if progress:
            c = result.conditions[-1]
            progress(f"{cond.name}: detected={c.detected:.3f} rank1={c.rank1:.3f} fnir@1e-3={c.fnir_at_fpir_1e3:.3f} "
                     f"matched={c.matched:.3f} fa={c.false_alert:.4f} matched_gated={c.matched_gated:.3f} "
                     f"({c.seconds:.0f}s)")
    return result


def format_table(res: WatchlistResult) -> str:
    """A markdown table of the conditions (what docs/accuracy.md shows)."""
    head = ("| condition | found | rank-1 | FNIR@FPIR 1e-2 | FNIR@FPIR 1e-3 | matched | false alerts "
            "| gate pass | matched (gated) | false alerts (gated) |")
    lines = [head, "|" + "---|" * 10]
    for c in res.conditions:
        lines.append(f"| {c.condition} | {c.detected:.3f} | {c.rank1:.3f} | {c.fnir_at_fpir_1e2:.3f} | "
                     f"{c.fnir_at_fpir_1e3:.3f} | {c.matched:.3f} | {c.false_alert:.4f} | {c.gate_pass:.3f} | "
                     f"{c.matched_gated:.3f} | {c.false_alert_gated:.4f} |")
    return "\n".join(lines)


def print_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
