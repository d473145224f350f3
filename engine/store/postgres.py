"""PostgreSQL implementation of every store role (`store.url = postgresql://...`), for several
engine processes on several machines sharing one gallery, event history, audit log and tokens.

psycopg 3 with a connection pool. Each change is one transaction committed with the server's
default synchronous_commit=on, so an acknowledged enrolment or event survives a crash, as with
SQLite. Gallery writes and event writes each take one counter row lock (`meta`), so the gallery
version and the event change sequence grow in commit order: a reader that saw sequence N never
later finds a change numbered below N. The audit table refuses UPDATE, DELETE and TRUNCATE by
trigger. The schema is versioned (`schema_version` table), migrated at start under an advisory
lock, and a database from a newer engine is refused, never rewritten. Changes are announced with
NOTIFY on the `faceengine_changes` channel (`subscribe_changes`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
from psycopg import errors as pgerr
from psycopg_pool import ConnectionPool

from engine.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    StoreSchemaError,
    StoreUnavailableError,
)
from engine.store import redact
from engine.store.base import ChangeCallback, EventQuery, GalleryDelta, MatchEvent, Person, Watchlist
from engine.store.integrity import templates_from_rows as _templates

log = logging.getLogger(__name__)

CHANNEL = "faceengine_changes"
GALLERY_LOG_KEEP = 10_000  # gallery versions of change log kept; a replica further behind rebuilds
_MIGRATION_LOCK = 0x6661636565  # pg_advisory_xact_lock key: one process migrates at a time

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta VALUES ('gallery_version', 0), ('gallery_log_floor', 0), ('event_change_seq', 0);
CREATE TABLE watchlists (name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '',
    created DOUBLE PRECISION NOT NULL);
CREATE TABLE persons (
    watchlist TEXT NOT NULL REFERENCES watchlists(name) ON DELETE CASCADE,
    person_id TEXT NOT NULL, display_name TEXT NOT NULL DEFAULT '', metadata TEXT NOT NULL DEFAULT '{}',
    created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (watchlist, person_id));
CREATE TABLE templates (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, watchlist TEXT NOT NULL, person_id TEXT NOT NULL,
    model TEXT NOT NULL, dim INTEGER NOT NULL, embedding BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL,
    FOREIGN KEY (watchlist, person_id) REFERENCES persons(watchlist, person_id) ON DELETE CASCADE);
CREATE INDEX templates_person ON templates(watchlist, person_id);
CREATE INDEX templates_model ON templates(model, id);
CREATE TABLE gallery_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, version BIGINT NOT NULL, watchlist TEXT NOT NULL,
    person_id TEXT NOT NULL);
CREATE INDEX gallery_log_version ON gallery_log(version);
CREATE TABLE events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id TEXT UNIQUE NOT NULL, camera_id TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, watchlist TEXT NOT NULL, person_id TEXT NOT NULL, display_name TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL, box TEXT NOT NULL, track_id BIGINT NOT NULL, frame_seq BIGINT NOT NULL,
    thumbnail BYTEA, created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL,
    change_seq BIGINT NOT NULL);
CREATE INDEX events_ts ON events(ts);
CREATE INDEX events_person ON events(watchlist, person_id, ts);
CREATE INDEX events_camera ON events(camera_id, ts);
CREATE INDEX events_change ON events(change_seq);
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL,
    role TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, result TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '');
CREATE INDEX audit_ts ON audit(ts);
CREATE FUNCTION faceengine_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit log is append-only'; END $$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION faceengine_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION faceengine_audit_append_only();
CREATE TABLE cameras (camera_id TEXT PRIMARY KEY, uri TEXT NOT NULL, options TEXT NOT NULL DEFAULT '{}',
    created DOUBLE PRECISION NOT NULL);
CREATE TABLE tokens (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
    hash TEXT UNIQUE NOT NULL, created DOUBLE PRECISION NOT NULL, revoked DOUBLE PRECISION);
CREATE UNIQUE INDEX tokens_active_name ON tokens(name) WHERE revoked IS NULL;
""",
    2: """
ALTER TABLE events ADD COLUMN ack_action TEXT NOT NULL DEFAULT '', ADD COLUMN ack_note TEXT NOT NULL DEFAULT '',
    ADD COLUMN ack_by TEXT NOT NULL DEFAULT '', ADD COLUMN ack_time DOUBLE PRECISION NOT NULL DEFAULT 0;
CREATE TABLE person_photos (
    watchlist TEXT NOT NULL, person_id TEXT NOT NULL, jpeg BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (watchlist, person_id),
    FOREIGN KEY (watchlist, person_id) REFERENCES persons(watchlist, person_id) ON DELETE CASCADE);
""",
}
SCHEMA_VERSION = max(MIGRATIONS)

_EVENT_INSERT_COLS = ("event_id, camera_id, ts, watchlist, person_id, display_name, score, box, track_id, "
                      "frame_seq, thumbnail, created, updated")
_EVENT_COLS = _EVENT_INSERT_COLS + ", ack_action, ack_note, ack_by, ack_time"
ACK_ACTIONS = ("ack", "dismiss")
_TEMPLATE_COLS = "t.id, t.embedding, t.dim, t.watchlist, t.person_id, p.display_name"


class PostgresStore:
    """Every store role on one PostgreSQL database (thread-safe; any number of processes)."""

    def __init__(self, url: str, pool_size: int = 8, connect_timeout_s: float = 5.0) -> None:
        self._conninfo = url
        self.url = redact(url)
        try:  # one direct connection first: a wrong URL fails now, with the server's own reason
            with psycopg.connect(url, connect_timeout=max(1, int(connect_timeout_s))) as con:
                self._migrate(con)
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(f"cannot connect to PostgreSQL store {self.url}: "
                                        f"{str(exc).strip().replace(url, self.url)}") from exc
        except psycopg.ProgrammingError as exc:  # malformed URL
            raise StoreUnavailableError(f"invalid PostgreSQL URL {self.url}: {exc}") from exc
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, timeout=30, open=True,
                                    kwargs={"connect_timeout": max(1, int(connect_timeout_s))},
                                    check=ConnectionPool.check_connection,  # drop connections a restart broke
                                    name="faceengine-store")
        self._listeners: list[ChangeCallback] = []
        self._listen_lock = threading.Lock()
        self._listen_stop = threading.Event()
        self._listen_thread: threading.Thread | None = None
        self._listening = threading.Event()

    # ---- lifecycle -----------------------------------------------------------------------------
    def _migrate(self, con: psycopg.Connection[Any]) -> None:
        """Apply missing schema versions in one transaction; refuse a schema newer than this code."""
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, "
                        "applied DOUBLE PRECISION NOT NULL)")
            row = con.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            have = int(row[0]) if row else 0
            if have > SCHEMA_VERSION:
                raise StoreSchemaError(
                    f"PostgreSQL store {self.url}: schema version {have} was written by a newer faceengine "
                    f"(this one knows {SCHEMA_VERSION}); upgrade faceengine or use another database")
            for version in range(have + 1, SCHEMA_VERSION + 1):
                con.execute(MIGRATIONS[version])  # type: ignore[arg-type]
                con.execute("INSERT INTO schema_version VALUES (%s, %s)", (version, time.time()))
                log.info("store %s: schema migrated to version %d", self.url, version)

    def close(self) -> None:
        self._listen_stop.set()
        if self._listen_thread is not None:
            self._listen_thread.join(timeout=5)
        self._pool.close()

    def health(self) -> str:
        try:
            with self._pool.connection(timeout=2) as con:
                con.execute("SELECT 1")
            return ""
        except Exception as exc:  # any failure to answer means "not serving"
            return f"PostgreSQL store {self.url} does not answer: {str(exc).strip() or type(exc).__name__}"

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as con:
            return con.execute(sql, args).fetchall()  # type: ignore[arg-type]

    def _tx(self) -> _PgTx:
        return _PgTx(self._pool)

    # ---- change notification -------------------------------------------------------------------
    def subscribe_changes(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback("gallery")` / `callback("events")` on every committed change by any process
        (LISTEN/NOTIFY on a dedicated connection, reconnecting if the server restarts)."""
        with self._listen_lock:
            self._listeners.append(callback)
            if self._listen_thread is None:
                self._listen_thread = threading.Thread(target=self._listen, name="store-listen", daemon=True)
                self._listen_thread.start()
        self._listening.wait(5.0)  # changes committed after we return are announced

        def unsubscribe() -> None:
            with self._listen_lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)
        return unsubscribe

    def _listen(self) -> None:
        while not self._listen_stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as con:
                    con.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    self._fire("reconnect")  # changes during a gap were not announced: catch up
                    while not self._listen_stop.is_set():
                        for note in con.notifies(timeout=0.5, stop_after=64):
                            self._fire(note.payload)
            except Exception:  # server restart or network loss: retry
                self._listening.clear()
                log.debug("store listener lost its connection", exc_info=True)
                self._listen_stop.wait(1.0)

    def _fire(self, what: str) -> None:
        with self._listen_lock:
            listeners = list(self._listeners)
        for cb in listeners:
            try:
                cb(what)
            except Exception:  # one listener's failure must not stop the others
                log.exception("store change listener failed")

    # ---- gallery -------------------------------------------------------------------------------
    def gallery_version(self) -> int:
        return int(self._q("SELECT value FROM meta WHERE key='gallery_version'")[0][0])

    def _bump(self, con: psycopg.Connection[Any], persons: list[tuple[str, str]] | None = None) -> int:
        """Move the gallery version (row lock held to commit: writers serialise, versions follow commit
        order), log the persons this change touched and announce it."""
        row = con.execute("UPDATE meta SET value = value + 1 WHERE key='gallery_version' RETURNING value").fetchone()
        version = int(row[0]) if row else 0
        if persons:
            with con.cursor() as cur:
                cur.executemany("INSERT INTO gallery_log (version, watchlist, person_id) VALUES (%s, %s, %s)",
                                [(version, w, p) for w, p in persons])
        if version % 1000 == 0 and version > GALLERY_LOG_KEEP:
            floor = version - GALLERY_LOG_KEEP
            con.execute("DELETE FROM gallery_log WHERE version <= %s", (floor,))
            con.execute("UPDATE meta SET value=%s WHERE key='gallery_log_floor'", (floor,))
        con.execute(f"NOTIFY {CHANNEL}, 'gallery'")
        return version

    def _lock_gallery(self, con: psycopg.Connection[Any]) -> None:
        """Take the gallery counter's row lock first, so concurrent gallery writers run one at a time."""
        con.execute("SELECT value FROM meta WHERE key='gallery_version' FOR UPDATE")

    def gallery_changes_since(self, version: int, model: str) -> GalleryDelta | None:
        with self._pool.connection() as con:
            with con.transaction():
                con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot for all reads
                meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                now, floor = int(meta["gallery_version"]), int(meta["gallery_log_floor"])
                if version < floor or version > now:
                    return None
                persons = con.execute("SELECT DISTINCT watchlist, person_id FROM gallery_log WHERE version > %s "
                                      "ORDER BY watchlist, person_id", (version,)).fetchall()
                rows = con.execute(
                    f"SELECT {_TEMPLATE_COLS} FROM templates t JOIN persons p ON p.watchlist=t.watchlist AND "
                    "p.person_id=t.person_id WHERE t.model=%s AND (t.watchlist, t.person_id) IN "
                    "(SELECT watchlist, person_id FROM gallery_log WHERE version > %s) ORDER BY t.id",
                    (model, version)).fetchall()
        ids, vecs, labels = _templates(rows)
        return GalleryDelta(now, [(w, p) for w, p in persons], ids, vecs, labels)

    def create_watchlist(self, name: str, description: str = "") -> Watchlist:
        if not name or len(name) > 128:
            raise InvalidArgumentError("watchlist name must be 1-128 characters")
        now = time.time()
        with self._tx() as con:
            self._lock_gallery(con)
            if con.execute("SELECT 1 FROM watchlists WHERE name=%s", (name,)).fetchone():
                raise AlreadyExistsError(f"watchlist {name!r} already exists")
            con.execute("INSERT INTO watchlists VALUES (%s, %s, %s)", (name, description, now))
            self._bump(con)
        return Watchlist(name, description, 0, now)

    def delete_watchlist(self, name: str) -> int:
        """Delete a watchlist with its persons and templates; returns the number of persons removed."""
        with self._tx() as con:
            self._lock_gallery(con)
            if not con.execute("SELECT 1 FROM watchlists WHERE name=%s", (name,)).fetchone():
                raise NotFoundError(f"watchlist {name!r} not found")
            persons = [(name, r[0]) for r in con.execute("SELECT person_id FROM persons WHERE watchlist=%s",
                                                          (name,)).fetchall()]
            con.execute("DELETE FROM templates WHERE watchlist=%s", (name,))
            con.execute("DELETE FROM persons WHERE watchlist=%s", (name,))
            con.execute("DELETE FROM watchlists WHERE name=%s", (name,))
            self._bump(con, persons)
        self._vacuum("templates", "persons", "person_photos")
        return len(persons)

    def get_watchlist(self, name: str) -> Watchlist:
        rows = self._q(
            "SELECT w.name, w.description, (SELECT COUNT(*) FROM persons p WHERE p.watchlist=w.name), w.created "
            "FROM watchlists w WHERE w.name=%s", (name,))
        if not rows:
            raise NotFoundError(f"watchlist {name!r} not found")
        return Watchlist(rows[0][0], rows[0][1], int(rows[0][2]), rows[0][3])

    def list_watchlists(self) -> list[Watchlist]:
        rows = self._q(
            "SELECT w.name, w.description, (SELECT COUNT(*) FROM persons p WHERE p.watchlist=w.name), w.created "
            "FROM watchlists w ORDER BY w.name COLLATE \"C\"")
        return [Watchlist(r[0], r[1], int(r[2]), r[3]) for r in rows]

    def upsert_person(self, person: Person, embeddings: np.ndarray, model: str, replace: bool = False) -> list[int]:
        """Create or update a person and add templates in one transaction; returns new template ids."""
        emb = np.ascontiguousarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise InvalidArgumentError("at least one embedding is needed")
        now = time.time()
        with self._tx() as con:
            self._lock_gallery(con)
            if not con.execute("SELECT 1 FROM watchlists WHERE name=%s", (person.watchlist,)).fetchone():
                raise NotFoundError(f"watchlist {person.watchlist!r} not found; create it first")
            key = (person.watchlist, person.person_id)
            meta = json.dumps(person.metadata, sort_keys=True)
            if con.execute("SELECT 1 FROM persons WHERE watchlist=%s AND person_id=%s", key).fetchone():
                con.execute("UPDATE persons SET display_name=%s, metadata=%s, updated=%s "
                            "WHERE watchlist=%s AND person_id=%s", (person.display_name, meta, now, *key))
                if replace:
                    con.execute("DELETE FROM templates WHERE watchlist=%s AND person_id=%s", key)
            else:
                con.execute("INSERT INTO persons VALUES (%s, %s, %s, %s, %s, %s)",
                            (*key, person.display_name, meta, now, now))
            ids = []
            for vec in emb:
                row = con.execute(
                    "INSERT INTO templates (watchlist, person_id, model, dim, embedding, created) "
                    "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                    (*key, model, emb.shape[1], vec.tobytes(), now)).fetchone()
                ids.append(int(row[0]) if row else 0)
            self._bump(con, [key])
        if replace:
            self._vacuum("templates")
        return ids

    def set_person_photo(self, watchlist: str, person_id: str, jpeg: bytes) -> None:
        """Store the face photo shown next to live thumbnails; erased with the person (cascade)."""
        with self._tx() as con:
            con.execute("INSERT INTO person_photos VALUES (%s, %s, %s, %s) ON CONFLICT (watchlist, person_id) "
                        "DO UPDATE SET jpeg=EXCLUDED.jpeg, created=EXCLUDED.created",
                        (watchlist, person_id, jpeg, time.time()))

    def get_person_photo(self, watchlist: str, person_id: str) -> bytes:
        rows = self._q("SELECT jpeg FROM person_photos WHERE watchlist=%s AND person_id=%s", (watchlist, person_id))
        if not rows:
            self.get_person(watchlist, person_id)  # NOT_FOUND names the person when they do not exist
            raise NotFoundError(f"person {person_id!r} in watchlist {watchlist!r} has no photo "
                                "(enrolled before photos were kept; re-enrol with replace to add one)")
        return bytes(rows[0][0])

    def template_ids(self, watchlist: str, person_id: str) -> list[int]:
        return [int(r[0]) for r in self._q("SELECT id FROM templates WHERE watchlist=%s AND person_id=%s "
                                           "ORDER BY id", (watchlist, person_id))]

    def remove_person(self, watchlist: str, person_id: str) -> list[int]:
        """Delete a person and all their templates; returns the template ids removed."""
        key = (watchlist, person_id)
        with self._tx() as con:
            self._lock_gallery(con)
            if not con.execute("SELECT 1 FROM persons WHERE watchlist=%s AND person_id=%s", key).fetchone():
                raise NotFoundError(f"person {person_id!r} not found in watchlist {watchlist!r}")
            ids = [int(r[0]) for r in con.execute("DELETE FROM templates WHERE watchlist=%s AND person_id=%s "
                                                  "RETURNING id", key).fetchall()]
            con.execute("DELETE FROM persons WHERE watchlist=%s AND person_id=%s", key)
            self._bump(con, [key])
        self._vacuum("templates", "persons", "person_photos")
        return sorted(ids)

    def get_person(self, watchlist: str, person_id: str) -> Person:
        rows = self._q(
            "SELECT p.watchlist, p.person_id, p.display_name, p.metadata, "
            "(SELECT COUNT(*) FROM templates t WHERE t.watchlist=p.watchlist AND t.person_id=p.person_id), "
            "p.created, p.updated FROM persons p WHERE p.watchlist=%s AND p.person_id=%s", (watchlist, person_id))
        if not rows:
            raise NotFoundError(f"person {person_id!r} not found in watchlist {watchlist!r}")
        return _person(rows[0])

    def list_persons(self, watchlist: str, limit: int = 100, after: str = "") -> list[Person]:
        self.get_watchlist(watchlist)
        rows = self._q(
            "SELECT p.watchlist, p.person_id, p.display_name, p.metadata, "
            "(SELECT COUNT(*) FROM templates t WHERE t.watchlist=p.watchlist AND t.person_id=p.person_id), "
            "p.created, p.updated FROM persons p WHERE p.watchlist=%s AND p.person_id COLLATE \"C\" > %s "
            "ORDER BY p.person_id COLLATE \"C\" LIMIT %s", (watchlist, after, limit))
        return [_person(r) for r in rows]

    def templates(self, model: str) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
        """All templates of one embedding model: ids (N,), vectors (N, D), (watchlist, person, name) rows."""
        rows = self._q(f"SELECT {_TEMPLATE_COLS} FROM templates t JOIN persons p ON p.watchlist=t.watchlist "
                       "AND p.person_id=t.person_id WHERE t.model=%s ORDER BY t.id", (model,))
        return _templates(rows)

    def template_models(self) -> dict[str, int]:
        return {m: int(n) for m, n in self._q("SELECT model, COUNT(*) FROM templates GROUP BY model")}

    # ---- events --------------------------------------------------------------------------------
    @staticmethod
    def _next_change(con: psycopg.Connection[Any]) -> int:
        """Next event change number; the row lock is held to commit, so numbers follow commit order."""
        row = con.execute("UPDATE meta SET value = value + 1 WHERE key='event_change_seq' RETURNING value").fetchone()
        con.execute(f"NOTIFY {CHANNEL}, 'events'")
        return int(row[0]) if row else 0

    def add_event(self, event: MatchEvent) -> None:
        e = event
        now = time.time()
        e.created = e.created or now
        e.updated = now
        with self._tx() as con:
            change = self._next_change(con)  # event writers queue here, so the check below is not racy
            if con.execute("SELECT 1 FROM events WHERE event_id=%s", (e.event_id,)).fetchone():
                raise AlreadyExistsError(f"event {e.event_id} already exists")
            con.execute(
                f"INSERT INTO events ({_EVENT_INSERT_COLS}, change_seq) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (e.event_id, e.camera_id, e.timestamp, e.watchlist, e.person_id, e.display_name, e.score,
                 json.dumps([float(v) for v in e.box]), e.track_id, e.frame_seq, e.thumbnail, e.created,
                 e.updated, change))

    def update_event(self, event: MatchEvent) -> None:
        e = event
        e.updated = time.time()
        with self._tx() as con:
            if not con.execute("SELECT 1 FROM events WHERE event_id=%s FOR UPDATE", (e.event_id,)).fetchone():
                raise NotFoundError(f"event {e.event_id} not found")
            con.execute("UPDATE events SET score=%s, box=%s, thumbnail=%s, ts=%s, frame_seq=%s, updated=%s, "
                        "change_seq=%s WHERE event_id=%s",
                        (e.score, json.dumps([float(v) for v in e.box]), e.thumbnail, e.timestamp, e.frame_seq,
                         e.updated, self._next_change(con), e.event_id))

    def get_event(self, event_id: str) -> MatchEvent:
        rows = self._q(f"SELECT {_EVENT_COLS} FROM events WHERE event_id=%s", (event_id,))
        if not rows:
            raise NotFoundError(f"event {event_id} not found")
        return _event(rows[0])

    def query_events(self, q: EventQuery) -> tuple[list[MatchEvent], str]:
        """Newest first; the page token is the last row's sequence number."""
        where, args = ["TRUE"], []
        for col, val in (("camera_id", q.camera_id), ("watchlist", q.watchlist), ("person_id", q.person_id)):
            if val:
                where.append(f"{col}=%s")
                args.append(val)
        if q.since:
            where.append("ts>=%s")
            args.append(q.since)
        if q.until:
            where.append("ts<%s")
            args.append(q.until)
        if q.min_score:
            where.append("score>=%s")
            args.append(q.min_score)
        if q.page_token:
            try:
                args.append(int(q.page_token))
            except ValueError as exc:
                raise InvalidArgumentError(f"invalid page token {q.page_token!r}") from exc
            where.append("seq<%s")
        size = max(1, min(q.page_size or 100, 1000))
        rows = self._q(f"SELECT {_EVENT_COLS}, seq FROM events WHERE {' AND '.join(where)} "
                       "ORDER BY seq DESC LIMIT %s", (*args, size + 1))
        more = len(rows) > size
        rows = rows[:size]
        return [_event(r[:-1]) for r in rows], (str(rows[-1][-1]) if more and rows else "")

    def acknowledge_event(self, event_id: str, action: str, note: str, actor: str) -> MatchEvent:
        """Record an operator's decision on an alert (the latest wins); `updated` and the change
        sequence stay as they are: an acknowledgement is not a new or better match."""
        if action not in ACK_ACTIONS:
            raise InvalidArgumentError(f"action {action!r} unknown; use ack or dismiss")
        if len(note) > 1000:
            raise InvalidArgumentError(f"note is {len(note)} characters; at most 1000")
        with self._tx() as con:
            cur = con.execute("UPDATE events SET ack_action=%s, ack_note=%s, ack_by=%s, ack_time=%s "
                              "WHERE event_id=%s", (action, note, actor, time.time(), event_id))
            if cur.rowcount == 0:
                raise NotFoundError(f"event {event_id!r} not found (purged, erased or never stored)")
        return self.get_event(event_id)

    def event_change_head(self) -> int:
        return int(self._q("SELECT value FROM meta WHERE key='event_change_seq'")[0][0])

    def event_changes_since(self, after_seq: int, limit: int = 500) -> tuple[list[MatchEvent], int]:
        rows = self._q(f"SELECT {_EVENT_COLS}, change_seq FROM events WHERE change_seq>%s ORDER BY change_seq "
                       "LIMIT %s", (after_seq, max(1, limit)))
        return [_event(r[:-1]) for r in rows], (int(rows[-1][-1]) if rows else after_seq)

    def purge_events(self, before: float) -> int:
        with self._tx() as con:
            n = con.execute("DELETE FROM events WHERE ts<%s", (before,)).rowcount
        if n:
            self._vacuum("events")
        return int(n)

    def erase_person_events(self, watchlist: str, person_id: str) -> int:
        with self._tx() as con:
            n = con.execute("DELETE FROM events WHERE watchlist=%s AND person_id=%s", (watchlist, person_id)).rowcount
        if n:
            self._vacuum("events")
        return int(n)

    def _vacuum(self, *tables: str) -> None:
        """Reclaim erased rows' space now, so dead tuples of erased templates/thumbnails are not kept
        until autovacuum gets round to them (best effort: a failure only delays it)."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as con:
                con.execute(f"VACUUM {', '.join(tables)}")
        except psycopg.Error:
            log.warning("store %s: VACUUM %s failed; autovacuum will reclaim the rows later", self.url,
                        ", ".join(tables), exc_info=True)

    # ---- audit ---------------------------------------------------------------------------------
    def audit(self, actor: str, role: str, action: str, target: str, result: str, detail: str = "") -> None:
        with self._tx() as con:
            con.execute("INSERT INTO audit (ts, actor, role, action, target, result, detail) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s)", (time.time(), actor, role, action, target, result,
                                                                detail))

    def query_audit(self, since: float = 0.0, limit: int = 100, after_id: int = 0,
                    action: str = "") -> list[dict[str, Any]]:
        sql = "SELECT id, ts, actor, role, action, target, result, detail FROM audit WHERE ts>=%s AND id>%s"
        args: list[Any] = [since, after_id]
        if action:
            sql += " AND action=%s"
            args.append(action)
        rows = self._q(sql + " ORDER BY id LIMIT %s", (*args, limit))
        keys = ("id", "ts", "actor", "role", "action", "target", "result", "detail")
        return [dict(zip(keys, (int(r[0]), *r[1:]), strict=True)) for r in rows]

    # ---- API tokens (only SHA-256 hashes are stored) -------------------------------------------
    def create_token(self, name: str, role: str, token_hash: str) -> float:
        if not name or len(name) > 128:
            raise InvalidArgumentError("token name must be 1-128 characters")
        now = time.time()
        try:
            with self._tx() as con:
                con.execute("INSERT INTO tokens (name, role, hash, created) VALUES (%s, %s, %s, %s)",
                            (name, role, token_hash, now))
        except pgerr.UniqueViolation as exc:
            raise AlreadyExistsError(f"an active token named {name!r} already exists; revoke it first") from exc
        return now

    def token_by_hash(self, token_hash: str) -> tuple[str, str] | None:
        rows = self._q("SELECT name, role FROM tokens WHERE hash=%s AND revoked IS NULL", (token_hash,))
        return (rows[0][0], rows[0][1]) if rows else None

    def list_tokens(self) -> list[dict[str, Any]]:
        rows = self._q("SELECT name, role, created, revoked FROM tokens ORDER BY id")
        return [{"name": n, "role": r, "created": c, "revoked": v or 0.0} for n, r, c, v in rows]

    def revoke_token(self, name: str) -> dict[str, Any]:
        now = time.time()
        with self._tx() as con:
            row = con.execute("SELECT id, role, created FROM tokens WHERE name=%s AND revoked IS NULL FOR UPDATE",
                              (name,)).fetchone()
            if not row:
                raise NotFoundError(f"no active token named {name!r}")
            con.execute("UPDATE tokens SET revoked=%s WHERE id=%s", (now, row[0]))
        return {"name": name, "role": row[1], "created": row[2], "revoked": now}

    # ---- consistency ---------------------------------------------------------------------------
    def repair(self) -> dict[str, int]:
        """Start-up check: drop templates without a person and persons without templates (foreign
        keys make the first impossible here; the second can come from a hand edit)."""
        with self._tx() as con:
            self._lock_gallery(con)
            orphans = con.execute(
                "DELETE FROM templates t WHERE NOT EXISTS (SELECT 1 FROM persons p WHERE "
                "p.watchlist=t.watchlist AND p.person_id=t.person_id)").rowcount
            empty = con.execute(
                "DELETE FROM persons p WHERE NOT EXISTS (SELECT 1 FROM templates t WHERE "
                "t.watchlist=p.watchlist AND t.person_id=p.person_id)").rowcount
            lost = con.execute("DELETE FROM persons p WHERE NOT EXISTS (SELECT 1 FROM watchlists w "
                               "WHERE w.name=p.watchlist)").rowcount
            if orphans or empty or lost:  # which persons changed is not logged: replicas rebuild
                version = self._bump(con)
                con.execute("UPDATE meta SET value=%s WHERE key='gallery_log_floor'", (version,))
        return {"orphan_templates": int(orphans), "empty_persons": int(empty), "persons_without_watchlist": int(lost)}

    # ---- pull cameras --------------------------------------------------------------------------
    def save_camera(self, camera_id: str, uri: str, options: dict[str, str]) -> None:
        with self._tx() as con:
            con.execute("INSERT INTO cameras VALUES (%s, %s, %s, %s) ON CONFLICT (camera_id) DO UPDATE SET "
                        "uri=EXCLUDED.uri, options=EXCLUDED.options, created=EXCLUDED.created",
                        (camera_id, uri, json.dumps(options), time.time()))

    def delete_camera(self, camera_id: str) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM cameras WHERE camera_id=%s", (camera_id,))

    def list_camera_defs(self) -> list[tuple[str, str, dict[str, str]]]:
        return [(c, u, json.loads(o)) for c, u, o in
                self._q("SELECT camera_id, uri, options FROM cameras ORDER BY created, camera_id")]


def _event(r: tuple[Any, ...]) -> MatchEvent:
    return MatchEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(json.loads(r[7])), int(r[8]), int(r[9]),
                      bytes(r[10]) if r[10] is not None else b"", r[11], r[12], r[13], r[14], r[15], r[16])


def _person(r: tuple[Any, ...]) -> Person:
    return Person(r[0], r[1], r[2], json.loads(r[3]), int(r[4]), r[5], r[6])


class _PgTx:
    """`with store._tx() as con:` runs the block in one transaction on a pooled connection."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def __enter__(self) -> psycopg.Connection[Any]:
        self._cm = self.pool.connection()
        self.con = self._cm.__enter__()
        self._tx = self.con.transaction()
        self._tx.__enter__()
        return self.con

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._tx.__exit__(exc_type, exc, tb)
        finally:
            self._cm.__exit__(exc_type, exc, tb)
