"""The quality gate's calibration: the analysis functions, and the committed evidence behind
``pipeline.min_quality`` (benchmarks/results/quality-gate*.json, from benchmarks/bench_quality_gate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.evaluation.quality_gate import auc, gate_point, matching_gate


def test_auc_orders_and_ties() -> None:
    right = np.array([True, True, False, False])
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), right) == 1.0
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), right) == 0.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), right) == 0.5
    assert auc(np.array([0.9, 0.3, 0.5, 0.1]), right) == 0.75  # 3 of the 4 right/wrong pairs ordered right
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([True, True])))


def test_gate_point_and_matching_gate() -> None:
    q = np.array([0.9, 0.5, 0.35, 0.2, 0.1, 0.6])
    right = np.array([True, True, True, True, False, False])
    p = gate_point(q, right, 0.30)
    assert p["right_pass"] == 0.75 and p["wrong_pass"] == 0.5
    assert p["wrong_among_rejected"] == 0.5 and p["wrong_overall"] == pytest.approx(1 / 3)
    floor = np.array([True, False, True, True, True, True])
    assert gate_point(q, right, 0.30, floor)["right_pass"] == 0.5  # the size floor rejects one more
    assert matching_gate(q, right, 0.75) == 0.35  # the highest grid gate keeping 3 of 4 right faces
    assert matching_gate(q, right, 1.0) == 0.2

