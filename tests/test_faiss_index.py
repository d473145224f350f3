"""FAISS index layer: exact search, real removal, lazy IVF training, HNSW rebuild, persistence, validation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from engine.gallery.faiss_index import (
    RemovalNotSupportedError,
    VectorIndex,
    auto_nlist,
    create_index,
)

DIM = 64


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    """One OpenMP thread: tiny k-means on a busy shared machine is far slower with spinning thread teams."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _noisy(x: np.ndarray, cos: float = 0.7, seed: int = 1) -> np.ndarray:
    """Copies of `x` whose cosine to the source is about `cos` (a same-person face score; at 64-d lower
    cosines let random impostors win even for exact search)."""
    sigma = np.sqrt((1.0 / cos**2 - 1.0) / x.shape[1])
    q = x + sigma * np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _ids(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 10 + 7  # sparse, non-positional ids


def test_exact_search_returns_right_id_and_exact_scores() -> None:
    x = _unit(500)
    index = VectorIndex(DIM)
    index.add(_ids(500), x)
    scores, ids = index.search(x[[3, 42]], 5)
    assert scores.shape == ids.shape == (2, 5) and ids.dtype == np.int64 and scores.dtype == np.float32
    assert ids[:, 0].tolist() == [37, 427]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # sorted best first
    assert not index.approximate and len(index) == 500


def test_empty_slots_and_unnormalised_input() -> None:
    index = VectorIndex(DIM)
    s, i = index.search(_unit(2), 3)
    assert (i == -1).all() and np.isneginf(s).all()
    x = _unit(2)
    index.add(np.array([5, 9]), x * 3.0)  # normalised on the way in
    s, i = index.search(x[:1] * 0.5, 4)
    assert i[0].tolist()[:2] == [5, 9] and i[0, 2:].tolist() == [-1, -1]
    assert s[0, 0] == pytest.approx(1.0, abs=1e-5) and np.isneginf(s[0, 2:]).all()


@pytest.mark.parametrize("spec", ["Flat", "IVF16", "HNSW16"])
def test_remove_really_removes(spec: str) -> None:
    n = 2000
    x = _unit(n)
    index = VectorIndex(DIM, spec, min_train_size=1000)
    index.add(_ids(n), x)
    assert index.approximate == (spec != "Flat")
    gone = _ids(n)[:100]
    assert index.remove(np.concatenate([gone, gone[:5], [999_999]])) == 100  # dupes and unknown ids ignored
    assert len(index) == n - 100
    assert not np.isin(gone, index.ids()).any() and gone[0] not in index
    _, ids = index.search(x[:100], 20)  # the removed vectors themselves as queries
    assert not np.isin(ids, gone).any()
    _, ids = index.search(x[100:200], 1)
    assert ids[:, 0].tolist() == _ids(n)[100:200].tolist()
    assert index.remove(gone) == 0
    if spec == "Flat":  # the vectors are gone from the faiss structure too, not just hidden
        assert index.held()["store"] == n - 100
    elif spec == "IVF16":
        assert index.held().get("ann") == n - 100


def test_ivf_falls_back_to_exact_below_training_size() -> None:
    x = _unit(300)
    index = VectorIndex(DIM, "IVF")
    index.add(_ids(300), x)
    assert not index.approximate and index.nlist is None
    _, ids = index.search(_noisy(x[:50]), 1)
    assert (ids[:, 0] == _ids(300)[:50]).all()


def test_ivf_trains_lazily_and_finds_noisy_copies() -> None:
    n = 12_000
    x = _unit(n, seed=3)
    index = VectorIndex(DIM, "IVF")  # default training size 10k
    index.add(_ids(9_000), x[:9_000])
    assert not index.approximate
    index.add(_ids(n)[9_000:], x[9_000:])  # crosses the training size: trains on what it holds
    assert index.approximate and index.nlist == auto_nlist(n)
    probe = np.arange(0, n, 60)
    q = _noisy(x[probe], seed=4)
    scores, ids = index.search(q, 5)
    hit = ids[:, 0] == _ids(n)[probe]
    assert hit.mean() >= 0.99
    np.testing.assert_allclose(scores[hit, 0], (x[probe] * q).sum(1)[hit], atol=1e-4)  # exact cosines
    exact = VectorIndex(DIM)
    exact.add(_ids(n), x)
    assert (exact.search(q, 1)[1][:, 0] == ids[:, 0]).mean() >= 0.99
    more = _unit(10, seed=9)  # vectors added after training are searchable
    index.add(np.arange(10) + 10**9, more)
    assert index.search(more, 1)[1][:, 0].tolist() == (np.arange(10) + 10**9).tolist()


def test_rebuild_replaces_contents_and_retrains() -> None:
    index = VectorIndex(DIM, "IVF", min_train_size=500)
    index.add(_ids(600), _unit(600))
    assert index.approximate and index.nlist == min(auto_nlist(600), 600 // 39)
    x = _unit(4000, seed=5)
    index.rebuild(_ids(4000) + 1, x)
    assert len(index) == 4000 and index.approximate and index.nlist == auto_nlist(4000)
    assert index.search(x[:3], 1)[1][:, 0].tolist() == (_ids(4000)[:3] + 1).tolist()
    index.rebuild()
    assert len(index) == 4000


@pytest.mark.parametrize("spec", ["Flat", "IVF16"])
def test_save_load_round_trip(tmp_path: Path, spec: str) -> None:
    x = _unit(1500)
    index = VectorIndex(DIM, spec, min_train_size=1000)
    index.add(_ids(1500), x)
    index.remove(_ids(1500)[:10])
    path = tmp_path / "sub" / "gallery.faiss"
    index.save(path)
    index.save(path)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["gallery.faiss"]  # no temp files left behind
    loaded = VectorIndex.load(path, DIM, spec, min_train_size=1000)
    assert len(loaded) == 1490 and loaded.approximate == index.approximate
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    q = _noisy(x[10:60])
    s1, i1 = index.search(q, 3)
    s2, i2 = loaded.search(q, 3)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    assert loaded.remove(_ids(1500)[10:20]) == 10 and len(loaded) == 1480
    with pytest.raises(ValueError, match="128"):
        VectorIndex.load(path, 128, spec)
    with pytest.raises(ValueError, match="spec"):
        VectorIndex.load(path, DIM, "HNSW32" if spec == "Flat" else "Flat")
    (tmp_path / "junk").write_bytes(b"not an index")
    with pytest.raises(ValueError):
        VectorIndex.load(tmp_path / "junk", DIM, spec)


def test_bad_inputs_rejected() -> None:
    index = VectorIndex(DIM)
    with pytest.raises(ValueError, match=rf"\(n, {DIM}\)"):
        index.add(_ids(3), _unit(3, dim=DIM + 1))
    with pytest.raises(ValueError, match=rf"\(n, {DIM}\)"):
        index.add(_ids(1), _unit(1)[0])  # 1-D
    with pytest.raises(ValueError, match=rf"\(n, {DIM}\)"):
        index.search(_unit(2, dim=32), 1)
    bad = _unit(2)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.add(_ids(2), bad)
    with pytest.raises(ValueError, match="zero"):
        index.add(_ids(1), np.zeros((1, DIM), np.float32))
    with pytest.raises(ValueError, match="ids"):
        index.add(_ids(2), _unit(3))
    with pytest.raises(ValueError, match="unique"):
        index.add(np.array([1, 1]), _unit(2))
    with pytest.raises(ValueError, match=">= 0"):
        index.add(np.array([-1]), _unit(1))
    with pytest.raises(ValueError, match="integers"):
        index.add(np.array([1.5]), _unit(1))
    with pytest.raises(ValueError, match="k must"):
        index.search(_unit(1), 0)
    assert len(index) == 0  # nothing half-added
    index.add(np.array([1]), _unit(1))
    with pytest.raises(ValueError, match="already present"):
        index.add(np.array([1]), _unit(1))
    with pytest.raises(ValueError):
        VectorIndex(0)
    with pytest.raises(ValueError):
        VectorIndex(DIM, "NoSuchIndex")


def test_create_index_specs() -> None:
    x = _unit(2000)
    flat = create_index(DIM)
    flat.add_with_ids(x, _ids(2000))
    assert flat.remove_ids(_ids(2000)[:5]) == 5 and flat.ntotal == 1995
    ivf = create_index(DIM, "IVF32")
    assert isinstance(ivf, faiss.IndexIVF) and ivf.nlist == 32 and not ivf.is_trained
    ivf.train(x)
    ivf.add_with_ids(x, _ids(2000))
    assert ivf.remove_ids(_ids(2000)[:5]) == 5 and ivf.ntotal == 1995
    assert faiss.extract_index_ivf(create_index(DIM, "IVF", expected_size=1_000_000)).nlist == 256
    assert create_index(DIM, "IVF64,SQ8").ntotal == 0  # factory strings pass through
    with pytest.raises(ValueError, match="HNSW"):
        create_index(DIM, "HNSW32")
    with pytest.raises(ValueError, match="remove"):
        create_index(DIM, "HNSW32,Flat")


def test_factory_spec_without_removal_refuses_to_remove() -> None:
    index = VectorIndex(DIM, "HNSW16,Flat", min_train_size=100)
    index.add(_ids(200), _unit(200))
    assert index.approximate
    with pytest.raises(RemovalNotSupportedError, match="cannot remove"):
        index.remove(_ids(200)[:1])
    assert len(index) == 200


def test_concurrent_searches_and_mutations() -> None:
    x = _unit(3000)
    index = VectorIndex(DIM, "IVF16", min_train_size=1000)
    index.add(_ids(1000), x[:1000])
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for s in range(1000, 3000, 200):
                index.add(_ids(3000)[s:s + 200], x[s:s + 200])
                index.remove(_ids(3000)[s:s + 50])
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    def reader() -> None:
        try:
            for _ in range(30):
                _, ids = index.search(x[500:510], 3)
                assert (ids[:, 0] == _ids(3000)[500:510]).all()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == 3000 - 10 * 50
