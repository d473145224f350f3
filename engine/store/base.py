"""Store interfaces and records. SQLite implements them now; PostgreSQL (or a vector database for
templates) can replace them later without touching the gallery, pipeline or service code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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


class GalleryStore(Protocol):
    def gallery_version(self) -> int: ...
    def create_watchlist(self, name: str, description: str) -> Watchlist: ...
    def delete_watchlist(self, name: str) -> int: ...
    def get_watchlist(self, name: str) -> Watchlist: ...
    def list_watchlists(self) -> list[Watchlist]: ...
    def upsert_person(self, person: Person, embeddings: np.ndarray, model: str, replace: bool) -> list[int]: ...
    def remove_person(self, watchlist: str, person_id: str) -> list[int]: ...
    def get_person(self, watchlist: str, person_id: str) -> Person: ...
    def list_persons(self, watchlist: str, limit: int, after: str) -> list[Person]: ...
    def templates(self, model: str) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]: ...
    def set_person_photo(self, watchlist: str, person_id: str, jpeg: bytes) -> None: ...
    def get_person_photo(self, watchlist: str, person_id: str) -> bytes: ...


class EventStore(Protocol):
    def add_event(self, event: MatchEvent) -> None: ...
    def update_event(self, event: MatchEvent) -> None: ...
    def get_event(self, event_id: str) -> MatchEvent: ...
    def query_events(self, q: EventQuery) -> tuple[list[MatchEvent], str]: ...
    def purge_events(self, before: float) -> int: ...
    def acknowledge_event(self, event_id: str, action: str, note: str, actor: str) -> MatchEvent: ...


class AuditStore(Protocol):
    def audit(self, actor: str, role: str, action: str, target: str, result: str, detail: str = "") -> None: ...
    def query_audit(self, since: float, limit: int, after_id: int) -> list[dict[str, Any]]: ...
