"""Crash safety with a real `faceengine serve` process: SIGKILL mid-enrolment and mid-stream
loses nothing that was acknowledged and leaves no half-written person; SIGTERM drains and
exits 0; the start-up consistency check repairs a damaged store."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from engine.client import Client, FrameFeeder, encode_jpeg
from engine.config import Config
from engine.gallery.gallery import Gallery
from engine.service.auth import create_token
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.store.sqlite import SQLiteStore
from tests.conftest import IMAGES, ROOT

PHOTOS = [(IMAGES / f"{n}.jpg").read_bytes() for n in ("obama", "obama2", "biden")]


class Proc:
    """`faceengine serve` in a subprocess on a free loopback port."""

    def __init__(self, db: Path, model_dir: Path, tmp: Path, env: dict[str, str] | None = None) -> None:
        ready = tmp / f"ready-{time.monotonic_ns()}"
        self.log = open(tmp / "server.log", "ab")  # noqa: SIM115 - closed in wait()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
             "--ready-file", str(ready), "--model-dir", str(model_dir), "--db", str(db)],
            cwd=ROOT, stdout=self.log, stderr=self.log, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.p.kill()
                raise RuntimeError(f"server did not start: {(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.05)
        self.address = ready.read_text()

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def wait(self) -> int:
        rc = self.p.wait(timeout=60)
        self.log.close()
        return rc


def _admin_token(db: Path) -> str:
    store = SQLiteStore(db)
    try:
        return create_token(store, f"admin-{time.monotonic_ns()}", "admin")[0]
    finally:
        store.close()


def _integrity(db: Path) -> None:
    """Checks on the raw file, before any server (and its repair step) touches it."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM templates t WHERE NOT EXISTS (SELECT 1 FROM persons p "
                           "WHERE p.watchlist=t.watchlist AND p.person_id=t.person_id)").fetchone()[0] == 0
        assert con.execute("SELECT COUNT(*) FROM persons p WHERE NOT EXISTS (SELECT 1 FROM templates t "
                           "WHERE p.watchlist=t.watchlist AND p.person_id=t.person_id)").fetchone()[0] == 0
    finally:
        con.close()


def _restart(cfg: Config, db: Path, analyzer) -> FaceEngineServer:  # noqa: ANN001
    cfg.store.path = str(db)
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    ids, _, _ = srv.store.templates(srv.gallery.model)
    assert srv.gallery.vector_ids() == set(ids.tolist())  # the FAISS index equals SQLite exactly
    return srv


def test_sigkill_mid_enrolment_keeps_every_acknowledged_person(cfg: Config, model_dir: Path, analyzer,  # noqa: ANN001
                                                              tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    token = _admin_token(db)
    proc = Proc(db, model_dir, tmp_path)
    acked: list[str] = []
    attempted: list[str] = []
    stop = threading.Event()
    with Client(proc.address, token=token) as c:
        c.ensure_watchlist("vip")

        def enrol_forever() -> None:
            i = 0
            while not stop.is_set():
                pid = f"p{i:04d}"
                attempted.append(pid)
                try:
                    c.enroll("vip", pid, [PHOTOS[i % 3], PHOTOS[(i + 1) % 3]], f"Person {i}")
                except grpc.RpcError:
                    return
                acked.append(pid)
                i += 1

        t = threading.Thread(target=enrol_forever, daemon=True)
        t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 8 and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.01)
        proc.signal(signal.SIGKILL)
        stop.set()
        t.join(timeout=60)
    assert proc.wait() == -signal.SIGKILL
    assert len(acked) >= 8
    _integrity(db)
    srv = _restart(cfg, db, analyzer)
    try:
        for pid in acked:
            assert srv.store.get_person("vip", pid).template_count == 2, pid
        in_flight = [p for p in attempted if p not in acked]
        for pid in in_flight:  # all or nothing
            ids = srv.store.template_ids("vip", pid)
            assert len(ids) in (0, 2)
        assert len(srv.gallery) == 2 * len(srv.store.list_persons("vip", 10_000))
        hit = srv.gallery.search(srv.analyzer.single_face(cv2.imdecode(np.frombuffer(PHOTOS[2], np.uint8), 1))[1],
                                 top_k=1)[0]
        assert hit and hit[0].score > 0.9  # the restarted index answers from the persisted templates
    finally:
        srv.stop(grace=1)


def _scene() -> bytes:
    img = cv2.imread(str(IMAGES / "obama_and_biden.jpg"))
    return encode_jpeg(cv2.resize(img, (960, 685)))


def test_sigkill_mid_stream_keeps_every_delivered_event(cfg: Config, model_dir: Path, analyzer,  # noqa: ANN001
                                                        tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    token = _admin_token(db)
    proc = Proc(db, model_dir, tmp_path, env={"FACEENGINE_PIPELINE_TRACKING": "false"})  # an event per frame
    delivered: set[str] = set()
    lock = threading.Lock()
    with Client(proc.address, token=token) as c:
        c.ensure_watchlist("vip")
        c.enroll("vip", "obama", [PHOTOS[0]], "Barack Obama")
        c.ensure_push_camera("gate")
        sub = c.matches.SubscribeMatches(pb.MatchFilter(camera_ids=["gate"]), metadata=c.metadata)
        feeder = FrameFeeder()
        results = c.stream(iter(feeder))

        def follow() -> None:
            try:
                for ev in sub:
                    with lock:
                        delivered.add(ev.event_id)
            except grpc.RpcError:
                pass

        def read_results() -> None:
            try:
                for r in results:
                    with lock:
                        delivered.update(f.match.event_id for f in r.faces if f.match.event_id)
            except grpc.RpcError:
                pass

        threads = [threading.Thread(target=f, daemon=True) for f in (follow, read_results)]
        for t in threads:
            t.start()
        scene = _scene()
        deadline = time.monotonic() + 120
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            feeder.put(pb.Frame(camera_id="gate", sequence=seq, capture_time=time.time(), encoded=scene))
            with lock:
                if len(delivered) >= 6:
                    break
            time.sleep(0.03)
        proc.signal(signal.SIGKILL)
        feeder.close()
        for t in threads:
            t.join(timeout=60)
    assert proc.wait() == -signal.SIGKILL
    assert len(delivered) >= 6
    _integrity(db)
    srv = _restart(cfg, db, analyzer)
    try:
        with Client(srv.address, token=_admin_token(db)) as c:
            stored, page = set(), ""
            while True:
                resp = c.matches.QueryMatches(pb.QueryMatchesRequest(page_size=1000, page_token=page),
                                              metadata=c.metadata)
                stored |= {e.event_id for e in resp.events}
                page = resp.next_page_token
                if not page:
                    break
        assert delivered <= stored, f"{len(delivered - stored)} delivered events lost"
    finally:
        srv.stop(grace=1)


def test_sigterm_drains_queued_frames_and_exits_zero(model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    token = _admin_token(db)
    proc = Proc(db, model_dir, tmp_path, env={"FACEENGINE_PIPELINE_TRACKING": "false"})
    scene = _scene()
    with Client(proc.address, token=token) as c:
        c.ensure_watchlist("vip")
        c.enroll("vip", "obama", [PHOTOS[0]])
        c.ensure_push_camera("gate")
        feeder = FrameFeeder()
        for seq in range(1, 7):  # fewer than pipeline.queue_size: none is dropped
            feeder.put(pb.Frame(camera_id="gate", sequence=seq, capture_time=time.time(), encoded=scene))
        results: list[pb.FrameResult] = []
        it = c.stream(iter(feeder))
        results.append(next(it))  # the server is working on the queue now
        proc.signal(signal.SIGTERM)
        feeder.close()
        results.extend(it)
    assert proc.wait() == 0
    assert sorted(r.sequence for r in results) == list(range(1, 7))
    assert all(not r.HasField("error") for r in results)
    events = {f.match.event_id for r in results for f in r.faces if f.match.event_id}
    assert len(events) == 6
    _integrity(db)
    store = SQLiteStore(db)
    try:
        for e in events:  # flushed: every event the client saw is on disk
            store.get_event(e)
    finally:
        store.close()
    assert "SIGTERM: shutting down" in (tmp_path / "server.log").read_text()


def test_startup_check_repairs_a_damaged_store(cfg: Config, analyzer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    store = SQLiteStore(cfg.store.path)
    g = Gallery(store, analyzer.dim, analyzer.model_name)
    g.create_watchlist("vip")
    emb = analyzer.single_face(cv2.imdecode(np.frombuffer(PHOTOS[0], np.uint8), 1))[1]
    g.enroll("vip", "obama", emb[None])
    store.close()
    con = sqlite3.connect(cfg.store.path)  # damage it the way a foreign-keys-off writer could
    con.execute("PRAGMA foreign_keys=OFF")
    con.execute("INSERT INTO templates (watchlist, person_id, model, dim, embedding, created) "
                "VALUES ('vip', 'ghost', ?, ?, ?, 0)", (analyzer.model_name, analyzer.dim, emb.tobytes()))
    con.execute("INSERT INTO persons VALUES ('vip', 'hollow', '', '{}', 0, 0)")
    con.execute("INSERT INTO persons VALUES ('gone', 'lost', '', '{}', 0, 0)")
    con.commit()
    con.close()
    cfg.auth.enabled = False
    with caplog.at_level(logging.WARNING, logger="engine.service.server"):
        srv = _restart(cfg, Path(cfg.store.path), analyzer)
    try:
        assert "repaired" in caplog.text and "orphan_templates': 1" in caplog.text
        assert [p.person_id for p in srv.store.list_persons("vip")] == ["obama"]
        assert len(srv.gallery) == 1
        assert all(h.person_id == "obama" for h in srv.gallery.search(emb, top_k=5)[0])
    finally:
        srv.stop(grace=1)
    _integrity(Path(cfg.store.path))


def _gallery_of(cfg: Config, analyzer, n: int) -> list[str]:  # noqa: ANN001
    """Enrol `n` persons (real embeddings of real photos) into watchlist vip; their ids."""
    store = SQLiteStore(cfg.store.path)
    g = Gallery(store, analyzer.dim, analyzer.model_name)
    g.create_watchlist("vip")
    embs = [analyzer.single_face(cv2.imdecode(np.frombuffer(ph, np.uint8), 1))[1] for ph in PHOTOS]
    ids = [f"p{i:03d}" for i in range(n)]
    for i, pid in enumerate(ids):
        g.enroll("vip", pid, embs[i % len(embs)][None])
    store.close()
    return ids


def _damage_template_index(db: str) -> None:
    """The index templates_person loses every entry while the table rows stay intact (what a torn
    write or a bad copy of the file can leave): an empty partial index renamed to the full one."""
    con = sqlite3.connect(db)
    con.execute("DROP INDEX templates_person")
    con.execute("CREATE INDEX templates_person ON templates(watchlist, person_id) WHERE 0")
    con.execute("PRAGMA writable_schema=ON")
    con.execute("UPDATE sqlite_master SET sql='CREATE INDEX templates_person ON templates(watchlist, person_id)' "
                "WHERE name='templates_person'")
    con.commit()
    con.close()


def test_startup_rebuilds_a_damaged_index_and_keeps_every_person(cfg: Config, analyzer) -> None:  # noqa: ANN001
    from engine.cli.store_cmds import check_store

    ids = _gallery_of(cfg, analyzer, 12)
    _damage_template_index(cfg.store.path)
    problems, _ = check_store(cfg.store.path)
    assert any("missing from index templates_person" in p for p in problems)  # store check: DAMAGED
    cfg.auth.enabled = False
    srv = _restart(cfg, Path(cfg.store.path), analyzer)
    try:
        assert [p.person_id for p in srv.store.list_persons("vip")] == ids  # nobody erased
        assert len(srv.gallery) == len(ids)
        rows = srv.store.query_audit(action="store.repair")
        assert [(r["target"], r["result"]) for r in rows] == [("indexes", "REBUILT")]
        assert "missing from index templates_person" in rows[0]["detail"]
    finally:
        srv.stop(grace=1)
    assert check_store(cfg.store.path)[0] == []
    _integrity(Path(cfg.store.path))


def test_startup_refuses_a_store_still_damaged_after_reindex(cfg: Config, analyzer) -> None:  # noqa: ANN001
    from engine.errors import StoreDamagedError

    _gallery_of(cfg, analyzer, 3)
    con = sqlite3.connect(cfg.store.path)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='templates'").fetchone()[0]
    size = con.execute("PRAGMA page_size").fetchone()[0]
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    with open(cfg.store.path, "r+b") as f:  # the table's own page garbled: no index rebuild can help
        f.seek((root - 1) * size)
        f.write(b"\xee" * 64)
    def rows() -> list[tuple]:
        con = sqlite3.connect(cfg.store.path)
        try:
            return con.execute("SELECT * FROM persons").fetchall() + con.execute("SELECT * FROM audit").fetchall()
        finally:
            con.close()

    before = rows()
    assert len(before) == 3
    cfg.auth.enabled = False
    cfg.store.path, cfg.server.host, cfg.server.port, cfg.server.metrics_port = cfg.store.path, "127.0.0.1", 0, 0
    with pytest.raises(StoreDamagedError, match="restore it from a backup") as err:
        FaceEngineServer(cfg, analyzer=analyzer)
    assert "nothing was changed" in str(err.value)
    assert rows() == before  # refused: no person dropped, nothing written
