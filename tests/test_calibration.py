"""Match thresholds derived from the accepted false-alert rate (gallery.match_fpir)."""

from __future__ import annotations

import pytest

from engine.config import Config
from engine.gallery.calibration import (
    FALLBACK_MIN_QUALITY,
    configured_min_quality,
    effective_min_quality,
    effective_threshold,
    fmr_for_fpir,
    threshold_for_fpir,
)
from engine.models.registry import load_manifest
from engine.video.recognizer import RecognizerSettings
from tests.test_models_and_inputs import run_cli


def test_fmr_for_fpir_splits_the_rate_over_the_watchlist() -> None:
    assert fmr_for_fpir(1e-3, 1) == pytest.approx(1e-3)
    assert fmr_for_fpir(1e-3, 1000) == pytest.approx(1e-6, rel=1e-3)
    with pytest.raises(ValueError):
        fmr_for_fpir(0.0, 10)


def test_threshold_rises_with_watchlist_size_and_explicit_value_wins() -> None:
    spec = load_manifest()["mobilefacenet"]
    t = [threshold_for_fpir(spec, 1e-3, n) for n in (1, 100, 1000, 10000)]
    assert all(a < b for a, b in zip(t, t[1:], strict=False)), t
    assert 0.45 < t[2] < 0.6  # lfw-dev: 1e-6 of cross-person pairs score above ~0.52
    cfg = Config.load(env={})
    assert cfg.gallery.match_threshold == "auto"  # default: derived
    thr, how = effective_threshold(cfg, spec)
    assert thr == t[2] and "match_fpir" in how
    cfg.gallery.match_threshold = 0.4
    assert effective_threshold(cfg, spec) == (0.4, "gallery.match_threshold set explicitly")


def test_config_show_prints_effective_threshold() -> None:
    out = run_cli("config", "show", env={"FACEENGINE_GALLERY_WATCHLIST_SIZE": "100"})
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    spec = load_manifest()[Config.load(env={}).models.embedder]
    assert line.startswith(f"# effective match threshold: {threshold_for_fpir(spec, 1e-3, 100):.4f}"), line


def test_quality_gate_per_embedder_from_the_manifest_explicit_value_wins() -> None:
    specs = load_manifest()
    cfg = Config.load(env={})
    assert cfg.pipeline.min_quality == "auto"  # default: the embedder's calibrated gate
    assert effective_min_quality(cfg, specs["sface"])[0] == 0.25
    assert effective_min_quality(cfg, specs["mobilefacenet"])[0] == 0.30
    q, how = effective_min_quality(cfg, specs["w600k_mbf"])  # no calibration in the manifest
    assert q == FALLBACK_MIN_QUALITY and "no quality-gate calibration" in how
    assert configured_min_quality(cfg) == effective_min_quality(cfg, specs[cfg.models.embedder])[0]
    cfg.models.embedder = "mobilefacenet"
    assert configured_min_quality(cfg) == 0.30
    cfg.pipeline.min_quality = 0.0  # an explicit 0 turns the gate off, it does not mean "derive"
    assert effective_min_quality(cfg, specs["sface"]) == (0.0,
                                                         "pipeline.min_quality set explicitly; 0 = no quality gate")
    cfg.pipeline.min_quality = 0.4
    assert configured_min_quality(cfg) == 0.4
    assert effective_min_quality(cfg, specs["sface"])[0] == 0.4 and cfg.pipeline.min_quality == 0.4
    cfg.pipeline.min_quality = -1.0  # the old spelling of auto
    assert effective_min_quality(cfg, specs["sface"])[0] == 0.25 and cfg.pipeline.min_quality == "auto"


def test_recognizer_settings_use_the_embedders_gate() -> None:
    cfg = Config.load(env={"FACEENGINE_MODELS_EMBEDDER": "mobilefacenet"})
    assert RecognizerSettings.from_config(cfg).min_quality == 0.30
    cfg = Config.load(env={"FACEENGINE_MODELS_EMBEDDER": "sface"})
    assert RecognizerSettings.from_config(cfg).min_quality == 0.25
    cfg = Config.load(env={"FACEENGINE_PIPELINE_MIN_QUALITY": "0.5"})
    assert RecognizerSettings.from_config(cfg).min_quality == 0.5


def test_config_show_prints_effective_quality_gate() -> None:
    out = run_cli("config", "show", env={"FACEENGINE_MODELS_EMBEDDER": "mobilefacenet"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2].startswith("# effective quality gate: 0.30 (mobilefacenet's calibrated"), lines[-2]
