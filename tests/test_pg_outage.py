"""PostgreSQL outages: every call is answered UNAVAILABLE within the pool's wait (store.pg_wait_s) with
what to check, not after 30 s as UNKNOWN; once the database is back the engine serves again within
seconds, even after traffic through the outage grew the pool's reconnection backoff. And the store's
URL secrets stay out of errors, `config show` and the redaction of multi-host URLs."""

from __future__ import annotations

import time

import grpc
import pytest

from engine.client import Client
from engine.config import Config
from engine.service.auth import create_token
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.store import redact
from tests.procs import cli, cli_env


def _call(c: Client) -> tuple[grpc.StatusCode, float, str]:
    t0 = time.monotonic()
    try:
        c.watchlists.ListWatchlists(pb.Empty(), metadata=c.metadata, timeout=60)
    except grpc.RpcError as exc:
        return exc.code(), time.monotonic() - t0, exc.details() or ""
    return grpc.StatusCode.OK, time.monotonic() - t0, ""


def test_outage_is_a_prompt_unavailable_and_recovery_takes_seconds(cfg: Config, analyzer, pg_server,  # noqa: ANN001
                                                                    pg_url: str) -> None:
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.store.url = pg_url
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        c = Client(srv.address, token=create_token(srv.store, "admin", "admin")[0])
        c.ensure_watchlist("vip")
        pg_server.checkpoint()  # quick crash recovery on a busy machine
        pg_server.stop("immediate")
        answers = []
        try:
            end = time.monotonic() + 10  # traffic through the outage: the pool's backoff grows
            while time.monotonic() < end:
                answers.append(_call(c))
                time.sleep(0.3)
        finally:
            pg_server.start_again()
        back = time.monotonic()
        while _call(c)[0] != grpc.StatusCode.OK and time.monotonic() - back < 90:
            time.sleep(0.2)
        recovered_s = time.monotonic() - back
    finally:
        srv.stop(grace=1)
    assert answers and all(code == grpc.StatusCode.UNAVAILABLE for code, _, _ in answers), answers
    assert max(s for _, s, _ in answers) < cfg.store.pg_wait_s + 3, answers
    assert "check that the database server is running" in answers[-1][2]
    assert recovered_s < 8, f"served again {recovered_s:.1f} s after the database was back"


def test_url_secrets_stay_out_of_config_errors_and_multi_host_urls(pg_server, model_dir, tmp_path) -> None:  # noqa: ANN001
    secret = "S3cr3tPw"
    hosts = f"postgresql://fe:{secret}@127.0.0.1:{pg_server.port},127.0.0.1:1/nodb?password={secret}&connect_timeout=2"
    assert secret not in redact(hosts) and "127.0.0.1:1/nodb" in redact(hosts)  # no crash on several hosts
    env = cli_env(model_dir, FACEENGINE_STORE_URL=hosts)
    out = cli("config", "show", env=env)
    assert out.returncode == 0 and secret not in out.stdout and "fe:***@127.0.0.1" in out.stdout
    out = cli("token", "create", "--name", "x", "--role", "admin", env=env)  # nodb does not exist: an error
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert secret not in out.stderr and "nodb" in out.stderr, out.stderr
    with pytest.raises(Exception) as err:  # noqa: PT011 - the store's own typed error, checked by its text
        from engine.store.postgres import PostgresStore

        PostgresStore(f"postgresql://fe@127.0.0.1:1/x?password={secret}&connect_timeout=1")
    assert secret not in str(err.value) and "password=***" in str(err.value)
