"""Calls that fail below the servicers still pass authentication, audit and throttling: request bodies
that are not valid protobuf, and oversized metadata. Before, gRPC refused them itself (INTERNAL with a
logged traceback per call, or a random share refused by its soft metadata limit) and the engine never
saw them: no audit row, no throttling."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2

from engine.config import Config
from engine.service.auth import create_token
from engine.service.server import FaceEngineServer


@pytest.fixture()
def server(cfg: Config, analyzer):  # noqa: ANN001, ANN201
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.auth.max_failures = 5
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    yield srv
    srv.stop(grace=1)


def _call(ch: grpc.Channel, method: str, body: bytes, md: tuple = ()) -> tuple[grpc.StatusCode, str]:
    try:
        ch.unary_unary(method)(body, metadata=md, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_undecodable_bodies_are_authenticated_audited_and_throttled(server, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.WARNING)
    garbage = b"\xff\xff\xff\xff"
    with grpc.insecure_channel(server.address) as ch:
        token = create_token(server.store, "ops", "admin")[0]
        code, details = _call(ch, "/faceengine.v1.Watchlists/EnrollPerson", garbage,
                              (("authorization", f"Bearer {token}"),))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf message" in details
        codes = [_call(ch, "/faceengine.v1.Cameras/GetCamera", garbage)[0] for _ in range(8)]
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
        code, _ = _call(ch, "/grpc.health.v1.Health/Check", garbage)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert _call(ch, "/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest().SerializeToString())[0] \
            == grpc.StatusCode.OK
    rows = server.store.query_audit(0, 1000, 0, "")
    assert [r["result"] for r in rows if r["action"] == "GetCamera"] == ["UNAUTHENTICATED"] * 5
    assert any(r["result"] == "THROTTLED" for r in rows)
    assert [(r["actor"], r["result"]) for r in rows if r["action"] == "EnrollPerson"] == [("ops", "INVALID_ARGUMENT")]
    assert not [r for r in caplog.records if r.exc_info or r.name.startswith("grpc")], "no tracebacks in the log"


def test_oversized_metadata_is_refused_by_the_engine_audited_and_throttled(server) -> None:  # noqa: ANN001
    big = (("x-junk", "a" * 12_000),)  # over limits.max_metadata_bytes, under gRPC's own hard limit
    with grpc.insecure_channel(server.address) as ch:
        answers = [_call(ch, "/faceengine.v1.Cameras/ListCameras", b"", big) for _ in range(8)]
    assert [c for c, _ in answers] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 8
    assert all("limits.max_metadata_bytes" in d for _, d in answers[:5])
    assert all("too many failed authentications" in d for _, d in answers[5:])
    rows = server.store.query_audit(0, 1000, 0, "")
    assert [r["result"] for r in rows if r["action"] == "ListCameras"] == ["RESOURCE_EXHAUSTED"] * 5
