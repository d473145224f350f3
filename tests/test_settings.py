"""Settings resolved once into an immutable object; the user's config stays as written; "auto" is a
value; cluster workers resolve what is left to auto on their own machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.cluster.worker import config_from_front, worker_config
from engine.config import Config
from engine.errors import ConfigError
from engine.gallery.gallery import Gallery
from engine.models.registry import load_manifest
from engine.settings import Settings
from engine.store import open_store
from engine.video.pipeline import Engine


def test_settings_are_frozen_and_building_the_engine_writes_no_setting(cfg: Config, analyzer) -> None:  # noqa: ANN001
    """Must-show 1: the thresholds, the quality gate, the detector's score threshold and batching are
    resolved into Settings; the config keeps "auto" (before, all four were written back into it)."""
    before = cfg.model_dump()
    store = open_store(cfg.store.target())
    try:
        eng = Engine(cfg, analyzer, Gallery(store, analyzer.dim, analyzer.model_name), store)
        s = eng.settings
        assert cfg.model_dump() == before
        assert (cfg.gallery.match_threshold, cfg.pipeline.min_quality, cfg.detector.score_threshold,
                cfg.pipeline.batch_size, cfg.pipeline.batch_wait_ms) == ("auto",) * 5
        assert 0.3 < s.match_threshold < 0.9 and s.min_quality == 0.25 and s.thresholds.detector_score == 0.6
        assert (s.batching.batch_size, s.batching.batch_wait_ms) == (1, 0.0)  # CPU provider
        assert eng.recognizer.settings.match_threshold == s.match_threshold
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.batching = s.batching  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.thresholds.match = 0.1  # type: ignore[misc]
        eng.stop(0)
    finally:
        store.close()


def test_gpu_worker_left_on_auto_gets_the_gpu_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    """Must-show 2: a CPU front end sends its overrides, not its resolved batch_size=1 / wait 0, so a worker
    on a GPU (provider resolution stubbed) picks the GPU default for what the user left on auto."""
    sface = load_manifest()["sface"]
    front = Config.load(env={"FACEENGINE_RUNTIME_PROVIDER": "auto", "FACEENGINE_PIPELINE_QUEUE_SIZE": "4"})
    monkeypatch.setattr("engine.settings.cuda_available", lambda: False)  # the front end: CPU only
    assert dataclasses.astuple(Settings.resolve(front, sface).batching) == (1, 0.0)
    sent = worker_config(front)  # what the front end starts its worker actors with
    assert sent["pipeline"] == {"queue_size": 4} and sent["runtime"]["provider"] == "auto"
    monkeypatch.setattr("engine.settings.cuda_available", lambda: True)  # the worker: a GPU
    worker = config_from_front(sent, "worker-0")
    settings = Settings.resolve(worker, sface)
    assert settings.device.gpu and dataclasses.astuple(settings.batching) == (16, 5.0)
    assert worker.pipeline.queue_size == 4
    front.update({"pipeline": {"batch_size": 4}}, source="test")  # an explicit value travels and wins
    assert dataclasses.astuple(Settings.resolve(config_from_front(worker_config(front)), sface).batching) == (4, 5.0)


def test_auto_is_a_value_and_old_sentinels_still_load(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text("[pipeline]\nbatch_size = 0\nbatch_wait_ms = -1.0\nmin_quality = -1.0\n"
                   "[gallery]\nmatch_threshold = 0.0\n[detector]\nscore_threshold = 0\n")
    c = Config.load(old, env={})
    assert (c.pipeline.batch_size, c.pipeline.batch_wait_ms, c.pipeline.min_quality, c.gallery.match_threshold,
            c.detector.score_threshold) == ("auto",) * 5
    new = tmp_path / "new.toml"
    new.write_text(c.to_toml())
    assert 'batch_size = "auto"' in new.read_text() and Config.load(new, env={}).describe() == c.describe()
    c.update({"pipeline": {"min_quality": 0, "batch_size": "8"}}, source="test")
    assert (c.pipeline.min_quality, c.pipeline.batch_size) == (0.0, 8)  # 0 = no quality gate, not auto
    with pytest.raises(ConfigError, match=r"pipeline.batch_size = 'fast' is invalid: Input should be 'auto'"):
        c.update({"pipeline": {"batch_size": "fast"}}, source="test")


def test_cross_field_rules_are_model_validators() -> None:
    c = Config.load(env={})
    with pytest.raises(ConfigError, match="TLS needs both tls.cert_file and tls.key_file"):
        c.update({"tls": {"cert_file": "/etc/cert.pem"}}, source="test")
    c.update({"tls": {"cert_file": "/etc/cert.pem", "key_file": "/etc/key.pem"}}, source="test")  # together: fine
    with pytest.raises(ConfigError, match=r"server.reserved_workers \(8\) must be below server.max_workers \(8\)"):
        c.update({"server": {"max_workers": 8}}, source="test")
    assert c.server.max_workers == 64  # nothing of a refused update is applied
