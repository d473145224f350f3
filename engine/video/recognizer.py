"""Per-frame recognition: frames and their cameras' tracking state in, typed decisions out.

`Recognizer` runs, for a batch of frames (one or several cameras): detection (one batched call),
then per frame in capture order tracking, the quality gate, the best-shot policy and alignment,
then one batched embedding call for the chosen shots, the identity-switch check and per-track
pooling, and one gallery search. It returns a `FrameRecognition` per frame: detections in
original pixels, track ids, quality, the embeddings made and the match decisions.

It holds no threads, queues, store or gRPC: it receives an inference backend (`FaceAnalyzer` or
anything with `detect_batch`/`align`/`embed`), a gallery view (`search`, `has_template`) and
settings, and owns the tracking state of the cameras it sees, so one instance can serve one
camera, a set of cameras (a future worker actor) or every camera of a process. Callers feed each
camera's frames in capture order; frames of different cameras may share a batch.

Example::

    rec = Recognizer(analyzer, gallery, RecognizerSettings.from_config(cfg))
    for seq, image in enumerate(frames):
        out = rec.process(Frame("door-1", seq, seq / 25.0, image))
        for m in out.matches:
            print(out.seq, m.track_id, m.hit.person_id, m.hit.score)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from engine.config import Config
from engine.errors import FaceEngineError
from engine.metrics import EngineMetrics
from engine.video.bestshot import BestShotPolicy, TrackRegistry, TrackState
from engine.video.motion import MotionDetector, plan_regions, region_share
from engine.video.quality import QualityGate, face_quality
from engine.video.tracker import FaceTracker
from engine.vision.detections import Detections, box_iou

if TYPE_CHECKING:
    from engine.gallery.gallery import Match
    from engine.settings import Settings


@dataclass
class Frame:
    """One video frame of a camera; `image` may be a reduced decode (`scale` > 1) for detection.

    scale: original pixels per `image` pixel. loader: decodes the full-resolution frame on demand
    (best shots and thumbnails use it); without one `image` is the full frame.
    """

    camera_id: str
    seq: int
    capture_time: float
    image: np.ndarray
    scale: float = field(default=1.0, kw_only=True)
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, kw_only=True)
    backlog: int = field(default=0, kw_only=True)
    """Frames of the camera queued behind this one when it was taken (the scheduler sets it; overload signal)."""
    _full: np.ndarray | None = field(default=None, repr=False, init=False)

    def decoded_full(self) -> bool:
        """Whether the full-resolution frame is at hand (no loader, or it ran)."""
        return self.loader is None or self._full is not None

    def full_image(self) -> np.ndarray:
        """The frame at its original resolution (decoded on first use when `image` is reduced)."""
        if self.loader is None:
            return self.image
        if self._full is None:
            try:
                self._full = self.loader()
            except FaceEngineError:  # the reduced decode worked: fall back to it, upscaled
                h, w = self.image.shape[:2]
                self._full = cv2.resize(self.image, (round(w * self.scale), round(h * self.scale)))
        return self._full


class Inference(Protocol):
    """The model calls the recognizer needs (`FaceAnalyzer` provides them)."""

    @property
    def dim(self) -> int: ...
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]: ...
    def detect_regions(self, images: Sequence[np.ndarray], scale: float) -> list[Detections]: ...
    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray: ...
    def embed(self, crops: np.ndarray) -> np.ndarray: ...


class GalleryView(Protocol):
    """Read-only watchlist search (`Gallery` provides it)."""

    def search(self, embeddings: np.ndarray, top_k: int = 5, threshold: float = -1.0) -> list[list[Match]]: ...
    def has_template(self, template_id: int) -> bool: ...


@dataclass(frozen=True)
class RecognizerSettings:
    """The pipeline policy the recognizer applies (see `PipelineConfig` for each field's meaning)."""

    tracking: bool = True
    track_max_age_s: float = 1.0
    track_start_score: float = 0.6
    min_face_size: float = 28.0
    min_quality: float = 0.30
    reembed_margin: float = 0.1
    reembed_interval_s: float = 2.0
    identity_switch_similarity: float = 0.2
    match_threshold: float = 0.40
    max_faces_per_frame: int = 200
    motion_gating: bool = False
    detect_interval: int = 1
    max_detect_interval: int = 8
    full_frame_interval_s: float = 2.0
    motion_width: int = 320
    motion_threshold: float = 20.0
    max_region_share: float = 0.5
    region_scale: float = 0.0
    queue_size: int = 8
    detector_min_face_size: float = 20.0
    nms_threshold: float = 0.4

    @classmethod
    def from_settings(cls, settings: Settings) -> RecognizerSettings:
        """The policy from resolved settings (thresholds from the loaded models where left to auto)."""
        cfg, t = settings.config, settings.thresholds
        p = cfg.pipeline
        return cls(
            tracking=p.tracking,
            track_max_age_s=p.track_max_age_s,
            track_start_score=max(t.detector_score, p.track_start_score),
            min_face_size=float(p.min_face_size),
            min_quality=t.min_quality,
            reembed_margin=p.reembed_margin,
            reembed_interval_s=p.reembed_interval_s,
            identity_switch_similarity=p.identity_switch_similarity,
            match_threshold=t.match,
            max_faces_per_frame=cfg.limits.max_faces_per_frame,
            # gating and the interval lean on tracks to carry faces between detections: without tracking
            # every frame is detected whole (each frame is its own event)
            motion_gating=p.motion_gating and p.tracking,
            detect_interval=p.detect_interval if p.tracking else 1,
            max_detect_interval=max(p.detect_interval, p.max_detect_interval) if p.tracking else 1,
            full_frame_interval_s=p.full_frame_interval_s,
            motion_width=p.motion_width,
            motion_threshold=p.motion_threshold,
            max_region_share=p.max_region_share,
            region_scale=p.region_scale,
            queue_size=p.queue_size,
            detector_min_face_size=float(cfg.detector.min_face_size),
            nms_threshold=cfg.detector.nms_threshold,
        )

    @classmethod
    def from_config(cls, cfg: Config) -> RecognizerSettings:
        """The policy for cfg's models without loading them (thresholds from the model manifest)."""
        from engine.models.registry import ModelSpec, load_manifest
        from engine.settings import Settings

        specs = load_manifest()
        emb = specs.get(cfg.models.embedder) or ModelSpec(cfg.models.embedder, "", "embedder", "")  # no calibration
        return cls.from_settings(Settings.resolve(cfg, emb, specs.get(cfg.models.detector)))


@dataclass(frozen=True)
class MatchDecision:
    """A face of the frame matched a gallery template.

    face: row in the frame's detections. track_id: its track (-1 without tracking). box: (4,)
    float32 in original pixels. probe: (D,) the unit vector searched (the track's pooled embedding
    when tracking). hit: the best gallery match, at or above the match threshold.
    """

    face: int
    track_id: int
    box: np.ndarray
    probe: np.ndarray
    hit: Match


@dataclass
class FrameRecognition:
    """What the recognizer decided for one frame (arrays are row-aligned with `detections`).

    detections: faces in original pixels (`extra["track_id"]` when tracking; on a frame that was not detected,
    the live tracks carried to it). track_ids: (N,) int64, -1 = untracked. quality: (N,) float32 in [0, 1] (a
    carried face: its track's quality when last detected). embedded: (N,) bool, faces embedded in
    this frame (the best shots). embeddings: (E, D) float32 raw unit embeddings of those faces, in
    the order of `np.flatnonzero(embedded)`. matches: decisions for faces whose probe matched.
    ended_tracks: this camera's tracks that ended with this frame (never seen again).
    """

    camera_id: str
    seq: int
    capture_time: float
    detections: Detections
    track_ids: np.ndarray
    quality: np.ndarray
    embedded: np.ndarray
    embeddings: np.ndarray
    matches: list[MatchDecision] = field(default_factory=list)
    ended_tracks: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.detections)
        for name in ("track_ids", "quality", "embedded"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != int(self.embedded.sum()):
            raise ValueError(f"embeddings has shape {self.embeddings.shape}, expected ({int(self.embedded.sum())}, D)")
        if any(not 0 <= m.face < n for m in self.matches):
            raise ValueError("a match refers to a face outside the detections")

    def match_of(self, face: int) -> MatchDecision | None:
        """The decision for face row `face`, if it matched in this frame."""
        return next((m for m in self.matches if m.face == face), None)


SCALES = (0.25, 0.375, 0.5, 0.75, 1.0)
"""Region scales a camera's auto scale picks from (few values: few network shapes)."""
CALM_FRAMES = 12
"""Frames in a row with an empty queue before a raised detection interval steps down by one (half a second at
25 fps: an overloaded engine does not oscillate between catching up and falling behind)."""
SCALE_MIN_FACES = 30
"""Faces a camera must have shown before its region scale follows their sizes."""


class Carried(Detections):
    """`Recognizer.detect`'s result for a frame it did not detect (detection interval): `recognize` carries the
    camera's live tracks to it instead."""

    @classmethod
    def make(cls) -> Carried:
        e = Detections.empty()
        return cls(e.boxes, e.landmarks, e.scores)


@dataclass
class GateState:
    """One camera's detection gating: motion background, detection interval, full-frame schedule, face sizes."""

    motion: MotionDetector
    interval: int = 1
    since_detect: int = 0
    next_full: float = float("-inf")
    last_time: float = float("-inf")
    sizes: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    peak_interval: int = 1
    calm: int = 0  # frames in a row taken with an empty queue behind them (the interval falls back after CALM_FRAMES)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def scale(self, pinned: float, floor: float, base: float) -> float:
        """Region scale: `pinned` if set, else `base` (the scale the whole frame is detected at, so regions and
        full-frame passes see faces alike), lowered to the smallest of `SCALES` at which the camera's small faces
        (10th percentile of recent sizes) still reach 1.25x the detector's reliable size `floor`."""
        if pinned > 0:
            return pinned
        if len(self.sizes) < SCALE_MIN_FACES:
            return base
        need = 1.25 * floor / max(float(np.percentile(np.asarray(self.sizes), 10)), 1.0)
        return min(base, next((s for s in SCALES if s >= need), 1.0))


@dataclass
class CameraTracking:
    """One camera's recognition state: its tracker, per-track best-shot state, last frame time, gating."""

    tracker: FaceTracker
    tracks: TrackRegistry = field(default_factory=TrackRegistry)
    last_time: float = float("-inf")
    gate: GateState | None = None
    quality: dict[int, float] = field(default_factory=dict)  # track id -> quality when last detected (carried)


class Recognizer:
    """Detect, track, gate, embed best shots and match, for the cameras whose frames it is given."""

    def __init__(self, inference: Inference, gallery: GalleryView, settings: RecognizerSettings,
                 metrics: EngineMetrics | None = None) -> None:
        self.inference = inference
        self.gallery = gallery
        self.settings = settings
        self.metrics = metrics
        self.policy = BestShotPolicy(settings.min_quality, settings.reembed_margin, settings.reembed_interval_s)
        self.gate = QualityGate(settings.min_face_size, settings.min_quality)
        self._cams: dict[str, CameraTracking] = {}
        self._lock = threading.Lock()  # the camera table (frames of one camera come in order, one at a time)

    # ---- camera state ----------------------------------------------------------------------------
    def add_camera(self, camera_id: str) -> CameraTracking:
        """Start (or keep) the tracking state of a camera; frames of unknown cameras add it too."""
        with self._lock:
            state = self._cams.get(camera_id)
            if state is None:
                s = self.settings
                state = self._cams[camera_id] = CameraTracking(
                    FaceTracker(max_age_s=s.track_max_age_s, high_score=s.track_start_score),
                    gate=GateState(MotionDetector(s.motion_width, s.motion_threshold), interval=s.detect_interval,
                                   peak_interval=s.detect_interval))
            return state

    def remove_camera(self, camera_id: str) -> list[int]:
        """Forget a camera; returns the ids of its tracks that were live (now ended)."""
        with self._lock:
            state = self._cams.pop(camera_id, None)
        if state is None:
            return []
        ended = sorted(set(state.tracker.reset()) | {t.track_id for t in state.tracks})
        state.tracks.drop(ended)
        return ended

    def end_tracks(self, camera_id: str) -> list[int]:
        """End every live track of a camera (shutdown, scene cut); returns their ids."""
        state = self._cams.get(camera_id)
        if state is None:
            return []
        ended = sorted(set(state.tracker.reset()) | {t.track_id for t in state.tracks})
        state.tracks.drop(ended)
        state.quality.clear()
        state.last_time = float("-inf")
        return ended

    def camera_ids(self) -> list[str]:
        with self._lock:
            return list(self._cams)

    def live_tracks(self, camera_id: str) -> list[int]:
        """Ids of the camera's tracks that have best-shot state (seen with a gated face)."""
        state = self._cams.get(camera_id)
        return sorted(t.track_id for t in state.tracks) if state is not None else []

    def track(self, camera_id: str, track_id: int) -> TrackState | None:
        """The best-shot state of one live track (read-only use)."""
        state = self._cams.get(camera_id)
        return state.tracks.get(track_id) if state is not None else None

    # ---- frames ----------------------------------------------------------------------------------
    def process(self, frame: Frame) -> FrameRecognition:
        """Recognise one frame (its camera's previous frames must have been processed)."""
        return self.process_batch([frame])[0]

    def process_batch(self, frames: Sequence[Frame]) -> list[FrameRecognition]:
        """Detect all frames in one call, then recognise them in order (see `recognize`)."""
        return self.recognize(frames, self.detect(frames))

    def detect(self, frames: Sequence[Frame]) -> list[Detections]:
        """Detections of each frame in its `image`'s pixels. Without gating (`motion_gating` off, interval 1)
        every frame is detected whole. Otherwise per camera: a frame between detections (`detect_interval`)
        gets `Carried` (no detection); a detected frame is searched in its motion regions and live tracks'
        boxes, cut from the full-resolution frame (`plan_regions`), or whole when it is the camera's first,
        a periodic full-frame pass is due or the regions cover most of it. Consecutive batches of one camera
        may be detected at once (its gate state is locked)."""
        s = self.settings
        if not s.motion_gating and s.detect_interval <= 1 and s.max_detect_interval <= 1:
            return self._detect_full(frames)
        t0 = time.perf_counter()
        plans = [self._plan(f) for f in frames]
        self._observe("motion", time.perf_counter() - t0)
        out: list[Detections] = [Carried.make() for _ in frames]
        full = [i for i, p in enumerate(plans) if p == "full"]
        if full:  # at full resolution: with gating a frame's `image` may be the motion mask's reduced decode
            for i, d in zip(full, self._detect_full([frames[i] for i in full], full_res=True), strict=True):
                out[i] = d
        gated = [i for i, p in enumerate(plans) if isinstance(p, tuple)]
        if gated:
            t1 = time.perf_counter()
            for i, d in zip(gated, self.detect_regions([frames[i] for i in gated],
                                                        [plans[i] for i in gated]), strict=True):  # type: ignore[misc]
                out[i] = d
            self._observe("detect_regions", time.perf_counter() - t1)
        if self.metrics is not None:
            for p in plans:
                self.metrics.detect_frames.labels("full" if p == "full" else "carried" if p is None
                                                  else "regions").inc()
        return out

    def _detect_full(self, frames: Sequence[Frame], full_res: bool = False) -> list[Detections]:
        """Whole-frame detection of each frame's `image` (one batched call); `full_res`: of its full-resolution
        frame when `image` is reduced more than by half, the faces mapped to `image` pixels."""
        t0 = time.perf_counter()
        # a half decode (fast_decode) is made only where it still holds the detector's input: detect on it; a
        # quarter decode (the motion mask's, with gating) may not: detect on the full frame
        if full_res and any(f.scale > 2.0 for f in frames):
            raw = self.inference.detect_batch([f.full_image() if f.scale > 2.0 else f.image for f in frames])
            dets = [_scaled(d, 1.0 / f.scale) if f.scale > 2.0 else d for d, f in zip(raw, frames, strict=True)]
        else:
            dets = self.inference.detect_batch([f.image for f in frames])
        if self.metrics is not None:
            self.metrics.stage_seconds.labels("detect").observe(time.perf_counter() - t0)
            self.metrics.batch_size.observe(len(frames))
            split = getattr(self.inference, "last_detect_timing", None)
            timing = split() if callable(split) else None
            if timing is not None:  # the detect stage's parts, so the next bottleneck shows
                self._observe("preprocess", timing.preprocess)
                self._observe("detect_model", timing.model)
                self._observe("detect_post", timing.postprocess)
        return dets

    def _plan(self, frame: Frame) -> str | tuple[float, list[tuple[int, ...]]] | None:
        """How to detect one frame: None (carried), "full", or (scale, regions in full-resolution pixels)."""
        s = self.settings
        cam = self.add_camera(frame.camera_id)
        g = cam.gate
        assert g is not None
        t = frame.capture_time
        with g.lock:
            # overload: half the queue waiting doubles the interval at once (a queue of 8 fills within a few
            # frames, so a step a frame came too late: frames dropped first); it steps back down after
            # CALM_FRAMES frames in a row found the queue empty
            if frame.backlog * 2 >= max(2, s.queue_size):
                g.interval = min(s.max_detect_interval, max(g.interval + 1, 2 * g.interval))
                g.calm = 0
            elif frame.backlog == 0 and g.interval > s.detect_interval:
                g.calm += 1
                if g.calm >= CALM_FRAMES:
                    g.interval -= 1
                    g.calm = 0
            g.peak_interval = max(g.peak_interval, g.interval)
            if self.metrics is not None:
                self.metrics.detect_interval.labels(frame.camera_id).set(g.interval)
            first = t < g.last_time or g.last_time == float("-inf")  # a camera's first frame, or a restart
            g.last_time = t
            if not first and g.since_detect + 1 < g.interval:
                g.since_detect += 1
                return None
            g.since_detect = 0
            if not s.motion_gating:
                return "full"
            if first:
                g.motion.reset()
                g.motion.update(frame.image)
                g.next_full = t + s.full_frame_interval_s if s.full_frame_interval_s > 0 else float("inf")
                return "full"
            motion = g.motion.update(frame.image) * np.float32(frame.scale)
            if t >= g.next_full:
                g.next_full = t + s.full_frame_interval_s
                return "full"
        h, w = frame.image.shape[:2]
        fw, fh = round(w * frame.scale), round(h * frame.scale)
        with g.lock:
            scale = g.scale(s.region_scale, self._min_face_px(), self._full_scale(fw, fh))
        tracks = cam.tracker.predicted_boxes(t)
        regions = plan_regions(motion, tracks, fw, fh, scale)
        if region_share(regions, fw, fh) > s.max_region_share:
            return "full"
        return (scale, regions)

    def _full_scale(self, w: int, h: int) -> float:
        """Network pixels per pixel at which the detector takes a whole w x h frame (1 if it does not say)."""
        det = getattr(self.inference, "detector", None)
        side = getattr(det, "network_side", None)
        if not callable(side):
            return 1.0
        return min(1.0, float(side(w, h)) / max(w, h))

    def _min_face_px(self) -> float:
        """The detector's smallest reliable face in network pixels (its manifest's min_face_px; 20 if unknown)."""
        det = getattr(self.inference, "detector", None)
        return float(getattr(det, "min_face_px", 20.0))

    def detect_regions(self, frames: Sequence[Frame],
                        plans: Sequence[tuple[float, list[tuple[int, ...]]]]) -> list[Detections]:
        """Detect the planned regions of several frames (equal shapes batched by the detector), map the faces to
        each frame's `image` pixels, drop duplicates where regions meet, and re-detect a face cut by a region's
        inner edge in a region centred on it, so it is found whole."""
        s = self.settings
        crops: dict[float, list[tuple[int, tuple[int, ...], np.ndarray]]] = {}
        for fi, (frame, (scale, regions)) in enumerate(zip(frames, plans, strict=True)):
            if not regions:
                continue
            full = frame.full_image()
            for r in regions:
                crops.setdefault(scale, []).append((fi, r, full[r[1]:r[3], r[0]:r[2]]))
        found: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in frames]
        for scale, items in crops.items():
            dets = self.inference.detect_regions([c for _, _, c in items], scale)
            redo: list[tuple[int, tuple[int, ...], np.ndarray]] = []
            for (fi, r, _), d in zip(items, dets, strict=True):
                if len(d) == 0:
                    continue
                off = np.array([r[0], r[1]], np.float32)
                boxes, lms = d.boxes + np.tile(off, 2), d.landmarks + off
                cut = _touches_inner_edge(boxes, r, frames[fi], s.detector_min_face_size)
                found[fi].append((boxes[~cut], lms[~cut], d.scores[~cut]))
                full = frames[fi].full_image()
                for b in boxes[cut]:
                    side = 3 * max(b[2] - b[0], b[3] - b[1], 32.0)
                    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                    square = np.array([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]], np.float32)
                    rr = plan_regions(square,
                                      np.zeros((0, 4), np.float32), full.shape[1], full.shape[0], scale,
                                      pad_frac=0.0, pad_px=0.0, up_frac=0.0)
                    for r2 in rr:
                        redo.append((fi, r2, full[r2[1]:r2[3], r2[0]:r2[2]]))
            if redo:
                for (fi, r, _), d in zip(redo, self.inference.detect_regions([c for _, _, c in redo], scale),
                                         strict=True):
                    off = np.array([r[0], r[1]], np.float32)
                    found[fi].append((d.boxes + np.tile(off, 2), d.landmarks + off, d.scores))
        return [_merge_found(parts, frame.scale, s.nms_threshold) for parts, frame in zip(found, frames, strict=True)]

    def detect_interval(self, camera_id: str) -> tuple[int, int]:
        """(current, highest so far) detection interval of a camera (1, 1 if unknown)."""
        state = self._cams.get(camera_id)
        if state is None or state.gate is None:
            return 1, 1
        return state.gate.interval, state.gate.peak_interval

    def recognize(self, frames: Sequence[Frame], detections: Sequence[Detections]) -> list[FrameRecognition]:
        """Track, gate, embed best shots and match `frames` with their `detect` results.

        Frames of one camera must be in capture order and follow that camera's earlier frames."""
        if len(frames) != len(detections):
            raise ValueError(f"{len(frames)} frames but {len(detections)} detection results")
        s = self.settings
        t1 = time.perf_counter()
        track_s = 0.0  # tracking, quality and the best-shot policy; the rest of the loop is alignment
        per_frame: list[tuple[Detections, np.ndarray, np.ndarray, list[int]]] = []
        crops: list[np.ndarray] = []
        owners: list[tuple[int, int, float]] = []  # (frame index, face index, quality)
        scheduled: set[tuple[str, int]] = set()  # tracks already being embedded in this batch
        for fi, (frame, raw) in enumerate(zip(frames, detections, strict=True)):
            tt = time.perf_counter()
            cam = self.add_camera(frame.camera_id)
            t = frame.capture_time
            if isinstance(raw, Carried):  # not detected: the live tracks carried to this frame, nothing embedded
                if s.tracking and t >= cam.last_time:
                    dets = cam.tracker.carry(t)[: s.max_faces_per_frame]
                else:
                    dets = Detections.empty().with_extra(track_id=np.zeros(0, np.int64))
                cam.last_time = max(cam.last_time, t)
                tids = np.asarray(dets.extra["track_id"], np.int64)
                carried_q = np.asarray([cam.quality.get(int(k), 0.0) for k in tids], np.float32)
                per_frame.append((dets, tids, carried_q, []))
                track_s += time.perf_counter() - tt
                continue
            dets = _scaled(raw[: s.max_faces_per_frame], frame.scale)  # original coordinates
            if cam.gate is not None and len(dets):
                with cam.gate.lock:
                    cam.gate.sizes.extend(dets.sizes.tolist())  # the camera's face sizes (auto region scale)
            ended: list[int] = []
            if s.tracking:
                if t < cam.last_time:  # clock went back (source restarted): start tracking afresh
                    ended += cam.tracker.reset()
                upd = cam.tracker.update(dets, t)
                dets = upd.dets
                ended += upd.ended
                cam.tracks.drop(ended)
                track_ids = dets.extra["track_id"]
            else:
                track_ids = np.full(len(dets), -1, np.int64)
            cam.last_time = t
            if not len(dets):
                quality = np.zeros(0, np.float32)
            elif frame.scale != 1.0 and frame.decoded_full():  # detected at full resolution: judge it there
                quality = face_quality(frame.full_image(), dets, float(s.min_face_size))
            else:
                quality = face_quality(frame.image, _scaled(dets, 1 / frame.scale), s.min_face_size / frame.scale)
            if s.tracking and cam.gate is not None:  # each track's quality, for the frames that carry it
                for gone in ended:
                    cam.quality.pop(gone, None)
                cam.quality.update((int(k), float(q)) for k, q in zip(track_ids, quality, strict=True) if k >= 0)
            per_frame.append((dets, np.asarray(track_ids, np.int64), quality, ended))
            passes = self.gate.passes(dets, quality)  # tiny or poor faces are tracked but never matched
            track_s += time.perf_counter() - tt
            for k in np.flatnonzero(passes):
                if s.tracking:
                    tid = int(track_ids[k])
                    if tid < 0:
                        continue
                    state = cam.tracks.get_or_create(tid)
                    state.observe(float(quality[k]), t)
                    if (frame.camera_id, tid) in scheduled or not self.policy.should_embed(state, float(quality[k]), t):
                        continue
                    scheduled.add((frame.camera_id, tid))
                crops.append(self.inference.align(frame.full_image(), dets.landmarks[k]))
                owners.append((fi, int(k), float(quality[k])))
        t2 = time.perf_counter()
        self._observe("track", track_s)
        self._observe("align", t2 - t1 - track_s)
        if self.metrics is not None:
            self.metrics.faces.inc(sum(len(d) for d, _, _, _ in per_frame))

        embs = np.zeros((0, self.inference.dim), np.float32)
        decisions: list[list[MatchDecision]] = [[] for _ in frames]
        if crops:
            embs = self.inference.embed(np.stack(crops))
            t3 = time.perf_counter()
            self._observe("embed", t3 - t2)
            if self.metrics is not None:
                self.metrics.embeddings.inc(len(crops))
            probes = [self._pool(frames[fi], int(per_frame[fi][1][k]), q, emb)
                      for (fi, k, q), emb in zip(owners, embs, strict=True)]
            hits = self.gallery.search(np.stack(probes), top_k=1, threshold=s.match_threshold)
            self._observe("search", time.perf_counter() - t3)
            for (fi, face, _q), probe, hit in zip(owners, probes, hits, strict=True):
                # a person removed while this batch was in flight: erased data stays erased
                if hit and self.gallery.has_template(hit[0].template_id):
                    dets, tids = per_frame[fi][0], per_frame[fi][1]
                    decisions[fi].append(MatchDecision(face, int(tids[face]), dets.boxes[face].astype(np.float32),
                                                       probe, hit[0]))
        out: list[FrameRecognition] = []
        for fi, frame in enumerate(frames):
            dets, tids, quality, ended = per_frame[fi]
            rows = [j for j, (f, _, _) in enumerate(owners) if f == fi]
            embedded = np.zeros(len(dets), bool)
            embedded[[owners[j][1] for j in rows]] = True
            out.append(FrameRecognition(
                frame.camera_id, frame.seq, frame.capture_time, dets, tids, quality, embedded,
                embs[rows], decisions[fi], ended))
        return out

    def _pool(self, frame: Frame, track_id: int, quality: float, emb: np.ndarray) -> np.ndarray:
        """The probe for one new embedding: the track's pooled embedding (tracking) or itself."""
        if not self.settings.tracking:
            return emb
        tracks = self.add_camera(frame.camera_id).tracks
        state = tracks.get_or_create(track_id)
        sim = state.similarity(emb)
        if sim is not None and sim < self.settings.identity_switch_similarity:
            tracks.drop([track_id])  # the tracker handed the track to another face: start afresh
            state = tracks.get_or_create(track_id)
            state.observe(quality, frame.capture_time)
        return state.add_embedding(emb, quality, frame.capture_time)

    def _observe(self, stage: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.stage_seconds.labels(stage).observe(seconds)


def _touches_inner_edge(boxes: np.ndarray, region: tuple[int, ...], frame: Frame, min_size: float) -> np.ndarray:
    """(N,) bool: boxes within 2 px of an edge of `region` that is not the frame's edge (the face may be cut)."""
    h, w = frame.image.shape[:2]
    fw, fh = round(w * frame.scale), round(h * frame.scale)
    x1, y1, x2, y2 = region
    m = 2.0
    cut = np.zeros(len(boxes), bool)
    if x1 > 0:
        cut |= boxes[:, 0] <= x1 + m
    if y1 > 0:
        cut |= boxes[:, 1] <= y1 + m
    if x2 < fw:
        cut |= boxes[:, 2] >= x2 - m
    if y2 < fh:
        cut |= boxes[:, 3] >= y2 - m
    return cut & (np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size * 0.5)


def _merge_found(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], scale: float, nms: float) -> Detections:
    """One frame's faces from its regions, duplicates where regions meet suppressed (NMS), in `image` pixels."""
    parts = [p for p in parts if len(p[2])]
    if not parts:
        return Detections.empty()
    boxes = np.concatenate([p[0] for p in parts]).astype(np.float32)
    lms = np.concatenate([p[1] for p in parts]).astype(np.float32)
    scores = np.concatenate([p[2] for p in parts]).astype(np.float32)
    order = np.argsort(-scores)
    keep: list[int] = []
    for i in order:  # greedy NMS on IoU (few boxes)
        if all(box_iou(boxes[i], boxes[k])[0, 0] <= nms for k in keep):
            keep.append(int(i))
    inv = np.float32(1.0 / scale)
    return Detections(boxes[keep] * inv, lms[keep] * inv, scores[keep])


def _scaled(dets: Detections, scale: float) -> Detections:
    """Detections with boxes and landmarks multiplied by `scale` (no copy when it is 1)."""
    if scale == 1.0:
        return dets
    return Detections(dets.boxes * np.float32(scale), dets.landmarks * np.float32(scale), dets.scores, dets.extra)


__all__ = ["CameraTracking", "Carried", "Frame", "FrameRecognition", "GalleryView", "GateState", "Inference",
           "MatchDecision", "Recognizer", "RecognizerSettings"]
