"""`faceengine console`: the operator web console, a client of a running engine's gRPC API."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import ConsoleConfig
from engine.errors import ConfigError


def register(sub: Any, lazy: Callable[[str, str], Callable[[argparse.Namespace], int]]) -> None:
    c = sub.add_parser("console", help="serve the operator web console (live alerts, history, search, "
                                       "watchlists, cameras) over the gRPC API")
    c.add_argument("--config", help="TOML config file: [console] section, HTTPS from [tls] cert_file/key_file")
    c.add_argument("--server", help="gRPC address of the engine (console.server, default 127.0.0.1:50051)")
    c.add_argument("--host", help="interface to listen on (console.host, default 127.0.0.1)")
    c.add_argument("--port", type=int, help="HTTP(S) port (console.port, default 8080)")
    c.add_argument("--ca-cert", help="CA certificate (PEM) to verify a TLS gRPC server")
    c.add_argument("--client-cert", help="client certificate (PEM) for mutual TLS to the engine")
    c.add_argument("--client-key", help="client private key (PEM) for mutual TLS to the engine")
    c.add_argument("--secret-file", help="session key file (created with a new key if missing)")
    c.add_argument("--allow-open-engine", action="store_true", default=None,
                   help="allow sign-ins to an engine without auth (--dev) on a non-loopback plain-HTTP console")
    c.add_argument("-v", "--verbose", action="count", default=0)
    c.set_defaults(func=lazy("engine.cli.console_cmds", "cmd_console"))


def _secret(path: str) -> bytes:
    from cryptography.fernet import Fernet

    if not path:
        return b""
    p = Path(path).expanduser()
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(Fernet.generate_key())
        p.chmod(0o600)
    key = p.read_bytes().strip()
    try:
        Fernet(key)
    except ValueError as exc:
        raise ConfigError(f"{p}: not a session key (32 url-safe base64 bytes); delete it to make a new one") from exc
    return key


def refuse_open_engine(settings: Any) -> None:
    """Refuse to start (ConfigError) in front of an engine that answers without a token (`serve --dev`)
    when this console would re-expose it beyond loopback over plain HTTP; sign-ins are refused as well,
    for an engine started later."""
    import grpc

    from engine.console.app import open_engine_allowed
    from engine.service.proto import pb, rpc

    if open_engine_allowed(settings) or settings.ca_cert:  # a TLS engine is never a --dev one
        return
    with grpc.insecure_channel(settings.server) as ch:
        try:
            who = rpc.AdminStub(ch).WhoAmI(pb.Empty(), timeout=3)
        except grpc.RpcError:  # auth on (UNAUTHENTICATED), or not up yet: sign-in checks again
            return
    if who.role == "auth-off":
        raise ConfigError(f"the engine at {settings.server} runs without authentication (serve --dev) and this "
                          f"console would listen on {settings.host} over plain HTTP, where anyone could act as admin; "
                          "listen on 127.0.0.1, serve HTTPS (tls.cert_file/key_file), enable auth on the engine, "
                          "or pass --allow-open-engine")


def proxy_options(cc: ConsoleConfig) -> dict[str, Any]:
    """uvicorn's options for X-Forwarded-For: believed only from `console.trusted_proxies` (uvicorn's own
    default trusts 127.0.0.1, so any local caller could pick the address sign-ins are paced by)."""
    if not cc.trusted_proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(cc.trusted_proxies)}


def cmd_console(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from engine.console.app import ConsoleSettings, create_app
    except ImportError as exc:
        raise ConfigError(f"the console needs its extra: pip install 'faceengine[console]' ({exc.name} missing)") \
            from None
    from engine.config import Config

    cfg = Config.load(args.config)
    over = {k: v for k, v in (("server", args.server), ("host", args.host), ("port", args.port),
                              ("ca_cert", args.ca_cert), ("client_cert", args.client_cert),
                              ("client_key", args.client_key), ("secret_file", args.secret_file),
                              ("allow_open_engine", args.allow_open_engine)) if v is not None}
    cfg.update({"console": over}, source="command line")
    cc, tls = cfg.console, cfg.tls
    https = bool(tls.cert_file and tls.key_file)
    app = create_app(ConsoleSettings(server=cc.server, ca_cert=cc.ca_cert, client_cert=cc.client_cert,
                                     client_key=cc.client_key, secret=_secret(cc.secret_file),
                                     session_hours=cc.session_hours, max_cards=cc.max_cards, https=https,
                                     host=cc.host, allow_open_engine=cc.allow_open_engine,
                                     revoked_file=f"{cc.secret_file}.revoked" if cc.secret_file else ""))
    settings = ConsoleSettings(server=cc.server, ca_cert=cc.ca_cert, client_cert=cc.client_cert,
                               client_key=cc.client_key, https=https, host=cc.host,
                               allow_open_engine=cc.allow_open_engine)
    refuse_open_engine(settings)
    print(f"faceengine console on {'https' if https else 'http'}://{cc.host}:{cc.port} (engine {cc.server})",
          flush=True)
    uvicorn.run(app, host=cc.host, port=cc.port, log_level="info" if args.verbose else "warning",
                **proxy_options(cc),
                timeout_graceful_shutdown=5,  # live-alert streams never end by themselves
                ssl_certfile=tls.cert_file if https else None, ssl_keyfile=tls.key_file if https else None)
    return 0
