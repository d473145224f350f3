"""Match thresholds from the false-alert rate an operator accepts (open-set 1:N search).

A stranger raises a false alert when their best score against *any* of N enrolled people reaches the
threshold, so the per-comparison false-match rate (FMR) allowed for a false-positive identification
rate (FPIR) is 1 - (1 - FPIR)^(1/N) (about FPIR / N). Each embedder's manifest entry carries
``nonmated_tail`` = [a, b]: threshold = a + b * log10(FMR), a straight-line fit of its non-mated
cosine-score quantiles between FMR 1e-3 and 1e-6 (every cross-person pair of lfw-dev photos; see the
README's Accuracy section). The threshold therefore rises with the watchlist size.
"""

from __future__ import annotations

import logging
import math

from engine.config import Config
from engine.models.registry import ModelSpec

log = logging.getLogger(__name__)

FALLBACK_THRESHOLD = 0.45
"""Used when an embedder's manifest entry has no ``nonmated_tail`` calibration."""


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
    """(threshold, how it was chosen): gallery.match_threshold if set (> 0), else from match_fpir."""
    g = cfg.gallery
    if g.match_threshold > 0:
        return g.match_threshold, "gallery.match_threshold set explicitly"
    thr = threshold_for_fpir(spec, g.match_fpir, g.watchlist_size)
    if thr is None:
        return FALLBACK_THRESHOLD, f"embedder {spec.name} has no non-mated calibration: fallback {FALLBACK_THRESHOLD}"
    return thr, (f"from gallery.match_fpir={g.match_fpir:g} for a watchlist of {g.watchlist_size} "
                 f"with {spec.name}'s non-mated score calibration")


def resolve_match_threshold(cfg: Config, spec: ModelSpec) -> float:
    """Write the effective threshold into cfg.gallery.match_threshold (every consumer reads it there)."""
    thr, how = effective_threshold(cfg, spec)
    if cfg.gallery.match_threshold <= 0:
        cfg.gallery.match_threshold = thr
    log.info("match threshold %.4f (%s)", thr, how)
    return thr


def configured_threshold(cfg: Config) -> float:
    """The effective threshold for cfg.models.embedder without a loaded model (manifest lookup); for
    code that gets only the config (e.g. `RecognizerSettings.from_config`)."""
    if cfg.gallery.match_threshold > 0:
        return cfg.gallery.match_threshold
    from engine.models.registry import load_manifest

    spec = load_manifest().get(cfg.models.embedder)
    return FALLBACK_THRESHOLD if spec is None else effective_threshold(cfg, spec)[0]
