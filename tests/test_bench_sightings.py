"""`faceengine bench sightings` on a small size: the JSON names the machine, every part is measured,
and search over a day of partitions finds the real LFW identities (recall@10 by identity)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.config import Config
from tests.benchmods import bench_module


def test_bench_sightings_measures_insert_search_and_recall(cfg: Config, analyzer, tmp_path: Path) -> None:  # noqa: ANN001
    bench = bench_module("bench_sightings")
    out = tmp_path / "sightings"
    assert bench.main(["--sizes", "3000", "--queries", "20", "--real-faces", "80", "--out", str(out)],
                      analyzer=analyzer, cfg=cfg) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["meta"]["shared_machine"] is True and summary["meta"]["machine"]["cores"]
    r = summary["results"][0]
    assert r["synthetic"] == 3000 and r["real"] > 20 and r["partitions"]["count"] == 24
    assert r["insert"]["store_insert_per_s"] > 0 and r["insert"]["index_insert_per_s"] > 0
    assert r["search"]["full_ms"]["p99"] >= r["search"]["full_ms"]["p50"] > 0
    assert r["recall"]["recall_at_10_by_identity"] >= 0.9  # real faces among 3000 synthetic, one day
    assert 0.3 < r["recall"]["threshold"] < 0.8
