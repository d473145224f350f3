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

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg_pool import ConnectionPool, PoolTimeout

from engine.errors import StoreSchemaError, StoreUnavailableError
from engine.store import redact, redact_text
from engine.store.base import ChangeCallback
from engine.store.sqlbase import SQLStore

log = logging.getLogger(__name__)

CHANNEL = "faceengine_changes"
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
    # a token's scope (JSON: the cameras a gateway token may feed, whether it sees identities)
    3: "ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT '';",
    # sightings (every track's best shot, where sightings are enabled)
    4: """
CREATE TABLE sightings (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, camera_id TEXT NOT NULL, track_id BIGINT NOT NULL,
    first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL, quality DOUBLE PRECISION NOT NULL,
    box TEXT NOT NULL, model TEXT NOT NULL, dim INTEGER NOT NULL, embedding BYTEA NOT NULL, thumbnail BYTEA,
    watchlist TEXT NOT NULL DEFAULT '', person_id TEXT NOT NULL DEFAULT '',
    score DOUBLE PRECISION NOT NULL DEFAULT 0, created DOUBLE PRECISION NOT NULL);
CREATE INDEX sightings_time ON sightings(first_seen);
CREATE INDEX sightings_camera ON sightings(camera_id, first_seen);
CREATE INDEX sightings_person ON sightings(watchlist, person_id);
""",
}
SCHEMA_VERSION = max(MIGRATIONS)


class PostgresStore(SQLStore):
    """Every store role on one PostgreSQL database (thread-safe; any number of processes). The
    roles' SQL is `SQLStore`'s; this class owns the pool, migrations, LISTEN/NOTIFY and VACUUM."""

    _ph = "%s"
    _for_update = " FOR UPDATE"
    _collate_c = ' COLLATE "C"'  # byte order, as SQLite's BINARY: the same pages on both backends
    _unique_violation = pgerr.UniqueViolation

    def __init__(self, url: str, pool_size: int = 8, connect_timeout_s: float = 5.0, wait_s: float = 3.0,
                 reconnect_s: float = 5.0) -> None:
        """`wait_s`: how long a call waits for a connection before StoreUnavailableError (UNAVAILABLE);
        `reconnect_s`: how long one reconnection attempt backs off before the pool starts afresh (the
        pool's own default, 5 minutes of doubling delays, kept the engine down for 1-2 minutes after
        the database was back)."""
        self._conninfo = url
        self.url = redact(url)
        try:  # one direct connection first: a wrong URL fails now, with the server's own reason
            with psycopg.connect(url, connect_timeout=max(1, int(connect_timeout_s))) as con:
                self._migrate(con)
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(f"cannot connect to PostgreSQL store {self.url}: "
                                        f"{redact_text(str(exc).strip(), url)}") from exc
        except psycopg.ProgrammingError as exc:  # malformed URL
            raise StoreUnavailableError(f"invalid PostgreSQL URL {self.url}: {redact_text(str(exc), url)}") from exc
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, timeout=wait_s, open=True,
                                    kwargs={"connect_timeout": max(1, int(connect_timeout_s))},
                                    check=ConnectionPool.check_connection,  # drop connections a restart broke
                                    reconnect_timeout=reconnect_s, name="faceengine-store")
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
        with self._tx() as con:
            return con.execute(self._sql(sql), args).fetchall()  # type: ignore[arg-type]

    def _tx(self) -> _PgTx:
        return _PgTx(self._pool, url=self.url, secret=self._conninfo)

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

    # ---- dialect hooks of SQLStore ---------------------------------------------------------------
    def _snapshot(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return _PgTx(self._pool, snapshot=True, url=self.url, secret=self._conninfo)

    def _incr(self, con: psycopg.Connection[Any], key: str) -> int:
        """Add one to a meta counter; its row lock is held to commit, so numbers follow commit order."""
        row = con.execute("UPDATE meta SET value = value + 1 WHERE key=%s RETURNING value", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _announce(self, con: psycopg.Connection[Any], what: str) -> None:
        """NOTIFY every listening process (delivered at commit, never for a rolled-back change)."""
        con.execute(f"NOTIFY {CHANNEL}, '{what}'")

    def _insert_id(self, con: psycopg.Connection[Any], sql: str, args: tuple[Any, ...]) -> int:
        row = self._x(con, sql + " RETURNING id", args).fetchone()
        return int(row[0]) if row else 0

    def _insert_ids(self, con: psycopg.Connection[Any], sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """One pipelined executemany with RETURNING: one round trip for the batch, ids in row order."""
        ids: list[int] = []
        with con.cursor() as cur:
            cur.executemany(self._sql(sql) + " RETURNING id", rows, returning=True)
            while True:
                row = cur.fetchone()
                if row is not None:
                    ids.append(int(row[0]))
                if not cur.nextset():
                    break
        return ids

    def _erased(self, *tables: str) -> None:
        self._vacuum(*tables)

    def _scan_only(self, con: psycopg.Connection[Any]) -> str:
        """This transaction's plans read the tables' rows, never an index."""
        for setting in ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"):
            con.execute(f"SET LOCAL {setting} = off")
        return ""

    def _lock_gallery(self, con: psycopg.Connection[Any]) -> None:
        """Take the gallery counter's row lock first, so concurrent gallery writers run one at a time."""
        con.execute("SELECT value FROM meta WHERE key='gallery_version' FOR UPDATE")

    def _vacuum(self, *tables: str) -> None:
        """Reclaim erased rows' space now, so dead tuples of erased templates/thumbnails are not kept
        until autovacuum gets round to them (best effort: a failure only delays it)."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as con:
                con.execute(f"VACUUM {', '.join(tables)}")
        except psycopg.Error:
            log.warning("store %s: VACUUM %s failed; autovacuum will reclaim the rows later", self.url,
                        ", ".join(tables), exc_info=True)


def unavailable(url: str, exc: BaseException, secret: str = "") -> StoreUnavailableError:
    """The typed error for a database that does not answer (UNAVAILABLE), with what to check; the
    server's reason never carries the URL's password."""
    reason = redact_text(str(exc).strip() or type(exc).__name__, secret)
    return StoreUnavailableError(
        f"PostgreSQL store {url} is unavailable ({reason[:300]}); check that the database server is running and "
        "reachable from this machine. Calls resume by themselves once it answers (store.pg_wait_s, "
        "store.pg_reconnect_s)")


class _PgTx:
    """`with store._tx() as con:` runs the block in one transaction on a pooled connection
    (`snapshot=True`: REPEATABLE READ, one snapshot for several reads). A lost or unreachable
    database (no connection within the pool's wait, a connection broken mid-call) raises
    StoreUnavailableError, so callers get a prompt UNAVAILABLE instead of UNKNOWN."""

    def __init__(self, pool: ConnectionPool, snapshot: bool = False, url: str = "", secret: str = "") -> None:
        self.pool = pool
        self.snapshot = snapshot
        self.url = url
        self.secret = secret

    def __enter__(self) -> psycopg.Connection[Any]:
        self._cm = self.pool.connection()
        try:
            self.con = self._cm.__enter__()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise unavailable(self.url, exc, self.secret) from exc
        try:
            self._tx = self.con.transaction()
            self._tx.__enter__()
            if self.snapshot:
                self.con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        except BaseException as exc:
            self._cm.__exit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, psycopg.OperationalError):
                raise unavailable(self.url, exc, self.secret) from exc
            raise
        return self.con

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            try:
                self._tx.__exit__(exc_type, exc, tb)
            finally:
                self._cm.__exit__(exc_type, exc, tb)
        except psycopg.OperationalError as err:  # the commit (or rollback) found the connection gone
            raise unavailable(self.url, err, self.secret) from err
        if isinstance(exc, psycopg.OperationalError):
            raise unavailable(self.url, exc, self.secret) from exc
