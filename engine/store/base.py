"""Store role interfaces and records.

Above `engine/store/` only these protocols are used as types: `GalleryStore`, `EventStore`,
`SightingStore`, `AuditStore`, `CameraStore`, `TokenStore`, and `Store` (all roles plus lifecycle). Every store
method used from outside the package belongs to exactly one of them, and none has a
database-specific meaning (journal checkpoints, vacuum and secure deletion happen inside the
backend). `engine.store.open_store(url)` builds a backend: SQLite (embedded default) or PostgreSQL.
The contract suite `tests/test_store_contract.py` runs every method on every backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class Watchlist:
    name: str
    description: str = ""
    person_count: int = 0
    created: float = 0.0


@dataclass
class Person:
    watchlist: str
    person_id: str
    display_name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    template_count: int = 0
    created: float = 0.0
    updated: float = 0.0


@dataclass
class Template:
    id: int
    watchlist: str
    person_id: str
    embedding: np.ndarray


@dataclass
class MatchEvent:
    """One match of a face (a track, when tracking is on) against a watchlist person."""

    event_id: str
    camera_id: str
    timestamp: float
    watchlist: str
    person_id: str
    display_name: str
    score: float
    box: tuple[float, float, float, float]
    track_id: int = -1
    frame_seq: int = -1
    thumbnail: bytes = b""
    created: float = 0.0
    updated: float = 0.0
    ack_action: str = ""  # "" (open), "ack" or "dismiss"
    ack_note: str = ""
    ack_by: str = ""  # token name of who decided
    ack_time: float = 0.0


@dataclass
class EventQuery:
    camera_id: str = ""
    watchlist: str = ""
    person_id: str = ""
    since: float = 0.0
    until: float = 0.0
    min_score: float = 0.0
    page_size: int = 100
    page_token: str = ""


@dataclass
class Sighting:
    """One track's best shot, kept whether or not it matched anyone (only where sightings are enabled).

    first_seen/last_seen: the track's time span (seconds since the epoch; `first_seen` places it in
    time partitions and retention). embedding: (D,) float32 unit vector of `model`. box: the best
    shot's face box in original pixels. watchlist/person_id: the person it matched or was named as
    ('' = unknown). id: assigned by the store."""

    camera_id: str
    first_seen: float
    last_seen: float
    embedding: np.ndarray
    model: str
    quality: float = 0.0
    track_id: int = -1
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    thumbnail: bytes = b""
    watchlist: str = ""
    person_id: str = ""
    score: float = 0.0
    id: int = 0
    created: float = 0.0


@dataclass
class GalleryDelta:
    """What changed in the gallery after a version: the persons touched (enrolled, re-enrolled,
    renamed, removed, or in a deleted watchlist) and the current templates of those still present
    (for one embedding model). A replica drops every vector it holds of `persons`, then adds `ids`."""

    version: int
    persons: list[tuple[str, str]]
    ids: np.ndarray
    vectors: np.ndarray
    labels: list[tuple[str, str, str]]


class GalleryStore(Protocol):
    """Watchlists, persons and their templates; `gallery_version` moves on every change."""

    def gallery_version(self) -> int: ...
    def gallery_changes_since(self, version: int, model: str) -> GalleryDelta | None:
        """Delta from `version` to now, or None when the change log no longer reaches back that
        far (or the version is unknown): the caller then rebuilds from `templates`."""
        ...
    def create_watchlist(self, name: str, description: str = "") -> Watchlist: ...
    def delete_watchlist(self, name: str) -> int: ...
    def get_watchlist(self, name: str) -> Watchlist: ...
    def list_watchlists(self) -> list[Watchlist]: ...
    def upsert_person(self, person: Person, embeddings: np.ndarray, model: str,
                      replace: bool = False) -> list[int]: ...
    def remove_person(self, watchlist: str, person_id: str) -> list[int]:
        """Delete a person and their templates; the erased rows leave no copy in the journal."""
        ...
    def get_person(self, watchlist: str, person_id: str) -> Person: ...
    def list_persons(self, watchlist: str, limit: int = 100, after: str = "") -> list[Person]: ...
    def template_ids(self, watchlist: str, person_id: str) -> list[int]: ...
    def templates(self, model: str) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]: ...
    def template_models(self) -> dict[str, int]: ...
    def set_person_photo(self, watchlist: str, person_id: str, jpeg: bytes) -> None:
        """Keep one face photo of an enrolled person for operators (erased with the person)."""
        ...
    def get_person_photo(self, watchlist: str, person_id: str) -> bytes:
        """The person's photo, b'' when none was kept; NotFoundError for an unknown person."""
        ...


class EventStore(Protocol):
    """Match events with thumbnails, and a change feed keyed by a store-wide sequence (not clocks)."""

    def add_event(self, event: MatchEvent) -> None: ...
    def update_event(self, event: MatchEvent) -> None: ...
    def get_event(self, event_id: str) -> MatchEvent: ...
    def query_events(self, q: EventQuery) -> tuple[list[MatchEvent], str]: ...
    def event_change_head(self) -> int:
        """The change sequence now: pass it to `event_changes_since` to see only later changes."""
        ...
    def event_changes_since(self, after_seq: int, limit: int = 500) -> tuple[list[MatchEvent], int]:
        """Events inserted or updated after change `after_seq` (any process), in change order, and the
        sequence to ask from next time. Commit order equals sequence order, so nothing is skipped."""
        ...
    def purge_events(self, before: float) -> int:
        """Erase events older than `before` (and their thumbnails, leaving no copy in the journal)."""
        ...
    def erase_person_events(self, watchlist: str, person_id: str) -> int:
        """Erase every event of one person (right to erasure), leaving no copy in the journal."""
        ...
    def acknowledge_event(self, event_id: str, action: str, note: str, actor: str) -> MatchEvent:
        """Record an operator's ack or dismiss (with a note) on an event; does not move its change
        sequence, so relays do not re-send it. NotFoundError for an unknown event."""
        ...


class SightingStore(Protocol):
    """Every track's best shot (embedding, thumbnail, camera, time span), for search by photo and
    recurring unknowns. Erasures leave no copy in the journal."""

    def add_sightings(self, sightings: list[Sighting]) -> list[int]:
        """Store a batch in one transaction; returns their new ids (also set on each `Sighting.id`)."""
        ...
    def get_sightings(self, ids: list[int], thumbnails: bool = True) -> list[Sighting]:
        """The sightings with these ids that still exist, in the order asked."""
        ...
    def scan_sightings(self, model: str, since: float = 0.0, until: float = 0.0, cameras: tuple[str, ...] = (),
                       after_id: int = 0, limit: int = 10_000, unknown_only: bool = False) -> list[Sighting]:
        """Sightings of one embedding model with `since <= first_seen < until` (0 = open), ids above
        `after_id` in id order, without thumbnails: for index rebuilds and clustering, page by page."""
        ...
    def count_sightings(self) -> int: ...
    def purge_sightings(self, before: float) -> int:
        """Erase sightings first seen before `before` (retention); returns how many."""
        ...
    def erase_sightings(self, since: float = 0.0, until: float = 0.0, cameras: tuple[str, ...] = ()) -> list[int]:
        """Erase the sightings of a time range (0 = open) on some cameras (() = all); returns their ids."""
        ...
    def erase_person_sightings(self, watchlist: str, person_id: str) -> list[int]:
        """Erase every sighting matched to (or named as) one person; returns their ids."""
        ...
    def assign_sightings(self, ids: list[int], watchlist: str, person_id: str) -> int:
        """Name sightings as a person (a recurring unknown enrolled); returns how many were changed."""
        ...


class AuditStore(Protocol):
    """Append-only audit log: the backend refuses updates and deletes."""

    def audit(self, actor: str, role: str, action: str, target: str, result: str, detail: str = "") -> None: ...
    def query_audit(self, since: float = 0.0, limit: int = 100, after_id: int = 0,
                    action: str = "") -> list[dict[str, Any]]: ...


class DamagedOptions(dict[str, str]):
    """The options of a saved camera row that cannot be read (not JSON, or not an object of strings):
    empty, with `problem` saying why, so the camera is listed in state 'error' rather than stopping
    the start or vanishing."""

    def __init__(self, problem: str) -> None:
        super().__init__()
        self.problem = problem


def camera_options(raw: Any) -> dict[str, str]:
    """A saved camera row's options column as a dict of strings, or DamagedOptions saying what is wrong."""
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        return DamagedOptions(f"saved options are not JSON ({str(exc)[:80]})")
    if not isinstance(value, dict):
        return DamagedOptions(f"saved options are a JSON {type(value).__name__}, not an object of option names")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return DamagedOptions("saved options hold a value that is not a string")
    return value


class CameraStore(Protocol):
    """Pull-camera definitions, so cameras survive restarts."""

    def save_camera(self, camera_id: str, uri: str, options: dict[str, str]) -> None: ...
    def delete_camera(self, camera_id: str) -> None: ...
    def list_camera_defs(self) -> list[tuple[str, str, dict[str, str]]]:
        """Every saved camera; a row whose options cannot be read comes with DamagedOptions."""
        ...


class TokenStore(Protocol):
    """API tokens; only SHA-256 hashes are stored."""

    def create_token(self, name: str, role: str, token_hash: str, scope: str = "") -> float: ...
    def token_by_hash(self, token_hash: str) -> tuple[str, str, str] | None: ...
    def list_tokens(self) -> list[dict[str, Any]]: ...
    def revoke_token(self, name: str) -> dict[str, Any]: ...


ChangeCallback = Callable[[str], None]
"""Called with "gallery" or "events" when another process (or this one) changed that part."""


class StoreLifecycle(Protocol):
    """Opening is `open_store(url)`; these hooks keep the store healthy while it runs."""

    url: str
    """Where the store lives, with any password redacted (for logs and error messages)."""

    def close(self) -> None: ...
    def health(self) -> str:
        """'' while the store can serve; otherwise why not, for a person (disk full, server down).
        Health checks turn NOT_SERVING on a reason and back to SERVING when it clears."""
        ...
    def repair(self) -> dict[str, int]:
        """Start-up consistency check; returns counts of what was fixed."""
        ...
    def subscribe_changes(self, callback: ChangeCallback) -> Callable[[], None]:
        """Push notification of changes where the backend has it (PostgreSQL LISTEN/NOTIFY); a
        backend without it never calls back (callers keep polling). Returns an unsubscribe function."""
        ...


@runtime_checkable
class Store(GalleryStore, EventStore, SightingStore, AuditStore, CameraStore, TokenStore, StoreLifecycle, Protocol):
    """Everything one backend provides: all roles plus lifecycle."""
