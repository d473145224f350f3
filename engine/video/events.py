"""Live match fan-out: each subscriber gets a bounded queue; a slow subscriber loses its oldest
events (counted), never blocks the pipeline and never grows memory."""

from __future__ import annotations

import itertools
import queue
import threading
from collections import OrderedDict
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


UPDATE_EPS_S = 1e-6
"""An event whose `updated` is later than `created` by more than this was updated, not new."""
PUBLISHED_MEMORY = 10_000
"""Event ids remembered so the relay does not send them twice (far more than the events written
between two relay polls)."""


class PublishOnce:
    """Publishes each version of an event (id, `updated`) once to a bus, whether it came from this
    process's pipeline, a cluster worker's result or the store's change feed (`relay`)."""

    def __init__(self, bus: EventBus, memory: int = PUBLISHED_MEMORY) -> None:
        self.bus = bus
        self.memory = memory
        self.published: OrderedDict[str, float] = OrderedDict()  # event id -> `updated` published
        self._lock = threading.Lock()

    def seen(self, ev: MatchEvent) -> bool:
        """Whether this version of the event was published here."""
        with self._lock:
            return self.published.get(ev.event_id) == ev.updated

    def _remember(self, ev: MatchEvent) -> None:
        self.published[ev.event_id] = ev.updated
        self.published.move_to_end(ev.event_id)
        while len(self.published) > self.memory:
            self.published.popitem(last=False)

    def announce(self, ev: MatchEvent, update: bool) -> None:
        """Publish an event this process just raised or updated (always), and remember it."""
        with self._lock:
            self._remember(ev)
        self.bus.publish(ev, update)

    def publish(self, ev: MatchEvent, update: bool | None = None) -> bool:
        """Publish the event unless this version was published already; `update` None = judged from
        its times. True when it was published now."""
        with self._lock:
            if self.published.get(ev.event_id) == ev.updated:
                return False
            if update is None:
                update = ev.event_id in self.published or ev.updated > ev.created + UPDATE_EPS_S
            self._remember(ev)
        self.bus.publish(ev, update)
        return True

    def relay(self, events: list[MatchEvent]) -> int:
        """Publish events read from the store's change feed that no local result brought here."""
        return sum(1 for ev in events if self.publish(ev))
