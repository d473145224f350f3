"""`FaceAnalyzer`: detector + aligner + embedder built from the config, the one entry point
the CLI, the service and the video pipeline use for still images."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.config import Config
from engine.errors import MultipleFacesError, NoFaceError
from engine.models.registry import ModelRegistry
from engine.models.runner import RunnerInfo
from engine.vision.align import Aligner
from engine.vision.detections import Detections
from engine.vision.detectors import DetectTiming, FaceDetector, load_detector
from engine.vision.embedder import FaceEmbedder, load_embedder
from engine.vision.enrolment import choose_enrolment_face
from engine.vision.image import check_array

log = logging.getLogger(__name__)


@dataclass
class FaceResult:
    """Faces of one image and their unit embeddings (row i belongs to face i)."""

    detections: Detections
    embeddings: np.ndarray


class FaceAnalyzer:
    def __init__(self, detector: FaceDetector, embedder: FaceEmbedder, aligner: Aligner | None = None) -> None:
        self.detector = detector
        self.embedder = embedder
        self.aligner = aligner or Aligner()

    @classmethod
    def from_config(cls, cfg: Config, registry: ModelRegistry | None = None) -> FaceAnalyzer:
        registry = registry or ModelRegistry.from_config(cfg.models)
        det = load_detector(registry, cfg.models.detector, cfg.detector, cfg.runtime)
        emb = load_embedder(registry, cfg.models.embedder, cfg.embedder, cfg.runtime)
        log.info("analyzer: detector=%s embedder=%s (dim %d) on %s (IO binding %s)",
                 det.name, emb.name, emb.dim, emb.runner.provider, "on" if emb.runner.io_binding else "off")
        return cls(det, emb)

    @property
    def provider(self) -> str:
        """The execution provider the embedder runs on (the detector's is in `models`); callers
        ask the analyzer, never its members' runners."""
        return self.embedder.runner.provider

    @property
    def models(self) -> dict[str, RunnerInfo]:
        """Per model role ("detector", "embedder"): model file, provider, batched flag, batch verdict, IO binding."""
        return {"detector": self.detector.runner.info(), "embedder": self.embedder.runner.info()}

    def session_stats(self) -> dict[str, dict[str, Any]]:
        """Per role ("detector", "embedder"): distinct input shapes its session ran against the buckets
        allowed (`runtime.shape_buckets`), warm-up time, fp16 verdict; for metrics and `bench --json`."""
        return {"detector": self.detector.runner.session_stats(), "embedder": self.embedder.runner.session_stats()}

    @property
    def model_name(self) -> str:
        return self.embedder.name

    @property
    def dim(self) -> int:
        return self.embedder.dim

    # ---- stage calls (the video recognizer uses these, never the members) -----------------------
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections of several images in one batched detector call (one list entry per image)."""
        return self.detector.detect_batch(images)

    def detect_regions(self, images: Sequence[np.ndarray], scale: float) -> list[Detections]:
        """Detections of regions cut from video frames at `scale` network pixels per pixel (motion gating)."""
        return self.detector.detect_scaled(images, scale)

    def last_detect_timing(self) -> DetectTiming | None:
        """Pre-process / model / post-process split of this thread's last `detect_batch` call."""
        return self.detector.last_timing()

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The aligned embedder-input crop of one face, from its (5, 2) landmarks in `image` pixels."""
        return self.aligner.align(image, landmarks)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, dim) unit embeddings of (N, H, W, 3) aligned crops, batched by the embedder."""
        return self.embedder.embed(crops)

    def embed_faces(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        if len(dets) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.embedder.embed(self.aligner.align_all(image, dets))

    def analyze(self, image: np.ndarray) -> FaceResult:
        image = check_array(image)
        dets = self.detector.detect(image)
        return FaceResult(dets, self.embed_faces(image, dets))

    def analyze_batch(self, images: Sequence[np.ndarray]) -> list[FaceResult]:
        """Detect on all images in one batch, then embed all faces of all images in one batch."""
        images = [check_array(im) for im in images]
        dets = self.detector.detect_batch(images)
        crops = [self.aligner.align_all(im, d) for im, d in zip(images, dets, strict=True)]
        counts = [len(d) for d in dets]
        if sum(counts) == 0:
            return [FaceResult(d, np.zeros((0, self.dim), np.float32)) for d in dets]
        embs = self.embedder.embed(np.concatenate(crops))
        out, start = [], 0
        for d, n in zip(dets, counts, strict=True):
            out.append(FaceResult(d, embs[start : start + n]))
            start += n
        return out

    def single_face(self, image: np.ndarray, what: str = "image") -> tuple[Detections, np.ndarray]:
        """The one face of an enrolment/probe image; NoFaceError / MultipleFacesError otherwise."""
        res = self.analyze(image)
        n = len(res.detections)
        if n == 0:
            raise NoFaceError(f"{what}: no face found (need one clear, frontal face of at least "
                              f"{self.detector.cfg.min_face_size} px)")  # type: ignore[attr-defined]
        if n > 1:
            boxes = ", ".join(f"[{int(b[0])},{int(b[1])},{int(b[2])},{int(b[3])}]" for b in res.detections.boxes)
            raise MultipleFacesError(f"{what}: {n} faces found (boxes {boxes}); crop the image to one person")
        return res.detections, res.embeddings[0]

    def enrol_face(self, image: np.ndarray, what: str = "image",
                   strict: bool = False) -> tuple[Detections, np.ndarray, str]:
        """The face to enrol and a note ('' if none), chosen by `choose_enrolment_face`: with several
        faces the one that dominates by size and position, and a note saying so; comparable faces are
        refused naming their boxes (MultipleFacesError). strict=True refuses any second face."""
        if strict:
            det, emb = self.single_face(image, what)
            return det, emb, ""
        image = check_array(image)
        dets = self.detector.detect(image)
        choice = choose_enrolment_face(dets.boxes, image.shape[1], image.shape[0], what,
                                       self.detector.cfg.min_face_size)  # type: ignore[attr-defined]
        if choice.note:
            log.info("%s", choice.note)
        best = dets[choice.index]
        return best, self.embed_faces(image, best)[0], choice.note

    def enrolment_preview(self, image: np.ndarray, what: str = "image") -> tuple[Detections, int | None, str]:
        """Every face found, the index of the one `enrol_face` would enrol (None when it would refuse) and
        why not ('' when it can): an enrolment preview that makes the same choice, without embedding."""
        image = check_array(image)
        dets = self.detector.detect(image)
        try:
            choice = choose_enrolment_face(dets.boxes, image.shape[1], image.shape[0], what,
                                           self.detector.cfg.min_face_size)  # type: ignore[attr-defined]
        except (NoFaceError, MultipleFacesError) as exc:
            return dets, None, str(exc)
        return dets, choice.index, ""

    def largest_face(self, image: np.ndarray, what: str = "image") -> tuple[Detections, np.ndarray]:
        """The largest face (for search/verify probes, where a bystander should not fail the call)."""
        image = check_array(image)
        dets = self.detector.detect(image)
        if len(dets) == 0:
            raise NoFaceError(f"{what}: no face found")
        best = dets[int(np.argmax(dets.sizes))]
        return best, self.embed_faces(image, best)[0]
