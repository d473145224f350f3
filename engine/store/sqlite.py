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

import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import StorageFullError, StoreDamagedError, StoreSchemaError
from engine.store.base import ChangeCallback
from engine.store.sqlbase import SQLStore

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
# version 4: a token's scope (JSON: the cameras a gateway token may feed, whether it sees identities)
SCHEMA_V4 = """
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT '';
"""
# version 5: sightings (every track's best shot, where sightings are enabled)
SCHEMA_V5 = """
CREATE TABLE IF NOT EXISTS sightings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, camera_id TEXT NOT NULL, track_id INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, quality REAL NOT NULL, box TEXT NOT NULL,
    model TEXT NOT NULL, dim INTEGER NOT NULL, embedding BLOB NOT NULL, thumbnail BLOB,
    watchlist TEXT NOT NULL DEFAULT '', person_id TEXT NOT NULL DEFAULT '', score REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sightings_time ON sightings(first_seen);
CREATE INDEX IF NOT EXISTS sightings_camera ON sightings(camera_id, first_seen);
CREATE INDEX IF NOT EXISTS sightings_person ON sightings(watchlist, person_id);
"""
MIGRATIONS = {1: SCHEMA_V1, 2: SCHEMA_V2, 3: SCHEMA_V3, 4: SCHEMA_V4, 5: SCHEMA_V5}
SCHEMA_VERSION = max(MIGRATIONS)


class SQLiteStore(SQLStore):
    """Every store role in one SQLite file (thread-safe; several processes on one machine). The
    roles' SQL is `SQLStore`'s; this class owns the connection, locking, migrations and the WAL."""

    _unique_violation = sqlite3.IntegrityError

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.storage_error = ""  # set while writes fail for lack of space, cleared by a probe that writes
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
        """The typed error for a full disk, remembered until a write probe succeeds (health follows it)."""
        where = Path(self.path).expanduser().resolve().parent if self.path != ":memory:" else "memory"
        self.storage_error = (f"the store's disk is full: free space at {where} (or raise the database size "
                              f"limit); writes resume by themselves once there is room ({exc})")
        return StorageFullError(self.storage_error)

    def probe_write(self) -> str:
        """'' when the store can write again, else the reason. Two probes: a write SQLite rolls back
        (its size cap, max_page_count) and PROBE_BYTES really reserved on the disk beside the database:
        a rolled-back SQLite write never reaches the disk, and a small commit can still land in WAL
        space allocated earlier, so neither alone tells that a full disk has room again."""
        try:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('write_probe', randomblob(8192))")
                raise _Probe
        except _Probe:
            pass
        except StorageFullError as exc:
            return str(exc)
        if self.path != ":memory:":
            try:
                _reserve(f"{Path(self.path).expanduser()}-probe", PROBE_BYTES)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                return str(self._full(exc))
        self.storage_error = ""
        return ""

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

    def _snapshot(self) -> _Tx:
        return _Tx(self, "BEGIN")

    def _tx(self) -> _Tx:
        return _Tx(self)

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def erase_person_events(self, watchlist: str, person_id: str) -> int:
        """As `SQLStore`'s, but the WAL is checkpointed even when no event was erased: RemovePerson
        retried after a crash before `remove_person`'s checkpoint finds nothing left to delete, yet
        the WAL may still hold the person's rows."""
        n = super().erase_person_events(watchlist, person_id)
        if not n:
            self._checkpoint()
        return n

    # ---- dialect hooks of SQLStore ---------------------------------------------------------------
    _GALLERY_TABLES = ("watchlists", "persons", "templates")

    def _check_gallery_tables(self) -> list[str]:
        """SQLite's integrity check of the gallery tables and their indexes (rows missing from an
        index, wrong entry counts, damaged pages); [] when sound."""
        problems = []
        for table in self._GALLERY_TABLES:
            try:
                rows = [str(r[0]) for r in self._q(f"PRAGMA integrity_check({table})")]
            except sqlite3.DatabaseError as exc:  # pages too damaged to walk
                rows = [f"table {table} unreadable: {exc}"]
            if rows != ["ok"]:
                problems += rows
        return problems

    def _rebuild_gallery_indexes(self) -> None:
        log.warning("store %s: gallery indexes damaged; rebuilding them from the table rows (REINDEX)", self.path)
        try:
            with self._tx() as db:
                for table in self._GALLERY_TABLES:
                    db.execute(f"REINDEX {table}")
        except sqlite3.DatabaseError as exc:  # rolled back; the check that follows says what is left
            log.error("store %s: index rebuild failed: %s", self.path, exc)

    def _scan_only(self, db: sqlite3.Connection) -> str:
        return " NOT INDEXED"

    def _incr(self, db: sqlite3.Connection, key: str) -> int:
        """Add one to a meta counter (BEGIN IMMEDIATE holds the write lock to commit: commit order)."""
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key=?", (key,))
        return int(db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def _insert_id(self, db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> int:
        return int(self._x(db, sql, args).lastrowid or 0)

    def _insert_ids(self, db: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """One executemany: inside this write transaction (no other writer) AUTOINCREMENT gives the
        rows consecutive ids ending at last_insert_rowid()."""
        db.executemany(self._sql(sql), rows)
        last = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
        return list(range(last - len(rows) + 1, last + 1))

    def _erased(self, *tables: str) -> None:
        """Erased rows leave no copy in any file: secure_delete zeroed their pages; the WAL goes."""
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it, so erased rows leave no copy in the WAL."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


class _Tx:
    """`with store._tx() as db:` runs the block in one IMMEDIATE transaction under the store lock
    (`_snapshot()`: a deferred one, a consistent snapshot for several reads)."""

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
                    db.execute("COMMIT")  # storage_error stays until a probe writes: a small commit may
                    return                # fit WAL space while larger writes still fail
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


PROBE_BYTES = 256 * 1024
"""Room a disk-full store needs again before health turns back to SERVING."""


def _reserve(path: str, size: int) -> None:
    """Allocate `size` bytes for a scratch file on the disk, then remove it (OSError ENOSPC when full)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except (AttributeError, OSError) as exc:  # no fallocate here (platform or file system): write it
            if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            os.write(fd, b"\0" * size)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


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
