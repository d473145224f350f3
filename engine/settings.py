"""`Settings`: the configuration resolved once at start-up into an immutable object.

The user's `Config` stays as written (values left to "auto" stay "auto"); what the engine runs with is
decided here, in one place, from the config, the machine and the loaded models:

* the device plan: which provider the models run on and whether it is a GPU;
* batching: `pipeline.batch_size` / `batch_wait_ms` ("auto": CPU 1 frame and no wait, GPU 16 and 5 ms);
* thresholds: the match threshold (from `gallery.match_fpir` and the embedder's calibration), the
  quality gate (the embedder's manifest `min_quality`) and the detector's score threshold (its
  manifest `score_threshold`).

Cluster workers receive the user's overrides (`Config.overrides`), not these values, and resolve their
own: a GPU worker behind a CPU front end gets the GPU batching.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.config import Config, DetectorConfig, PipelineConfig, RuntimeConfig
from engine.gallery.calibration import effective_min_quality, effective_threshold

if TYPE_CHECKING:
    from engine.models.registry import ModelSpec
    from engine.vision.analyzer import FaceAnalyzer

log = logging.getLogger(__name__)

AUTO_BATCH = {"cpu": (1, 0.0), "gpu": (16, 5.0)}
"""(pipeline.batch_size, batch_wait_ms) chosen for "auto": on a CPU a batch only adds latency
(docs/performance.md); on a GPU 16 frames and 5 ms doubled end-to-end fps (an H100 run)."""

DEFAULT_DETECTOR_SCORE = 0.6
"""Detector score threshold for a model whose manifest entry names none."""


def cuda_available() -> bool:
    """Whether this onnxruntime offers CUDA (imported only when asked)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def gpu_provider(provider: str) -> bool:
    """Whether a provider name runs on a GPU; "auto" asks onnxruntime (`cuda_available`)."""
    if provider == "auto":
        return cuda_available()
    return provider in ("cuda", "tensorrt")


@dataclass(frozen=True)
class DevicePlan:
    """Where the models run."""

    provider: str  # as configured: cpu, cuda, tensorrt or auto
    gpu: bool
    device_id: int

    @classmethod
    def resolve(cls, runtime: RuntimeConfig) -> DevicePlan:
        return cls(runtime.provider, gpu_provider(runtime.provider), runtime.device_id)


@dataclass(frozen=True)
class Batching:
    """Frames per detection batch across cameras and the longest wait to fill one."""

    batch_size: int
    batch_wait_ms: float

    @classmethod
    def resolve(cls, pipeline: PipelineConfig, device: DevicePlan) -> Batching:
        size, wait = AUTO_BATCH["gpu" if device.gpu else "cpu"]
        return cls(size if pipeline.batch_size == "auto" else int(pipeline.batch_size),
                   wait if pipeline.batch_wait_ms == "auto" else float(pipeline.batch_wait_ms))


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds, from the config or the loaded models' calibration."""

    match: float
    match_how: str
    min_quality: float
    min_quality_how: str
    detector_score: float

    @classmethod
    def resolve(cls, cfg: Config, embedder: ModelSpec, detector: ModelSpec | None = None) -> Thresholds:
        match, match_how = effective_threshold(cfg, embedder)
        q, q_how = effective_min_quality(cfg, embedder)
        return cls(match, match_how, q, q_how, detector_score_threshold(cfg.detector, detector))


def detector_score_threshold(cfg: DetectorConfig, detector: ModelSpec | None) -> float:
    """detector.score_threshold, or ("auto") the detector model's own from its manifest entry."""
    if cfg.score_threshold != "auto":
        return float(cfg.score_threshold)
    value = detector.extra.get("score_threshold") if detector is not None else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else DEFAULT_DETECTOR_SCORE


@dataclass(frozen=True)
class Settings:
    """What the engine runs with, resolved once; `config` is the user's configuration as written."""

    config: Config
    device: DevicePlan
    batching: Batching
    thresholds: Thresholds

    @classmethod
    def resolve(cls, cfg: Config, embedder: ModelSpec, detector: ModelSpec | None = None) -> Settings:
        device = DevicePlan.resolve(cfg.runtime)
        return cls(cfg, device, Batching.resolve(cfg.pipeline, device), Thresholds.resolve(cfg, embedder, detector))

    @classmethod
    def for_analyzer(cls, cfg: Config, analyzer: FaceAnalyzer) -> Settings:
        """Settings for the models `analyzer` loaded."""
        return cls.resolve(cfg, analyzer.embedder.spec, analyzer.detector.spec)

    @property
    def match_threshold(self) -> float:
        return self.thresholds.match

    @property
    def min_quality(self) -> float:
        return self.thresholds.min_quality

    def log(self) -> None:
        t, b = self.thresholds, self.batching
        log.info("settings: %s provider (%s), batch %d frames / %g ms, match threshold %.4f (%s), quality gate "
                 "%.2f (%s), detector score %.2f", self.device.provider, "GPU" if self.device.gpu else "CPU",
                 b.batch_size, b.batch_wait_ms, t.match, t.match_how, t.min_quality, t.min_quality_how,
                 t.detector_score)


__all__ = ["AUTO_BATCH", "Batching", "DevicePlan", "Settings", "Thresholds", "cuda_available", "gpu_provider"]
