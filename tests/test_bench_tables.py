"""The performance tables (docs/performance.md, benchmarks/README.md) are what benchmarks/make_tables.py
makes of the committed results.

Prose and data cannot drift: a figure edited by hand in a page, or a result file replaced without
regenerating the tables, fails here. Needs no models or media (only the JSON in benchmarks/results)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.benchmods import BENCH, bench_module

ROOT = Path(__file__).resolve().parents[1]

_module = bench_module


@pytest.fixture(scope="module")
def tables() -> ModuleType:
    return _module("make_tables")


@pytest.fixture(scope="module")
def results(tables: ModuleType) -> dict[str, Any]:
    res: dict[str, Any] = tables.load()
    return res


def test_result_files_are_committed_with_the_machine(results: dict[str, Any]) -> None:
    """Both clips, the soak and FAISS have raw results, each naming its machine and load."""
    for name in ("pipeline-multiface_1080p", "pipeline-stage_360p", "memory", "faiss"):
        assert name in results, f"benchmarks/results/{name}.json missing"
        meta = results[name]["meta"]
        m = meta["machine"]
        for key in ("cpu", "cores", "gpu", "python", "versions", "loadavg_at_start", "loadavg_at_end"):
            assert key in m, f"{name}: machine lacks {key}"
        for pkg in ("onnxruntime", "faiss", "numpy", "opencv"):
            assert m["versions"].get(pkg), f"{name}: no {pkg} version"
        assert (BENCH / "results" / f"{name}.png").is_file(), f"{name}.png plot missing"


@pytest.mark.parametrize("readme", ["docs/performance.md", "benchmarks/README.md"])
def test_readme_tables_match_the_results(tables: ModuleType, results: dict[str, Any], readme: str) -> None:
    text = (ROOT / readme).read_text()
    blocks = re.findall(r"<!-- bench:([a-z0-9_-]+):start -->\n(.*?)<!-- bench:\1:end -->", text, re.S)
    assert blocks, f"{readme} has no generated tables"
    assert all(body.strip() for _, body in blocks), f"{readme}: an empty generated block"
    assert tables.render(text, results) == text, (
        f"{readme} differs from the committed results: run `python benchmarks/make_tables.py`")


def test_a_changed_figure_is_caught(tables: ModuleType, results: dict[str, Any]) -> None:
    """The comparison above can fail: one ratio changed in the data changes the page."""
    text = (ROOT / "docs" / "performance.md").read_text()
    changed = copy.deepcopy(results)
    r = changed["pipeline-multiface_1080p"]["ratios"]["grpc_vs_inprocess_same_jpeg"]
    r["value"] += 0.1234
    assert tables.render(text, changed) != text


def test_missed_target_reads_missed(tables: ModuleType) -> None:
    """A value just under its target is MISSED, judged on the unrounded value (0.849 is not 0.85)."""
    pipeline = _module("bench_pipeline")
    assert pipeline.verdict(0.849, 0.85) == "MISSED"
    assert pipeline.verdict(0.8499999, 0.85) == "MISSED"
    assert pipeline.verdict(0.85, 0.85) == "PASS"
    assert pipeline.verdict(float("nan"), 0.85) == "MISSED"
    cell = tables._ratio({"value": 0.8499, "numerator": "grpc-jpeg", "denominator": "engine-jpeg",
                          "target": 0.85, "verdict": pipeline.verdict(0.8499, 0.85)})
    assert "MISSED" in cell and "grpc-jpeg" in cell and "engine-jpeg" in cell


def test_committed_verdicts_agree_with_their_values(results: dict[str, Any]) -> None:
    """No committed ratio claims PASS while its unrounded value is under the target (or the reverse)."""
    for name, res in results.items():
        for key, r in res.get("ratios", {}).items():
            if "target" in r:
                want = "PASS" if r["value"] >= r["target"] else "MISSED"
                assert r["verdict"] == want, f"{name} {key}: {r['value']} vs {r['target']} says {r['verdict']}"
    mem = results["memory"]
    if mem["dropped"] or mem["errors"]:
        assert mem["verdict"].startswith("INVALID")
    else:
        assert mem["verdict"] == ("PASS" if mem["slope_mb_per_min"] < mem["target_slope_mb_per_min"] else "GROWING")
    assert json.dumps(mem["meta"]["shortened"]) in ("true", "false")


def test_models_and_stage_tables_render(tables: ModuleType, tmp_path: Path) -> None:
    """A `bench models` result and a pipeline result with per-stage times make their tables; a GPU
    verdict under its target reads MISSED, and CPU rows say "no GPU"."""
    bm = _module("bench_models")
    run = json.loads(json.dumps(_fake_models(bm)))
    text = tables.detail_tables({"models-cuda": run})
    assert "#### Models (models-cuda.json): yunet on CUDAExecutionProvider" in text
    assert "| 32 | 1999.9 |" in text and "**MISSED**" in text and "**MET**" in text and "57 % (max 90)" in text
    results = tables.load()
    pl = copy.deepcopy(results["pipeline-multiface_1080p"])
    for m in pl["modes"].values():  # as results from before per-stage times were recorded
        m.pop("stages_ms_per_frame", None)
        m.pop("gpu", None)
    assert "Per-stage worker time" not in tables.detail_tables({"pipeline-multiface_1080p": pl})  # older results
    mode = next(iter(pl["modes"]))
    pl["modes"][mode]["stages_ms_per_frame"] = {k: 1.25 for k in tables.STAGE_COLUMNS}
    pl["modes"][mode]["gpu"] = None
    text = tables.detail_tables({"pipeline-multiface_1080p": pl})
    assert f"| {mode} | 1.25 |" in text and "| no GPU |" in text


def _fake_models(bm: ModuleType) -> dict[str, Any]:
    cuda = "CUDAExecutionProvider"
    gpu = {"gpu": "NVIDIA H100", "util_mean_pct": 57.0, "util_max_pct": 90.0, "mem_used_max_mb": 3000.0}
    det = {"model": "yunet", "provider": cuda, "batched": True, "graph_preprocess": True, "network_input": [640, 384],
           "points": [{"batch": 32, "frames_per_s": 1999.9, "preprocess_ms_per_frame": 0.1, "model_ms_per_frame": 0.3,
                       "postprocess_ms_per_frame": 0.1, "gpu": gpu}]}
    embs = {"mobilefacenet": {"provider": cuda, "points": [{"batch": 256, "faces_per_s": 12000.0,
                                                             "blob_ms_per_face": 0.01, "model_ms_per_face": 0.05,
                                                             "gpu": gpu}]}}
    m = {"cpu": "x", "cores": 16, "gpu": "NVIDIA H100", "python": "3.12", "versions": {},
         "loadavg_at_start": [1.0], "loadavg_at_end": [1.0], "measured_at": "now"}
    return {"detector": det, "embedders": embs, "targets": bm._targets(det, embs),
            "meta": {"size": [1920, 1080], "machine": m}}
