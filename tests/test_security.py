"""Security: tokens and roles over real gRPC, the access table, the audit log, erasure with
secure delete, retention, dev-mode refusal, and TLS / mutual TLS with certificates made here."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.cli.main import main as cli
from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.errors import ConfigError
from engine.service.auth import AUDITED, METHOD_ROLES, OPEN_PREFIXES, ROLES, create_token
from engine.service.proto import pb, spb
from engine.service.server import FaceEngineServer
from engine.store.base import EventQuery, MatchEvent
from engine.store.sqlite import SQLiteStore
from tests.conftest import IMAGES

OBAMA = (IMAGES / "obama.jpg").read_bytes()
OBAMA2 = (IMAGES / "obama2.jpg").read_bytes()
BIDEN = (IMAGES / "biden.jpg").read_bytes()


_PROTO_FILES = {mod.DESCRIPTOR.name: mod for mod in (pb, spb)}  # every proto file with services


def _all_methods() -> Iterator[tuple[str, object]]:
    for mod in _PROTO_FILES.values():
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                yield f"/{svc.full_name}/{m.name}", m


def _message(desc) -> type:  # noqa: ANN001
    """The generated class of a message descriptor, from whichever proto file defines it."""
    return getattr(_PROTO_FILES[desc.file.name], desc.name)


def _serve(cfg: Config, analyzer, **kw) -> FaceEngineServer:  # noqa: ANN001
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    return FaceEngineServer(cfg, analyzer=analyzer, **kw).start()


@pytest.fixture()
def secured(cfg: Config, analyzer):  # noqa: ANN001, ANN201
    """An auth-on server and one token per role (plus a revoked one)."""
    cfg.auth.max_failures = 1000  # the role matrix makes four failed authentications per RPC from one peer
    srv = _serve(cfg, analyzer)
    tokens = {role: create_token(srv.store, f"{role}-1", role, ["gate"] if role == "gateway" else ())[0]
              for role in ROLES}
    tokens["revoked"] = create_token(srv.store, "old", "admin")[0]
    srv.store.revoke_token("old")
    yield srv, tokens
    srv.stop(grace=1)


def _code(fn) -> grpc.StatusCode:  # noqa: ANN001
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _harmless_request(name: str, m) -> object:  # noqa: ANN001
    """A request that has no side effect whatever the role (fails validation or finds nothing)."""
    req = _message(m.input_type)()
    if name.endswith("/SubscribeMatches"):
        req.camera_ids.append("no-such-camera")  # NOT_FOUND at once instead of a live stream
    return req


def _generic_call(channel: grpc.Channel, name: str, m, md: tuple) -> grpc.StatusCode:  # noqa: ANN001
    req = _harmless_request(name, m)
    out = _message(m.output_type).FromString
    ser = type(req).SerializeToString
    if m.client_streaming and m.server_streaming:
        return _code(lambda: list(channel.stream_stream(name, ser, out)(iter([]), metadata=md, timeout=30)))
    if m.server_streaming:
        return _code(lambda: list(channel.unary_stream(name, ser, out)(req, metadata=md, timeout=30)))
    if m.client_streaming:
        return _code(lambda: channel.stream_unary(name, ser, out)(iter([]), metadata=md, timeout=30))
    return _code(lambda: channel.unary_unary(name, ser, out)(req, metadata=md, timeout=30))


def test_access_table_lists_every_rpc_and_nothing_else() -> None:
    names = {n for n, _ in _all_methods()}
    assert names == set(METHOD_ROLES), "every RPC must be in the access table (unlisted ones are denied)"
    assert all(roles and roles <= set(ROLES) and "admin" in roles for roles in METHOD_ROLES.values())
    assert set(AUDITED) <= names
    assert {n for n, r in METHOD_ROLES.items() if "gateway" in r} == {"/faceengine.v1.Ingest/StreamFrames",
                                                                      "/faceengine.v1.Cameras/AddCamera"}
    # no RPC can edit or delete the audit log
    assert {m.name for m in pb.DESCRIPTOR.services_by_name["Admin"].methods} == {
        "QueryAudit", "CreateToken", "ListTokens", "RevokeToken", "WhoAmI"}


def test_role_matrix_over_grpc(secured) -> None:  # noqa: ANN001
    srv, tokens = secured
    with grpc.insecure_channel(srv.address) as ch:
        for name, m in _all_methods():
            for who in ("none", "garbage", "basic", "revoked"):
                md = {"none": (), "garbage": (("authorization", "Bearer fe_nope"),),
                      "basic": (("authorization", f"Basic {tokens['admin']}"),),
                      "revoked": (("authorization", f"Bearer {tokens['revoked']}"),)}[who]
                assert _generic_call(ch, name, m, md) == grpc.StatusCode.UNAUTHENTICATED, (name, who)
            for role in ROLES:
                code = _generic_call(ch, name, m, (("authorization", f"Bearer {tokens[role]}"),))
                if role in METHOD_ROLES[name]:
                    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                                        grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (name, role, code)
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (name, role, code)
        # health checking and reflection stay open
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=10))
        assert "faceengine.v1.Admin" in {s.name for s in resp.list_services_response.service}
    assert all(any(p.startswith(x) for x in ("/grpc.health", "/grpc.reflection")) for p in OPEN_PREFIXES)


def test_roles_do_real_work_and_everything_is_audited(secured) -> None:  # noqa: ANN001
    srv, tokens = secured
    admin, op, gw = (Client(srv.address, token=tokens[r]) for r in ("admin", "operator", "gateway"))
    admin.ensure_watchlist("vip")
    admin.enroll("vip", "obama", [OBAMA], "Barack Obama")
    admin.ensure_push_camera("gate")
    gw.ensure_push_camera("gate")  # a gateway may add its own push camera: here it exists already
    assert _code(lambda: gw.ensure_push_camera("other")) == grpc.StatusCode.PERMISSION_DENIED  # not its camera
    frame = pb.Frame(camera_id="gate", sequence=1, capture_time=time.time(), encoded=OBAMA2)
    res = list(gw.stream(iter([frame])))
    # the face is found and matched (the operator's query below sees the event), but a gateway whose scope
    # does not grant identities is told nothing of who it was
    assert len(res) == 1 and res[0].faces and not res[0].faces[0].HasField("match")
    hits = op.matches.SearchByImage(pb.SearchRequest(image=pb.Image(encoded=OBAMA2)), metadata=op.metadata).hits
    assert hits[0].person_id == "obama" and hits[0].is_match
    assert op.matches.Verify(pb.VerifyRequest(image_a=pb.Image(encoded=OBAMA), image_b=pb.Image(encoded=BIDEN)),
                             metadata=op.metadata).same_person is False
    assert len(op.matches.QueryMatches(pb.QueryMatchesRequest(person_id="obama"), metadata=op.metadata).events) == 1
    assert _code(lambda: op.watchlists.CreateWatchlist(pb.CreateWatchlistRequest(name="x"), metadata=op.metadata)
                 ) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: gw.matches.QueryMatches(pb.QueryMatchesRequest(), metadata=gw.metadata)
                 ) == grpc.StatusCode.PERMISSION_DENIED
    made = admin.admin.CreateToken(pb.CreateTokenRequest(name="cam-7", role="gateway", cameras=["cam-7"]),
                                   metadata=admin.metadata)
    assert made.token.startswith("fe_") and made.info.role == "gateway" and list(made.info.cameras) == ["cam-7"]
    for f in Path(srv.store.path).parent.glob(Path(srv.store.path).name + "*"):
        assert made.token.encode() not in f.read_bytes()  # only the hash is stored
    assert _code(lambda: list(Client(srv.address, token=made.token).stream(iter([])))) == grpc.StatusCode.OK
    admin.admin.RevokeToken(pb.RevokeTokenRequest(name="cam-7"), metadata=admin.metadata)
    assert _code(lambda: list(Client(srv.address, token=made.token).stream(iter([])))) == \
        grpc.StatusCode.UNAUTHENTICATED
    admin.watchlists.RemovePerson(pb.PersonRequest(watchlist="vip", person_id="obama"), metadata=admin.metadata)
    admin.cameras.RemoveCamera(pb.CameraRequest(camera_id="gate"), metadata=admin.metadata)
    assert _code(lambda: admin.watchlists.DeleteWatchlist(pb.WatchlistRequest(name="nope"), metadata=admin.metadata)
                 ) == grpc.StatusCode.NOT_FOUND

    recs = admin.admin.QueryAudit(pb.AuditQuery(limit=1000), metadata=admin.metadata).records
    seen = {(r.actor, r.role, r.action, r.target, r.result) for r in recs}
    for want in [("admin-1", "admin", "CreateWatchlist", "vip", "OK"),
                 ("admin-1", "admin", "EnrollPerson", "vip/obama", "OK"),
                 ("admin-1", "admin", "AddCamera", "gate", "OK"),
                 ("gateway-1", "gateway", "AddCamera", "gate", "ALREADY_EXISTS"),
                 ("gateway-1", "gateway", "AddCamera", "other", "PERMISSION_DENIED"),
                 ("operator-1", "operator", "SearchByImage", "*", "OK"),
                 ("operator-1", "operator", "Verify", "", "OK"),
                 ("operator-1", "operator", "QueryMatches", "person=obama", "OK"),
                 ("operator-1", "operator", "CreateWatchlist", "x", "PERMISSION_DENIED"),
                 ("gateway-1", "gateway", "QueryMatches", "*", "PERMISSION_DENIED"),
                 ("admin-1", "admin", "CreateToken", "cam-7", "OK"),
                 ("admin-1", "admin", "RevokeToken", "cam-7", "OK"),
                 ("admin-1", "admin", "RemovePerson", "vip/obama", "OK"),
                 ("admin-1", "admin", "RemoveCamera", "gate", "OK"),
                 ("admin-1", "admin", "DeleteWatchlist", "nope", "NOT_FOUND")]:
        assert want in seen, want
    # a change writes an ATTEMPT row before it runs (fail closed), then its outcome
    attempt, enrol = [r for r in recs if r.action == "EnrollPerson"]
    assert (attempt.result, enrol.result) == ("ATTEMPT", "OK") and attempt.id < enrol.id
    assert "images=1" in enrol.detail and enrol.time > 0
    assert "events_erased=1" in next(r for r in recs if r.action == "RemovePerson" and r.result == "OK").detail
    # frames are not audited, only admin/operator acts and denials (here: the revoked cam-7 token)
    assert [(r.actor, r.result) for r in recs if r.action == "StreamFrames"] == \
        [("(unauthenticated)", "UNAUTHENTICATED")]
    assert _code(lambda: op.admin.QueryAudit(pb.AuditQuery(), metadata=op.metadata)) == \
        grpc.StatusCode.PERMISSION_DENIED

    # append-only: the store refuses edits and deletes even with direct SQL
    db = sqlite3.connect(srv.store.path, timeout=30)
    try:
        for sql in ("UPDATE audit SET result='OK'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(sql)
    finally:
        db.close()
    for c in (admin, op, gw):
        c.close()


def test_token_cli_bootstraps_and_revokes(cfg: Config, analyzer, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    srv = _serve(cfg, analyzer)
    try:
        db = ["--db", cfg.store.path]
        assert cli(["token", "create", "--name", "ops", "--role", "admin", *db]) == 0
        token = capsys.readouterr().out.strip()
        assert token.startswith("fe_")
        with Client(srv.address, token=token) as c:  # the running server sees the new token
            c.ensure_watchlist("w")
            assert [w.name for w in c.watchlists.ListWatchlists(pb.Empty(), metadata=c.metadata).watchlists] == ["w"]
            assert cli(["token", "create", "--name", "ops", "--role", "admin", *db]) == 1  # name in use
            assert cli(["token", "list", "--json", *db]) == 0
            listed = capsys.readouterr().out
            assert '"name":"ops"' in listed and token not in listed
            assert cli(["token", "revoke", "ops", *db]) == 0
            assert _code(lambda: c.watchlists.ListWatchlists(pb.Empty(), metadata=c.metadata)) == \
                grpc.StatusCode.UNAUTHENTICATED
        assert cli(["token", "revoke", "ops", *db]) == 1
        assert cli(["token", "create", "--name", "ops", "--role", "operator", *db]) == 0  # name reusable
        capsys.readouterr()
        assert cli(["audit", "--json", "--action", "CreateWatchlist", *db]) == 0
        out = capsys.readouterr().out
        assert '"actor":"ops"' in out and '"target":"w"' in out
    finally:
        srv.stop(grace=1)


def test_auth_off_only_on_loopback(cfg: Config, analyzer, tmp_path: Path,  # noqa: ANN001
                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg.auth.enabled = False
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.org"):
        cfg.server.host = host
        with pytest.raises(ConfigError, match="auth.enabled=false"):
            FaceEngineServer(cfg, analyzer=analyzer)
    assert cli(["serve", "--dev", "--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "x.db")]) == 1
    assert "refusing to serve" in capsys.readouterr().err
    srv = _serve(cfg, analyzer)  # loopback + auth off: no token needed, acts are audited as anonymous
    try:
        with Client(srv.address, token="") as c:
            c.ensure_watchlist("dev")
        assert srv.store.query_audit(action="CreateWatchlist")[0]["actor"] == "anonymous"
    finally:
        srv.stop(grace=1)


# ---- erasure and retention ---------------------------------------------------------------------
def test_remove_person_erases_templates_vectors_events_and_bytes_on_disk(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.auth.enabled = False
    cfg.pipeline.tracking = False  # every matched frame is an event
    srv = _serve(cfg, analyzer)
    try:
        c = Client(srv.address)
        c.ensure_watchlist("vip")
        c.enroll("vip", "obama", [OBAMA, OBAMA2])
        c.enroll("vip", "biden", [BIDEN])
        c.ensure_push_camera("cam")
        scene = encode_jpeg(cv2.imread(str(IMAGES / "obama_and_biden.jpg")))
        frames = [pb.Frame(camera_id="cam", sequence=i, capture_time=time.time(), encoded=scene) for i in range(3)]
        res = list(c.stream(iter(frames)))
        matched = {f.match.person_id for r in res for f in r.faces if f.match.event_id}
        assert matched == {"obama", "biden"}
        ev = c.matches.QueryMatches(pb.QueryMatchesRequest(person_id="obama", include_thumbnails=True)).events
        assert len(ev) == 3 and all(e.thumbnail for e in ev)
        db = sqlite3.connect(cfg.store.path)
        blobs = [r[0] for r in db.execute("SELECT embedding FROM templates WHERE person_id='obama'")]
        db.close()
        assert len(blobs) == 2
        secrets_ = [*blobs, *(e.thumbnail[len(e.thumbnail) // 2:][:256] for e in ev)]

        r = c.watchlists.RemovePerson(pb.PersonRequest(watchlist="vip", person_id="obama"))
        assert r.templates_removed == 2
        hits = c.matches.SearchByImage(pb.SearchRequest(image=pb.Image(encoded=OBAMA2), min_score=-1.0, top_k=10))
        assert [h.person_id for h in hits.hits] == ["biden"]
        assert not c.matches.QueryMatches(pb.QueryMatchesRequest(person_id="obama")).events
        assert len(c.matches.QueryMatches(pb.QueryMatchesRequest(person_id="biden")).events) == 3
        ids, _, _ = srv.store.templates(srv.gallery.model)
        assert srv.gallery.vector_ids() == set(ids.tolist()) and len(ids) == 1
        # secure_delete + WAL checkpoint: the raw bytes are gone from every file of the database
        files = [p for p in Path(cfg.store.path).parent.iterdir() if p.name.startswith(Path(cfg.store.path).name)]
        for p in files:
            data = p.read_bytes()
            for s in secrets_:
                assert s not in data, f"erased bytes still in {p.name}"
        # a retry erases whatever is left and reports NOT_FOUND
        assert _code(lambda: c.watchlists.RemovePerson(pb.PersonRequest(watchlist="vip", person_id="obama"))) == \
            grpc.StatusCode.NOT_FOUND
        c.close()
    finally:
        srv.stop(grace=1)


def _event(i: int, ts: float) -> MatchEvent:
    return MatchEvent(f"ev{i}", "cam", ts, "vip", "p", "P", 0.9, (0, 0, 10, 10), thumbnail=b"\xff\xd8jpeg")


def test_retention_thread_and_purge_command(cfg: Config, analyzer, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    now = time.time()
    store = SQLiteStore(cfg.store.path)
    for i, age_days in enumerate((40, 31, 29, 1, 0)):
        store.add_event(_event(i, now - age_days * 86400))
    store.close()
    cfg.auth.enabled = False
    cfg.retention.events_days, cfg.retention.interval_s = 30, 0.05
    srv = _serve(cfg, analyzer)
    try:
        deadline = time.monotonic() + 30
        while srv.retention.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.retention.runs >= 2 and srv.retention.purged == 2
        left = {e.event_id for e in srv.store.query_events(EventQuery())[0]}
        assert left == {"ev2", "ev3", "ev4"}
    finally:
        srv.stop(grace=1)
    assert cli(["purge", "--days", "0.5", "--db", cfg.store.path]) == 0
    assert "purged 2 match events" in capsys.readouterr().err
    store = SQLiteStore(cfg.store.path)
    assert [e.event_id for e in store.query_events(EventQuery())[0]] == ["ev4"]
    store.close()


# ---- TLS ---------------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=faceengine test CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who}", cwd=d)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext", cwd=d)
    # a client certificate from a CA the server does not trust
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem",
             "-days", "2", "-subj", "/CN=rogue", cwd=d)
    return d


def _list(c: Client) -> grpc.StatusCode:
    return _code(lambda: c.watchlists.ListWatchlists(pb.Empty(), metadata=c.metadata, timeout=10))


def test_tls_and_mutual_tls(cfg: Config, analyzer, pki: Path) -> None:  # noqa: ANN001
    cfg.tls.cert_file, cfg.tls.key_file = str(pki / "server.pem"), str(pki / "server.key")
    srv = _serve(cfg, analyzer)
    token = create_token(srv.store, "t", "admin")[0]
    try:
        with Client(srv.address, token=token, ca_cert=str(pki / "ca.pem")) as c:
            assert _list(c) == grpc.StatusCode.OK
        with Client(srv.address, token=token) as c:  # plaintext client against a TLS server
            assert _list(c) == grpc.StatusCode.UNAVAILABLE
        with Client(srv.address, token=token, ca_cert=str(pki / "rogue.pem")) as c:  # server not trusted
            assert _list(c) == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(grace=1)

    cfg.tls.client_ca_file = str(pki / "ca.pem")
    srv = _serve(cfg, analyzer)
    token = create_token(srv.store, "t2", "admin")[0]
    try:
        with Client(srv.address, token=token, ca_cert=str(pki / "ca.pem")) as c:  # no client certificate
            assert _list(c) == grpc.StatusCode.UNAVAILABLE
        with Client(srv.address, token=token, ca_cert=str(pki / "ca.pem"), client_cert=str(pki / "rogue.pem"),
                    client_key=str(pki / "rogue.key")) as c:
            assert _list(c) == grpc.StatusCode.UNAVAILABLE
        with Client(srv.address, token=token, ca_cert=str(pki / "ca.pem"), client_cert=str(pki / "client.pem"),
                    client_key=str(pki / "client.key")) as c:
            assert _list(c) == grpc.StatusCode.OK
            # TLS does not replace tokens: a certified client without a token is still refused
            bare = Client(srv.address, token="", ca_cert=str(pki / "ca.pem"), client_cert=str(pki / "client.pem"),
                          client_key=str(pki / "client.key"))
            assert _list(bare) == grpc.StatusCode.UNAUTHENTICATED
            bare.close()
    finally:
        srv.stop(grace=1)
    cfg.tls.cert_file = ""
    with pytest.raises(ConfigError, match="tls"):
        FaceEngineServer(cfg, analyzer=analyzer)


def test_subscribe_is_audited_once(secured) -> None:  # noqa: ANN001
    srv, tokens = secured
    op = Client(srv.address, token=tokens["operator"])
    stream = op.matches.SubscribeMatches(pb.MatchFilter(watchlists=["vip"]), metadata=op.metadata)
    ended: list[grpc.StatusCode | BaseException] = []

    def follow() -> None:
        try:
            for _ in stream:
                pass
            ended.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            ended.append(exc.code())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            ended.append(exc)

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not len(srv.engine.bus) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(srv.engine.bus), "the subscription never registered"
    stream.cancel()
    t.join(10)
    # the operator's subscription was accepted and ran until our cancel (not refused by the role check)
    assert not t.is_alive() and ended == [grpc.StatusCode.CANCELLED], ended
    deadline = time.monotonic() + 10
    while not srv.store.query_audit(action="SubscribeMatches") and time.monotonic() < deadline:
        time.sleep(0.02)
    recs = srv.store.query_audit(action="SubscribeMatches")
    assert len(recs) == 1 and recs[0]["actor"] == "operator-1" and recs[0]["target"] == "watchlist=vip"
    op.close()
