"""Watchlists of persons with several templates each, searched with FAISS.

The store (SQLite or PostgreSQL) is the source of truth; the FAISS index is a cache built from it on
start and kept in step by every change made through this class. When another process changes the
same store, `gallery_version` moves and the next search applies the store's change log (the changed
persons' vectors are dropped and re-added), so any number of stateless workers can share one
gallery; a full rebuild happens only at start or when the log no longer reaches back far enough.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidArgumentError
from engine.gallery.faiss_index import VectorIndex
from engine.store.base import GalleryDelta, GalleryStore, Person, Watchlist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    watchlist: str
    person_id: str
    display_name: str
    score: float
    template_id: int


class Gallery:
    def __init__(self, store: GalleryStore, dim: int, model: str, index_spec: str = "Flat",
                 sync_interval_s: float = 1.0) -> None:
        self.store = store
        self.dim = dim
        self.model = model
        self.index_spec = index_spec
        self.sync_interval_s = sync_interval_s
        self._lock = threading.RLock()
        self._labels: dict[int, tuple[str, str, str]] = {}
        self._by_person: dict[tuple[str, str], set[int]] = {}  # template ids of each indexed person
        self._version = -1
        self._checked = 0.0
        self.rebuilds = 0  # full rebuilds from the store (start-up, or a replica too far behind)
        self.deltas = 0  # change-log deltas applied (other processes' changes)
        self.index = VectorIndex(dim, index_spec)
        self.rebuild()
        others = {m: n for m, n in store.template_models().items() if m != model}
        if others:
            log.warning("gallery holds templates of other embedders %s; they are ignored by %s: "
                        "re-enrol those persons", others, model)

    def rebuild(self) -> None:
        """Rebuild the FAISS index from the store (start-up, or after another process changed it)."""
        with self._lock:
            version = self.store.gallery_version()
            ids, vecs, labels = self.store.templates(self.model)
            index = VectorIndex(self.dim, self.index_spec)
            if len(ids):
                if vecs.shape[1] != self.dim:
                    raise InvalidArgumentError(f"stored templates are {vecs.shape[1]}-d, embedder is {self.dim}-d")
                index.add(ids, vecs)
            self.index = index
            self._labels = {}
            self._by_person = {}
            self._add_labels(ids.tolist(), labels)
            self._version = version
            self._checked = time.monotonic()
            self.rebuilds += 1
            log.info("gallery: %d templates of %s indexed (%s)", len(ids), self.model, self.index_spec)

    def sync(self, force: bool = False) -> None:
        """Catch up if the store changed behind our back (checked at most every sync_interval_s)."""
        now = time.monotonic()
        if not force and now - self._checked < self.sync_interval_s:
            return
        self._checked = now
        if self.store.gallery_version() != self._version:
            self._catch_up()

    def _catch_up(self) -> None:
        """Apply the store's changes since our version, or rebuild when the log cannot say."""
        with self._lock:
            delta = self.store.gallery_changes_since(self._version, self.model)
            if delta is None:
                self.rebuild()
            else:
                self._apply(delta)

    def _apply(self, delta: GalleryDelta) -> None:
        """Drop every vector of the changed persons, then add their current templates (idempotent)."""
        drop = [i for key in delta.persons for i in self._by_person.get(key, ())]
        if drop:
            self.index.remove(np.asarray(drop, np.int64))
            self._drop_labels(drop)
        if len(delta.ids):
            if delta.vectors.shape[1] != self.dim:
                raise InvalidArgumentError(f"stored templates are {delta.vectors.shape[1]}-d, embedder is {self.dim}-d")
            self.index.add(delta.ids, delta.vectors)
            self._add_labels(delta.ids.tolist(), delta.labels)
        self._version = delta.version
        self.deltas += 1

    def _add_labels(self, ids: list[int], labels: list[tuple[str, str, str]]) -> None:
        for i, lab in zip(ids, labels, strict=True):
            self._labels[int(i)] = lab
            self._by_person.setdefault((lab[0], lab[1]), set()).add(int(i))

    def _drop_labels(self, ids: list[int]) -> None:
        for i in ids:
            lab = self._labels.pop(int(i), None)
            if lab is not None:
                held = self._by_person.get((lab[0], lab[1]))
                if held is not None:
                    held.discard(int(i))
                    if not held:
                        del self._by_person[(lab[0], lab[1])]

    def _note_own_change(self) -> None:
        # our change moved the version by one; if it moved by more, someone else wrote too
        version = self.store.gallery_version()
        if version == self._version + 1:
            self._version = version
        else:
            self._catch_up()

    # ---- watchlists ----------------------------------------------------------------------------
    def create_watchlist(self, name: str, description: str = "") -> Watchlist:
        with self._lock:
            wl = self.store.create_watchlist(name, description)
            self._note_own_change()
            return wl

    def ensure_watchlist(self, name: str) -> None:
        if name not in {w.name for w in self.store.list_watchlists()}:
            self.create_watchlist(name)

    def delete_watchlist(self, name: str) -> int:
        with self._lock:
            n = self.store.delete_watchlist(name)
            self._catch_up()
            return n

    def list_watchlists(self) -> list[Watchlist]:
        return self.store.list_watchlists()

    # ---- persons -------------------------------------------------------------------------------
    def enroll(self, watchlist: str, person_id: str, embeddings: np.ndarray, display_name: str = "",
               metadata: dict[str, str] | None = None, replace: bool = False) -> Person:
        """Add (or with replace=True, replace) a person's templates; one transaction, then the index."""
        if not person_id or len(person_id) > 256:
            raise InvalidArgumentError("person id must be 1-256 characters")
        emb = np.asarray(embeddings, np.float32).reshape(-1, self.dim)
        with self._lock:
            old = self.store.template_ids(watchlist, person_id) if replace else []
            ids = self.store.upsert_person(Person(watchlist, person_id, display_name, dict(metadata or {})),
                                           emb, self.model, replace)
            if old:
                self.index.remove(np.asarray(old, np.int64))
                self._drop_labels(old)
            self.index.add(np.asarray(ids, np.int64), emb)
            self._add_labels(ids, [(watchlist, person_id, display_name)] * len(ids))
            if display_name:  # older templates carry the new name too
                for i in self._by_person.get((watchlist, person_id), ()):
                    self._labels[i] = (watchlist, person_id, display_name)
            self._note_own_change()
            return self.store.get_person(watchlist, person_id)

    def remove_person(self, watchlist: str, person_id: str) -> int:
        """Delete a person from the store and their vectors from the index; returns templates removed."""
        with self._lock:
            ids = self.store.remove_person(watchlist, person_id)
            if ids:
                self.index.remove(np.asarray(ids, np.int64))
            self._drop_labels(ids)
            self._note_own_change()
            return len(ids)

    def person_vectors(self, watchlist: str, person_id: str) -> np.ndarray:
        """The person's enrolled template vectors (n x dim; none when not enrolled), after catching up with
        other writers: what enrolment compares a new photo with."""
        self.sync()
        with self._lock:
            ids = sorted(self._by_person.get((watchlist, person_id), ()))
            return self.index.vectors(np.asarray(ids, np.int64))

    def get_person(self, watchlist: str, person_id: str) -> Person:
        return self.store.get_person(watchlist, person_id)

    def list_persons(self, watchlist: str, page_size: int = 100, page_token: str = "") -> tuple[list[Person], str]:
        size = max(1, min(page_size or 100, 1000))
        rows = self.store.list_persons(watchlist, size + 1, page_token)
        more = len(rows) > size
        rows = rows[:size]
        return rows, (rows[-1].person_id if more and rows else "")

    def __len__(self) -> int:
        return len(self.index)

    def has_template(self, template_id: int) -> bool:
        """True while the template (and so its person) is in the gallery."""
        return template_id in self._labels

    def vector_ids(self) -> set[int]:
        return {int(i) for i in self.index.ids()}

    # ---- search --------------------------------------------------------------------------------
    def search(self, embeddings: np.ndarray, top_k: int = 5, threshold: float = -1.0,
               watchlists: list[str] | None = None) -> list[list[Match]]:
        """For each query, the best `top_k` persons (best template per person) scoring >= threshold."""
        q = np.asarray(embeddings, np.float32).reshape(-1, self.dim)
        self.sync()
        with self._lock:
            if len(self.index) == 0 or q.shape[0] == 0:
                return [[] for _ in range(q.shape[0])]
            wanted = set(watchlists or [])
            k = min(len(self.index), max(top_k * 4, 16) if not wanted else max(top_k * 16, 64))
            scores, ids = self.index.search(q, k)
            labels = self._labels
        out: list[list[Match]] = []
        for row_s, row_i in zip(scores, ids, strict=True):
            best: dict[tuple[str, str], Match] = {}
            for s, i in zip(row_s.tolist(), row_i.tolist(), strict=True):
                if i < 0 or s < threshold or i not in labels:
                    continue
                w, p, name = labels[i]
                if wanted and w not in wanted:
                    continue
                if (w, p) not in best:
                    best[(w, p)] = Match(w, p, name, float(s), int(i))
            out.append(sorted(best.values(), key=lambda m: -m.score)[:top_k])
        return out
