"""Store contract: every method of every role interface (`engine/store/base.py`), run on every
backend (SQLite always; PostgreSQL on a real server started from the machine's binaries, skipped
with the reason where it cannot start). A new backend passes this suite or is not done."""

from __future__ import annotations

import inspect
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import (
    AlreadyExistsError,
    ConfigError,
    InvalidArgumentError,
    NotFoundError,
    StoreSchemaError,
    StoreUnavailableError,
)
from engine.store import base, open_store, redact
from engine.store.base import EventQuery, MatchEvent, Person, Sighting, Store

BACKENDS = ["sqlite", "postgresql"]


@dataclass
class Backend:
    """How a test reaches one backend: its URL, and raw SQL on its database (to damage or inspect it)."""

    name: str
    url: str
    raw: Callable[[str], list[tuple[Any, ...]]]
    set_schema_version: Callable[[int], None]


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = str(tmp_path / "store.db")

    def raw(sql: str) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(path, isolation_level=None)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    return Backend("sqlite", path, raw, lambda v: raw(f"PRAGMA user_version={v}") and None)


def _pg_backend(url: str) -> Backend:
    import psycopg

    def raw(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as con:
            cur = con.execute(sql)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    return Backend("postgresql", url, raw,
                   lambda v: raw(f"INSERT INTO schema_version VALUES ({int(v)}, 0)") and None)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    return _pg_backend(request.getfixturevalue("pg_url"))


@pytest.fixture()
def store(backend: Backend) -> Iterator[Store]:
    s = open_store(backend.url)
    yield s
    s.close()


def _emb(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _event(i: int, ts: float, camera: str = "c1", person: str = "p1", score: float = 0.5) -> MatchEvent:
    return MatchEvent(f"ev{i}", camera, ts, "wl", person, person.upper(), score, (1.0, 2.0, 3.0, 4.0), i, i * 10,
                      b"\xff\xd8jpeg" + bytes([i % 256]))


# ---- coverage of the interfaces themselves -----------------------------------------------------
ROLES = (base.GalleryStore, base.EventStore, base.SightingStore, base.AuditStore, base.CameraStore, base.TokenStore,
         base.StoreLifecycle)


def _methods(proto: type) -> set[str]:
    return {n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")}


def test_every_interface_method_is_in_one_role_and_exercised_here() -> None:
    seen: dict[str, str] = {}
    for role in ROLES:
        for m in _methods(role):
            assert m not in seen, f"{m} is in both {seen[m]} and {role.__name__}"
            seen[m] = role.__name__
    source = Path(__file__).read_text()
    missing = sorted(m for m in seen if f".{m}(" not in source)
    assert not missing, f"interface methods this contract suite never calls: {missing}"


@pytest.mark.parametrize("impl", ["engine.store.sqlite:SQLiteStore", "engine.store.postgres:PostgresStore"])
def test_backends_implement_every_role_method(impl: str) -> None:
    module, name = impl.split(":")
    cls = getattr(pytest.importorskip(module), name)
    for role in ROLES:
        for m in _methods(role):
            assert callable(getattr(cls, m, None)), f"{name} lacks {role.__name__}.{m}"
            want = list(inspect.signature(getattr(role, m)).parameters)
            got = list(inspect.signature(getattr(cls, m)).parameters)
            assert got[:len(want)] == want, f"{name}.{m}{got} differs from {role.__name__}.{m}{want}"


# ---- lifecycle ----------------------------------------------------------------------------------
def test_open_health_url_and_reopen(backend: Backend) -> None:
    s = open_store(backend.url)
    assert isinstance(s, Store)
    assert s.health() == ""
    assert s.url.startswith("sqlite:///" if backend.name == "sqlite" else "postgresql://")
    assert s.repair() == {"indexes_rebuilt": 0, "orphan_templates": 0, "empty_persons": 0,
                          "persons_without_watchlist": 0}
    s.create_watchlist("kept")
    s.close()
    s2 = open_store(backend.url)  # acknowledged writes survive a reopen; migrations are idempotent
    try:
        assert [w.name for w in s2.list_watchlists()] == ["kept"]
    finally:
        s2.close()


def test_newer_schema_is_refused_not_overwritten(backend: Backend) -> None:
    s = open_store(backend.url)
    s.create_watchlist("precious")
    s.close()
    backend.set_schema_version(999)
    with pytest.raises(StoreSchemaError, match="newer faceengine") as err:
        open_store(backend.url)
    assert "999" in str(err.value)
    assert backend.raw("SELECT name FROM watchlists") == [("precious",)]


def test_repair_drops_persons_without_templates(backend: Backend, store: Store) -> None:
    store.create_watchlist("wl")
    store.upsert_person(Person("wl", "a"), _emb(1), "m")
    store.upsert_person(Person("wl", "b"), _emb(1), "m")
    backend.raw("DELETE FROM templates WHERE person_id='b'")  # a hand edit behind the store's back
    v = store.gallery_version()
    assert store.repair() == {"indexes_rebuilt": 0, "orphan_templates": 0, "empty_persons": 1,
                              "persons_without_watchlist": 0}
    assert [p.person_id for p in store.list_persons("wl")] == ["a"]
    audit = store.query_audit(action="store.repair")  # every change the repair made is audited
    assert [(r["actor"], r["target"], r["result"]) for r in audit] == [("faceengine", "wl/b", "DELETED")]
    assert "no template" in audit[0]["detail"]
    assert store.gallery_version() > v
    assert store.gallery_changes_since(v, "m") is None  # unlogged change: replicas must rebuild


def test_subscribe_changes_returns_an_unsubscribe(backend: Backend, store: Store) -> None:
    got: list[str] = []
    unsubscribe = store.subscribe_changes(got.append)
    store.create_watchlist("wl")
    store.add_event(_event(1, time.time()))
    if backend.name == "postgresql":  # LISTEN/NOTIFY: both kinds of change are announced
        deadline = time.monotonic() + 5
        while not {"gallery", "events"} <= set(got) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {"gallery", "events"} <= set(got), got
    else:  # no push notification in SQLite: callers poll
        time.sleep(0.2)
        assert got == []
    unsubscribe()
    got.clear()
    store.create_watchlist("wl2")
    time.sleep(0.5)
    assert "gallery" not in got


# ---- gallery ------------------------------------------------------------------------------------
def test_watchlists(store: Store) -> None:
    v0 = store.gallery_version()
    wl = store.create_watchlist("vip", "very important")
    assert (wl.name, wl.description, wl.person_count) == ("vip", "very important", 0) and wl.created > 0
    assert store.gallery_version() == v0 + 1
    with pytest.raises(AlreadyExistsError):
        store.create_watchlist("vip")
    for bad in ("", "x" * 129):
        with pytest.raises(InvalidArgumentError):
            store.create_watchlist(bad)
    store.create_watchlist("Alpha")
    store.create_watchlist("beta")
    assert [w.name for w in store.list_watchlists()] == ["Alpha", "beta", "vip"]  # byte order
    store.upsert_person(Person("vip", "p1"), _emb(2), "m")
    assert store.get_watchlist("vip").person_count == 1
    assert store.delete_watchlist("vip") == 1
    with pytest.raises(NotFoundError):
        store.get_watchlist("vip")
    with pytest.raises(NotFoundError):
        store.delete_watchlist("vip")
    assert store.template_ids("vip", "p1") == []


def test_persons_and_templates(store: Store) -> None:
    with pytest.raises(NotFoundError, match="create it first"):
        store.upsert_person(Person("wl", "p1"), _emb(1), "m")
    store.create_watchlist("wl")
    with pytest.raises(InvalidArgumentError):
        store.upsert_person(Person("wl", "p1"), np.zeros((0, 8), np.float32), "m")
    a = _emb(2, seed=1)
    ids = store.upsert_person(Person("wl", "p1", "One", {"k": "v"}), a, "m")
    assert len(ids) == 2 and ids == sorted(ids)
    p = store.get_person("wl", "p1")
    assert (p.display_name, p.metadata, p.template_count) == ("One", {"k": "v"}, 2) and p.updated >= p.created
    more = store.upsert_person(Person("wl", "p1", "Uno"), _emb(1, seed=2), "m")  # add, rename
    assert store.template_ids("wl", "p1") == ids + more and store.get_person("wl", "p1").display_name == "Uno"
    new = store.upsert_person(Person("wl", "p1", "Uno"), _emb(1, seed=3), "m", replace=True)
    assert store.template_ids("wl", "p1") == new and not set(new) & set(ids + more)
    store.upsert_person(Person("wl", "p2", "Two"), _emb(1, seed=4), "other-model")
    got_ids, vecs, labels = store.templates("m")
    assert got_ids.tolist() == new and vecs.shape == (1, 8) and labels == [("wl", "p1", "Uno")]
    np.testing.assert_array_equal(vecs, _emb(1, seed=3))
    assert store.template_models() == {"m": 1, "other-model": 1}
    ids0, vecs0, labels0 = store.templates("unknown")
    assert ids0.shape == (0,) and labels0 == []
    for i in range(3, 8):
        store.upsert_person(Person("wl", f"p{i}"), _emb(1, seed=i), "m")
    page1 = store.list_persons("wl", 3)
    page2 = store.list_persons("wl", 3, page1[-1].person_id)
    assert [p.person_id for p in page1 + page2] == ["p1", "p2", "p3", "p4", "p5", "p6"]
    with pytest.raises(NotFoundError):
        store.list_persons("nope")
    assert store.remove_person("wl", "p1") == new
    with pytest.raises(NotFoundError):
        store.get_person("wl", "p1")
    with pytest.raises(NotFoundError):
        store.remove_person("wl", "p1")
    assert store.template_ids("wl", "p1") == []


def test_gallery_change_log(store: Store) -> None:
    store.create_watchlist("wl")
    v0 = store.gallery_version()
    assert store.gallery_changes_since(v0, "m").persons == []  # type: ignore[union-attr]
    assert store.gallery_changes_since(v0 + 5, "m") is None  # a version from the future: rebuild
    ida = store.upsert_person(Person("wl", "a", "A"), _emb(2, seed=1), "m")
    idb = store.upsert_person(Person("wl", "b", "B"), _emb(1, seed=2), "m")
    d = store.gallery_changes_since(v0, "m")
    assert d is not None and d.version == store.gallery_version() == v0 + 2
    assert d.persons == [("wl", "a"), ("wl", "b")] and d.ids.tolist() == ida + idb
    assert d.labels == [("wl", "a", "A")] * 2 + [("wl", "b", "B")] and d.vectors.shape == (3, 8)
    v1 = d.version
    store.remove_person("wl", "a")
    store.upsert_person(Person("wl", "b", "Bee"), _emb(1, seed=3), "m", replace=True)
    d = store.gallery_changes_since(v1, "m")
    assert d is not None and d.persons == [("wl", "a"), ("wl", "b")]
    assert d.labels == [("wl", "b", "Bee")] and d.ids.tolist() == store.template_ids("wl", "b")
    v2 = d.version
    store.delete_watchlist("wl")
    d = store.gallery_changes_since(v2, "m")
    assert d is not None and d.persons == [("wl", "b")] and d.ids.shape == (0,)


# ---- events -------------------------------------------------------------------------------------
def test_events_add_get_update_query(store: Store) -> None:
    now = time.time()
    for i in range(6):
        store.add_event(_event(i, now - 100 + i, camera="c1" if i % 2 else "c2", person="p1" if i < 3 else "p2",
                               score=0.4 + i / 20))
    with pytest.raises(AlreadyExistsError):
        store.add_event(_event(0, now))
    e = store.get_event("ev3")
    assert (e.camera_id, e.person_id, e.display_name, e.box, e.track_id, e.frame_seq) == \
        ("c1", "p2", "P2", (1.0, 2.0, 3.0, 4.0), 3, 30)
    assert e.thumbnail == b"\xff\xd8jpeg\x03" and e.created > 0 and e.updated >= e.created
    e.score, e.box, e.thumbnail, e.frame_seq = 0.99, (5.0, 6.0, 7.0, 8.0), b"new", 31
    store.update_event(e)
    e2 = store.get_event("ev3")
    assert (e2.score, e2.box, e2.thumbnail, e2.frame_seq) == (0.99, (5.0, 6.0, 7.0, 8.0), b"new", 31)
    with pytest.raises(NotFoundError):
        store.get_event("nope")
    with pytest.raises(NotFoundError):
        store.update_event(_event(99, now))
    ids = lambda q: [x.event_id for x in store.query_events(q)[0]]  # noqa: E731
    assert ids(EventQuery()) == ["ev5", "ev4", "ev3", "ev2", "ev1", "ev0"]
    assert ids(EventQuery(camera_id="c1")) == ["ev5", "ev3", "ev1"]
    assert ids(EventQuery(person_id="p1", watchlist="wl")) == ["ev2", "ev1", "ev0"]
    assert ids(EventQuery(since=now - 98, until=now - 96)) == ["ev3", "ev2"]
    assert ids(EventQuery(min_score=0.6)) == ["ev5", "ev4", "ev3"]
    page, token = store.query_events(EventQuery(page_size=4))
    assert [x.event_id for x in page] == ["ev5", "ev4", "ev3", "ev2"] and token
    page, token2 = store.query_events(EventQuery(page_size=4, page_token=token))
    assert [x.event_id for x in page] == ["ev1", "ev0"] and token2 == ""
    with pytest.raises(InvalidArgumentError):
        store.query_events(EventQuery(page_token="x"))


def test_acknowledge_event_keeps_its_change_sequence(store: Store) -> None:
    store.create_watchlist("wl")
    store.add_event(_event(0, time.time()))
    head = store.event_change_head()
    acked = store.acknowledge_event("ev0", "dismiss", "<b>not him</b>", "op-1")
    assert (acked.ack_action, acked.ack_note, acked.ack_by) == ("dismiss", "<b>not him</b>", "op-1")
    assert acked.ack_time > 0
    again = store.get_event("ev0")
    assert (again.ack_action, again.ack_note) == ("dismiss", "<b>not him</b>")
    assert store.event_changes_since(head) == ([], head)  # relays do not re-send an acknowledged event
    with pytest.raises(InvalidArgumentError):
        store.acknowledge_event("ev0", "delete", "", "op-1")
    with pytest.raises(InvalidArgumentError):
        store.acknowledge_event("ev0", "ack", "x" * 1001, "op-1")
    with pytest.raises(NotFoundError):
        store.acknowledge_event("nope", "ack", "", "op-1")


def test_person_photo_is_kept_and_erased_with_the_person(store: Store) -> None:
    store.create_watchlist("wl")
    store.upsert_person(Person("wl", "p1", "P1"), np.ones((1, 4), np.float32) / 2, "m")
    with pytest.raises(NotFoundError, match="no photo"):
        store.get_person_photo("wl", "p1")
    store.set_person_photo("wl", "p1", b"\xff\xd8one")
    store.set_person_photo("wl", "p1", b"\xff\xd8two")  # the newest photo replaces the old one
    assert store.get_person_photo("wl", "p1") == b"\xff\xd8two"
    with pytest.raises(NotFoundError, match="p9"):
        store.get_person_photo("wl", "p9")
    store.remove_person("wl", "p1")
    with pytest.raises(NotFoundError):
        store.get_person_photo("wl", "p1")


def test_event_change_feed_is_keyed_by_sequence(store: Store) -> None:
    head = store.event_change_head()
    assert store.event_changes_since(head) == ([], head)
    t = time.time()
    for i in range(3):
        store.add_event(_event(i, t))
    ev = store.get_event("ev0")
    ev.score = 0.9
    store.update_event(ev)  # an update moves the event to the end of the feed
    events, mark = store.event_changes_since(head)
    assert [e.event_id for e in events] == ["ev1", "ev2", "ev0"] and events[-1].score == 0.9
    assert mark == store.event_change_head() == head + 4
    first, m1 = store.event_changes_since(head, limit=1)
    assert [e.event_id for e in first] == ["ev1"]
    rest, m2 = store.event_changes_since(m1)
    assert [e.event_id for e in rest] == ["ev2", "ev0"] and m2 == mark
    assert store.event_changes_since(mark) == ([], mark)


def test_change_feed_misses_nothing_under_concurrent_writers(backend: Backend, store: Store) -> None:
    """Writers in several threads (and connections); a reader following the feed sees every event
    exactly once: a change number is never visible after a higher one was read."""
    n_threads, per = 4, 25
    seen: list[str] = []
    done = threading.Event()
    writers = [open_store(backend.url) for _ in range(n_threads)]

    def write(k: int) -> None:
        for i in range(per):
            writers[k].add_event(_event(k * 1000 + i, time.time()))

    start = store.event_change_head()  # before any writer runs

    def follow() -> None:
        mark = start
        while True:
            finished = done.is_set()
            events, mark = store.event_changes_since(mark, limit=7)
            seen.extend(e.event_id for e in events)
            if finished and not events:
                return

    reader = threading.Thread(target=follow)
    reader.start()
    threads = [threading.Thread(target=write, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(timeout=60)
    for w in writers:
        w.close()
    assert not reader.is_alive()
    assert len(seen) == len(set(seen)) == n_threads * per, (len(seen), len(set(seen)))


def test_purge_and_erase_events(backend: Backend, store: Store) -> None:
    now = time.time()
    for i in range(4):
        store.add_event(_event(i, now - i * 86400, person="p1" if i < 2 else "p2"))
    assert store.purge_events(now - 1.5 * 86400) == 2  # ev2, ev3
    assert [e.event_id for e in store.query_events(EventQuery())[0]] == ["ev1", "ev0"]
    assert store.erase_person_events("wl", "p1") == 2
    assert store.erase_person_events("wl", "p1") == 0
    assert store.query_events(EventQuery())[0] == []
    if backend.name == "sqlite":  # erasure leaves nothing in the WAL (the store checkpoints itself)
        wal = Path(backend.url + "-wal")
        assert not wal.exists() or b"jpeg" not in wal.read_bytes()


def test_retried_person_erasure_leaves_no_copy_in_the_wal(backend: Backend, store: Store) -> None:
    """RemovePerson retried after a crash between remove_person's commit and its WAL checkpoint: the
    person is gone and has no events, yet erase_person_events (answering 0) still checkpoints."""
    if backend.name != "sqlite":
        pytest.skip("the WAL is SQLite's; PostgreSQL has no file of its own to check")
    marker = b"ERASE-ME-7f3a"
    store.create_watchlist("wl")
    store.upsert_person(Person("wl", "p9", marker.decode()), _emb(1), "m")
    with store._tx() as db:  # type: ignore[attr-defined]  # remove_person's transaction, then a "crash"
        db.execute("DELETE FROM templates WHERE watchlist='wl' AND person_id='p9'")
        db.execute("DELETE FROM persons WHERE watchlist='wl' AND person_id='p9'")
    wal = Path(backend.url + "-wal")
    assert marker in wal.read_bytes()  # the person's rows are still in the WAL
    assert store.erase_person_events("wl", "p9") == 0
    assert not wal.exists() or marker not in wal.read_bytes()
    assert marker not in Path(backend.url).read_bytes()  # secure_delete zeroed the rows in the file


# ---- sightings ----------------------------------------------------------------------------------
def _sighting(i: int, t: float, camera: str = "c1", person: str = "", model: str = "m") -> Sighting:
    return Sighting(camera, t, t + 2.0, _emb(1, seed=i)[0], model, 0.5 + i / 100, i, (1.0, 2.0, 3.0 + i, 4.0),
                    b"\xff\xd8face" + bytes([i % 256]), "wl" if person else "", person, 0.6 if person else 0.0)


def test_sightings_add_get_scan(store: Store) -> None:
    t0 = 1_700_000_000.0
    batch = [_sighting(i, t0 + i * 3600, camera="c1" if i % 2 else "c2", person="p1" if i == 3 else "")
             for i in range(6)]
    batch.append(_sighting(9, t0, model="other"))
    ids = store.add_sightings(batch)
    assert ids == [s.id for s in batch] and len(set(ids)) == 7 and ids == sorted(ids)
    assert store.count_sightings() == 7
    got = store.get_sightings([ids[3], 10**9, ids[0]])  # asked order, unknown ids skipped
    assert [g.id for g in got] == [ids[3], ids[0]]
    g = got[0]
    assert (g.camera_id, g.track_id, g.first_seen, g.last_seen, g.box) == ("c1", 3, t0 + 3 * 3600, t0 + 3 * 3600 + 2,
                                                                            (1.0, 2.0, 6.0, 4.0))
    assert (g.watchlist, g.person_id, g.model) == ("wl", "p1", "m") and abs(g.score - 0.6) < 1e-6
    assert g.thumbnail == b"\xff\xd8face\x03" and g.created > 0
    np.testing.assert_array_equal(g.embedding, batch[3].embedding)
    assert store.get_sightings([ids[0]], thumbnails=False)[0].thumbnail == b""
    scan = store.scan_sightings("m", since=t0 + 3600, until=t0 + 5 * 3600)
    assert [s.id for s in scan] == ids[1:5] and all(s.thumbnail == b"" for s in scan)
    assert [s.id for s in store.scan_sightings("m", cameras=("c2",))] == [ids[0], ids[2], ids[4]]
    assert [s.id for s in store.scan_sightings("m", after_id=ids[2], limit=2)] == ids[3:5]
    assert [s.id for s in store.scan_sightings("m", unknown_only=True)] == [ids[i] for i in (0, 1, 2, 4, 5)]
    assert [s.id for s in store.scan_sightings("other")] == [ids[6]]


def test_sightings_retention_erasure_and_naming(backend: Backend, store: Store) -> None:
    t0 = 1_700_000_000.0
    ids = store.add_sightings([_sighting(i, t0 + i * 3600, camera="c1" if i < 4 else "c2") for i in range(8)])
    assert store.purge_sightings(t0 + 2 * 3600) == 2
    assert store.erase_sightings(since=t0 + 3 * 3600, until=t0 + 6 * 3600, cameras=("c2",)) == ids[4:6]
    assert store.assign_sightings([ids[2], ids[6], 10**9], "wl", "named") == 2
    assert [s.person_id for s in store.get_sightings([ids[2], ids[3]])] == ["named", ""]
    assert store.erase_person_sightings("wl", "named") == [ids[2], ids[6]]
    assert store.erase_person_sightings("wl", "named") == []
    assert [s.id for s in store.scan_sightings("m")] == [ids[3], ids[7]]
    assert store.erase_sightings() == [ids[3], ids[7]] and store.count_sightings() == 0
    if backend.name == "sqlite":  # erased thumbnails leave nothing in the WAL
        wal = Path(backend.url + "-wal")
        assert not wal.exists() or b"face" not in wal.read_bytes()
        assert b"\xff\xd8face" not in Path(backend.url).read_bytes()


# ---- audit, cameras, tokens ---------------------------------------------------------------------
def test_audit_is_append_only(backend: Backend, store: Store) -> None:
    t0 = time.time()
    store.audit("alice", "admin", "CreateWatchlist", "vip", "OK")
    store.audit("bob", "operator", "EnrollPerson", "vip/p1", "OK", "images=2")
    store.audit("bob", "operator", "EnrollPerson", "vip/p2", "INVALID_ARGUMENT")
    rows = store.query_audit()
    assert [(r["actor"], r["action"], r["target"], r["result"]) for r in rows] == [
        ("alice", "CreateWatchlist", "vip", "OK"),
        ("bob", "EnrollPerson", "vip/p1", "OK"), ("bob", "EnrollPerson", "vip/p2", "INVALID_ARGUMENT")]
    assert rows[1]["detail"] == "images=2" and rows[0]["ts"] >= t0 - 1 and rows[0]["role"] == "admin"
    assert [r["target"] for r in store.query_audit(action="EnrollPerson", after_id=rows[1]["id"])] == ["vip/p2"]
    assert len(store.query_audit(limit=1)) == 1 and store.query_audit(since=time.time() + 60) == []
    for sql in ("UPDATE audit SET actor='mallory'", "DELETE FROM audit"):
        with pytest.raises(Exception, match="append-only"):
            backend.raw(sql)
    if backend.name == "postgresql":
        with pytest.raises(Exception, match="append-only"):
            backend.raw("TRUNCATE audit")
    assert len(store.query_audit()) == 3


def test_cameras(store: Store) -> None:
    store.save_camera("door", "rtsp://10.0.0.1/s", {"fps": "5"})
    store.save_camera("gate", "push", {})
    store.save_camera("door", "rtsp://10.0.0.2/s", {"fps": "10"})  # replaces
    assert sorted(store.list_camera_defs()) == [("door", "rtsp://10.0.0.2/s", {"fps": "10"}), ("gate", "push", {})]
    assert [c for c, _, _ in store.list_camera_defs()] == ["gate", "door"]  # in the order last saved
    store.delete_camera("door")
    store.delete_camera("door")  # idempotent
    assert store.list_camera_defs() == [("gate", "push", {})]


def test_tokens(store: Store) -> None:
    created = store.create_token("ops", "operator", "h1")
    assert created > 0 and store.token_by_hash("h1") == ("ops", "operator", "")
    store.create_token("gate", "gateway", "h5", '{"cameras": ["door-*"], "identities": false}')
    assert store.token_by_hash("h5") == ("gate", "gateway", '{"cameras": ["door-*"], "identities": false}')
    store.revoke_token("gate")
    with pytest.raises(AlreadyExistsError, match="revoke it first"):
        store.create_token("ops", "admin", "h2")
    with pytest.raises(InvalidArgumentError):
        store.create_token("", "admin", "h3")
    assert store.token_by_hash("unknown") is None
    r = store.revoke_token("ops")
    assert (r["name"], r["role"], r["created"]) == ("ops", "operator", created) and r["revoked"] >= created
    assert store.token_by_hash("h1") is None
    with pytest.raises(NotFoundError):
        store.revoke_token("ops")
    store.create_token("ops", "admin", "h4")  # the name is free again
    assert [(t["name"], t["role"], t["revoked"] > 0) for t in store.list_tokens()] == [
        ("ops", "operator", True), ("gate", "gateway", True), ("ops", "admin", False)]


# ---- opening --------------------------------------------------------------------------------------
def test_open_store_urls(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/a.db")  # sqlite:////abs/path (SQLAlchemy style)
    try:
        assert Path(s.path).resolve() == (tmp_path / "a.db").resolve()  # type: ignore[attr-defined]
    finally:
        s.close()
    with pytest.raises(ConfigError, match="unknown scheme 'mysql'") as err:
        open_store("mysql://root:hunter2@db/x")
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_wrong_postgres_url_fails_fast_naming_it() -> None:
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://fe:s3cret@127.0.0.1:{port}/nodb"
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError) as err:
        open_store(url)
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert f"postgresql://fe:***@127.0.0.1:{port}/nodb" in msg and "s3cret" not in msg


def test_unknown_postgres_database_fails_naming_it(pg_server) -> None:  # noqa: ANN001
    with pytest.raises(StoreUnavailableError, match="no_such_db"):
        open_store(pg_server.url("no_such_db"))


def test_postgres_survives_a_crash_and_reconnects(pg_server, pg_url: str) -> None:  # noqa: ANN001
    """Acknowledged writes survive a server crash (immediate stop: no shutdown checkpoint); the store
    reports unhealthy while the server is down, then reconnects (pool and listener) on its own."""
    s = open_store(pg_url)
    try:
        pg_server.checkpoint()  # the writes below are then only in the WAL when the server dies
        s.create_watchlist("wl")
        s.upsert_person(Person("wl", "p"), _emb(1), "m")
        s.add_event(_event(1, time.time()))
        got: list[str] = []
        s.subscribe_changes(got.append)
        pg_server.stop("immediate")
        assert "does not answer" in s.health()
        pg_server.start_again()
        deadline = time.monotonic() + 60
        while s.health() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert s.health() == ""
        assert s.get_person("wl", "p").template_count == 1 and s.get_event("ev1").camera_id == "c1"
        while got.count("reconnect") < 2 and time.monotonic() < deadline:  # the listener came back
            time.sleep(0.1)
        assert got.count("reconnect") == 2, got
        mark = len(got)
        s.add_event(_event(2, time.time()))
        while "events" not in got[mark:] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "events" in got[mark:], got  # and hears changes again
    finally:
        s.close()
