"""Data retention: match events (with their face thumbnails) older than `retention.events_days`
are purged, by a background thread in the server and by `faceengine purge`.

Sightings (every track's best shot, only when `sightings.enabled`) older than
`retention.sightings_days` are erased by the same worker, from the store and the search index.

Match events hold face images; faces that matched nobody are stored only as sightings. Gallery
templates stay until their person is removed; the audit log is kept (it is append-only and
cannot be deleted through the engine).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from engine.config import RetentionConfig
from engine.store.base import EventStore

log = logging.getLogger(__name__)


def purge_expired(store: EventStore, events_days: float, now: float | None = None) -> int:
    """Delete events older than events_days (0 = keep everything); returns how many were deleted."""
    if events_days <= 0:
        return 0
    cutoff = (time.time() if now is None else now) - events_days * 86400.0
    n = store.purge_events(cutoff)  # the store leaves no copy of the erased thumbnails behind
    if n:
        log.info("retention: purged %d events older than %.1f days", n, events_days)
    return n


class RetentionWorker:
    """Runs `purge_expired` at start and then every `interval_s` seconds until stopped."""

    def __init__(self, store: EventStore, cfg: RetentionConfig,
                 purge_sightings: Callable[[], int] | None = None) -> None:
        """purge_sightings: erases expired sightings from store and index (when sightings are on)."""
        self.store = store
        self.cfg = cfg
        self.purge_sightings = purge_sightings
        self.purged = 0
        self.sightings_purged = 0
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RetentionWorker:
        sightings = self.purge_sightings is not None and self.cfg.sightings_days > 0
        if self.cfg.interval_s > 0 and (self.cfg.events_days > 0 or sightings):
            self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
            self._thread.start()
        return self

    def run_once(self) -> int:
        n = purge_expired(self.store, self.cfg.events_days)
        if self.purge_sightings is not None:
            self.sightings_purged += self.purge_sightings()
        self.purged += n
        self.runs += 1
        return n

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a locked or failing store must not kill the thread: retry next time
                log.exception("retention purge failed")
            self._stop.wait(self.cfg.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
