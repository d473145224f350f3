"""Time-partitioned FAISS index of sighting embeddings.

Sightings are placed by `first_seen` into partitions of `partition_s` seconds (one FAISS index
each). New sightings are added to their partition as they arrive (no rebuild); retention drops
whole partitions (and trims the one that straddles the cut-off); a search reads only the
partitions overlapping its time range. A partition starts exact (flat inner product) and is
rebuilt once as IVF-PQ when it reaches `ivfpq_min` sightings (quantizers trained once, on the
first such partition, then shared); from then on new sightings are encoded into it. IVF-PQ scores
are approximate: callers re-score the candidates exactly (the store keeps every embedding).
Thread-safe.

Example::

    idx = SightingIndex(128, partition_s=3600)
    idx.add(np.array([1, 2]), vectors, times=np.array([t0, t0 + 5]), cameras=["door", "hall"])
    idx.search(query, k=10, since=t0 - 3600, until=t0 + 3600, cameras=("door",))  # [(1, 0.83)]
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np


@dataclass
class _Partition:
    """One time slice: its FAISS index and, row by row, each vector's id, time and camera code."""

    key: int
    index: faiss.Index
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    cams: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    pq: bool = False

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class SightingIndex:
    """Sighting id -> embedding, in time partitions, searchable by time range and camera."""

    def __init__(self, dim: int, partition_s: float = 3600.0, ivfpq_min: int = 200_000, pq_m: int = 16,
                 nprobe: int = 16) -> None:
        if dim % pq_m:
            raise ValueError(f"sightings.pq_m={pq_m} must divide the embedding size {dim}")
        self.dim = dim
        self.partition_s = float(partition_s)
        self.ivfpq_min = ivfpq_min
        self.pq_m = pq_m
        self.nprobe = nprobe
        self._parts: dict[int, _Partition] = {}
        self._cam_codes: dict[str, int] = {}
        self._template: faiss.Index | None = None  # trained, empty IVF-PQ copied for each large partition
        self._lock = threading.RLock()

    # ---- writing ---------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray, times: np.ndarray, cameras: Sequence[str]) -> None:
        """Add sightings (ids unique, vectors (N, D) unit float32, first-seen times, camera ids)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        vecs = np.ascontiguousarray(vectors, np.float32).reshape(len(ids), self.dim)
        times = np.asarray(times, np.float64).reshape(-1)
        with self._lock:
            names, inverse = np.unique(np.asarray(cameras, dtype=object).astype(str), return_inverse=True)
            lut = np.array([self._cam_codes.setdefault(str(c), len(self._cam_codes)) for c in names], np.int32)
            codes = lut[inverse.reshape(-1)]
            keys = np.floor(times / self.partition_s).astype(np.int64)
            for key in np.unique(keys):
                rows = np.flatnonzero(keys == key)
                part = self._parts.get(int(key))
                if part is None:
                    part = self._parts[int(key)] = _Partition(int(key), faiss.IndexIDMap(faiss.IndexFlatIP(self.dim)))
                part.index.add_with_ids(vecs[rows], ids[rows])
                part.ids = np.concatenate([part.ids, ids[rows]])
                part.times = np.concatenate([part.times, times[rows]])
                part.cams = np.concatenate([part.cams, codes[rows]])
                if not part.pq and len(part) >= self.ivfpq_min:
                    self._to_ivfpq(part)

    def _to_ivfpq(self, part: _Partition) -> None:
        """Rebuild a partition grown past `ivfpq_min` as IVF-PQ. The coarse quantizer and PQ codebooks
        are trained once, on the first such partition (every hour's faces come from the same
        distribution), and copied empty for the next ones: no training per partition."""
        flat = faiss.downcast_index(part.index.index)
        n = len(part)
        vecs = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim).copy()
        row_ids = faiss.vector_to_array(part.index.id_map).astype(np.int64)
        if self._template is None:
            nlist = int(2 ** round(math.log2(max(16.0, math.sqrt(n)))))
            ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(self.dim), self.dim, nlist, self.pq_m, 8,
                                   faiss.METRIC_INNER_PRODUCT)
            size = min(n, max(40 * nlist, 40 * 256))  # enough points for the coarse and the PQ centroids
            ivf.train(vecs[np.random.default_rng(0).choice(n, size, replace=False)])
            self._template = faiss.clone_index(ivf)
        ivf = faiss.clone_index(self._template)
        ivf.add_with_ids(vecs, row_ids)
        part.index, part.pq = ivf, True

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove sightings by id (erasure); returns how many were indexed."""
        gone = np.asarray(ids, np.int64).reshape(-1)
        if not len(gone):
            return 0
        n = 0
        with self._lock:
            for key, part in list(self._parts.items()):
                mask = np.isin(part.ids, gone)
                if mask.any():
                    n += self._drop_rows(key, part, mask)
        return n

    def drop_before(self, cutoff: float) -> int:
        """Retention: drop partitions wholly older than `cutoff` and trim the one it falls in."""
        n = 0
        with self._lock:
            for key, part in list(self._parts.items()):
                if (key + 1) * self.partition_s <= cutoff:
                    n += len(part)
                    del self._parts[key]
                elif key * self.partition_s < cutoff:
                    mask = part.times < cutoff
                    if mask.any():
                        n += self._drop_rows(key, part, mask)
        return n

    def _drop_rows(self, key: int, part: _Partition, mask: np.ndarray) -> int:
        part.index.remove_ids(faiss.IDSelectorBatch(part.ids[mask]))
        keep = ~mask
        part.ids, part.times, part.cams = part.ids[keep], part.times[keep], part.cams[keep]
        if not len(part):
            del self._parts[key]
        return int(mask.sum())

    def clear(self) -> None:
        with self._lock:
            self._parts.clear()

    # ---- reading ---------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, since: float = 0.0, until: float = 0.0,
               cameras: Sequence[str] = ()) -> list[tuple[int, float]]:
        """Best `k` (id, score) with `since <= first_seen < until` (0 = open) on `cameras` (() = all),
        best first. Scores of IVF-PQ partitions are approximate."""
        q = np.ascontiguousarray(query, np.float32).reshape(1, self.dim)
        hits: list[tuple[int, float]] = []
        with self._lock:
            codes = None
            if cameras:
                codes = np.array([self._cam_codes[c] for c in cameras if c in self._cam_codes], np.int32)
                if not len(codes):
                    return []
            for key, part in self._parts.items():
                lo, hi = key * self.partition_s, (key + 1) * self.partition_s
                if (since and hi <= since) or (until and lo >= until) or not len(part):
                    continue
                mask = None
                if (since and lo < since) or (until and hi > until) or codes is not None:
                    mask = np.ones(len(part), bool)
                    if since:
                        mask &= part.times >= since
                    if until:
                        mask &= part.times < until
                    if codes is not None:
                        mask &= np.isin(part.cams, codes)
                    if not mask.any():
                        continue
                hits.extend(self._search_part(part, q, k, mask))
        hits.sort(key=lambda h: -h[1])
        return hits[:k]

    def _search_part(self, part: _Partition, q: np.ndarray, k: int,
                     mask: np.ndarray | None) -> list[tuple[int, float]]:
        sel = faiss.IDSelectorBatch(part.ids[mask]) if mask is not None and not mask.all() else None
        if part.pq:
            params: faiss.SearchParameters = faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)
        else:
            params = faiss.SearchParameters(sel=sel)
        scores, ids = part.index.search(q, min(k, len(part)), params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._parts.values())

    def partitions(self) -> list[tuple[float, float, int, str]]:
        """(start, end, sightings, kind) of each partition, oldest first (kind: flat or ivfpq)."""
        with self._lock:
            return [(k * self.partition_s, (k + 1) * self.partition_s, len(p), "ivfpq" if p.pq else "flat")
                    for k, p in sorted(self._parts.items())]

    def ids(self) -> np.ndarray:
        """Every indexed id (tests and consistency checks)."""
        with self._lock:
            return (np.concatenate([p.ids for p in self._parts.values()]) if self._parts
                    else np.zeros(0, np.int64))


__all__ = ["SightingIndex"]
