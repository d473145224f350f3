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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from engine.config import Config
from engine.errors import FaceEngineError
from engine.metrics import EngineMetrics
from engine.video.bestshot import BestShotPolicy, TrackRegistry, TrackState
from engine.video.quality import QualityGate, face_quality
from engine.video.tracker import FaceTracker
from engine.vision.detections import Detections

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
    _full: np.ndarray | None = field(default=None, repr=False, init=False)

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

    detections: faces in original pixels (`extra["track_id"]` when tracking). track_ids: (N,)
    int64, -1 = untracked. quality: (N,) float32 in [0, 1]. embedded: (N,) bool, faces embedded in
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


@dataclass
class CameraTracking:
    """One camera's recognition state: its tracker, per-track best-shot state, last frame time."""

    tracker: FaceTracker
    tracks: TrackRegistry = field(default_factory=TrackRegistry)
    last_time: float = float("-inf")


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
                    FaceTracker(max_age_s=s.track_max_age_s, high_score=s.track_start_score))
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
        """Detections of each frame's `image` (its own, possibly reduced, pixels): stateless, so
        several batches of one camera may be detected at once."""
        t0 = time.perf_counter()
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
            dets = _scaled(raw[: s.max_faces_per_frame], frame.scale)  # original coordinates
            t = frame.capture_time
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
            quality = (face_quality(frame.image, _scaled(dets, 1 / frame.scale), s.min_face_size / frame.scale)
                       if len(dets) else np.zeros(0, np.float32))
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
            for (fi, k, _q), probe, hit in zip(owners, probes, hits, strict=True):
                # a person removed while this batch was in flight: erased data stays erased
                if hit and self.gallery.has_template(hit[0].template_id):
                    dets, tids = per_frame[fi][0], per_frame[fi][1]
                    decisions[fi].append(MatchDecision(k, int(tids[k]), dets.boxes[k].astype(np.float32),
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


def _scaled(dets: Detections, scale: float) -> Detections:
    """Detections with boxes and landmarks multiplied by `scale` (no copy when it is 1)."""
    if scale == 1.0:
        return dets
    return Detections(dets.boxes * np.float32(scale), dets.landmarks * np.float32(scale), dets.scores, dets.extra)


__all__ = ["CameraTracking", "Frame", "FrameRecognition", "GalleryView", "Inference", "MatchDecision",
           "Recognizer", "RecognizerSettings"]
