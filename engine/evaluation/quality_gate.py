"""The quality gate (``pipeline.min_quality``) measured against match correctness, per embedder.

Input: the records ``evaluate(..., records=...)`` in ``engine.evaluation.watchlist`` collects, one per
detected mated probe: its quality factors (``engine.video.quality.quality_components``), its box size
and whether its rank-1 was the mate. The factors depend on the detector and the frame, not the
embedder, so several embedders run on the same probes share them and differ only in correctness
(``benchmarks/bench_quality_gate.py`` stores them as columns: the factors once, ``rank1_<embedder>`` each).

What a gate should do: reject faces that would be matched wrongly and keep the ones that would be
matched rightly. Reported per embedder: the share of right and of wrong rank-1s that pass a gate value,
the wrong share among the rejected, which factor separates right from wrong (AUC), and the gate value
that keeps the same share of right rank-1s as the reference embedder does at its gate (so a gate can be
carried from one embedder to another at the same cost in recognised faces).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

QUALITY_COLUMNS = ("condition", "size_px", "total", "score", "size", "pose", "sharpness", "yaw", "roll_deg",
                   "pitch", "laplacian_var")
"""Per-probe columns shared by every embedder (``total`` is the quality score the gate compares)."""

PREDICTORS = ("score", "size", "pose", "sharpness", "total")
"""Quality factors tested as predictors of a right rank-1 (higher = better)."""

GATE_GRID = tuple(round(0.01 * i, 2) for i in range(0, 81))
"""Gate values swept (0.00-0.80)."""


def load_records(raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Columns of ``<out>-records.json`` as arrays (``condition`` as str, ``rank1_*`` as bool, others float)."""
    cols = raw["columns"]
    out: dict[str, np.ndarray] = {}
    for k, v in cols.items():
        if k == "condition":
            out[k] = np.asarray(v, dtype=str)
        elif k.startswith("rank1_"):
            out[k] = np.asarray(v, dtype=bool)
        else:
            out[k] = np.asarray(v, dtype=np.float64)
    n = {len(v) for v in out.values()}
    if len(n) != 1:
        raise ValueError(f"record columns differ in length: {sorted(n)}")
    return out


def auc(values: np.ndarray, positive: np.ndarray) -> float:
    """P(value of a random positive > value of a random negative), ties counted half (Mann-Whitney)."""
    values = np.asarray(values, np.float64)
    positive = np.asarray(positive, bool)
    npos, nneg = int(positive.sum()), int((~positive).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    sorted_v = values[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def gate_point(quality: np.ndarray, right: np.ndarray, gate: float,
               floor_ok: np.ndarray | None = None) -> dict[str, float]:
    """Shares at one gate value: right_pass (of right rank-1s), wrong_pass (of wrong ones), wrong share
    among the rejected and overall. With ``floor_ok`` the size floor is applied too (the full gate)."""
    passed = quality >= gate
    if floor_ok is not None:
        passed &= floor_ok
    wrong = ~right
    rej = ~passed
    return {"gate": round(float(gate), 4),
            "right_pass": _share(passed & right, right), "wrong_pass": _share(passed & wrong, wrong),
            "pass": float(passed.mean()) if len(passed) else float("nan"),
            "wrong_among_rejected": _share(rej & wrong, rej), "wrong_among_passed": _share(passed & wrong, passed),
            "wrong_overall": float(wrong.mean()) if len(wrong) else float("nan")}


def _share(num: np.ndarray, den: np.ndarray) -> float:
    d = int(den.sum())
    return float(num.sum() / d) if d else float("nan")


def matching_gate(quality: np.ndarray, right: np.ndarray, right_pass: float) -> float:
    """Highest gate on GATE_GRID that still passes at least ``right_pass`` of the right rank-1s."""
    ok = [g for g in GATE_GRID if _share((quality >= g) & right, right) >= right_pass - 1e-12]
    return max(ok) if ok else 0.0


def _bootstrap(quality: np.ndarray, right: np.ndarray, gate: float, target_right_pass: float, n: int,
               seed: int) -> dict[str, list[float]]:
    """95 % intervals (percentile bootstrap over probes) of right_pass, wrong_pass at ``gate`` and of the
    matching gate for ``target_right_pass``."""
    rng = np.random.default_rng(seed)
    rp, wp, mg = [], [], []
    for _ in range(n):
        i = rng.integers(0, len(quality), len(quality))
        q, r = quality[i], right[i]
        p = gate_point(q, r, gate)
        rp.append(p["right_pass"])
        wp.append(p["wrong_pass"])
        mg.append(matching_gate(q, r, target_right_pass))

    def ci(v: list[float]) -> list[float]:
        return [round(float(x), 4) for x in np.nanpercentile(np.asarray(v, np.float64), [2.5, 97.5])]

    return {"right_pass": ci(rp), "wrong_pass": ci(wp), "matching_gate": ci(mg)}


def analyse(records: Mapping[str, np.ndarray], embedders: Sequence[str], reference: str, gate: float,
            min_face_size: float, thresholds: Mapping[str, float] | None = None, bootstrap: int = 300,
            seed: int = 0) -> dict[str, Any]:
    """Per embedder: figures at ``gate`` (quality alone and with the size floor), factor AUCs, wrong share
    in each factor's bottom fifth, per-condition figures, the sweep, and the gate matching the reference
    embedder's right-pass share at ``gate``. With ``thresholds`` (match threshold per embedder), also the
    share of matches (right rank-1 at or above the threshold) passing, and wrong rank-1s at or above it."""
    q = records["total"]
    floor_ok = records["size_px"] >= min_face_size
    ref_right = records[f"rank1_{reference}"]
    target = gate_point(q, ref_right, gate)["right_pass"]
    out: dict[str, Any] = {"reference": reference, "gate": gate, "min_face_size": min_face_size,
                           "probes": int(len(q)), "reference_right_pass": round(target, 4), "embedders": {}}
    for name in embedders:
        right = records[f"rank1_{name}"]
        wrong = ~right
        preds: dict[str, Any] = {}
        for f in PREDICTORS:
            v = records[f]
            low = v <= np.quantile(v, 0.2)
            preds[f] = {"auc_right": round(auc(v, right), 4),
                        "wrong_in_bottom_fifth": round(_share(low & wrong, low), 4)}
        lap = records["laplacian_var"]
        low = lap <= np.quantile(lap, 0.2)
        preds["laplacian_var"] = {"auc_right": round(auc(lap, right), 4),
                                  "wrong_in_bottom_fifth": round(_share(low & wrong, low), 4)}
        for raw, label in (("yaw", "abs_yaw"), ("roll_deg", "abs_roll_deg"), ("pitch", "abs_pitch")):
            v = -np.abs(records[raw])  # smaller deviation = better
            low = v <= np.quantile(v, 0.2)
            preds[label] = {"auc_right": round(auc(v, right), 4),
                            "wrong_in_bottom_fifth": round(_share(low & wrong, low), 4)}
        best = max(PREDICTORS[:-1], key=lambda f: preds[f]["auc_right"])
        mg = matching_gate(q, right, target)
        conds = {}
        for c in dict.fromkeys(records["condition"].tolist()):
            m = records["condition"] == c
            p = gate_point(q[m], right[m], gate)
            conds[c] = {"probes": int(m.sum()), "rank1": round(float(right[m].mean()), 4),
                        "gate_pass": round(p["pass"], 4), "right_pass": round(p["right_pass"], 4),
                        "wrong_pass": round(p["wrong_pass"], 4)}
        sweep = [{k: round(v, 4) for k, v in gate_point(q, right, g).items()} for g in GATE_GRID]
        youden = max(sweep, key=lambda s: s["right_pass"] - s["wrong_pass"])
        at_thr: dict[str, Any] = {}
        if thresholds and name in thresholds and f"top_{name}" in records:
            above = records[f"top_{name}"] >= thresholds[name]
            matched = right & above
            at_thr = {"match_threshold": thresholds[name], "matched": int(matched.sum()),
                      "matched_pass_at_gate": round(_share(matched & (q >= gate), matched), 4),
                      "matched_pass_at_matching_gate": round(_share(matched & (q >= mg), matched), 4),
                      "wrong_above_threshold": int((wrong & above).sum())}
        out["embedders"][name] = {
            "right": int(right.sum()), "wrong": int(wrong.sum()),
            "at_gate": {k: round(v, 4) for k, v in gate_point(q, right, gate).items()},
            "at_gate_with_floor": {k: round(v, 4) for k, v in gate_point(q, right, gate, floor_ok).items()},
            "predictors": preds, "best_factor": best,
            "matching_gate": mg, "at_matching_gate": {k: round(v, 4) for k, v in gate_point(q, right, mg).items()},
            "best_youden_gate": youden["gate"], "at_match_threshold": at_thr,
            "bootstrap_95": _bootstrap(q, right, gate, target, bootstrap, seed) if bootstrap else {},
            "conditions": conds, "sweep": sweep}
    return out
