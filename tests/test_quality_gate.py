"""The quality gate's calibration: the analysis functions, and the committed evidence behind
``pipeline.min_quality`` (benchmarks/results/quality-gate*.json, from benchmarks/bench_quality_gate.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.evaluation.quality_gate import analyse, auc, gate_point, load_records, matching_gate
from engine.models.registry import load_manifest
from tests.shared_data import ROOT

RESULTS = ROOT / "benchmarks" / "results"


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


def _committed() -> tuple[dict, dict]:
    summary = json.loads((RESULTS / "quality-gate.json").read_text())
    raw = json.loads((RESULTS / "quality-gate-records.json").read_text())
    return summary, raw


def test_committed_evidence_gives_each_embedder_its_manifest_gate() -> None:
    """Re-analyse the committed raw records: the figures the docs quote, and each embedder's manifest
    ``min_quality`` being the gate that keeps the reference embedder's share of right rank-1s."""
    summary, raw = _committed()
    records = load_records(raw)
    specs = load_manifest()
    committed = summary["analysis"]
    ref = committed["reference"]
    names = list(committed["embedders"])
    assert {"sface", "mobilefacenet"} <= set(names) and ref == "mobilefacenet"
    ref_gate = specs[ref].extra["min_quality"]
    assert ref_gate == committed["gate"] == 0.30
    thresholds = {n: float(e["match_threshold"]) for n, e in raw["embedders"].items()}
    again = analyse(records, names, ref, ref_gate, raw["meta"]["min_face_size"], thresholds, bootstrap=0)
    assert again["probes"] == committed["probes"] >= 1300  # ~1,400 detected mated probes, 7 conditions
    m = summary["meta"]["machine"]
    assert all(m.get(k) for k in ("cpu", "cores", "gpu", "measured_at", "loadavg_at_start", "loadavg_at_end"))
    for name in names:
        mine, theirs = again["embedders"][name], committed["embedders"][name]
        for key in ("at_gate", "at_gate_with_floor", "predictors", "matching_gate", "at_matching_gate",
                    "at_match_threshold", "conditions"):
            assert mine[key] == theirs[key], (name, key)
        # the manifest gate is the one that keeps the reference's share of correctly recognised faces
        assert mine["matching_gate"] == specs[name].extra["min_quality"], name
        assert mine["at_matching_gate"]["right_pass"] >= again["reference_right_pass"]
        # the gate passes right rank-1s more often than wrong ones, and nothing wrong scores above the threshold
        assert mine["at_matching_gate"]["right_pass"] > mine["at_matching_gate"]["wrong_pass"]
        assert mine["at_match_threshold"]["wrong_above_threshold"] == 0
        # pose does not predict a wrong rank-1 on these near-frontal photos (kept for best-shot ranking)
        assert abs(mine["predictors"]["pose"]["auc_right"] - 0.5) < 0.05, name


def test_committed_evidence_sharpness_predicts_mobilefacenet_errors_not_sface_ones() -> None:
    """What quality.py states: sharpness is the factor behind MobileFaceNet's wrong rank-1s (so 0.30 rejects
    faces half of which would be wrong); SFace survives blur, so the gate barely enriches its errors."""
    summary, _ = _committed()
    mfn, sface = summary["analysis"]["embedders"]["mobilefacenet"], summary["analysis"]["embedders"]["sface"]
    assert mfn["best_factor"] == "sharpness" and mfn["predictors"]["sharpness"]["auc_right"] > 0.75
    assert mfn["at_gate"]["wrong_among_rejected"] > 2 * mfn["at_gate"]["wrong_overall"]
    assert sface["predictors"]["sharpness"]["auc_right"] < 0.65
    assert sface["at_gate"]["wrong_among_rejected"] < 2 * sface["at_gate"]["wrong_overall"]
    # the same 0.30 costs SFace more of its right rank-1s than MobileFaceNet: hence its lower gate
    assert sface["at_gate"]["right_pass"] < mfn["at_gate"]["right_pass"] - 0.03
    assert sface["bootstrap_95"]["matching_gate"][1] < 0.30 <= mfn["bootstrap_95"]["matching_gate"][1]
