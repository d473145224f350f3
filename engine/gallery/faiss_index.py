"""FAISS index layer for face templates: cosine search over L2-normalised float32 vectors.

Two entry points:

* `create_index(dim, spec)` returns a bare faiss index that supports `add_with_ids` (int64 ids) and a
  *real* `remove_ids`, for callers that manage training themselves.
* `VectorIndex` is what the engine uses: it keeps an exact store of every vector (an
  `IndexIDMap2(IndexFlatIP)`) and optionally an approximate index built from it, trains that index lazily,
  re-ranks its candidates exactly, persists atomically and is safe to call from several threads.

Specs (`spec` argument):

* ``"Flat"`` (default): exact search. Best up to ~100k templates.
* ``"IVF"`` / ``"IVF<nlist>"``: inverted lists over 4-bit fast-scan PQ codes (``IVF<nlist>,PQ<M>x4fs``,
  M = largest even divisor of dim <= 64), then an exact re-rank of the best `refine_k` candidates from the
  store, so returned scores are exact cosines that thresholds can trust. This is the recommended
  large-gallery option. Galleries of distinct identities have no cluster structure (embeddings of different
  people are close to uniform on the sphere), so a query at same-person cosine ~0.55 often lands in a
  different cell than its match: the defaults probe 7/8 of the lists and get their speed from the compact
  codes (64 bytes per vector), not from skipping lists. Measured on a 2-core machine at 1M x 128-d:
  p99 ~2-3 ms per query, recall@1 >= 0.99 against exact (see ``benchmarks/bench_faiss.py``).
* ``"HNSW"`` / ``"HNSW<M>"``: faiss HNSW graph (no compression). faiss cannot delete from HNSW, so
  `VectorIndex.remove` rebuilds the graph from the remaining vectors before it returns: removal is real
  but costs a full rebuild (minutes at 1M). Use it only for galleries that rarely shrink.
* Anything else is passed to `faiss.index_factory` (inner-product metric) for advanced users. If that index
  cannot delete vectors, `create_index` rejects it and `VectorIndex.remove` raises
  `RemovalNotSupportedError` before touching anything, instead of silently keeping erased vectors.

Below the training size (`max(min_train_size, 39 * nlist)` vectors) every spec searches the exact store,
which is also the faster option for small galleries. faiss OpenMP threads are a process-wide setting and are
left to the caller (`faiss.omp_set_num_threads`). One thread is usually best for a server: single-face
lookups gain nothing from a second thread, and on a busy machine spinning OpenMP teams can make IVF
training 10-100x slower (seen on a loaded 2-core host).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

__all__ = [
    "DEFAULT_EF_SEARCH",
    "DEFAULT_MIN_TRAIN_SIZE",
    "DEFAULT_NPROBE_FRACTION",
    "DEFAULT_REFINE_K",
    "RemovalNotSupportedError",
    "VectorIndex",
    "auto_nlist",
    "create_index",
    "pq_subquantizers",
]

DEFAULT_NPROBE_FRACTION = 0.875
"""Fraction of IVF lists probed when `nprobe` is not given (tuned: recall@1 >= 0.99 on identity galleries)."""
DEFAULT_REFINE_K = 50
"""Approximate candidates re-ranked exactly per query (at least `k`)."""
DEFAULT_EF_SEARCH = 512
"""HNSW efSearch: the query-time beam width."""
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 40
DEFAULT_MIN_TRAIN_SIZE = 10_000
"""Below this many vectors searches stay exact (faster than any approximate index at that size)."""
DEFAULT_TRAIN_SAMPLE = 100_000
"""Vectors sampled to train IVF/PQ; plenty for <= 4096 lists and 16-centroid PQ codebooks."""
DEFAULT_EXPECTED_SIZE = 100_000
"""Gallery size assumed by `create_index("IVF")` when no `expected_size` is given."""
MIN_POINTS_PER_LIST = 39  # faiss k-means warns (and trains poorly) below 39 training points per centroid
MAX_PQ_M = 64

_FILE_MAGIC = b"FEVINDEX"
_FILE_VERSION = 1
_IVF_RE = re.compile(r"^IVF(\d+)?$", re.IGNORECASE)
_HNSW_RE = re.compile(r"^HNSW(\d+)?$", re.IGNORECASE)
_EMPTY_SCORE = np.float32(-np.inf)
_RERANK_CHUNK_FLOATS = 1 << 24  # bound the (queries, candidates, dim) re-rank buffer to 64 MB


class RemovalNotSupportedError(NotImplementedError):
    """The configured faiss index cannot delete vectors, so erasure would be silently incomplete."""


def auto_nlist(n: int) -> int:
    """IVF list count for `n` vectors: the power of two nearest sqrt(n)/4, clamped to [8, 4096].

    Fewer, longer lists than the usual 4*sqrt(n): fast-scan PQ scans lists in 32-vector blocks, so long
    lists are cheap, and identity galleries need most lists probed anyway (see the module docstring).
    """
    target = max(math.sqrt(max(n, 1)) / 4.0, 1.0)
    return int(min(max(2 ** round(math.log2(target)), 8), 4096))


def pq_subquantizers(dim: int) -> int | None:
    """Sub-quantizer count for 4-bit fast-scan PQ: the largest even divisor of dim <= 64, or None."""
    for m in range(min(MAX_PQ_M, dim), 1, -1):
        if m % 2 == 0 and dim % m == 0:
            return m
    return None


def _ivf_factory(dim: int, nlist: int) -> str:
    m = pq_subquantizers(dim)
    return f"IVF{nlist},PQ{m}x4fs" if m else f"IVF{nlist},Flat"


def _supports_removal(index: faiss.Index) -> bool:
    """Probe whether `index.remove_ids` is implemented (an empty removal changes nothing)."""
    try:
        index.remove_ids(np.empty(0, dtype=np.int64))
    except RuntimeError:
        return False
    return True


def _with_ids(index: faiss.Index) -> faiss.Index:
    """Wrap `index` in IndexIDMap2 unless it already accepts arbitrary int64 ids."""
    if isinstance(index, (faiss.IndexIVF, faiss.IndexIDMap, faiss.IndexIDMap2)):
        return index
    return faiss.IndexIDMap2(index)


def _parse_spec(spec: str) -> tuple[str, int | None, str]:
    """Split a spec into (kind, number, canonical spec); kind is flat, ivf, hnsw or factory."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"index spec must be a non-empty string, got {spec!r}")
    s = spec.strip()
    if s.lower() == "flat":
        return "flat", None, "Flat"
    if m := _IVF_RE.match(s):
        nlist = int(m.group(1)) if m.group(1) else None
        if nlist is not None and nlist < 1:
            raise ValueError(f"IVF nlist must be >= 1, got {spec!r}")
        return "ivf", nlist, f"IVF{nlist or ''}"
    if m := _HNSW_RE.match(s):
        hnsw_m = int(m.group(1)) if m.group(1) else DEFAULT_HNSW_M
        if hnsw_m < 2:
            raise ValueError(f"HNSW M must be >= 2, got {spec!r}")
        return "hnsw", hnsw_m, f"HNSW{hnsw_m}"
    return "factory", None, s


def _factory(dim: int, spec: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise ValueError(f"invalid faiss index spec {spec!r}: {first}") from e


def _set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    """Set nprobe on the IVF inside `index` (if any); None means DEFAULT_NPROBE_FRACTION of the lists."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    want = nprobe if nprobe is not None else math.ceil(DEFAULT_NPROBE_FRACTION * ivf.nlist)
    ivf.nprobe = int(min(max(want, 1), ivf.nlist))


def create_index(dim: int, spec: str = "Flat", expected_size: int | None = None) -> faiss.Index:
    """A bare inner-product faiss index with `add_with_ids` and a real `remove_ids`.

    "Flat" is ready to use; "IVF"/"IVF<nlist>" (nlist from `expected_size` when omitted) must be trained
    by the caller, which is what `VectorIndex` does for you. HNSW is rejected here because faiss cannot
    remove from it; `VectorIndex(dim, "HNSW32")` supports it by rebuilding on removal.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    kind, num, canon = _parse_spec(spec)
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "ivf":
        nlist = num if num is not None else auto_nlist(expected_size or DEFAULT_EXPECTED_SIZE)
        index = _factory(dim, _ivf_factory(dim, nlist))
        _set_nprobe(index, None)
        return index
    if kind == "hnsw":
        raise ValueError(
            f"{canon}: faiss HNSW cannot remove vectors, so it cannot honour erasure as a bare index; "
            f"use VectorIndex(dim, {canon!r}), which rebuilds the graph on removal, or 'Flat'/'IVF'"
        )
    index = _with_ids(_factory(dim, canon))
    if not _supports_removal(index):
        raise ValueError(
            f"faiss index {canon!r} does not implement remove_ids; vectors could not be erased. "
            "Use 'Flat', 'IVF' or an IVF/Flat/PQ factory string"
        )
    _set_nprobe(index, None)
    return index


def _write_blob(f: BinaryIO, index: faiss.Index) -> None:
    """Stream one faiss index into `f`, preceded by its byte length."""
    start = f.tell()
    f.write(struct.pack("<Q", 0))
    writer = faiss.PyCallbackIOWriter(f.write)
    faiss.write_index(index, writer)
    del writer  # flushes its buffer into f
    end = f.tell()
    f.seek(start)
    f.write(struct.pack("<Q", end - start - 8))
    f.seek(end)


def _read_blob(f: BinaryIO, path: Path) -> faiss.Index:
    (length,) = struct.unpack("<Q", f.read(8))
    start = f.tell()
    reader = faiss.PyCallbackIOReader(f.read)
    try:
        index = faiss.read_index(reader)
    except RuntimeError as e:
        raise ValueError(f"{path}: corrupt index data: {e}") from e
    finally:
        del reader
    if f.tell() != start + length:
        raise ValueError(f"{path}: corrupt index data (length mismatch)")
    return index


class VectorIndex:
    """Thread-safe id -> vector index with exact fallback, lazy IVF training and real removal.

    All vectors live in an exact store; an approximate index (IVF, HNSW or a factory spec) is built from it
    once `train_size` vectors exist and its candidates are re-ranked exactly, so scores are always true
    cosines. Every public method holds one RLock: searches are serialised with mutations (simple and safe
    for gRPC worker threads; a faiss search itself takes ~1-3 ms at 1M vectors).
    """

    def __init__(
        self,
        dim: int,
        spec: str = "Flat",
        *,
        nprobe: int | None = None,
        ef_search: int = DEFAULT_EF_SEARCH,
        refine_k: int = DEFAULT_REFINE_K,
        min_train_size: int = DEFAULT_MIN_TRAIN_SIZE,
        train_sample: int = DEFAULT_TRAIN_SAMPLE,
        expected_size: int | None = None,
        normalize: bool = True,
        seed: int = 0,
    ) -> None:
        """Configure an empty index.

        nprobe: IVF lists probed per query (default: 7/8 of the lists). ef_search: HNSW beam width.
        refine_k: approximate candidates re-ranked exactly. min_train_size: exact search below this size.
        train_sample: vectors sampled for IVF training. expected_size: raises the auto nlist for a gallery
        known to grow. normalize: L2-normalise vectors and queries on the way in (zero vectors rejected).
        """
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        for name, value in (("ef_search", ef_search), ("refine_k", refine_k), ("train_sample", train_sample)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if nprobe is not None and nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        self.dim = dim
        self._kind, self._num, self.spec = _parse_spec(spec)
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.refine_k = refine_k
        self.min_train_size = max(int(min_train_size), 1)
        self.train_sample = train_sample
        self.expected_size = expected_size
        self.normalize = normalize
        self.seed = seed
        self._lock = threading.RLock()
        self._store: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._ann: faiss.Index | None = None
        self._sorted_ids = np.empty(0, dtype=np.int64)
        self._removable = True
        self._factory_nlist = 1
        self._factory_needs_training = False
        if self._kind == "factory":
            probe = _with_ids(_factory(dim, self.spec))
            self._removable = _supports_removal(probe)
            ivf = faiss.try_extract_index_ivf(probe)
            self._factory_nlist = ivf.nlist if ivf is not None else 1
            self._factory_needs_training = not probe.is_trained

    # ---- properties ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return int(self._store.ntotal)

    @property
    def approximate(self) -> bool:
        """True once searches go through the approximate index (False: exact store)."""
        with self._lock:
            return self._ann is not None

    @property
    def nlist(self) -> int | None:
        """IVF list count of the built approximate index, or None."""
        with self._lock:
            ivf = faiss.try_extract_index_ivf(self._ann) if self._ann is not None else None
            return int(ivf.nlist) if ivf is not None else None

    @property
    def effective_nprobe(self) -> int | None:
        """IVF lists actually probed per query by the built approximate index, or None."""
        with self._lock:
            ivf = faiss.try_extract_index_ivf(self._ann) if self._ann is not None else None
            return int(ivf.nprobe) if ivf is not None else None

    @property
    def train_size(self) -> int | None:
        """Vectors needed before the approximate index is built (exact search below); None for Flat."""
        if self._kind == "flat":
            return None
        if self._kind == "ivf":
            return max(self.min_train_size, MIN_POINTS_PER_LIST * (self._num or 8))
        if self._kind == "factory" and self._factory_needs_training:
            return max(self.min_train_size, MIN_POINTS_PER_LIST * max(self._factory_nlist, 256))
        return self.min_train_size

    def ids(self) -> np.ndarray:
        """All ids present, sorted ascending (int64 copy)."""
        with self._lock:
            return self._sorted_ids.copy()

    def vectors(self, ids: Any) -> np.ndarray:  # noqa: ANN401 - ids: array-like of int64
        """The stored vectors of the `ids` present (absent ids are skipped), one row each."""
        want = self._check_ids(ids)
        with self._lock:
            want = want[self._present(want)]
            if len(want) == 0:
                return np.empty((0, self.dim), dtype=np.float32)
            vecs = self._store.reconstruct_batch(np.ascontiguousarray(want))
            return np.asarray(vecs, np.float32).reshape(-1, self.dim)

    def held(self) -> dict[str, int]:
        """Vectors the faiss structures hold: "store" (the exact copy) and "ann" (the approximate index, once
        built): a removal must reach them, not only hide the ids (checked by tests and diagnostics)."""
        with self._lock:
            out = {"store": int(self._store.ntotal)}
            if self._ann is not None:
                out["ann"] = int(self._ann.ntotal)
            return out

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, (int, np.integer)):
            return False
        with self._lock:
            return bool(self._present(np.array([item], dtype=np.int64))[0])

    def configure(self, *, nprobe: int | None = None, ef_search: int | None = None,
                  refine_k: int | None = None) -> None:
        """Change search-time knobs on a live index (e.g. to tune recall/latency without a rebuild)."""
        with self._lock:
            if nprobe is not None:
                if nprobe < 1:
                    raise ValueError(f"nprobe must be >= 1, got {nprobe}")
                self.nprobe = nprobe
            if ef_search is not None:
                if ef_search < 1:
                    raise ValueError(f"ef_search must be >= 1, got {ef_search}")
                self.ef_search = ef_search
            if refine_k is not None:
                if refine_k < 1:
                    raise ValueError(f"refine_k must be >= 1, got {refine_k}")
                self.refine_k = refine_k
            if self._ann is not None:
                self._apply_knobs(self._ann)

    # ---- validation ---------------------------------------------------------------------------------------
    def _check_vectors(self, x: Any, name: str) -> np.ndarray:
        a = np.asarray(x)
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (n, {self.dim}), got {a.shape}")
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be real numbers of shape (n, {self.dim}), got dtype {a.dtype}")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{name} (shape (n, {self.dim})) contains NaN or infinite values")
        if self.normalize and len(a):
            norms = np.linalg.norm(a, axis=1, keepdims=True)
            if not (norms > 1e-12).all():
                raise ValueError(f"{name} (shape (n, {self.dim})) contains zero vectors, cannot L2-normalise")
            a = np.ascontiguousarray(a / norms, dtype=np.float32)
        return a

    @staticmethod
    def _check_ids(ids: Any) -> np.ndarray:
        a = np.asarray(ids)
        if a.ndim != 1:
            raise ValueError(f"ids must have shape (n,), got {a.shape}")
        if len(a) and a.dtype.kind not in "iu":
            raise ValueError(f"ids must be integers (int64), got dtype {a.dtype}")
        if a.dtype.kind == "u" and len(a) and a.max() > np.iinfo(np.int64).max:
            raise ValueError("ids must fit in int64")
        a = a.astype(np.int64, copy=False)
        if len(a) and a.min() < 0:
            raise ValueError("ids must be >= 0 (-1 marks empty search slots)")
        return np.ascontiguousarray(a)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        s = self._sorted_ids
        if len(s) == 0:
            return np.zeros(ids.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(s, ids), len(s) - 1)
        return s[pos] == ids

    # ---- approximate index --------------------------------------------------------------------------------
    def _new_ann(self, n: int) -> faiss.Index:
        if self._kind == "ivf":
            if self._num is not None:
                nlist = self._num
            else:
                nlist = auto_nlist(max(n, self.expected_size or 0))
                nlist = max(1, min(nlist, n // MIN_POINTS_PER_LIST))
            ann = _factory(self.dim, _ivf_factory(self.dim, nlist))
        elif self._kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self.dim, self._num or DEFAULT_HNSW_M, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = DEFAULT_EF_CONSTRUCTION
            ann = faiss.IndexIDMap(hnsw)
        else:
            ann = _with_ids(_factory(self.dim, self.spec))
        self._apply_knobs(ann)
        return ann

    def _apply_knobs(self, ann: faiss.Index) -> None:
        _set_nprobe(ann, self.nprobe)
        wrapped = isinstance(ann, (faiss.IndexIDMap, faiss.IndexIDMap2))
        inner = faiss.downcast_index(ann.index) if wrapped else ann
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = max(self.ef_search, self.refine_k)

    def _store_vectors(self) -> np.ndarray:
        """Zero-copy view of the store's rows (valid until the next mutation; hold the lock)."""
        n = int(self._store.ntotal)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        flat = faiss.downcast_index(self._store.index)
        return faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def _build_ann(self) -> None:
        """(Re)build the approximate index from the store, or drop it below the training size."""
        n = int(self._store.ntotal)
        need = self.train_size
        if need is None or n < need:
            self._ann = None
            return
        vecs = self._store_vectors()
        ids = faiss.vector_to_array(self._store.id_map).astype(np.int64, copy=False)
        ann = self._new_ann(n)
        if not ann.is_trained:
            rng = np.random.default_rng(self.seed)
            rows = np.sort(rng.choice(n, size=min(n, self.train_sample), replace=False))
            ann.train(np.ascontiguousarray(vecs[rows]))
        ann.add_with_ids(vecs, ids)
        self._ann = ann

    # ---- mutations ----------------------------------------------------------------------------------------
    def add(self, ids: Any, vecs: Any) -> None:
        """Add vectors under new, unique int64 ids; trains the approximate index once big enough."""
        ids_a = self._check_ids(ids)
        v = self._check_vectors(vecs, "vecs")
        if len(ids_a) != len(v):
            raise ValueError(f"got {len(ids_a)} ids for {len(v)} vectors")
        if len(ids_a) == 0:
            return
        new_sorted = np.sort(ids_a)
        if (new_sorted[1:] == new_sorted[:-1]).any():
            raise ValueError("ids must be unique within one add() call")
        with self._lock:
            dup = self._present(new_sorted)
            if dup.any():
                raise ValueError(f"ids already present: {new_sorted[dup][:10].tolist()} (remove them first)")
            self._store.add_with_ids(v, ids_a)
            self._sorted_ids = np.insert(self._sorted_ids, np.searchsorted(self._sorted_ids, new_sorted),
                                         new_sorted)
            if self._ann is not None:
                self._ann.add_with_ids(v, ids_a)
            elif (need := self.train_size) is not None and self._store.ntotal >= need:
                self._build_ann()

    def remove(self, ids: Any) -> int:
        """Delete vectors by id from every structure (unknown ids are ignored); returns how many were removed.

        IVF/Flat delete in place; HNSW is rebuilt from the remaining vectors before this returns.
        """
        if not self._removable:
            raise RemovalNotSupportedError(
                f"faiss index {self.spec!r} cannot remove vectors; nothing was removed. Use 'Flat' or 'IVF', "
                "or rebuild(ids, vecs) from the remaining vectors"
            )
        ids_a = np.unique(self._check_ids(ids))
        with self._lock:
            ids_a = ids_a[self._present(ids_a)]
            if len(ids_a) == 0:
                return 0
            removed = int(self._store.remove_ids(ids_a))
            keep = np.ones(len(self._sorted_ids), dtype=bool)
            keep[np.searchsorted(self._sorted_ids, ids_a)] = False
            self._sorted_ids = self._sorted_ids[keep]
            if self._ann is not None:
                if self._kind == "hnsw":
                    self._build_ann()
                else:
                    n_ann = int(self._ann.remove_ids(ids_a))
                    if n_ann != removed:
                        self._build_ann()  # out of sync: trust the exact store
            if removed != len(ids_a) or self._store.ntotal != len(self._sorted_ids):
                raise RuntimeError(f"index out of sync: removed {removed} of {len(ids_a)} present ids")
            return removed

    def rebuild(self, ids: Any | None = None, vecs: Any | None = None) -> None:
        """Replace the contents with (ids, vecs), or with no arguments rebuild from the current vectors.

        Re-trains IVF with an nlist sized for the current count, so call it after a gallery grew a lot.
        """
        if (ids is None) != (vecs is None):
            raise ValueError("pass both ids and vecs, or neither")
        with self._lock:
            if ids is None:
                self._build_ann()
                return
            fresh = VectorIndex(self.dim, self.spec, nprobe=self.nprobe, ef_search=self.ef_search,
                                refine_k=self.refine_k, min_train_size=self.min_train_size,
                                train_sample=self.train_sample, expected_size=self.expected_size,
                                normalize=self.normalize, seed=self.seed)
            fresh.add(ids, vecs)
            self._store, self._ann, self._sorted_ids = fresh._store, fresh._ann, fresh._sorted_ids

    # ---- search -------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: (scores (q, k) float32, ids (q, k) int64); empty slots are (-inf, -1)."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        k = int(k)
        q = self._check_vectors(queries, "queries")
        scores = np.full((len(q), k), _EMPTY_SCORE, dtype=np.float32)
        labels = np.full((len(q), k), -1, dtype=np.int64)
        if len(q) == 0:
            return scores, labels
        with self._lock:
            n = int(self._store.ntotal)
            if n == 0:
                return scores, labels
            if self._ann is None:
                kk = min(k, n)
                d, i = self._store.search(q, kk)
                ok = i >= 0
                scores[:, :kk] = np.where(ok, d, _EMPTY_SCORE)
                labels[:, :kk] = np.where(ok, i, -1)
                return scores, labels
            kk = min(max(k, self.refine_k), int(self._ann.ntotal))
            _, cand = self._ann.search(q, kk)
            step = max(1, _RERANK_CHUNK_FLOATS // (kk * self.dim))
            for s in range(0, len(q), step):
                sc, ic = self._rerank(q[s:s + step], cand[s:s + step], min(k, kk))
                scores[s:s + step, : sc.shape[1]] = sc
                labels[s:s + step, : ic.shape[1]] = ic
        return scores, labels

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine of each candidate from the store; keeps the best k per query."""
        nq, kk = cand.shape
        flat = cand.reshape(-1)
        valid = flat >= 0
        valid[valid] = self._present(flat[valid])  # never return an id the store no longer holds
        vecs = np.zeros((flat.size, self.dim), dtype=np.float32)
        if valid.any():
            vecs[valid] = self._store.reconstruct_batch(np.ascontiguousarray(flat[valid]))
        s = np.einsum("qrd,qd->qr", vecs.reshape(nq, kk, self.dim), q)
        valid = valid.reshape(nq, kk)
        s[~valid] = _EMPTY_SCORE
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        top_s = np.take_along_axis(s, order, axis=1).astype(np.float32, copy=False)
        keep = np.take_along_axis(valid, order, axis=1)
        top_i = np.where(keep, np.take_along_axis(cand, order, axis=1), -1)
        return top_s, top_i.astype(np.int64, copy=False)

    # ---- persistence --------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: temp file in the same folder, fsync, os.replace (never a half-written file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            header = json.dumps({
                "format": _FILE_VERSION, "dim": self.dim, "spec": self.spec, "n": int(self._store.ntotal),
                "has_ann": self._ann is not None,
            }).encode()
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_FILE_MAGIC + struct.pack("<IQ", _FILE_VERSION, len(header)) + header)
                    _write_blob(f, self._store)
                    if self._ann is not None:
                        _write_blob(f, self._ann)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int, spec: str = "Flat", **options: Any) -> VectorIndex:
        """Read a `save`d index; raises ValueError if it was built for another dim or spec (then rebuild).

        `options` are the constructor's keyword arguments (search knobs are re-applied to the loaded index).
        """
        path = Path(path)
        index = cls(dim, spec, **options)
        with open(path, "rb") as f:
            if f.read(len(_FILE_MAGIC)) != _FILE_MAGIC:
                raise ValueError(f"{path}: not a faceengine vector index file")
            version, hlen = struct.unpack("<IQ", f.read(12))
            if version != _FILE_VERSION:
                raise ValueError(f"{path}: unsupported index file version {version}")
            meta = json.loads(f.read(hlen))
            if meta["dim"] != dim:
                raise ValueError(f"{path}: index holds {meta['dim']}-d vectors, expected shape (n, {dim})")
            if meta["spec"] != index.spec:
                raise ValueError(f"{path}: index was built with spec {meta['spec']!r}, not {index.spec!r}; "
                                 "rebuild it from the gallery")
            store = _read_blob(f, path)
            ann = _read_blob(f, path) if meta["has_ann"] else None
        ids = np.sort(faiss.vector_to_array(store.id_map).astype(np.int64))
        if store.ntotal != meta["n"] or (ann is not None and ann.ntotal != store.ntotal) or (
                len(ids) > 1 and (ids[1:] == ids[:-1]).any()):
            raise ValueError(f"{path}: inconsistent index file")
        if ann is not None:
            index._apply_knobs(ann)
        index._store, index._ann, index._sorted_ids = store, ann, ids
        return index

    def __repr__(self) -> str:
        return (f"VectorIndex(dim={self.dim}, spec={self.spec!r}, n={len(self)}, "
                f"approximate={self.approximate}, nlist={self.nlist})")


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
