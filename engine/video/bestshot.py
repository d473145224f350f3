"""Per-track best-shot state: when to embed a tracked face, and what the track has learned.

Embedding every face of every frame is the dominant cost of a video pipeline. Instead a
track is embedded on its first good shot, again only when a clearly better shot arrives,
and otherwise at most every ``max_interval_s`` (so a long-lived track still refreshes). The
embeddings of a track are pooled into one quality-weighted unit vector, which matches more
reliably than any single frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BestShotPolicy:
    """Decides whether a track's face in the current frame is worth embedding.

    min_quality: shots below this quality are never embedded.
    improve_margin: after the first embedding, re-embed when quality beats the last
        embedded quality by at least this much...
    max_interval_s: ...or when this many seconds passed since the last embedding.
    """

    min_quality: float = 0.5
    improve_margin: float = 0.1
    max_interval_s: float = 2.0

    def should_embed(self, state: TrackState, quality: float, now: float) -> bool:
        """True when this shot (``quality`` at frame time ``now``) should be embedded."""
        if not quality >= self.min_quality:  # also rejects NaN
            return False
        if state.n_embeddings == 0:
            return True
        if quality >= state.last_embed_quality + self.improve_margin:
            return True
        # Embedded without a time (add_embedding(..., now=None)): only the improvement rule applies.
        return state.last_embed_time is not None and now - state.last_embed_time >= self.max_interval_s


@dataclass
class TrackState:
    """What the pipeline knows about one track.

    best_quality / best_quality_time: best shot seen (embedded or not), for thumbnails.
    last_embed_time / last_embed_quality: the latest embedded shot (None / 0 before any).
    embedding: quality-weighted mean of the track's unit embeddings, renormalised to unit
        length (None before any); n_embeddings counts the shots pooled into it.
    """

    track_id: int
    first_seen: float | None = None
    last_seen: float | None = None
    best_quality: float = 0.0
    best_quality_time: float | None = None
    last_embed_time: float | None = None
    last_embed_quality: float = 0.0
    n_embeddings: int = 0
    embedding: np.ndarray | None = None
    _weighted_sum: np.ndarray | None = field(default=None, repr=False)
    _weight: float = field(default=0.0, repr=False)

    def observe(self, quality: float, now: float) -> bool:
        """Record a shot of the track; True if it is the best quality seen so far."""
        if self.first_seen is None:
            self.first_seen = now
        self.last_seen = now
        if quality > self.best_quality or self.best_quality_time is None:
            self.best_quality = float(quality)
            self.best_quality_time = now
            return True
        return False

    def add_embedding(self, emb: np.ndarray, quality: float, now: float | None = None) -> np.ndarray:
        """Pool one (D,) embedding, weighted by ``quality``; returns the new unit track embedding.

        The input is L2-normalised first so each shot counts by its quality only. ``now``
        (frame time) records when it was embedded, for ``BestShotPolicy``'s interval rule.
        """
        vec = np.asarray(emb, np.float64).reshape(-1)
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("embedding must be finite and non-zero")
        if self._weighted_sum is not None and self._weighted_sum.shape != vec.shape:
            raise ValueError(f"embedding has dim {vec.shape[0]}, track has {self._weighted_sum.shape[0]}")
        weight = max(float(quality), 1e-6)  # a zero-quality first shot still defines the track
        contribution = vec * (weight / norm)
        self._weighted_sum = contribution if self._weighted_sum is None else self._weighted_sum + contribution
        self._weight += weight
        total = float(np.linalg.norm(self._weighted_sum))
        # Opposite embeddings can cancel; keep the newest direction rather than divide by ~0.
        pooled = self._weighted_sum / total if total > 1e-12 else vec / norm
        self.embedding = pooled.astype(np.float32)
        self.n_embeddings += 1
        self.last_embed_quality = float(quality)
        if now is not None:
            self.last_embed_time = now
        return self.embedding

    def similarity(self, emb: np.ndarray) -> float | None:
        """Cosine similarity of ``emb`` to the pooled track embedding (None before any).

        IoU tracking can hand a track over to another face (hard cuts, PTZ moves, crossing
        people); a new shot far from the track's embedding is the cheap way to notice that.
        """
        if self.embedding is None:
            return None
        vec = np.asarray(emb, np.float64).reshape(-1)
        norm = float(np.linalg.norm(vec))
        if vec.shape != self.embedding.shape or norm == 0.0:
            raise ValueError("embedding must be non-zero and of the track's dimension")
        return float(np.dot(self.embedding.astype(np.float64), vec) / norm)


class TrackRegistry:
    """Track id -> TrackState for one camera; drop ids when the tracker ends them."""

    def __init__(self) -> None:
        self._states: dict[int, TrackState] = {}

    def get_or_create(self, track_id: int) -> TrackState:
        """The state of ``track_id``, created empty on first use."""
        state = self._states.get(track_id)
        if state is None:
            state = self._states[track_id] = TrackState(int(track_id))
        return state

    def get(self, track_id: int) -> TrackState | None:
        """The state of ``track_id``, or None if the track has none."""
        return self._states.get(track_id)

    def drop(self, ids: Iterable[int]) -> list[TrackState]:
        """Forget these tracks; returns their final states (unknown ids are skipped)."""
        return [s for s in (self._states.pop(int(i), None) for i in ids) if s is not None]

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._states

    def __iter__(self) -> Iterator[TrackState]:
        return iter(list(self._states.values()))


__all__ = ["BestShotPolicy", "TrackRegistry", "TrackState"]
