"""Recurring unknowns: unmatched sightings grouped into pseudo-identities.

Each sighting links to its nearest neighbours (FAISS, exact) scoring at least the threshold; links
are taken best first, and two groups merge only when their centroids also score at least the
threshold, so a chain of look-alikes cannot join two people through one borderline pair (single
linkage would). Clusters are recomputed from the store's sightings of the range asked, so they
follow retention and erasure with no state of their own; a cluster's id is a hash of its members.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import faiss
import numpy as np

from engine.store.base import Sighting

NEIGHBOURS = 10


@dataclass
class Cluster:
    """One pseudo-identity: its members (best quality first), cameras and time span."""

    cluster_id: str
    members: list[Sighting]

    @property
    def cameras(self) -> list[str]:
        return sorted({s.camera_id for s in self.members})

    @property
    def first_seen(self) -> float:
        return min(s.first_seen for s in self.members)

    @property
    def last_seen(self) -> float:
        return max(s.last_seen for s in self.members)


def cluster_sightings(sightings: list[Sighting], threshold: float, min_size: int = 2) -> list[Cluster]:
    """Group sightings of one embedding model; clusters of at least `min_size`, largest first."""
    n = len(sightings)
    if n == 0:
        return []
    vecs = np.ascontiguousarray(np.stack([s.embedding for s in sightings]), np.float32)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    scores, nbrs = index.search(vecs, min(n, NEIGHBOURS + 1))
    edges = [(float(sc), i, int(j)) for i in range(n) for sc, j in zip(scores[i], nbrs[i], strict=True)
             if j > i and sc >= threshold]
    edges.sort(key=lambda e: -e[0])
    parent = list(range(n))
    sums = {i: vecs[i].astype(np.float64) for i in range(n)}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, i, j in edges:
        a, b = find(i), find(j)
        if a == b:
            continue
        ca, cb = sums[a], sums[b]
        if float(ca @ cb) / (np.linalg.norm(ca) * np.linalg.norm(cb)) < threshold:
            continue  # the groups as a whole are not alike: no chaining through one pair
        parent[b] = a
        sums[a] = ca + cb
        del sums[b]
    groups: dict[int, list[Sighting]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(sightings[i])
    out = []
    for members in groups.values():
        if len(members) < min_size:
            continue
        members.sort(key=lambda s: (-s.quality, s.id))
        key = ",".join(str(i) for i in sorted(s.id for s in members))
        out.append(Cluster(hashlib.sha256(key.encode()).hexdigest()[:16], members))
    out.sort(key=lambda c: (-len(c.members), c.first_seen))
    return out


__all__ = ["Cluster", "cluster_sightings"]
