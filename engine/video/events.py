"""Live match fan-out: each subscriber gets a bounded queue; a slow subscriber loses its oldest
events (counted), never blocks the pipeline and never grows memory."""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field

from engine.store.base import MatchEvent


@dataclass
class MatchFilterSpec:
    camera_ids: frozenset[str] = frozenset()
    watchlists: frozenset[str] = frozenset()
    min_score: float = 0.0

    def accepts(self, e: MatchEvent) -> bool:
        return ((not self.camera_ids or e.camera_id in self.camera_ids)
                and (not self.watchlists or e.watchlist in self.watchlists) and e.score >= self.min_score)


@dataclass
class Subscription:
    id: int
    filter: MatchFilterSpec
    queue: queue.Queue[tuple[MatchEvent, bool] | None] = field(default_factory=lambda: queue.Queue(1000))
    dropped: int = 0


class EventBus:
    def __init__(self) -> None:
        self._subs: dict[int, Subscription] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def subscribe(self, flt: MatchFilterSpec, max_queue: int = 1000) -> Subscription:
        sub = Subscription(next(self._ids), flt, queue.Queue(max_queue))
        with self._lock:
            self._subs[sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.pop(sub.id, None)

    def __len__(self) -> int:
        return len(self._subs)

    def publish(self, event: MatchEvent, update: bool) -> None:
        with self._lock:
            subs = list(self._subs.values())
        for sub in subs:
            if not sub.filter.accepts(event):
                continue
            while True:
                try:
                    sub.queue.put_nowait((event, update))
                    break
                except queue.Full:
                    try:
                        sub.queue.get_nowait()
                        sub.dropped += 1
                    except queue.Empty:
                        pass

    def close(self) -> None:
        """Wake every subscriber with an end marker (server shutdown)."""
        with self._lock:
            subs = list(self._subs.values())
        for sub in subs:
            try:
                sub.queue.put_nowait(None)
            except queue.Full:
                sub.queue.get_nowait()
                sub.queue.put_nowait(None)
