"""`Sightings`: the sightings feature of one engine process, behind one object the server owns.

It wires the `SightingRecorder` (best shot per track, written off the hot path), the time-
partitioned `SightingIndex` (rebuilt from the store at start, then kept in step incrementally),
search by embedding (index candidates re-scored exactly from the stored embeddings, above the
calibrated threshold), retention and erasure (store and index together) and recurring-unknown
clustering. It knows the store only by its `SightingStore` role and no gRPC.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from engine.config import Config
from engine.errors import InvalidArgumentError
from engine.gallery.calibration import FALLBACK_THRESHOLD, threshold_for_fpir
from engine.models.registry import ModelSpec
from engine.sightings.cluster import Cluster, cluster_sightings
from engine.sightings.index import SightingIndex
from engine.sightings.recorder import SightingRecorder, Thumbnailer
from engine.store.base import Sighting, SightingStore

log = logging.getLogger(__name__)

MAX_TOP_K = 1000
MAX_CLUSTERED = 50_000
"""Most unknown sightings one clustering reads (the newest of the range are not cut: narrow the range)."""
CANDIDATE_FACTOR = 4
"""Index candidates per result asked: IVF-PQ scores are approximate, so more are re-scored exactly."""


@dataclass(frozen=True)
class SightingHit:
    """One sighting found by a search, with its exact cosine score against the query."""

    sighting: Sighting
    score: float


def search_threshold(cfg: Config, spec: ModelSpec | None) -> tuple[float, str]:
    """(threshold, how it was chosen): sightings.match_threshold if set, else the watchlists' FPIR
    calibration for the embedder applied to `search_size` sightings."""
    s = cfg.sightings
    if s.match_threshold > 0:
        return s.match_threshold, "sightings.match_threshold set explicitly"
    thr = threshold_for_fpir(spec, s.search_fpir, s.search_size) if spec is not None else None
    if thr is None:
        return FALLBACK_THRESHOLD, "the embedder has no non-mated calibration: fallback"
    return thr, (f"from sightings.search_fpir={s.search_fpir:g} over {s.search_size} sightings with the "
                 "embedder's non-mated score calibration")


class Sightings:
    """Recorder, index, search, retention and erasure of sightings for one embedding model."""

    def __init__(self, cfg: Config, store: SightingStore, dim: int, model: str, thumbnail: Thumbnailer,
                 spec: ModelSpec | None = None) -> None:
        s = cfg.sightings
        self.cfg = cfg
        self.store = store
        self.model = model
        self.threshold, how = search_threshold(cfg, spec)
        log.info("sightings search threshold %.4f (%s)", self.threshold, how)
        self.index = SightingIndex(dim, s.partition_hours * 3600.0, s.ivfpq_min, s.pq_m, s.nprobe)
        self.recorder = SightingRecorder(store, model, thumbnail, on_written=self._index_batch,
                                         queue_size=s.queue_size, max_track_s=s.max_track_s)

    # ---- lifecycle -------------------------------------------------------------------------------
    def load(self, page: int = 20_000) -> int:
        """Fill the index from the store (this model's sightings within retention); returns how many."""
        self.purge_expired()
        after, n = 0, 0
        while True:
            rows = self.store.scan_sightings(self.model, after_id=after, limit=page)
            if not rows:
                return n
            self._index_batch(rows)
            after, n = rows[-1].id, n + len(rows)

    def start(self) -> Sightings:
        self.recorder.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.recorder.stop(timeout)

    def _index_batch(self, batch: list[Sighting]) -> None:
        mine = [s for s in batch if s.model == self.model]
        if mine:
            self.index.add(np.array([s.id for s in mine]), np.stack([s.embedding for s in mine]),
                           np.array([s.first_seen for s in mine]), [s.camera_id for s in mine])

    # ---- search ----------------------------------------------------------------------------------
    def search(self, query: np.ndarray, since: float = 0.0, until: float = 0.0, cameras: tuple[str, ...] = (),
               top_k: int = 20, threshold: float = 0.0, thumbnails: bool = True) -> list[SightingHit]:
        """Sightings most like `query` (a unit embedding), best first: index candidates re-scored
        exactly from the store, those at or above `threshold` (0 = the calibrated one)."""
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgumentError(f"top_k must be 1..{MAX_TOP_K}, got {top_k}")
        if until and since and until <= since:
            raise InvalidArgumentError(f"the time range is empty: until ({until}) is not after since ({since})")
        thr = threshold or self.threshold
        q = np.asarray(query, np.float32).reshape(-1)
        cand = self.index.search(q, top_k * CANDIDATE_FACTOR, since, until, cameras)
        rows = self.store.get_sightings([i for i, _ in cand], thumbnails=thumbnails)
        hits = [SightingHit(r, float(r.embedding @ q)) for r in rows]
        hits = [h for h in hits if h.score >= thr]
        hits.sort(key=lambda h: -h.score)
        return hits[:top_k]

    # ---- recurring unknowns ----------------------------------------------------------------------
    def unknown_clusters(self, since: float = 0.0, until: float = 0.0, min_size: int = 2,
                         threshold: float = 0.0) -> list[Cluster]:
        """Unmatched sightings of the range grouped into pseudo-identities, largest first."""
        self.recorder.flush()
        rows: list[Sighting] = []
        after = 0
        while len(rows) < MAX_CLUSTERED:
            page = self.store.scan_sightings(self.model, since, until, after_id=after,
                                             limit=min(10_000, MAX_CLUSTERED - len(rows)), unknown_only=True)
            if not page:
                break
            rows += page
            after = page[-1].id
        return cluster_sightings(rows, threshold or self.threshold, min_size)

    def name(self, ids: list[int], watchlist: str, person_id: str) -> int:
        """Mark sightings as a person (after enrolling them): later erased with that person."""
        return self.store.assign_sightings(ids, watchlist, person_id)

    # ---- retention and erasure -------------------------------------------------------------------
    def purge_expired(self, now: float | None = None) -> int:
        """Erase sightings older than retention.sightings_days from the store and the index."""
        days = self.cfg.retention.sightings_days
        if days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - days * 86400.0
        n = self.store.purge_sightings(cutoff)
        dropped = self.index.drop_before(cutoff)
        if n or dropped:
            log.info("retention: erased %d sightings older than %.1f days (%d from the index)", n, days, dropped)
        return n

    def erase(self, since: float = 0.0, until: float = 0.0, cameras: tuple[str, ...] = ()) -> int:
        """Erase a time range (0 = open) on some cameras (() = all) from store and index."""
        self.recorder.flush()
        ids = self.store.erase_sightings(since, until, cameras)
        self.index.remove(ids)
        return len(ids)

    def erase_person(self, watchlist: str, person_id: str) -> int:
        """Erase every sighting matched to or named as a person (open and queued ones too)."""
        self.recorder.forget_person(watchlist, person_id)
        ids = self.store.erase_person_sightings(watchlist, person_id)
        self.index.remove(ids)
        return len(ids)


__all__ = ["CANDIDATE_FACTOR", "MAX_TOP_K", "SightingHit", "Sightings", "search_threshold"]
