"""Service hardening (issue 10, items 5, 6, 8, 9, 10): thread exhaustion, audit gaps and throttling,
revocation of open streams, capture-time window, disk full, damaged data and local manifests.

Everything runs on loopback against a real server with the real models; every wait is bounded."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.cli.main import main as cli
from engine.client import Client
from engine.config import Config
from engine.errors import FaceEngineError, ModelError
from engine.models.registry import LOCAL_MANIFEST, ModelRegistry, load_manifest, manifest_path
from engine.service.auth import METHOD_ROLES, ROLES, create_token
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.store.base import EventQuery
from engine.store.sqlite import SQLiteStore
from tests.conftest import IMAGES
from tests.procs import wait_for

OBAMA = (IMAGES / "obama.jpg").read_bytes()
OBAMA2 = (IMAGES / "obama2.jpg").read_bytes()
BIDEN = (IMAGES / "biden.jpg").read_bytes()


def _serve(cfg: Config, analyzer) -> FaceEngineServer:  # noqa: ANN001
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    return FaceEngineServer(cfg, analyzer=analyzer).start()


def _tokens(srv: FaceEngineServer) -> dict[str, str]:
    return {role: create_token(srv.store, f"{role}-1", role, ["door"] if role == "gateway" else ())[0]
            for role in ROLES}


def _code(fn) -> grpc.StatusCode:  # noqa: ANN001
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _wait(pred, timeout: float = 10.0) -> bool:  # noqa: ANN001
    return wait_for(pred, timeout, every=0.02)


class _Held:
    """Long-lived streams opened by the test, each followed by a daemon thread; closed at the end."""

    def __init__(self) -> None:
        self.calls: list[grpc.Call] = []
        self.codes: list[grpc.StatusCode | None] = []
        self.gate = threading.Event()

    def follow(self, call) -> int:  # noqa: ANN001
        i = len(self.calls)
        self.calls.append(call)
        self.codes.append(None)

        def run() -> None:
            try:
                for _ in call:
                    pass
                self.codes[i] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                self.codes[i] = exc.code()

        threading.Thread(target=run, daemon=True).start()
        return i

    def idle_frames(self) -> Iterator[pb.Frame]:
        self.gate.wait(60)
        return
        yield  # pragma: no cover

    def close(self) -> None:
        self.gate.set()
        for c in self.calls:
            c.cancel()


# ---- 5. thread exhaustion ----------------------------------------------------------------------
def test_health_and_admin_answer_while_streams_and_subscriptions_saturate(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.server.max_workers = 16  # 8 long-lived streams at most, 8 threads kept for unary calls and health
    cfg.server.max_subscriptions_per_token = 3
    srv = _serve(cfg, analyzer)
    held = _Held()
    try:
        tokens = _tokens(srv)
        tokens["operator-2"] = create_token(srv.store, "operator-2", "operator")[0]
        admin = Client(srv.address, token=tokens["admin"])
        admin.ensure_push_camera("door")
        gw = Client(srv.address, token=tokens["gateway"])
        for _ in range(6):
            held.follow(gw.ingest.StreamFrames(held.idle_frames(), metadata=gw.metadata))
        assert _wait(lambda: srv.metrics.registry.get_sample_value("faceengine_active_streams") == 6)
        ops = [Client(srv.address, token=tokens[n]) for n in ("operator", "operator-2")]
        subs = [held.follow(ops[i % 2].matches.SubscribeMatches(pb.MatchFilter(), metadata=ops[i % 2].metadata))
                for i in range(12)]
        # 2 subscriptions fit beside 6 ingest streams; the other 10 are refused at once, not queued
        assert _wait(lambda: sum(held.codes[i] == grpc.StatusCode.RESOURCE_EXHAUSTED for i in subs) == 10), \
            held.codes
        assert len(srv.engine.bus) == 2
        health = health_pb2_grpc.HealthStub(admin.channel)
        lat_h, lat_a = [], []
        for _ in range(7):
            t0 = time.perf_counter()
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                health_pb2.HealthCheckResponse.SERVING
            lat_h.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            admin.cameras.ListCameras(pb.ListCamerasRequest(), metadata=admin.metadata, timeout=2)
            lat_a.append(time.perf_counter() - t0)
        assert statistics.median(lat_h) < 0.1 and statistics.median(lat_a) < 0.1, (lat_h, lat_a)
        # the refusal says what to do
        try:
            list(ops[0].matches.SubscribeMatches(pb.MatchFilter(), metadata=ops[0].metadata, timeout=5))
            raise AssertionError("expected RESOURCE_EXHAUSTED")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "server." in exc.details()
    finally:
        held.close()
        srv.stop(grace=1)


def test_subscription_caps_per_token_and_global(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.server.max_subscriptions_per_token = 2
    cfg.server.max_subscriptions = 3
    srv = _serve(cfg, analyzer)
    held = _Held()
    try:
        tokens = _tokens(srv)
        tokens["operator-2"] = create_token(srv.store, "operator-2", "operator")[0]
        a, b = (Client(srv.address, token=tokens[n]) for n in ("operator", "operator-2"))
        for _ in range(2):
            held.follow(a.matches.SubscribeMatches(pb.MatchFilter(), metadata=a.metadata))
        assert _wait(lambda: len(srv.engine.bus) == 2)
        with pytest.raises(grpc.RpcError) as per_token:
            list(a.matches.SubscribeMatches(pb.MatchFilter(), metadata=a.metadata, timeout=5))
        assert per_token.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_subscriptions_per_token" in per_token.value.details()
        held.follow(b.matches.SubscribeMatches(pb.MatchFilter(), metadata=b.metadata))
        assert _wait(lambda: len(srv.engine.bus) == 3)
        with pytest.raises(grpc.RpcError) as glob:
            list(b.matches.SubscribeMatches(pb.MatchFilter(), metadata=b.metadata, timeout=5))
        assert glob.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_subscriptions" in glob.value.details()
        held.calls[0].cancel()  # a slot frees when a subscriber leaves
        assert _wait(lambda: len(srv.engine.bus) == 2)
        held.follow(b.matches.SubscribeMatches(pb.MatchFilter(), metadata=b.metadata))
        assert _wait(lambda: len(srv.engine.bus) == 3)
    finally:
        held.close()
        srv.stop(grace=1)


# ---- 6. audit gaps, throttling, fail closed, revocation ----------------------------------------
def _generic(ch: grpc.Channel, name: str, md: tuple) -> grpc.StatusCode:
    svc, meth = name.strip("/").split("/")
    # every service of the API, whichever .proto file declares it (faceengine.proto, sightings.proto, ...)
    m = descriptor_pool.Default().FindServiceByName(svc).methods_by_name[meth]
    req = message_factory.GetMessageClass(m.input_type)()
    if meth == "SubscribeMatches":
        req.camera_ids.append("no-such-camera")
    out = message_factory.GetMessageClass(m.output_type).FromString
    ser = type(req).SerializeToString
    if m.client_streaming and m.server_streaming:
        return _code(lambda: list(ch.stream_stream(name, ser, out)(iter([]), metadata=md, timeout=30)))
    if m.server_streaming:
        return _code(lambda: list(ch.unary_stream(name, ser, out)(req, metadata=md, timeout=30)))
    return _code(lambda: ch.unary_unary(name, ser, out)(req, metadata=md, timeout=30))


def test_every_denial_is_audited(cfg: Config, analyzer) -> None:  # noqa: ANN001
    srv = _serve(cfg, analyzer)
    try:
        tokens = _tokens(srv)
        want_denied: set[tuple[str, str]] = set()
        with grpc.insecure_channel(srv.address) as ch:
            for name in METHOD_ROLES:
                assert _generic(ch, name, ()) == grpc.StatusCode.UNAUTHENTICATED
                for role in ROLES:
                    if role not in METHOD_ROLES[name]:
                        md = (("authorization", f"Bearer {tokens[role]}"),)
                        assert _generic(ch, name, md) == grpc.StatusCode.PERMISSION_DENIED
                        want_denied.add((f"{role}-1", name.rsplit("/", 1)[-1]))
        rows = srv.store.query_audit(limit=1000)
        unauth = {r["action"] for r in rows if r["result"] == "UNAUTHENTICATED"}
        assert unauth == {n.rsplit("/", 1)[-1] for n in METHOD_ROLES}
        assert all("peer=" in r["detail"] for r in rows if r["result"] == "UNAUTHENTICATED")
        denied = {(r["actor"], r["action"]) for r in rows if r["result"] == "PERMISSION_DENIED"}
        assert denied == want_denied
        for probe in [("gateway-1", "GetCamera"), ("gateway-1", "ListPersons"), ("operator-1", "ListTokens"),
                      ("operator-1", "StreamFrames")]:
            assert probe in denied, probe
    finally:
        srv.stop(grace=1)


def test_failed_auth_is_throttled_per_peer_and_aggregated(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.auth.max_failures = 5
    cfg.auth.failure_window_s = 3.0
    srv = _serve(cfg, analyzer)
    try:
        tokens = _tokens(srv)
        bad = Client(srv.address, token="fe_guess")
        codes = [_code(lambda: bad.watchlists.ListWatchlists(pb.Empty(), metadata=bad.metadata, timeout=10))
                 for _ in range(40)]
        assert codes[:5] == [grpc.StatusCode.UNAUTHENTICATED] * 5
        assert set(codes[5:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # while the peer is throttled even a good token from it is refused without a look-up
        good = Client(srv.address, token=tokens["admin"])
        assert _code(lambda: good.watchlists.ListWatchlists(pb.Empty(), metadata=good.metadata, timeout=10)) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
        rows = srv.store.query_audit(limit=1000)
        assert sum(r["result"] == "UNAUTHENTICATED" for r in rows) == 5
        assert sum(r["result"] == "THROTTLED" for r in rows) == 1  # one aggregate row, not 36
        time.sleep(3.2)  # the window ends: calls are checked again and the suppressed count is recorded
        assert _code(lambda: good.watchlists.ListWatchlists(pb.Empty(), metadata=good.metadata, timeout=10)) == \
            grpc.StatusCode.OK
        agg = [r for r in srv.store.query_audit(limit=1000) if r["result"] == "THROTTLED"]
        assert len(agg) == 2 and "refused=36" in agg[-1]["detail"], agg
    finally:
        srv.stop(grace=1)


def _fill_store(store: SQLiteStore) -> None:
    """Make the store's file full for real: cap its page count, then fill the audit table's last
    page (SQLite answers SQLITE_FULL exactly as on a full disk)."""
    with store._lock:
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    for size in (3000, 800, 200, 50, 10, 1):
        for _ in range(200):
            try:
                store._db.execute("INSERT INTO audit (ts, actor, role, action, target, result, detail) "
                                  "VALUES (0, 'filler', '', '', '', '', ?)", ("x" * size,))
            except sqlite3.OperationalError as exc:
                assert "full" in str(exc)
                break


def _unfill_store(store: SQLiteStore) -> None:
    with store._lock:
        store._db.execute("PRAGMA max_page_count = 1073741823")


def test_mutations_fail_closed_when_audit_cannot_be_written(cfg: Config, analyzer) -> None:  # noqa: ANN001
    srv = _serve(cfg, analyzer)
    try:
        tokens = _tokens(srv)
        admin = Client(srv.address, token=tokens["admin"])
        _fill_store(srv.store)
        with pytest.raises(grpc.RpcError) as exc:
            admin.watchlists.CreateWatchlist(pb.CreateWatchlistRequest(name="ghost"), metadata=admin.metadata)
        assert exc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "audit" in exc.value.details() and "disk is full" in exc.value.details()
        _unfill_store(srv.store)
        assert [w.name for w in srv.store.list_watchlists()] == []  # refused, nothing written
        admin.ensure_watchlist("real")
        assert [w.name for w in srv.store.list_watchlists()] == ["real"]
    finally:
        srv.stop(grace=1)


def test_revoked_token_ends_open_streams(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.auth.recheck_s = 0.5
    srv = _serve(cfg, analyzer)
    held = _Held()
    try:
        tokens = _tokens(srv)
        Client(srv.address, token=tokens["admin"]).ensure_push_camera("door")
        op, gw = Client(srv.address, token=tokens["operator"]), Client(srv.address, token=tokens["gateway"])
        sub = held.follow(op.matches.SubscribeMatches(pb.MatchFilter(), metadata=op.metadata))
        ing = held.follow(gw.ingest.StreamFrames(held.idle_frames(), metadata=gw.metadata))
        assert _wait(lambda: len(srv.engine.bus) == 1
                     and srv.metrics.registry.get_sample_value("faceengine_active_streams") == 1)
        time.sleep(0.5)
        assert held.codes == [None, None]
        srv.store.revoke_token("operator-1")
        srv.store.revoke_token("gateway-1")
        t0 = time.monotonic()
        assert _wait(lambda: None not in held.codes, timeout=8), held.codes
        assert time.monotonic() - t0 < 5
        assert held.codes[sub] == held.codes[ing] == grpc.StatusCode.UNAUTHENTICATED
    finally:
        held.close()
        srv.stop(grace=1)


# ---- 8. capture-time window ----------------------------------------------------------------------
def _frames(times: list[float], image: bytes = OBAMA2) -> list[pb.Frame]:
    return [pb.Frame(camera_id="door", sequence=i + 1, capture_time=t, encoded=image) for i, t in enumerate(times)]


def test_capture_times_outside_the_window_are_refused_in_band(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.auth.enabled = False
    srv = _serve(cfg, analyzer)
    try:
        with Client(srv.address, token="") as c:
            c.ensure_push_camera("door")
            now = time.time()
            times = [1.0, 4102444800.0, math.inf, math.nan, -5.0, now - 2 * 86400, now + 3600, now - 10, 0.0]
            res = {r.sequence: r for r in c.stream(iter(_frames(times)))}
        for seq in range(1, 8):
            assert res[seq].error.code_name == "INVALID_ARGUMENT", (seq, res[seq])
            assert "capture_time" in res[seq].error.message and "limits.capture_time" in res[seq].error.message
        assert not res[8].error.code_name and len(res[8].faces) == 1  # 10 s old: fine
        assert not res[9].error.code_name  # unset: server time
    finally:
        srv.stop(grace=1)


def test_capture_time_clamp_policy_uses_server_time(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.auth.enabled = False
    cfg.pipeline.tracking = False
    cfg.limits.capture_time_policy = "clamp"
    srv = _serve(cfg, analyzer)
    try:
        with Client(srv.address, token="") as c:
            c.ensure_watchlist("vip")
            c.enroll("vip", "obama", [OBAMA], "Barack Obama")
            c.ensure_push_camera("door")
            res = sorted(c.stream(iter(_frames([1.0, 4102444800.0, math.inf]))), key=lambda r: r.sequence)
        assert [r.error.code_name for r in res] == ["", "", "INVALID_ARGUMENT"]  # non-finite: always refused
        assert _wait(lambda: len(srv.store.query_events(EventQuery())[0]) == 2)
        for e in srv.store.query_events(EventQuery())[0]:
            assert abs(e.timestamp - time.time()) < 120, e.timestamp
    finally:
        srv.stop(grace=1)


def test_capture_time_config_is_validated(cfg: Config, analyzer) -> None:  # noqa: ANN001
    from engine.errors import ConfigError

    c = Config.load(env={})
    assert c.limits.capture_time_past_s == 86400 and c.limits.capture_time_future_s == 300
    assert c.limits.capture_time_policy == "refuse"
    # refused where it is set: on assignment, and on load naming the source, field and value
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="capture_time_policy"):
        cfg.limits.capture_time_policy = "ignore"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="CAPTURE_TIME_POLICY: limits.capture_time_policy = 'ignore'"):
        Config.load(env={"FACEENGINE_LIMITS_CAPTURE_TIME_POLICY": "ignore"})
    with pytest.raises(ConfigError, match="limits.capture_time_past_s = -1"):
        Config.load(env={}).update({"limits": {"capture_time_past_s": -1}}, source="test")


# ---- 9. disk full --------------------------------------------------------------------------------
@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MB file system (tmpfs) for the store: writes fail with ENOSPC exactly as on a full disk.
    Mounting needs root (CAP_SYS_ADMIN); elsewhere the test skips, saying so."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        pytest.skip(f"a small real disk needs a tmpfs mount, which failed here: {res.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_disk(path: Path) -> None:
    """Write a ballast file until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def test_health_is_not_serving_while_a_real_disk_is_full(cfg: Config, analyzer, small_disk: Path) -> None:  # noqa: ANN001
    """On a real full disk (not SQLite's page cap) a rolled-back write probe never reaches the disk and small
    commits still fit WAL space allocated earlier: health must follow the disk itself."""
    cfg.auth.enabled = False
    cfg.server.health_probe_s = 0.1
    cfg.store.path = str(small_disk / "engine.db")
    srv = _serve(cfg, analyzer)
    try:
        with Client(srv.address, token="") as c:
            c.ensure_watchlist("vip")
            health = health_pb2_grpc.HealthStub(c.channel)

            def status() -> int:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status

            assert status() == health_pb2.HealthCheckResponse.SERVING
            _fill_disk(small_disk / "ballast")
            codes = []
            for i in range(30):  # the first writes may still fit WAL pages; then none does
                try:
                    c.enroll("vip", f"p{i}", [OBAMA, BIDEN])
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)
                    assert "disk is full" in (exc.details() or ""), exc.details()
                    if len(codes) - codes.count("OK") >= 3:
                        break
            assert set(codes[-3:]) <= {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}, codes  # (audit first: UNAVAILABLE)
            assert _wait(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=5)
            time.sleep(1.0)  # ten probes later: still not serving, the disk is still full
            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
            (small_disk / "ballast").unlink()  # space freed: back without a restart
            assert _wait(lambda: status() == health_pb2.HealthCheckResponse.SERVING, timeout=5)
            c.enroll("vip", "after", [OBAMA])
    finally:
        srv.stop(grace=1)


def test_disk_full_is_resource_exhausted_and_health_follows(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.auth.enabled = False
    cfg.pipeline.tracking = False
    cfg.server.health_probe_s = 0.2
    srv = _serve(cfg, analyzer)
    try:
        with Client(srv.address, token="") as c:
            c.ensure_watchlist("vip")
            c.enroll("vip", "obama", [OBAMA], "Barack Obama")
            c.ensure_push_camera("door")
            health = health_pb2_grpc.HealthStub(c.channel)

            def status() -> int:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status

            assert status() == health_pb2.HealthCheckResponse.SERVING
            _fill_store(srv.store)
            res = list(c.stream(iter(_frames([time.time()] * 3))))
            failed = [r for r in res if r.error.code_name]  # an event may still fit a free page; then none does
            assert failed and len(res) == 3
            for r in failed:  # the match could not be stored: said so, precisely
                assert r.error.code_name == "RESOURCE_EXHAUSTED", r
                assert "disk is full" in r.error.message and str(Path(cfg.store.path).parent) in r.error.message
            with pytest.raises(grpc.RpcError) as enrol:
                c.enroll("vip", "biden", [BIDEN], "Joe Biden")
            assert enrol.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            assert "disk is full" in enrol.value.details()
            assert _wait(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=5)
            _unfill_store(srv.store)  # space freed: back without a restart
            assert _wait(lambda: status() == health_pb2.HealthCheckResponse.SERVING, timeout=5)
            res = list(c.stream(iter(_frames([time.time()]))))
            assert not res[0].error.code_name and res[0].faces[0].match.person_id == "obama"
            c.enroll("vip", "biden", [BIDEN], "Joe Biden")
    finally:
        srv.stop(grace=1)


# ---- 10. damaged data ----------------------------------------------------------------------------
def test_corrupted_database_is_reported_with_what_to_do(cfg: Config, analyzer, tmp_path: Path,  # noqa: ANN001
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "broken.db"
    SQLiteStore(db).close()
    raw = bytearray(db.read_bytes())
    raw[:100] = np.random.default_rng(1).integers(0, 256, 100, dtype=np.uint8).tobytes()  # header gone
    db.write_bytes(bytes(raw))
    cfg.store.path = str(db)
    with pytest.raises(FaceEngineError) as exc:
        _serve(cfg, analyzer)
    msg = str(exc.value)
    assert str(db) in msg and "backup" in msg and "faceengine store check" in msg
    assert cli(["serve", "--dev", "--port", "0", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "faceengine store check" in err
    assert cli(["store", "check", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out


def test_bad_templates_are_skipped_named_and_reported(cfg: Config, analyzer, caplog: pytest.LogCaptureFixture,  # noqa: ANN001
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from engine.gallery.gallery import Gallery

    store = SQLiteStore(cfg.store.path)
    g = Gallery(store, analyzer.dim, analyzer.model_name)
    g.create_watchlist("vip")
    for pid, img in (("obama", OBAMA), ("biden", BIDEN), ("ghost", OBAMA2)):
        _, emb = analyzer.single_face(cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR), pid)
        g.enroll("vip", pid, emb[None], pid)
    assert cli(["store", "check", "--db", cfg.store.path]) == 0
    assert "OK" in capsys.readouterr().out
    dim = analyzer.dim
    store._db.execute("UPDATE templates SET embedding=? WHERE person_id='biden'", (bytes(4 * dim),))  # zeroed
    nan = np.full(dim, np.nan, np.float32).tobytes()
    store._db.execute("UPDATE templates SET embedding=? WHERE person_id='ghost'", (nan,))
    store.close()
    store = SQLiteStore(cfg.store.path)
    with caplog.at_level(logging.WARNING):
        g = Gallery(store, analyzer.dim, analyzer.model_name)
    assert len(g) == 1  # only obama's template is indexed
    text = caplog.text
    assert "vip/biden" in text and "vip/ghost" in text and "norm" in text and "finite" in text
    store.close()
    assert cli(["store", "check", "--db", cfg.store.path]) == 1
    out = capsys.readouterr().out
    assert "vip/biden" in out and "vip/ghost" in out and "vip/obama" not in out and "DAMAGED" in out


def _local_manifest(model_dir: Path, entries: dict[str, dict]) -> None:
    (model_dir / LOCAL_MANIFEST).write_text(json.dumps({"models": entries}))


def test_local_manifest_cannot_redefine_shipped_models_or_skip_hashes(tmp_path: Path) -> None:
    shipped = load_manifest()
    yunet = json.loads(manifest_path().read_text())["models"]["yunet"]
    _local_manifest(tmp_path, {"yunet": {**yunet, "sha256": "0" * 64}})
    with pytest.raises(ModelError, match="yunet.*shipped"):
        ModelRegistry(tmp_path)
    _local_manifest(tmp_path, {"mine": {"file": "mine.onnx", "task": "embedding", "family": "arcface"}})
    with pytest.raises(ModelError, match="mine.*sha256"):
        ModelRegistry(tmp_path)
    with pytest.raises(ModelError, match="allow_unverified_local"):
        ModelRegistry(tmp_path)
    reg = ModelRegistry(tmp_path, allow_unverified_local=True)  # the explicit opt-in
    assert "mine" in reg.specs and reg.specs["yunet"] == shipped["yunet"]  # untouched: not in this file
    _local_manifest(tmp_path, {"mine": {"file": "mine.onnx", "task": "embedding", "family": "arcface",
                                        "sha256": "a" * 64}})
    assert ModelRegistry(tmp_path).specs["mine"].sha256 == "a" * 64  # a hashed new model is fine
    c = Config.load(env={"FACEENGINE_MODELS_ALLOW_UNVERIFIED_LOCAL": "true"})
    assert c.models.allow_unverified_local is True
