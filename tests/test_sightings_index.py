"""The time-partitioned sightings index: partitions by first-seen time, exact then IVF-PQ past a
size (quantizers trained once and shared), time and camera filters, erasure and retention."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from engine.sightings.index import SightingIndex

DIM = 32
HOUR = 3600.0
T0 = 1_800_000_000.0  # an hour boundary


@pytest.fixture(autouse=True)
def one_faiss_thread():  # noqa: ANN201
    """As the server runs faiss (one thread a call): OpenMP threads only spin on a busy machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    times = T0 + rng.random(n) * 4 * HOUR
    return np.arange(1, n + 1, dtype=np.int64), v, times, [f"cam-{i % 3}" for i in range(n)]


def test_partitions_filters_and_ivfpq_conversion() -> None:
    ids, v, times, cams = _data(6_000)
    idx = SightingIndex(DIM, HOUR, ivfpq_min=1_200, pq_m=8, nprobe=64)
    for s in range(0, len(ids), 1000):  # incremental, as the writer adds batches
        idx.add(ids[s:s + 1000], v[s:s + 1000], times[s:s + 1000], cams[s:s + 1000])
    parts = idx.partitions()
    assert [p[0] for p in parts] == [T0 + h * HOUR for h in range(4)] and sum(p[2] for p in parts) == len(ids)
    assert {p[3] for p in parts} == {"ivfpq"}  # every partition passed 1200: converted, one shared training
    assert idx._template is not None and idx._template.ntotal == 0
    hits = 0
    for k in range(0, 6_000, 300):  # its own vector comes first (PQ scores are approximate)
        hits += idx.search(v[k], 5)[0][0] == ids[k]
    assert hits >= 18
    k = 7
    lo = float(np.floor((times[k] - T0) / HOUR)) * HOUR + T0
    got = idx.search(v[k], 50, since=lo + 1, until=lo + HOUR - 1, cameras=(cams[k],))
    assert got and all(lo + 1 <= times[i - 1] < lo + HOUR - 1 and cams[i - 1] == cams[k] for i, _ in got)
    assert idx.search(v[k], 5, cameras=("nowhere",)) == []
    assert idx.search(v[k], 5, since=T0 + 10 * HOUR) == []


def test_remove_and_drop_before_keep_ids_in_step() -> None:
    ids, v, times, cams = _data(3_000, seed=1)
    idx = SightingIndex(DIM, HOUR, ivfpq_min=1_000, pq_m=8)
    idx.add(ids, v, times, cams)
    assert idx.remove(ids[:10]) == 10 and idx.remove(ids[:10]) == 0
    assert all(i not in set(ids[:10].tolist()) for i, _ in idx.search(v[0], 20))
    cut = T0 + 1.5 * HOUR
    dropped = idx.drop_before(cut)
    left = set(idx.ids().tolist())
    assert dropped == int((times[10:] < cut).sum()) and left == set(ids[10:][times[10:] >= cut].tolist())
    assert [p[0] for p in idx.partitions()] == [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]  # hour 0 dropped whole
    assert len(idx) == len(left)
