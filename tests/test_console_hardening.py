"""Console hardening: sign-in pacing per real peer and for all addresses together (X-Forwarded-For believed
only from configured proxies), the engine not throttling the console's own address for its users' mistakes,
no sign-in to an auth-off engine through a non-loopback plain-HTTP console, sign-out that ends the session
server-side, and a bound on request bodies before anything parses them."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from engine.cli.console_cmds import proxy_options, refuse_open_engine
from engine.client import Client
from engine.config import Config, ConsoleConfig
from engine.console.app import ConsoleSettings, create_app
from engine.errors import ConfigError
from engine.service.auth import create_token
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from tests.test_console import _free_port


@dataclass
class Engines:
    secured: FaceEngineServer
    dev: FaceEngineServer
    admin: str


@pytest.fixture(scope="module")
def engines(model_dir: Path, analyzer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:  # noqa: ANN001
    servers = []
    for name, auth in (("secured", True), ("dev", False)):
        cfg = Config.load(env={})
        cfg.models.dir = str(model_dir)
        cfg.store.path = str(tmp_path_factory.mktemp(name) / "engine.db")
        cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
        cfg.auth.enabled = auth
        cfg.auth.max_failures = 4  # above the console's own pacing (3 per browser address)
        servers.append(FaceEngineServer(cfg, analyzer=analyzer).start())
    try:
        yield Engines(servers[0], servers[1], create_token(servers[0].store, "admin-1", "admin")[0])
    finally:
        for srv in servers:
            srv.stop(grace=1)


@contextlib.contextmanager
def console(settings: ConsoleSettings, trusted_proxies: tuple[str, ...] = ()) -> Iterator[str]:
    """The console as `faceengine console` serves it (the same uvicorn proxy options)."""
    port = _free_port()
    opts = proxy_options(ConsoleConfig(trusted_proxies=list(trusted_proxies)))
    web = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                       **opts))
    t = threading.Thread(target=web.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        t.join(timeout=10)


def _sign_in(c: httpx.Client, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    return c.post("/login", data={"csrf": csrf, "token": token}, headers=headers or {})


def test_sign_in_pacing_cannot_be_dodged_and_spares_the_engines_other_callers(engines: Engines) -> None:
    settings = ConsoleSettings(server=engines.secured.address, login_failures=3, login_failures_total=5)
    with console(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        codes = [_sign_in(c, "fe_wrong", {"x-forwarded-for": f"10.0.0.{i}"}).status_code for i in range(5)]
        assert codes == [401, 401, 401, 429, 429]  # a forged X-Forwarded-For does not pick the paced address
    # behind a configured proxy the forwarded address is the client; guesses spread over many addresses are
    # bounded all together
    with console(settings, trusted_proxies=("127.0.0.1",)) as url, httpx.Client(base_url=url, timeout=30) as c:
        codes = [_sign_in(c, "fe_wrong", {"x-forwarded-for": f"10.0.1.{i}"}).status_code for i in range(7)]
        assert codes == [401] * 5 + [429] * 2
        paused = _sign_in(c, engines.admin, {"x-forwarded-for": "10.0.1.99"})
        assert paused.status_code == 429 and "several addresses" in paused.text
    # the engine saw 8 failures through the console (over its auth.max_failures of 4) and counted them per
    # browser, not against the console's address: a gateway (or anyone else) on the same host is not throttled
    gw = Client(engines.secured.address, token=create_token(engines.secured.store, "gw", "gateway", ["cam"])[0])
    gw.ensure_push_camera("cam")
    admin = Client(engines.secured.address, token=engines.admin)
    assert [c.camera_id for c in admin.cameras.ListCameras(pb.Empty(), metadata=admin.metadata).cameras] == ["cam"]


def test_an_auth_off_engine_is_not_re_exposed_beyond_loopback(engines: Engines) -> None:
    with pytest.raises(ConfigError, match="--allow-open-engine"):  # `faceengine console` refuses to start
        refuse_open_engine(ConsoleSettings(server=engines.dev.address, host="0.0.0.0"))
    refuse_open_engine(ConsoleSettings(server=engines.dev.address, host="0.0.0.0", allow_open_engine=True))
    refuse_open_engine(ConsoleSettings(server=engines.secured.address, host="0.0.0.0"))  # auth on: fine
    with console(ConsoleSettings(server=engines.dev.address, host="0.0.0.0")) as url, \
            httpx.Client(base_url=url, timeout=30) as c:
        r = _sign_in(c, "anything")
        assert r.status_code == 403 and "--allow-open-engine" in r.text
        assert c.get("/watchlists").status_code in (303, 401)
    with console(ConsoleSettings(server=engines.dev.address, host="0.0.0.0", allow_open_engine=True)) as url, \
            httpx.Client(base_url=url, timeout=30) as c:
        assert _sign_in(c, "anything").status_code == 303  # the operator said so explicitly
    with console(ConsoleSettings(server=engines.dev.address, host="127.0.0.1")) as url, \
            httpx.Client(base_url=url, timeout=30) as c:
        assert _sign_in(c, "anything").status_code == 303  # loopback, as the engine's own --dev


def test_sign_out_revokes_the_session_server_side(engines: Engines, tmp_path: Path) -> None:
    settings = ConsoleSettings(server=engines.secured.address, secret=b"", revoked_file=str(tmp_path / "revoked"))
    with console(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert _sign_in(c, engines.admin).status_code == 303
        saved = c.cookies.get("fe_session")
        assert saved and c.get("/watchlists").status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/live").text).group(1)
        assert c.post("/logout", data={"csrf": csrf}).status_code == 303
        with httpx.Client(base_url=url, timeout=30) as replay:
            replay.cookies.set("fe_session", saved)
            assert replay.get("/watchlists").status_code in (303, 401)
            assert replay.get("/history.csv").status_code in (303, 401)
    assert (tmp_path / "revoked").read_text().strip()  # remembered across console restarts


def test_request_bodies_are_bounded_before_parsing(engines: Engines) -> None:
    with console(ConsoleSettings(server=engines.secured.address, max_body_bytes=8 * 1024 * 1024)) as url, \
            httpx.Client(base_url=url, timeout=30) as c:
        big = b"csrf=x&token=" + b"a" * (5 * 1024 * 1024)
        r = c.post("/login", content=big, headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413 and "too large" in r.text

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b"csrf=x&token="
            for _ in range(64):
                yield b"a" * 65536

        r = c.post("/login", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
        r = c.post("/search", content=b"x" * (9 * 1024 * 1024), headers={"content-type": "multipart/form-data; b=1"})
        assert r.status_code == 413
        assert _sign_in(c, "fe_wrong").status_code == 401  # ordinary forms still work
