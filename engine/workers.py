"""Small background workers of a serving process, beside `engine.retention.RetentionWorker`: each owns one
loop and one thread, started and stopped by whoever wires the runtime (the gRPC server today)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from engine.store.base import EventStore, StoreLifecycle
from engine.video.engine_api import VideoEngine

log = logging.getLogger(__name__)


class EventRelayWorker:
    """Live subscribers of this process also see matches raised by other processes on the same store
    (several stateless engine processes behind one operator endpoint): polls the store's change feed every
    `interval_s`, or at once on `wake()` (a store notification), and relays new events to the engine."""

    def __init__(self, store: EventStore, engine: VideoEngine, interval_s: float) -> None:
        self.store = store
        self.engine = engine
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> EventRelayWorker:
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="event-relay", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Read the change feed now rather than at the next tick."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        mark = self.store.event_change_head()  # keyed by the store's change sequence, not by clocks
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)  # a poll tick, or a store notification
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                events, mark = self.store.event_changes_since(mark)
            except Exception:  # store closing or busy: try again next tick
                log.debug("event relay: store read failed", exc_info=True)
                continue
            if events:
                self.engine.relay(events)


class StoreHealthWorker:
    """Health follows the store: `on_change(False)` while it cannot serve (SQLite: writes fail for lack of
    space, a write probe tells when there is room again; PostgreSQL: the server does not answer),
    `on_change(True)` once it can again, without a restart."""

    def __init__(self, store: StoreLifecycle, interval_s: float, on_change: Callable[[bool], None]) -> None:
        self.store = store
        self.interval_s = interval_s
        self.on_change = on_change
        self.serving = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StoreHealthWorker:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="storage-health", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self) -> None:
        """One probe: report a change of state."""
        try:
            problem = self.store.health()
        except Exception as exc:  # noqa: BLE001 - store closing or busy: report it, look again
            problem = str(exc) or type(exc).__name__
        if self.serving and problem:
            log.error("store %s cannot serve, health NOT_SERVING: %s", self.store.url, problem)
        elif not self.serving and not problem:
            log.warning("store %s works again, health SERVING", self.store.url)
        if self.serving != (not problem) and not self._stop.is_set():
            self.serving = not problem
            self.on_change(self.serving)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()


__all__ = ["EventRelayWorker", "StoreHealthWorker"]
