"""Match thresholds from the false-alert rate an operator accepts (open-set 1:N search).

A stranger raises a false alert when their best score against *any* of N enrolled people reaches the
threshold, so the per-comparison false-match rate (FMR) allowed for a false-positive identification
rate (FPIR) is 1 - (1 - FPIR)^(1/N) (about FPIR / N). Each embedder's manifest entry carries
``nonmated_tail`` = [a, b]: threshold = a + b * log10(FMR), a straight-line fit of its non-mated
cosine-score quantiles between FMR 1e-3 and 1e-6 (every cross-person pair of lfw-dev photos; see the
docs/accuracy.md). The threshold therefore rises with the watchlist size.

The quality gate (``pipeline.min_quality``) is per embedder the same way: "auto" (the default) takes
the embedder's manifest ``min_quality``, the gate that keeps the same share of correctly recognised faces
as MobileFaceNet at 0.30 (``benchmarks/bench_quality_gate.py``; see ``engine/video/quality.py``).
"""

from __future__ import annotations

import math

from engine.config import Config
from engine.models.registry import ModelSpec

FALLBACK_THRESHOLD = 0.45
"""Used when an embedder's manifest entry has no ``nonmated_tail`` calibration."""

FALLBACK_MIN_QUALITY = 0.30
"""Quality gate for an embedder whose manifest entry has no ``min_quality`` (MobileFaceNet's calibration)."""


def fmr_for_fpir(fpir: float, watchlist_size: int) -> float:
    """Per-comparison false-match rate giving `fpir` against a watchlist of `watchlist_size` people."""
    if not 0.0 < fpir < 1.0:
        raise ValueError(f"fpir must be in (0, 1), got {fpir}")
    n = max(1, int(watchlist_size))
    return -math.expm1(math.log1p(-fpir) / n)


def threshold_for_fpir(spec: ModelSpec, fpir: float, watchlist_size: int) -> float | None:
    """Cosine threshold for `fpir` at `watchlist_size` from the embedder's calibration, or None."""
    tail = spec.extra.get("nonmated_tail")
    if not isinstance(tail, list) or len(tail) != 2:
        return None
    a, b = float(tail[0]), float(tail[1])
    return round(min(0.99, a + b * math.log10(fmr_for_fpir(fpir, watchlist_size))), 4)


def effective_threshold(cfg: Config, spec: ModelSpec) -> tuple[float, str]:
    """(threshold, how it was chosen): gallery.match_threshold if set, else from match_fpir ("auto")."""
    g = cfg.gallery
    if g.match_threshold != "auto":
        return float(g.match_threshold), "gallery.match_threshold set explicitly"
    thr = threshold_for_fpir(spec, g.match_fpir, g.watchlist_size)
    if thr is None:
        return FALLBACK_THRESHOLD, f"embedder {spec.name} has no non-mated calibration: fallback {FALLBACK_THRESHOLD}"
    return thr, (f"from gallery.match_fpir={g.match_fpir:g} for a watchlist of {g.watchlist_size} "
                 f"with {spec.name}'s non-mated score calibration")


def _manifest_spec(cfg: Config) -> ModelSpec | None:
    from engine.models.registry import load_manifest

    return load_manifest().get(cfg.models.embedder)


def configured_threshold(cfg: Config) -> float:
    """The effective threshold for cfg.models.embedder without a loaded model (manifest lookup), for
    code that has only the config (benchmarks, `config show`)."""
    if cfg.gallery.match_threshold != "auto":
        return float(cfg.gallery.match_threshold)
    spec = _manifest_spec(cfg)
    return FALLBACK_THRESHOLD if spec is None else effective_threshold(cfg, spec)[0]


def effective_min_quality(cfg: Config, spec: ModelSpec) -> tuple[float, str]:
    """(quality gate, how it was chosen): pipeline.min_quality if set (0 = no gate), else ("auto") the
    embedder's manifest ``min_quality``, else FALLBACK_MIN_QUALITY."""
    q = cfg.pipeline.min_quality
    if q != "auto":
        return float(q), "pipeline.min_quality set explicitly" + ("; 0 = no quality gate" if q == 0 else "")
    val = spec.extra.get("min_quality")
    if not isinstance(val, (int, float)) or isinstance(val, bool) or not 0.0 <= float(val) <= 1.0:
        return FALLBACK_MIN_QUALITY, (f"embedder {spec.name} has no quality-gate calibration: "
                                      f"fallback {FALLBACK_MIN_QUALITY}")
    return float(val), f"{spec.name}'s calibrated quality gate (model manifest min_quality)"


def configured_min_quality(cfg: Config) -> float:
    """The effective quality gate for cfg.models.embedder without a loaded model (manifest lookup)."""
    if cfg.pipeline.min_quality != "auto":
        return float(cfg.pipeline.min_quality)
    spec = _manifest_spec(cfg)
    return FALLBACK_MIN_QUALITY if spec is None else effective_min_quality(cfg, spec)[0]
