"""Open-set 1:N watchlist evaluation through the CLI on a small lfw-dev subset (real images, real models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.evaluation.watchlist import fnir_at_fpir
from tests.conftest import TESTDATA
from tests.test_models_and_inputs import run_cli


def test_watchlist_eval_reports_every_metric_and_sane_accuracy(model_dir: Path) -> None:
    out = run_cli("eval", "watchlist", "--data", str(TESTDATA / "lfw-dev"), "--model-dir", str(model_dir),
                  "--conditions", "original,24px", "--max-probes", "60", "--max-gallery", "150", "--progress",
                  timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["enrolled"] >= 140 and res["enrol_failed"] <= 10
    assert "original: detected=" in out.stderr  # progress goes to stderr (asked for: stderr is not a terminal)
    assert "100%|" in out.stderr and "face/s]" in out.stderr  # the bar, with the rate and the time left
    by = {c["condition"]: c for c in res["conditions"]}
    assert set(by) == {"original", "24px"}
    keys = {"detected", "rank1", "fnir_at_fpir_1e2", "fnir_at_fpir_1e3", "matched", "false_alert", "gate_pass",
            "matched_gated", "false_alert_gated"}
    for c in by.values():
        assert keys <= set(c)
        assert c["mated"] == 60 and c["nonmated"] == 60
        for k in keys:
            assert 0.0 <= c[k] <= 1.0, (k, c[k])
        assert c["matched_gated"] <= c["matched"] and c["false_alert_gated"] <= c["false_alert"]
    orig = by["original"]
    assert orig["detected"] >= 0.97
    assert orig["rank1"] >= 0.9, orig  # a full-size face of an enrolled person is recognised
    assert orig["matched"] >= 0.7  # at the FPIR 1e-3 threshold for 1,000 people
    assert by["24px"]["rank1"] <= orig["rank1"]  # a 24 px face is never easier than the photo


def test_fnir_at_fpir_counts_misses_and_strangers() -> None:
    strangers = np.array([0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1], np.float32)
    mates = np.array([0.95, 0.6, 0.45, -np.inf], np.float32)  # the last: detected nowhere or wrong at rank 1
    fnir, thr = fnir_at_fpir(mates, strangers, 0.1)  # one stranger in ten may alert: threshold just above 0.5
    assert 0.5 < thr < 0.51
    assert fnir == 0.5
    fnir, thr = fnir_at_fpir(mates, strangers, 0.0)
    assert 0.9 < thr < 0.91 and fnir == 0.75
