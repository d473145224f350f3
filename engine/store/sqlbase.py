"""The store logic SQLite and PostgreSQL share: one owner for the SQL and checks that are the same
in both dialects (`SQLStore`), with the dialect's differences as small hooks.

Shared SQL is written with `?` placeholders (no `?` inside string literals) and passes through
`_sql`, which gives the dialect's style. A dialect module subclasses `SQLStore` and provides:

- `_tx()`: a context manager running its block in one write transaction, committed (durably) on
  a clean exit before the call returns and rolled back on an exception; `_snapshot()`: one read
  transaction with a consistent snapshot; `_q(sql, args)`: one read outside a transaction, of
  shared SQL (`?` placeholders).
- `_incr(db, key)`: add one to a `meta` counter and return the new value, the counter staying
  locked to commit so numbers follow commit order; `_announce(db, what)`: tell other processes
  that "gallery" or "events" changed (at commit), or nothing where the dialect cannot.
- `_insert_id(db, sql, args)`: run an INSERT and return the new row's id; `_insert_ids(db, sql, rows)`:
  the same for many rows at once (by default one `_insert_id` a row).
- `_lock_gallery(db)`: serialise gallery writers before their first read (a no-op where the
  write transaction already does); `_erased(*tables)`: after rows were erased from `tables`, make
  sure no copy of them stays in the database's files.
- `_ph`, `_for_update`, `_collate_c`, `_unique_violation`: placeholder, row-lock clause, byte-order
  collation clause, and the driver's exception for a broken UNIQUE constraint.

Connection handling, migrations, change notification, health and erasure mechanics stay in the
dialect modules.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from engine.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, StoreDamagedError
from engine.store.base import EventQuery, GalleryDelta, MatchEvent, Person, Sighting, Watchlist, camera_options
from engine.store.integrity import templates_from_rows as _templates

GALLERY_LOG_KEEP = 10_000  # gallery versions of change log kept; a replica further behind rebuilds
ACK_ACTIONS = ("ack", "dismiss")

_EVENT_INSERT_COLS = ("event_id, camera_id, ts, watchlist, person_id, display_name, score, box, track_id, "
                      "frame_seq, thumbnail, created, updated")
_EVENT_COLS = _EVENT_INSERT_COLS + ", ack_action, ack_note, ack_by, ack_time"
_SIGHTING_COLS = ("id, camera_id, track_id, first_seen, last_seen, quality, box, model, dim, embedding, watchlist, "
                  "person_id, score, created")
_SIGHTING_INSERT = ("INSERT INTO sightings (camera_id, track_id, first_seen, last_seen, quality, box, model, dim, "
                    "embedding, thumbnail, watchlist, person_id, score, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_TEMPLATE_COLS = "t.id, t.embedding, t.dim, t.watchlist, t.person_id, p.display_name"
_PERSON_SELECT = ("SELECT p.watchlist, p.person_id, p.display_name, p.metadata, "
                  "(SELECT COUNT(*) FROM templates t WHERE t.watchlist=p.watchlist AND t.person_id=p.person_id), "
                  "p.created, p.updated FROM persons p ")
_WATCHLIST_SELECT = ("SELECT w.name, w.description, (SELECT COUNT(*) FROM persons p WHERE p.watchlist=w.name), "
                     "w.created FROM watchlists w ")

Conn = Any
"""A dialect's connection inside a transaction: `execute(sql, args)` returns a DB-API cursor."""


class SQLStore:
    """Every store role's SQL and checks, once for both dialects (see the module docstring for the
    hooks a subclass provides)."""

    url: str  # set by each dialect's constructor
    _ph = "?"
    _for_update = ""
    _collate_c = ""
    _unique_violation: type[Exception]

    # ---- hooks (each dialect overrides) ----------------------------------------------------------
    def _tx(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _snapshot(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _incr(self, db: Conn, key: str) -> int:
        raise NotImplementedError

    def _announce(self, db: Conn, what: str) -> None:
        """Tell other processes that `what` changed; by default nothing (they poll)."""

    def _insert_id(self, db: Conn, sql: str, args: tuple[Any, ...]) -> int:
        raise NotImplementedError

    def _insert_ids(self, db: Conn, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """Run one INSERT for many rows; returns their new ids in order (by default one call a row)."""
        return [self._insert_id(db, sql, r) for r in rows]

    def _lock_gallery(self, db: Conn) -> None:
        """Serialise gallery writers; by default nothing (the write transaction already does)."""

    def _erased(self, *tables: str) -> None:
        raise NotImplementedError

    # ---- helpers ---------------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        """Shared SQL (`?` placeholders) in this dialect's placeholder style."""
        return sql if self._ph == "?" else sql.replace("?", self._ph)

    def _x(self, db: Conn, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """Execute shared SQL on a transaction's connection; returns the cursor."""
        return db.execute(self._sql(sql), args)

    def _meta(self, db: Conn, key: str) -> int:
        return int(self._x(db, "SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    # ---- gallery ---------------------------------------------------------------------------------
    def gallery_version(self) -> int:
        return int(self._q("SELECT value FROM meta WHERE key='gallery_version'")[0][0])

    def _bump(self, db: Conn, persons: list[tuple[str, str]] | None = None) -> int:
        """Move the gallery version by one (in commit order), log the persons this change touched and
        announce it."""
        version = self._incr(db, "gallery_version")
        if persons:
            cur = db.cursor()
            try:
                cur.executemany(self._sql("INSERT INTO gallery_log (version, watchlist, person_id) VALUES (?, ?, ?)"),
                                [(version, w, p) for w, p in persons])
            finally:
                cur.close()
        if version % 1000 == 0 and version > GALLERY_LOG_KEEP:
            floor = version - GALLERY_LOG_KEEP
            self._x(db, "DELETE FROM gallery_log WHERE version <= ?", (floor,))
            self._x(db, "UPDATE meta SET value=? WHERE key='gallery_log_floor'", (floor,))
        self._announce(db, "gallery")
        return version

    def gallery_changes_since(self, version: int, model: str) -> GalleryDelta | None:
        with self._snapshot() as db:
            now, floor = self._meta(db, "gallery_version"), self._meta(db, "gallery_log_floor")
            if version < floor or version > now:
                return None
            persons = self._x(db, "SELECT DISTINCT watchlist, person_id FROM gallery_log WHERE version > ? "
                                  "ORDER BY watchlist, person_id", (version,)).fetchall()
            rows = self._x(
                db, f"SELECT {_TEMPLATE_COLS} FROM templates t JOIN persons p ON p.watchlist=t.watchlist AND "
                "p.person_id=t.person_id WHERE t.model=? AND (t.watchlist, t.person_id) IN "
                "(SELECT watchlist, person_id FROM gallery_log WHERE version > ?) ORDER BY t.id",
                (model, version)).fetchall()
        ids, vecs, labels = _templates(rows)
        return GalleryDelta(now, [(w, p) for w, p in persons], ids, vecs, labels)

    def create_watchlist(self, name: str, description: str = "") -> Watchlist:
        if not name or len(name) > 128:
            raise InvalidArgumentError("watchlist name must be 1-128 characters")
        now = time.time()
        with self._tx() as db:
            self._lock_gallery(db)
            if self._x(db, "SELECT 1 FROM watchlists WHERE name=?", (name,)).fetchone():
                raise AlreadyExistsError(f"watchlist {name!r} already exists")
            self._x(db, "INSERT INTO watchlists VALUES (?, ?, ?)", (name, description, now))
            self._bump(db)
        return Watchlist(name, description, 0, now)

    def delete_watchlist(self, name: str) -> int:
        """Delete a watchlist with its persons and templates; returns the number of persons removed."""
        with self._tx() as db:
            self._lock_gallery(db)
            if not self._x(db, "SELECT 1 FROM watchlists WHERE name=?", (name,)).fetchone():
                raise NotFoundError(f"watchlist {name!r} not found")
            persons = [(name, r[0]) for r in
                       self._x(db, "SELECT person_id FROM persons WHERE watchlist=?", (name,)).fetchall()]
            self._x(db, "DELETE FROM templates WHERE watchlist=?", (name,))
            self._x(db, "DELETE FROM persons WHERE watchlist=?", (name,))
            self._x(db, "DELETE FROM watchlists WHERE name=?", (name,))
            self._bump(db, persons)
        self._erased("templates", "persons", "person_photos")
        return len(persons)

    def get_watchlist(self, name: str) -> Watchlist:
        rows = self._q(_WATCHLIST_SELECT + "WHERE w.name=?", (name,))
        if not rows:
            raise NotFoundError(f"watchlist {name!r} not found")
        return _watchlist(rows[0])

    def list_watchlists(self) -> list[Watchlist]:
        return [_watchlist(r) for r in self._q(_WATCHLIST_SELECT + f"ORDER BY w.name{self._collate_c}")]

    def upsert_person(self, person: Person, embeddings: np.ndarray, model: str, replace: bool = False) -> list[int]:
        """Create or update a person and add templates in one transaction; returns new template ids.

        With replace=True the person's old templates are deleted first (their ids are returned by
        `removed_templates` through the gallery, which drops them from the index)."""
        emb = np.ascontiguousarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise InvalidArgumentError("at least one embedding is needed")
        now = time.time()
        key = (person.watchlist, person.person_id)
        with self._tx() as db:
            self._lock_gallery(db)
            if not self._x(db, "SELECT 1 FROM watchlists WHERE name=?", (person.watchlist,)).fetchone():
                raise NotFoundError(f"watchlist {person.watchlist!r} not found; create it first")
            meta = json.dumps(person.metadata, sort_keys=True)
            if self._x(db, "SELECT 1 FROM persons WHERE watchlist=? AND person_id=?", key).fetchone():
                self._x(db, "UPDATE persons SET display_name=?, metadata=?, updated=? WHERE watchlist=? AND "
                            "person_id=?", (person.display_name, meta, now, *key))
                if replace:
                    self._x(db, "DELETE FROM templates WHERE watchlist=? AND person_id=?", key)
            else:
                self._x(db, "INSERT INTO persons VALUES (?, ?, ?, ?, ?, ?)",
                        (*key, person.display_name, meta, now, now))
            ids = [self._insert_id(db, "INSERT INTO templates (watchlist, person_id, model, dim, embedding, created) "
                                       "VALUES (?, ?, ?, ?, ?, ?)", (*key, model, emb.shape[1], vec.tobytes(), now))
                   for vec in emb]
            self._bump(db, [key])
        if replace:
            self._erased("templates")
        return ids

    def set_person_photo(self, watchlist: str, person_id: str, jpeg: bytes) -> None:
        """Store the face photo shown next to live thumbnails; erased with the person (cascade)."""
        with self._tx() as db:
            self._x(db, "INSERT INTO person_photos VALUES (?, ?, ?, ?) ON CONFLICT (watchlist, person_id) "
                        "DO UPDATE SET jpeg=excluded.jpeg, created=excluded.created",
                    (watchlist, person_id, jpeg, time.time()))

    def get_person_photo(self, watchlist: str, person_id: str) -> bytes:
        rows = self._q("SELECT jpeg FROM person_photos WHERE watchlist=? AND person_id=?", (watchlist, person_id))
        if not rows:
            self.get_person(watchlist, person_id)  # NOT_FOUND names the person when they do not exist
            raise NotFoundError(f"person {person_id!r} in watchlist {watchlist!r} has no photo "
                                "(enrolled before photos were kept; re-enrol with replace to add one)")
        return bytes(rows[0][0])

    def template_ids(self, watchlist: str, person_id: str) -> list[int]:
        return [int(r[0]) for r in self._q("SELECT id FROM templates WHERE watchlist=? AND person_id=? ORDER BY id",
                                           (watchlist, person_id))]

    def remove_person(self, watchlist: str, person_id: str) -> list[int]:
        """Delete a person and all their templates; returns the template ids removed."""
        key = (watchlist, person_id)
        with self._tx() as db:
            self._lock_gallery(db)
            if not self._x(db, "SELECT 1 FROM persons WHERE watchlist=? AND person_id=?", key).fetchone():
                raise NotFoundError(f"person {person_id!r} not found in watchlist {watchlist!r}")
            ids = [int(r[0]) for r in self._x(db, "SELECT id FROM templates WHERE watchlist=? AND person_id=? "
                                                  "ORDER BY id", key).fetchall()]
            self._x(db, "DELETE FROM templates WHERE watchlist=? AND person_id=?", key)
            self._x(db, "DELETE FROM persons WHERE watchlist=? AND person_id=?", key)
            self._bump(db, [key])
        self._erased("templates", "persons", "person_photos")
        return ids

    def get_person(self, watchlist: str, person_id: str) -> Person:
        rows = self._q(_PERSON_SELECT + "WHERE p.watchlist=? AND p.person_id=?", (watchlist, person_id))
        if not rows:
            raise NotFoundError(f"person {person_id!r} not found in watchlist {watchlist!r}")
        return _person(rows[0])

    def list_persons(self, watchlist: str, limit: int = 100, after: str = "") -> list[Person]:
        self.get_watchlist(watchlist)
        c = self._collate_c
        rows = self._q(_PERSON_SELECT + f"WHERE p.watchlist=? AND p.person_id{c} > ? ORDER BY p.person_id{c} LIMIT ?",
                       (watchlist, after, limit))
        return [_person(r) for r in rows]

    def templates(self, model: str) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
        """All templates of one embedding model: ids (N,), vectors (N, D), (watchlist, person, name) rows."""
        rows = self._q(f"SELECT {_TEMPLATE_COLS} FROM templates t JOIN persons p ON p.watchlist=t.watchlist "
                       "AND p.person_id=t.person_id WHERE t.model=? ORDER BY t.id", (model,))
        return _templates(rows)

    def template_models(self) -> dict[str, int]:
        return {m: int(n) for m, n in self._q("SELECT model, COUNT(*) FROM templates GROUP BY model")}

    # ---- events ----------------------------------------------------------------------------------
    def _next_change(self, db: Conn) -> int:
        """Next event change number; the counter stays locked to commit, so numbers follow commit order."""
        change = self._incr(db, "event_change_seq")
        self._announce(db, "events")
        return change

    def add_event(self, event: MatchEvent) -> None:
        e = event
        now = time.time()
        e.created = e.created or now
        e.updated = now
        with self._tx() as db:
            change = self._next_change(db)  # event writers queue here, so the check below is not racy
            if self._x(db, "SELECT 1 FROM events WHERE event_id=?", (e.event_id,)).fetchone():
                raise AlreadyExistsError(f"event {e.event_id} already exists")
            self._x(db, f"INSERT INTO events ({_EVENT_INSERT_COLS}, change_seq) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.event_id, e.camera_id, e.timestamp, e.watchlist, e.person_id, e.display_name, e.score,
                     _box(e), e.track_id, e.frame_seq, e.thumbnail, e.created, e.updated, change))

    def update_event(self, event: MatchEvent) -> None:
        e = event
        e.updated = time.time()
        with self._tx() as db:
            if not self._x(db, f"SELECT 1 FROM events WHERE event_id=?{self._for_update}", (e.event_id,)).fetchone():
                raise NotFoundError(f"event {e.event_id} not found")
            self._x(db, "UPDATE events SET score=?, box=?, thumbnail=?, ts=?, frame_seq=?, updated=?, change_seq=? "
                        "WHERE event_id=?",
                    (e.score, _box(e), e.thumbnail, e.timestamp, e.frame_seq, e.updated, self._next_change(db),
                     e.event_id))

    def get_event(self, event_id: str) -> MatchEvent:
        rows = self._q(f"SELECT {_EVENT_COLS} FROM events WHERE event_id=?", (event_id,))
        if not rows:
            raise NotFoundError(f"event {event_id} not found")
        return _event(rows[0])

    def query_events(self, q: EventQuery) -> tuple[list[MatchEvent], str]:
        """Newest first; the page token is the last row's sequence number."""
        where: list[str] = ["1=1"]
        args: list[object] = []
        for col, val in (("camera_id", q.camera_id), ("watchlist", q.watchlist), ("person_id", q.person_id)):
            if val:
                where.append(f"{col}=?")
                args.append(val)
        for cond, bound in (("ts>=?", q.since), ("ts<?", q.until), ("score>=?", q.min_score)):
            if bound:
                where.append(cond)
                args.append(bound)
        if q.page_token:
            try:
                args.append(int(q.page_token))
            except ValueError as exc:
                raise InvalidArgumentError(f"invalid page token {q.page_token!r}") from exc
            where.append("seq<?")
        size = max(1, min(q.page_size or 100, 1000))
        rows = self._q(f"SELECT {_EVENT_COLS}, seq FROM events WHERE {' AND '.join(where)} "
                       "ORDER BY seq DESC LIMIT ?", (*args, size + 1))
        more = len(rows) > size
        rows = rows[:size]
        return [_event(r[:-1]) for r in rows], (str(rows[-1][-1]) if more and rows else "")

    def acknowledge_event(self, event_id: str, action: str, note: str, actor: str) -> MatchEvent:
        """Record an operator's decision on an alert (the latest decision wins; each is audited by
        the service). `updated` and the change sequence stay as they are: an acknowledgement is not
        a new or better match."""
        if action not in ACK_ACTIONS:
            raise InvalidArgumentError(f"action {action!r} unknown; use ack or dismiss")
        if len(note) > 1000:
            raise InvalidArgumentError(f"note is {len(note)} characters; at most 1000")
        with self._tx() as db:
            cur = self._x(db, "UPDATE events SET ack_action=?, ack_note=?, ack_by=?, ack_time=? WHERE event_id=?",
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
            n = int(self._x(db, "DELETE FROM events WHERE ts<?", (before,)).rowcount)
        if n:
            self._erased("events")
        return n

    def erase_person_events(self, watchlist: str, person_id: str) -> int:
        with self._tx() as db:
            n = int(self._x(db, "DELETE FROM events WHERE watchlist=? AND person_id=?",
                            (watchlist, person_id)).rowcount)
        if n:
            self._erased("events")
        return n

    # ---- sightings -------------------------------------------------------------------------------
    def add_sightings(self, sightings: list[Sighting]) -> list[int]:
        if not sightings:
            return []
        now = time.time()
        rows = []
        for s in sightings:
            emb = np.ascontiguousarray(s.embedding, np.float32).reshape(-1)
            s.created = s.created or now
            rows.append((s.camera_id, s.track_id, s.first_seen, s.last_seen, float(s.quality),
                         json.dumps([float(v) for v in s.box]), s.model, int(emb.shape[0]), emb.tobytes(),
                         s.thumbnail, s.watchlist, s.person_id, float(s.score), s.created))
        with self._tx() as db:
            ids = self._insert_ids(db, _SIGHTING_INSERT, rows)
        for s, i in zip(sightings, ids, strict=True):
            s.id = i
        return ids

    def get_sightings(self, ids: list[int], thumbnails: bool = True) -> list[Sighting]:
        if not ids:
            return []
        got: dict[int, Sighting] = {}
        cols = _SIGHTING_COLS + (", thumbnail" if thumbnails else "")
        for i in range(0, len(ids), 500):
            chunk = [int(v) for v in ids[i:i + 500]]
            for r in self._q(f"SELECT {cols} FROM sightings WHERE id IN ({', '.join('?' * len(chunk))})",
                             tuple(chunk)):
                got[int(r[0])] = _sighting(r)
        return [got[int(i)] for i in ids if int(i) in got]

    def scan_sightings(self, model: str, since: float = 0.0, until: float = 0.0, cameras: tuple[str, ...] = (),
                       after_id: int = 0, limit: int = 10_000, unknown_only: bool = False) -> list[Sighting]:
        where, args = _sighting_range(since, until, cameras)
        where += ["model=?", "id>?"] + (["person_id=''"] if unknown_only else [])
        rows = self._q(f"SELECT {_SIGHTING_COLS} FROM sightings WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                       (*args, model, after_id, max(1, limit)))
        return [_sighting(r) for r in rows]

    def count_sightings(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM sightings")[0][0])

    def purge_sightings(self, before: float) -> int:
        with self._tx() as db:
            n = int(self._x(db, "DELETE FROM sightings WHERE first_seen<?", (before,)).rowcount)
        if n:
            self._erased("sightings")
        return n

    def erase_sightings(self, since: float = 0.0, until: float = 0.0, cameras: tuple[str, ...] = ()) -> list[int]:
        where, args = _sighting_range(since, until, cameras)
        return self._erase_sightings(" AND ".join(where) or "1=1", tuple(args))

    def erase_person_sightings(self, watchlist: str, person_id: str) -> list[int]:
        return self._erase_sightings("watchlist=? AND person_id=?", (watchlist, person_id))

    def _erase_sightings(self, where: str, args: tuple[Any, ...]) -> list[int]:
        with self._tx() as db:
            ids = [int(r[0]) for r in self._x(db, f"SELECT id FROM sightings WHERE {where} ORDER BY id",
                                              args).fetchall()]
            self._x(db, f"DELETE FROM sightings WHERE {where}", args)
        if ids:
            self._erased("sightings")
        return ids

    def assign_sightings(self, ids: list[int], watchlist: str, person_id: str) -> int:
        n = 0
        with self._tx() as db:
            for i in range(0, len(ids), 500):
                chunk = tuple(int(v) for v in ids[i:i + 500])
                n += int(self._x(db, f"UPDATE sightings SET watchlist=?, person_id=? WHERE id IN "
                                     f"({', '.join('?' * len(chunk))})", (watchlist, person_id, *chunk)).rowcount)
        return n

    # ---- audit -----------------------------------------------------------------------------------
    def audit(self, actor: str, role: str, action: str, target: str, result: str, detail: str = "") -> None:
        with self._tx() as db:
            self._x(db, "INSERT INTO audit (ts, actor, role, action, target, result, detail) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (time.time(), actor, role, action, target, result, detail))

    def query_audit(self, since: float = 0.0, limit: int = 100, after_id: int = 0,
                    action: str = "") -> list[dict[str, Any]]:
        sql = "SELECT id, ts, actor, role, action, target, result, detail FROM audit WHERE ts>=? AND id>?"
        args: list[Any] = [since, after_id]
        if action:
            sql += " AND action=?"
            args.append(action)
        rows = self._q(sql + " ORDER BY id LIMIT ?", (*args, limit))
        keys = ("id", "ts", "actor", "role", "action", "target", "result", "detail")
        return [dict(zip(keys, (int(r[0]), *r[1:]), strict=True)) for r in rows]

    # ---- API tokens (only SHA-256 hashes are stored) ---------------------------------------------
    def create_token(self, name: str, role: str, token_hash: str, scope: str = "") -> float:
        """Store a new active token; a name may be reused once its previous token is revoked.
        `scope` (JSON, see engine.service.auth.TokenScope) narrows what the token may reach."""
        if not name or len(name) > 128:
            raise InvalidArgumentError("token name must be 1-128 characters")
        now = time.time()
        try:
            with self._tx() as db:
                self._x(db, "INSERT INTO tokens (name, role, hash, created, scope) VALUES (?, ?, ?, ?, ?)",
                        (name, role, token_hash, now, scope))
        except self._unique_violation as exc:
            raise AlreadyExistsError(f"an active token named {name!r} already exists; revoke it first") from exc
        return now

    def token_by_hash(self, token_hash: str) -> tuple[str, str, str] | None:
        """(name, role, scope) of the active token with this hash, or None (unknown or revoked)."""
        rows = self._q("SELECT name, role, scope FROM tokens WHERE hash=? AND revoked IS NULL", (token_hash,))
        return (rows[0][0], rows[0][1], rows[0][2] or "") if rows else None

    def list_tokens(self) -> list[dict[str, Any]]:
        rows = self._q("SELECT name, role, created, revoked, scope FROM tokens ORDER BY id")
        return [{"name": n, "role": r, "created": c, "revoked": v or 0.0, "scope": sc or ""}
                for n, r, c, v, sc in rows]

    def revoke_token(self, name: str) -> dict[str, Any]:
        now = time.time()
        with self._tx() as db:
            row = self._x(db, "SELECT id, role, created FROM tokens WHERE name=? AND revoked IS NULL"
                          f"{self._for_update}", (name,)).fetchone()
            if not row:
                raise NotFoundError(f"no active token named {name!r}")
            self._x(db, "UPDATE tokens SET revoked=? WHERE id=?", (now, row[0]))
        return {"name": name, "role": row[1], "created": row[2], "revoked": now}

    # ---- consistency -----------------------------------------------------------------------------
    REPAIR_ACTOR = "faceengine"
    """Audit actor of the start-up repair's changes."""

    def _check_gallery_tables(self) -> list[str]:
        """Problems the database itself finds in the gallery tables and their indexes; [] where the
        dialect cannot check cheaply (PostgreSQL: its own tools, amcheck)."""
        return []

    def _rebuild_gallery_indexes(self) -> None:
        """Rebuild the gallery tables' indexes from their rows (SQLite: REINDEX)."""

    def _scan_only(self, db: Conn) -> str:
        """Make this transaction's reads scan tables rather than trust indexes; returns the clause
        to put after a table name for that (SQLite: NOT INDEXED), or '' where a setting did it."""
        return ""

    def repair(self) -> dict[str, int]:
        """Start-up check. First the database's own check of the gallery tables and indexes: a
        damaged index is rebuilt from the table rows (REINDEX) and checked again; still damaged, the
        start is refused (StoreDamagedError) and nothing is changed. Only then are rows dropped that
        foreign keys make impossible through this store (they appear only after a hand edit):
        templates whose person is gone, persons with no template and persons whose watchlist is
        gone, each found by a scan of the table rows (never through an index) and each audited.
        Returns the counts: indexes rebuilt (0/1) and rows removed."""
        rebuilt = 0
        problems = self._check_gallery_tables()
        if problems:
            self._rebuild_gallery_indexes()
            still = self._check_gallery_tables()
            if still:
                raise StoreDamagedError(
                    f"the store {self.url} is damaged beyond an index rebuild ({'; '.join(still[:5])}): nothing "
                    "was changed; stop every process using it, restore it from a backup (the file and its -wal) "
                    "and run `faceengine store check` to see what is wrong")
            rebuilt = 1
        with self._tx() as db:
            self._lock_gallery(db)
            if rebuilt:
                self._x(db, "INSERT INTO audit (ts, actor, role, action, target, result, detail) "
                            "VALUES (?, ?, 'system', 'store.repair', 'indexes', 'REBUILT', ?)",
                        (time.time(), self.REPAIR_ACTOR, "; ".join(problems[:20])[:1000]))
            noidx = self._scan_only(db)
            orphans = [r[0] for r in self._x(
                db, f"SELECT id FROM templates{noidx} WHERE (watchlist, person_id) NOT IN "
                    f"(SELECT watchlist, person_id FROM persons{noidx})").fetchall()]
            empty = [(w, p) for w, p in self._x(
                db, f"SELECT watchlist, person_id FROM persons{noidx} WHERE (watchlist, person_id) NOT IN "
                    f"(SELECT watchlist, person_id FROM templates{noidx})").fetchall()]
            lost = [(w, p) for w, p in self._x(
                db, f"SELECT watchlist, person_id FROM persons{noidx} WHERE watchlist NOT IN "
                    f"(SELECT name FROM watchlists{noidx})").fetchall()]
            audit = [(f"template {t}", "template whose person is gone") for t in orphans]
            audit += [(f"{w}/{p}", "person with no template") for w, p in empty]
            audit += [(f"{w}/{p}", "person whose watchlist is gone") for w, p in lost if (w, p) not in empty]
            for t in orphans:
                self._x(db, "DELETE FROM templates WHERE id=?", (t,))
            for w, p in dict.fromkeys(empty + lost):
                self._x(db, "DELETE FROM persons WHERE watchlist=? AND person_id=?", (w, p))
            now = time.time()
            for target, why in audit:
                self._x(db, "INSERT INTO audit (ts, actor, role, action, target, result, detail) "
                            "VALUES (?, ?, 'system', 'store.repair', ?, 'DELETED', ?)",
                        (now, self.REPAIR_ACTOR, target, f"{why} (found by a table scan at start-up)"))
            if audit:  # which persons changed is not logged: replicas rebuild
                version = self._bump(db)
                self._x(db, "UPDATE meta SET value=? WHERE key='gallery_log_floor'", (version,))
        return {"indexes_rebuilt": rebuilt, "orphan_templates": len(orphans), "empty_persons": len(empty),
                "persons_without_watchlist": len([x for x in lost if x not in empty])}

    # ---- pull cameras ----------------------------------------------------------------------------
    def save_camera(self, camera_id: str, uri: str, options: dict[str, str]) -> None:
        with self._tx() as db:
            self._x(db, "INSERT INTO cameras VALUES (?, ?, ?, ?) ON CONFLICT (camera_id) DO UPDATE SET "
                        "uri=excluded.uri, options=excluded.options, created=excluded.created",
                    (camera_id, uri, json.dumps(options), time.time()))

    def delete_camera(self, camera_id: str) -> None:
        with self._tx() as db:
            self._x(db, "DELETE FROM cameras WHERE camera_id=?", (camera_id,))

    def list_camera_defs(self) -> list[tuple[str, str, dict[str, str]]]:
        return [(c, u, camera_options(o)) for c, u, o in
                self._q("SELECT camera_id, uri, options FROM cameras ORDER BY created, camera_id")]


def _box(e: MatchEvent) -> str:
    return json.dumps([float(v) for v in e.box])


def _event(r: tuple[Any, ...]) -> MatchEvent:
    return MatchEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(json.loads(r[7])), int(r[8]), int(r[9]),
                      bytes(r[10]) if r[10] is not None else b"", r[11], r[12], r[13], r[14], r[15], r[16])


def _sighting_range(since: float, until: float, cameras: tuple[str, ...]) -> tuple[list[str], list[Any]]:
    """WHERE parts and arguments for `since <= first_seen < until` (0 = open) on some cameras (() = all)."""
    where: list[str] = []
    args: list[Any] = []
    if since:
        where.append("first_seen>=?")
        args.append(since)
    if until:
        where.append("first_seen<?")
        args.append(until)
    if cameras:
        where.append(f"camera_id IN ({', '.join('?' * len(cameras))})")
        args.extend(cameras)
    return where, args


def _sighting(r: tuple[Any, ...]) -> Sighting:
    emb = np.frombuffer(bytes(r[9]), np.float32).copy()
    box = tuple(float(v) for v in json.loads(r[6]))
    thumb = bytes(r[14]) if len(r) > 14 and r[14] is not None else b""
    return Sighting(r[1], float(r[3]), float(r[4]), emb, r[7], float(r[5]), int(r[2]), box,  # type: ignore[arg-type]
                    thumb, r[10], r[11], float(r[12]), int(r[0]), float(r[13]))


def _person(r: tuple[Any, ...]) -> Person:
    return Person(r[0], r[1], r[2], json.loads(r[3]), int(r[4]), r[5], r[6])


def _watchlist(r: tuple[Any, ...]) -> Watchlist:
    return Watchlist(r[0], r[1], int(r[2]), r[3])
