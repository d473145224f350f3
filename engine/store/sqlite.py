"""SQLite implementation of every store role (the embedded default, no configuration).

One file, WAL journal and synchronous=FULL: a write is on disk when the call returns, and a
crash never leaves a half-written person or event (each change is one transaction). Several
processes on one machine may open the same file; `gallery_version` and the gallery change log let
each keep its FAISS cache in step, and the event change sequence feeds live subscribers of every
process. Erasures (person removal, event purge) checkpoint the WAL themselves, and secure_delete
zeroes freed pages, so no copy of erased rows stays in any file. The schema is versioned with
`PRAGMA user_version`; a file from a newer engine is refused, never rewritten.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    StorageFullError,
    StoreDamagedError,
    StoreSchemaError,
)
from engine.store.base import ChangeCallback, EventQuery, GalleryDelta, MatchEvent, Person, Watchlist
from engine.store.integrity import templates_from_rows as _templates

log = logging.getLogger(__name__)

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS watchlists (
    name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '', created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS persons (
    watchlist TEXT NOT NULL REFERENCES watchlists(name) ON DELETE CASCADE,
    person_id TEXT NOT NULL, display_name TEXT NOT NULL DEFAULT '', metadata TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (watchlist, person_id));
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, watchlist TEXT NOT NULL, person_id TEXT NOT NULL,
    model TEXT NOT NULL, dim INTEGER NOT NULL, embedding BLOB NOT NULL, created REAL NOT NULL,
    FOREIGN KEY (watchlist, person_id) REFERENCES persons(watchlist, person_id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS templates_person ON templates(watchlist, person_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE NOT NULL, camera_id TEXT NOT NULL,
    ts REAL NOT NULL, watchlist TEXT NOT NULL, person_id TEXT NOT NULL, display_name TEXT NOT NULL,
    score REAL NOT NULL, box TEXT NOT NULL, track_id INTEGER NOT NULL, frame_seq INTEGER NOT NULL,
    thumbnail BLOB, created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE INDEX IF NOT EXISTS events_person ON events(watchlist, person_id, ts);
CREATE INDEX IF NOT EXISTS events_camera ON events(camera_id, ts);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS cameras (
    camera_id TEXT PRIMARY KEY, uri TEXT NOT NULL, options TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, role TEXT NOT NULL, hash TEXT UNIQUE NOT NULL,
    created REAL NOT NULL, revoked REAL);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_active_name ON tokens(name) WHERE revoked IS NULL;
"""

# version 2: event change sequence (relay keyed by sequence, not clocks) and the gallery change log
SCHEMA_V2 = """
ALTER TABLE events ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS events_change ON events(change_seq);
CREATE TABLE IF NOT EXISTS gallery_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, version INTEGER NOT NULL, watchlist TEXT NOT NULL,
    person_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS gallery_log_version ON gallery_log(version);
INSERT OR IGNORE INTO meta VALUES ('event_change_seq', '0');
INSERT OR IGNORE INTO meta VALUES ('gallery_version', '0');
INSERT OR IGNORE INTO meta SELECT 'gallery_log_floor', value FROM meta WHERE key='gallery_version';
"""
# version 3: operators' acknowledgements of alerts, and one face photo per enrolled person
SCHEMA_V3 = """
ALTER TABLE events ADD COLUMN ack_action TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN ack_note TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN ack_by TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN ack_time REAL NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS person_photos (
    watchlist TEXT NOT NULL, person_id TEXT NOT NULL, jpeg BLOB NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (watchlist, person_id),
    FOREIGN KEY (watchlist, person_id) REFERENCES persons(watchlist, person_id) ON DELETE CASCADE);
"""
MIGRATIONS = {1: SCHEMA_V1, 2: SCHEMA_V2, 3: SCHEMA_V3}
SCHEMA_VERSION = max(MIGRATIONS)
GALLERY_LOG_KEEP = 10_000  # gallery versions of change log kept; a replica further behind rebuilds
ACK_ACTIONS = ("ack", "dismiss")


class SQLiteStore:
    """Every store role in one SQLite file (thread-safe; several processes on one machine)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.storage_error = ""  # set while writes fail for lack of space, cleared by the next commit
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA secure_delete=ON")  # deleted templates/thumbnails are overwritten with zeros
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if _is_full(exc):
                raise self._full(exc) from exc
            raise damaged(self.path, exc) from exc

    def _full(self, exc: BaseException) -> StorageFullError:
        """The typed error for SQLITE_FULL, remembered until a write succeeds again (health follows it)."""
        where = Path(self.path).expanduser().resolve().parent if self.path != ":memory:" else "memory"
        self.storage_error = (f"the store's disk is full: free space at {where} (or raise the database size "
                              f"limit); writes resume by themselves once there is room ({exc})")
        return StorageFullError(self.storage_error)

    def probe_write(self) -> str:
        """Try a write that is rolled back; '' when the store can write again, else the reason."""
        try:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('write_probe', randomblob(8192))")
                raise _Probe
        except _Probe:
            self.storage_error = ""
        except StorageFullError as exc:
            return str(exc)
        return self.storage_error

    def _migrate(self) -> None:
        """Apply the schema versions this file lacks, in one transaction (other processes wait)."""
        with self._tx() as db:
            have = int(db.execute("PRAGMA user_version").fetchone()[0])
            if have > SCHEMA_VERSION:
                raise StoreSchemaError(
                    f"{self.path}: schema version {have} was written by a newer faceengine (this one knows "
                    f"{SCHEMA_VERSION}); upgrade faceengine or point store.path at another file")
            if have == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name='events'").fetchone():
                cols = {r[1] for r in db.execute("PRAGMA table_info(events)")}
                have = 2 if "change_seq" in cols else 1  # a file from before versioning
            for version in range(have + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[version].split(";\n"):
                    if stmt.strip():
                        db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def health(self) -> str:
        if self.storage_error:  # a rolled-back write probe tells when there is room again
            return self.probe_write()
        try:
            self._q("SELECT 1")
            return ""
        except sqlite3.Error as exc:
            return f"store {self.path} does not answer: {exc}"

    def subscribe_changes(self, callback: ChangeCallback) -> Callable[[], None]:
        """SQLite has no push notification: callers keep polling, so this never calls back."""
        return lambda: None

    def _read(self) -> _Tx:
        return _Tx(self, "BEGIN")

    def _tx(self) -> _Tx:
        return _Tx(self)

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ---- gallery -------------------------------------------------------------------------------
    def gallery_version(self) -> int:
        return int(self._q("SELECT value FROM meta WHERE key='gallery_version'")[0][0])

    def _bump(self, db: sqlite3.Connection, persons: list[tuple[str, str]] | None = None) -> int:
        """Move the gallery version by one and log the persons this change touched."""
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='gallery_version'")
        version = int(db.execute("SELECT value FROM meta WHERE key='gallery_version'").fetchone()[0])
        db.executemany("INSERT INTO gallery_log (version, watchlist, person_id) VALUES (?, ?, ?)",
                       [(version, w, p) for w, p in persons or []])
        if version % 1000 == 0 and version > GALLERY_LOG_KEEP:
            floor = version - GALLERY_LOG_KEEP
            db.execute("DELETE FROM gallery_log WHERE version <= ?", (floor,))
            db.execute("UPDATE meta SET value=? WHERE key='gallery_log_floor'", (str(floor),))
        return version

    def gallery_changes_since(self, version: int, model: str) -> GalleryDelta | None:
        with self._read() as db:
            now = int(db.execute("SELECT value FROM meta WHERE key='gallery_version'").fetchone()[0])
            floor = int(db.execute("SELECT value FROM meta WHERE key='gallery_log_floor'").fetchone()[0])
            if version < floor or version > now:
                return None
            persons = db.execute("SELECT DISTINCT watchlist, person_id FROM gallery_log WHERE version > ? "
                                 "ORDER BY watchlist, person_id", (version,)).fetchall()
            rows = db.execute(
                "SELECT t.id, t.embedding, t.dim, t.watchlist, t.person_id, p.display_name FROM templates t "
                "JOIN persons p ON p.watchlist=t.watchlist AND p.person_id=t.person_id WHERE t.model=? AND "
                "(t.watchlist, t.person_id) IN (SELECT watchlist, person_id FROM gallery_log WHERE version > ?) "
                "ORDER BY t.id", (model, version)).fetchall()
        ids, vecs, labels = _templates(rows)
        return GalleryDelta(now, [(w, p) for w, p in persons], ids, vecs, labels)

    def create_watchlist(self, name: str, description: str = "") -> Watchlist:
        if not name or len(name) > 128:
            raise InvalidArgumentError("watchlist name must be 1-128 characters")
        now = time.time()
        with self._tx() as db:
            try:
                db.execute("INSERT INTO watchlists VALUES (?, ?, ?)", (name, description, now))
            except sqlite3.IntegrityError as exc:
                raise AlreadyExistsError(f"watchlist {name!r} already exists") from exc
            self._bump(db)
        return Watchlist(name, description, 0, now)

    def delete_watchlist(self, name: str) -> int:
        """Delete a watchlist with its persons and templates; returns the number of persons removed."""
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM watchlists WHERE name=?", (name,)).fetchone():
                raise NotFoundError(f"watchlist {name!r} not found")
            persons = [(name, r[0]) for r in db.execute("SELECT person_id FROM persons WHERE watchlist=?", (name,))]
            db.execute("DELETE FROM templates WHERE watchlist=?", (name,))
            db.execute("DELETE FROM persons WHERE watchlist=?", (name,))
            db.execute("DELETE FROM watchlists WHERE name=?", (name,))
            self._bump(db, persons)
        self._checkpoint()
        return len(persons)

    def get_watchlist(self, name: str) -> Watchlist:
        rows = self._q(
            "SELECT w.name, w.description, (SELECT COUNT(*) FROM persons p WHERE p.watchlist=w.name), w.created "
            "FROM watchlists w WHERE w.name=?", (name,))
        if not rows:
            raise NotFoundError(f"watchlist {name!r} not found")
        return Watchlist(*rows[0])

    def list_watchlists(self) -> list[Watchlist]:
        rows = self._q(
            "SELECT w.name, w.description, (SELECT COUNT(*) FROM persons p WHERE p.watchlist=w.name), w.created "
            "FROM watchlists w ORDER BY w.name")
        return [Watchlist(*r) for r in rows]

    def upsert_person(self, person: Person, embeddings: np.ndarray, model: str, replace: bool = False) -> list[int]:
        """Create or update a person and add templates in one transaction; returns new template ids.

        With replace=True the person's old templates are deleted first (their ids are returned by
        `removed_templates` through the gallery, which drops them from the index)."""
        emb = np.ascontiguousarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise InvalidArgumentError("at least one embedding is needed")
        now = time.time()
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM watchlists WHERE name=?", (person.watchlist,)).fetchone():
                raise NotFoundError(f"watchlist {person.watchlist!r} not found; create it first")
            row = db.execute("SELECT created FROM persons WHERE watchlist=? AND person_id=?",
                             (person.watchlist, person.person_id)).fetchone()
            meta = json.dumps(person.metadata, sort_keys=True)
            if row:
                db.execute("UPDATE persons SET display_name=?, metadata=?, updated=? WHERE watchlist=? AND person_id=?",
                           (person.display_name, meta, now, person.watchlist, person.person_id))
                if replace:
                    db.execute("DELETE FROM templates WHERE watchlist=? AND person_id=?",
                               (person.watchlist, person.person_id))
            else:
                db.execute("INSERT INTO persons VALUES (?, ?, ?, ?, ?, ?)",
                           (person.watchlist, person.person_id, person.display_name, meta, now, now))
            ids = []
            for vec in emb:
                cur = db.execute(
                    "INSERT INTO templates (watchlist, person_id, model, dim, embedding, created) VALUES (?,?,?,?,?,?)",
                    (person.watchlist, person.person_id, model, emb.shape[1], vec.tobytes(), now))
                ids.append(int(cur.lastrowid or 0))
            self._bump(db, [(person.watchlist, person.person_id)])
        if replace:
            self._checkpoint()
        return ids

    def set_person_photo(self, watchlist: str, person_id: str, jpeg: bytes) -> None:
        """Store the face photo shown next to live thumbnails; erased with the person (cascade)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO person_photos VALUES (?, ?, ?, ?)",
                       (watchlist, person_id, jpeg, time.time()))

    def get_person_photo(self, watchlist: str, person_id: str) -> bytes:
        rows = self._q("SELECT jpeg FROM person_photos WHERE watchlist=? AND person_id=?", (watchlist, person_id))
        if not rows:
            self.get_person(watchlist, person_id)  # NOT_FOUND names the person when they do not exist
            raise NotFoundError(f"person {person_id!r} in watchlist {watchlist!r} has no photo "
                                "(enrolled before photos were kept; re-enrol with replace to add one)")
        return bytes(rows[0][0])

    def template_ids(self, watchlist: str, person_id: str) -> list[int]:
        return [r[0] for r in self._q("SELECT id FROM templates WHERE watchlist=? AND person_id=?",
                                      (watchlist, person_id))]

    def remove_person(self, watchlist: str, person_id: str) -> list[int]:
        """Delete a person and all their templates; returns the template ids removed."""
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM persons WHERE watchlist=? AND person_id=?",
                              (watchlist, person_id)).fetchone():
                raise NotFoundError(f"person {person_id!r} not found in watchlist {watchlist!r}")
            ids = [r[0] for r in db.execute("SELECT id FROM templates WHERE watchlist=? AND person_id=?",
                                            (watchlist, person_id))]
            db.execute("DELETE FROM templates WHERE watchlist=? AND person_id=?", (watchlist, person_id))
            db.execute("DELETE FROM persons WHERE watchlist=? AND person_id=?", (watchlist, person_id))
            self._bump(db, [(watchlist, person_id)])
        self._checkpoint()
        return ids

    def get_person(self, watchlist: str, person_id: str) -> Person:
        rows = self._q(
            "SELECT p.watchlist, p.person_id, p.display_name, p.metadata, "
            "(SELECT COUNT(*) FROM templates t WHERE t.watchlist=p.watchlist AND t.person_id=p.person_id), "
            "p.created, p.updated FROM persons p WHERE p.watchlist=? AND p.person_id=?", (watchlist, person_id))
        if not rows:
            raise NotFoundError(f"person {person_id!r} not found in watchlist {watchlist!r}")
        return _person(rows[0])

    def list_persons(self, watchlist: str, limit: int = 100, after: str = "") -> list[Person]:
        self.get_watchlist(watchlist)
        rows = self._q(
            "SELECT p.watchlist, p.person_id, p.display_name, p.metadata, "
            "(SELECT COUNT(*) FROM templates t WHERE t.watchlist=p.watchlist AND t.person_id=p.person_id), "
            "p.created, p.updated FROM persons p WHERE p.watchlist=? AND p.person_id > ? "
            "ORDER BY p.person_id LIMIT ?", (watchlist, after, limit))
        return [_person(r) for r in rows]

    def templates(self, model: str) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
        """All templates of one embedding model: ids (N,), vectors (N, D), (watchlist, person, name) rows."""
        rows = self._q(
            "SELECT t.id, t.embedding, t.dim, t.watchlist, t.person_id, p.display_name FROM templates t "
            "JOIN persons p ON p.watchlist=t.watchlist AND p.person_id=t.person_id WHERE t.model=? ORDER BY t.id",
            (model,))
        return _templates(rows)

    def template_models(self) -> dict[str, int]:
        return {m: n for m, n in self._q("SELECT model, COUNT(*) FROM templates GROUP BY model")}

    # ---- events --------------------------------------------------------------------------------
    @staticmethod
    def _next_change(db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='event_change_seq'")
        return int(db.execute("SELECT value FROM meta WHERE key='event_change_seq'").fetchone()[0])

    def add_event(self, event: MatchEvent) -> None:
        e = event
        now = time.time()
        e.created = e.created or now
        e.updated = now
        with self._tx() as db:
            try:
                db.execute(
                    "INSERT INTO events (event_id, camera_id, ts, watchlist, person_id, display_name, score, box, "
                    "track_id, frame_seq, thumbnail, created, updated, change_seq) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (e.event_id, e.camera_id, e.timestamp, e.watchlist, e.person_id, e.display_name, e.score,
                     json.dumps([float(v) for v in e.box]), e.track_id, e.frame_seq, e.thumbnail, e.created,
                     e.updated, self._next_change(db)))
            except sqlite3.IntegrityError as exc:
                raise AlreadyExistsError(f"event {e.event_id} already exists") from exc

    def update_event(self, event: MatchEvent) -> None:
        e = event
        e.updated = time.time()
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM events WHERE event_id=?", (e.event_id,)).fetchone():
                raise NotFoundError(f"event {e.event_id} not found")
            db.execute("UPDATE events SET score=?, box=?, thumbnail=?, ts=?, frame_seq=?, updated=?, change_seq=? "
                       "WHERE event_id=?",
                       (e.score, json.dumps([float(v) for v in e.box]), e.thumbnail, e.timestamp,
                        e.frame_seq, e.updated, self._next_change(db), e.event_id))

    def get_event(self, event_id: str) -> MatchEvent:
        rows = self._q(f"SELECT {_EVENT_COLS} FROM events WHERE event_id=?", (event_id,))
        if not rows:
            raise NotFoundError(f"event {event_id} not found")
        return _event(rows[0])

    def query_events(self, q: EventQuery) -> tuple[list[MatchEvent], str]:
        """Newest first; the page token is the last row's sequence number."""
        where, args = ["1=1"], []
        for col, val in (("camera_id", q.camera_id), ("watchlist", q.watchlist), ("person_id", q.person_id)):
            if val:
                where.append(f"{col}=?")
                args.append(val)
        if q.since:
            where.append("ts>=?")
            args.append(q.since)
        if q.until:
            where.append("ts<?")
            args.append(q.until)
        if q.min_score:
            where.append("score>=?")
            args.append(q.min_score)
        if q.page_token:
            try:
                where.append("seq<?")
                args.append(int(q.page_token))
            except ValueError as exc:
                raise InvalidArgumentError(f"invalid page token {q.page_token!r}") from exc
        size = max(1, min(q.page_size or 100, 1000))
        rows = self._q(f"SELECT {_EVENT_COLS}, seq FROM events WHERE {' AND '.join(where)} "
                       "ORDER BY seq DESC LIMIT ?", (*args, size + 1))
        more = len(rows) > size
        rows = rows[:size]
        return [_event(r[:-1]) for r in rows], (str(rows[-1][-1]) if more and rows else "")

    def acknowledge_event(self, event_id: str, action: str, note: str, actor: str) -> MatchEvent:
        """Record an operator's decision on an alert (the latest decision wins; each is audited by
        the service). `updated` is left alone: an acknowledgement is not a new or better match."""
        if action not in ACK_ACTIONS:
            raise InvalidArgumentError(f"action {action!r} unknown; use ack or dismiss")
        if len(note) > 1000:
            raise InvalidArgumentError(f"note is {len(note)} characters; at most 1000")
        with self._tx() as db:
            cur = db.execute("UPDATE events SET ack_action=?, ack_note=?, ack_by=?, ack_time=? WHERE event_id=?",
                             (action, note, actor, time.time(), event_id))
            if cur.rowcount == 0:
                raise NotFoundError(f"event {event_id!r} not found (purged, erased or never stored)")
        return self.get_event(event_id)

    def event_change_head(self) -> int:
        return int(self._q("SELECT value FROM meta WHERE key='event_change_seq'")[0][0])

    def event_changes_since(self, after_seq: int, limit: int = 500) -> tuple[list[MatchEvent], int]:
        rows = self._q(f"SELECT {_EVENT_COLS}, change_seq FROM events WHERE change_seq>? ORDER BY change_seq "
                       "LIMIT ?", (after_seq, max(1, limit)))
        return [_event(r[:-1]) for r in rows], (int(rows[-1][-1]) if rows else after_seq)

    def purge_events(self, before: float) -> int:
        with self._tx() as db:
            n = db.execute("DELETE FROM events WHERE ts<?", (before,)).rowcount
        if n:
            self._checkpoint()
        return n

    def erase_person_events(self, watchlist: str, person_id: str) -> int:
        with self._tx() as db:
            n = db.execute("DELETE FROM events WHERE watchlist=? AND person_id=?", (watchlist, person_id)).rowcount
        self._checkpoint()
        return n

    # ---- audit ---------------------------------------------------------------------------------
    def audit(self, actor: str, role: str, action: str, target: str, result: str, detail: str = "") -> None:
        with self._tx() as db:
            db.execute("INSERT INTO audit (ts, actor, role, action, target, result, detail) VALUES (?,?,?,?,?,?,?)",
                       (time.time(), actor, role, action, target, result, detail))

    def query_audit(self, since: float = 0.0, limit: int = 100, after_id: int = 0,
                    action: str = "") -> list[dict[str, Any]]:
        sql = "SELECT id, ts, actor, role, action, target, result, detail FROM audit WHERE ts>=? AND id>?"
        args: list[Any] = [since, after_id]
        if action:
            sql += " AND action=?"
            args.append(action)
        rows = self._q(sql + " ORDER BY id LIMIT ?", (*args, limit))
        keys = ("id", "ts", "actor", "role", "action", "target", "result", "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # ---- API tokens (only SHA-256 hashes are stored) -------------------------------------------
    def create_token(self, name: str, role: str, token_hash: str) -> float:
        """Store a new active token; a name may be reused once its previous token is revoked."""
        if not name or len(name) > 128:
            raise InvalidArgumentError("token name must be 1-128 characters")
        now = time.time()
        with self._tx() as db:
            try:
                db.execute("INSERT INTO tokens (name, role, hash, created) VALUES (?, ?, ?, ?)",
                           (name, role, token_hash, now))
            except sqlite3.IntegrityError as exc:
                raise AlreadyExistsError(f"an active token named {name!r} already exists; revoke it first") from exc
        return now

    def token_by_hash(self, token_hash: str) -> tuple[str, str] | None:
        """(name, role) of the active token with this hash, or None (unknown or revoked)."""
        rows = self._q("SELECT name, role FROM tokens WHERE hash=? AND revoked IS NULL", (token_hash,))
        return (rows[0][0], rows[0][1]) if rows else None

    def list_tokens(self) -> list[dict[str, Any]]:
        rows = self._q("SELECT name, role, created, revoked FROM tokens ORDER BY id")
        return [{"name": n, "role": r, "created": c, "revoked": v or 0.0} for n, r, c, v in rows]

    def revoke_token(self, name: str) -> dict[str, Any]:
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT id, role, created FROM tokens WHERE name=? AND revoked IS NULL",
                             (name,)).fetchone()
            if not row:
                raise NotFoundError(f"no active token named {name!r}")
            db.execute("UPDATE tokens SET revoked=? WHERE id=?", (now, row[0]))
        return {"name": name, "role": row[1], "created": row[2], "revoked": now}

    # ---- consistency and erasure ---------------------------------------------------------------
    def repair(self) -> dict[str, int]:
        """Start-up check: drop templates whose person is gone and persons left with no template.

        Neither can come from this store's transactions; they appear only if the file was edited
        with foreign keys off or by an older writer. Returns the counts removed."""
        with self._tx() as db:
            orphans = db.execute(
                "DELETE FROM templates WHERE NOT EXISTS (SELECT 1 FROM persons p WHERE "
                "p.watchlist=templates.watchlist AND p.person_id=templates.person_id)").rowcount
            empty = db.execute(
                "DELETE FROM persons WHERE NOT EXISTS (SELECT 1 FROM templates t WHERE "
                "t.watchlist=persons.watchlist AND t.person_id=persons.person_id)").rowcount
            lost = db.execute("DELETE FROM persons WHERE NOT EXISTS (SELECT 1 FROM watchlists w "
                              "WHERE w.name=persons.watchlist)").rowcount
            if orphans or empty or lost:  # which persons changed is not logged: replicas rebuild
                version = self._bump(db)
                db.execute("UPDATE meta SET value=? WHERE key='gallery_log_floor'", (str(version),))
        return {"orphan_templates": orphans, "empty_persons": empty, "persons_without_watchlist": lost}

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it, so erased rows leave no copy in the WAL."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    # ---- pull cameras --------------------------------------------------------------------------
    def save_camera(self, camera_id: str, uri: str, options: dict[str, str]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO cameras VALUES (?, ?, ?, ?)",
                       (camera_id, uri, json.dumps(options), time.time()))

    def delete_camera(self, camera_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM cameras WHERE camera_id=?", (camera_id,))

    def list_camera_defs(self) -> list[tuple[str, str, dict[str, str]]]:
        return [(c, u, json.loads(o)) for c, u, o in self._q("SELECT camera_id, uri, options FROM cameras")]


_EVENT_COLS = ("event_id, camera_id, ts, watchlist, person_id, display_name, score, box, track_id, frame_seq, "
               "thumbnail, created, updated, ack_action, ack_note, ack_by, ack_time")


def _event(r: tuple[Any, ...]) -> MatchEvent:
    return MatchEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(json.loads(r[7])), r[8], r[9],
                      r[10] or b"", r[11], r[12], r[13], r[14], r[15], r[16])


def _person(r: tuple[Any, ...]) -> Person:
    return Person(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6])


class _Tx:
    """`with store._tx() as db:` runs the block in one IMMEDIATE transaction under the store lock
    (`_read()`: a deferred one, a consistent snapshot for several reads)."""

    def __init__(self, store: SQLiteStore, begin: str = "BEGIN IMMEDIATE") -> None:
        self.store = store
        self.begin = begin

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        try:
            self.store._db.execute(self.begin)
        except BaseException:
            self.store._lock.release()
            raise
        return self.store._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        store, db = self.store, self.store._db
        try:
            if exc_type is None:
                try:
                    db.execute("COMMIT")
                    store.storage_error = ""
                    return
                except sqlite3.OperationalError as err:
                    exc = err
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    if not _is_full(err):
                        raise
            elif db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _is_full(exc):
                raise store._full(exc) from exc
        finally:
            store._lock.release()


class _Probe(Exception):
    """Rolls back `probe_write`'s transaction."""


def _is_full(exc: BaseException) -> bool:
    """SQLITE_FULL: 'database or disk is full' (a full disk, or PRAGMA max_page_count reached)."""
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "database or disk is full" in str(exc)


def damaged(path: str, exc: BaseException) -> StoreDamagedError:
    """The error for a database file SQLite cannot read, saying what to do about it."""
    return StoreDamagedError(
        f"the database {path} is damaged ({exc}): stop every process using it, restore it from a backup "
        f"(the file and its -wal), and run `faceengine store check --db {path}` to see what is wrong")
