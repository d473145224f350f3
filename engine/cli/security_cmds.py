"""Offline security commands on the local store: `token create|list|revoke`, `audit`, `purge`.

They work on the SQLite file directly (no server needed), which is how the first admin token
is bootstrapped; a running server sees new and revoked tokens on its next call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from typing import Any

from engine.cli.common import add_config_args, jprint, load_config

M = "engine.cli.security_cmds"


def register(sub: Any, lazy: Callable[[str, str], Callable[[argparse.Namespace], int]]) -> None:
    t = sub.add_parser("token", help="create, list or revoke API tokens in the local store")
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    tc = tsub.add_parser("create", help="create a token and print it once (only its hash is stored)")
    add_config_args(tc)
    tc.add_argument("--name", required=True, help="who or what uses the token (unique among active tokens)")
    tc.add_argument("--role", required=True, choices=["gateway", "operator", "admin"])
    tc.add_argument("--camera", action="append", default=[], metavar="ID",
                    help="gateway tokens (required): a camera it may feed and register as a push camera; "
                         "repeat it, or give a pattern such as 'door-*'")
    tc.add_argument("--identities", action="store_true",
                    help="gateway tokens: its frame results name the persons recognised (default: boxes only)")
    tc.add_argument("--json", action="store_true")
    tc.set_defaults(func=lazy(M, "cmd_token_create"))
    tl = tsub.add_parser("list", help="list tokens (names, roles, dates; never the secrets)")
    add_config_args(tl)
    tl.add_argument("--json", action="store_true")
    tl.set_defaults(func=lazy(M, "cmd_token_list"))
    tr = tsub.add_parser("revoke", help="revoke the active token with this name")
    add_config_args(tr)
    tr.add_argument("name")
    tr.set_defaults(func=lazy(M, "cmd_token_revoke"))

    a = sub.add_parser("audit", help="print the audit log from the local store")
    add_config_args(a)
    a.add_argument("--since", type=float, default=0.0, help="Unix seconds")
    a.add_argument("--action", default="", help="only this action (RPC name), e.g. RemovePerson")
    a.add_argument("--limit", type=int, default=1000)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=lazy(M, "cmd_audit"))

    p = sub.add_parser("purge", help="delete match events (and thumbnails) older than retention.events_days")
    add_config_args(p)
    p.add_argument("--days", type=float, help="override retention.events_days")
    p.set_defaults(func=lazy(M, "cmd_purge"))


def _store(args: argparse.Namespace):  # noqa: ANN202
    from engine.store import open_store

    return open_store(load_config(args).store.target())


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else "-"


def cmd_token_create(args: argparse.Namespace) -> int:
    from engine.errors import InvalidArgumentError
    from engine.service.auth import create_token

    store = _store(args)
    try:
        token, created = create_token(store, args.name, args.role, args.camera, args.identities)
    except InvalidArgumentError as exc:
        print(f"faceengine: error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if args.json:
        jprint({"name": args.name, "role": args.role, "created": created, "token": token, "cameras": args.camera,
                "identities": args.identities})
    else:
        print(token)
        scope = f", cameras {', '.join(args.camera)}{', with identities' if args.identities else ''}" \
            if args.role == "gateway" else ""
        print(f"faceengine: token {args.name!r} ({args.role}{scope}) created; it is shown only now", file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rows = store.list_tokens()
    finally:
        store.close()
    from engine.service.auth import TokenScope

    for r in rows:
        scope = TokenScope.from_json(r.pop("scope", ""))
        if args.json:
            jprint({**r, "cameras": list(scope.cameras), "identities": scope.identities})
        else:
            state = f"revoked {_time(r['revoked'])}" if r["revoked"] else "active"
            where = f"  cameras {','.join(scope.cameras) or '(none)'}{' +identities' if scope.identities else ''}" \
                if r["role"] == "gateway" else ""
            print(f"{r['name']:<24} {r['role']:<9} created {_time(r['created'])}  {state}{where}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.revoke_token(args.name)
    finally:
        store.close()
    print(f"faceengine: token {args.name!r} revoked", file=sys.stderr)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        after, left = 0, max(1, args.limit)
        while left > 0:
            rows = store.query_audit(args.since, min(left, 1000), after, args.action)
            for r in rows:
                if args.json:
                    jprint(r)
                else:
                    print(f"{_time(r['ts'])} {r['actor']}/{r['role']} {r['action']} {r['target']} "
                          f"{r['result']} {r['detail']}".rstrip())
            if not rows:
                break
            after, left = rows[-1]["id"], left - len(rows)
    finally:
        store.close()
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from engine.retention import purge_expired

    cfg = load_config(args)
    days = cfg.retention.events_days if args.days is None else args.days
    store = _store(args)
    try:
        n = purge_expired(store, days)
    finally:
        store.close()
    print(f"faceengine: purged {n} match events older than {days:g} days", file=sys.stderr)
    return 0
