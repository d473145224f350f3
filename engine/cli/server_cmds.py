"""`faceengine serve`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from engine.cli.common import add_config_args, flag_source, load_config


def register(sub: Any, lazy: Callable[[str, str], Callable[[argparse.Namespace], int]]) -> None:
    s = sub.add_parser("serve", help="run the gRPC server (ingest, cameras, watchlists, matches)")
    add_config_args(s)
    s.add_argument("--host", help="bind address (default 0.0.0.0)")
    s.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = pick a free port)")
    s.add_argument("--metrics-port", type=int, help="Prometheus port (0 = off)")
    s.add_argument("--ready-file", help="write the bound address to this file once serving")
    s.add_argument("--dev", action="store_true",
                   help="development mode: no API tokens; binds 127.0.0.1 and refuses any non-loopback host")
    s.add_argument("--cluster", nargs="?", const="local", metavar="ADDRESS",
                   help="serve cameras from Ray worker actors: 'local' (default: a private single-node Ray), "
                        "'auto' (join this machine's cluster), or HOST:PORT / ray://HOST:PORT")
    s.add_argument("--workers", type=int, help="cluster worker actors (default cluster.workers)")
    s.set_defaults(func=lazy("engine.cli.server_cmds", "cmd_serve"))


def listening(host: str, port: int) -> str:
    """Where the server really listens: a wildcard host is all addresses, not the loopback clients dial."""
    if host in ("0.0.0.0", "::", "[::]", ""):
        return (f"listening on all addresses ({host or '0.0.0.0'}), port {port}; "
                f"from this machine: 127.0.0.1:{port}")
    return f"listening on {host}:{port}"


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.service.server import FaceEngineServer

    cfg = load_config(args)
    for attr in ("host", "port", "metrics_port"):
        if getattr(args, attr) is not None:
            cfg.update({"server": {attr: getattr(args, attr)}}, source=flag_source(attr))
    if args.dev:
        if args.host is None:
            cfg.update({"server": {"host": "127.0.0.1"}}, source="command-line flag --dev")
        cfg.update({"auth": {"enabled": False}}, source="command-line flag --dev")
    if args.cluster:
        cfg.update({"cluster": {"address": args.cluster}}, source="command-line flag --cluster")
    if args.workers is not None:
        cfg.update({"cluster": {"workers": args.workers}}, source="command-line flag --workers")
    if not cfg.auth.enabled:
        print("faceengine: auth is OFF (development mode): any local process may call the API",
              file=sys.stderr, flush=True)
    srv = FaceEngineServer(cfg).start()
    print(f"faceengine: {listening(cfg.server.host, srv.port)}", file=sys.stderr, flush=True)
    if args.ready_file:
        from pathlib import Path

        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(srv.address)
        tmp.replace(args.ready_file)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        print(f"faceengine: {signal.Signals(signum).name}: shutting down", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    srv.stop()
    return 0
