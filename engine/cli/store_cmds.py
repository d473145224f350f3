"""`faceengine store check`: is the database file sound? SQLite's integrity and foreign-key checks
plus the template checks SQLite cannot do (finite, unit-norm vectors of the right size)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.cli.common import add_config_args, jprint, load_config


def register(sub: Any, lazy: Callable[[str, str], Callable[[argparse.Namespace], int]]) -> None:
    s = sub.add_parser("store", help="check the local store")
    ssub = s.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    c = ssub.add_parser("check", help="integrity check + template check; prints a verdict (exit 0 OK, 1 damaged)")
    add_config_args(c)
    c.add_argument("--json", action="store_true", help="one JSON object with every problem found")
    c.set_defaults(func=lazy("engine.cli.store_cmds", "cmd_store_check"))


def check_store(path: str) -> tuple[list[str], dict[str, int]]:
    """(problems, counts) of the database at `path`, read-only; no problems means it is sound."""
    from engine.store.integrity import template_problem

    if not Path(path).is_file():
        return [f"{path} does not exist"], {}
    problems: list[str] = []
    counts: dict[str, int] = {}
    try:
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=30)
    except sqlite3.DatabaseError as exc:
        return [f"cannot open: {exc}"], {}
    try:
        rows = [r[0] for r in db.execute("PRAGMA integrity_check(100)")]
        if rows != ["ok"]:
            problems += [f"integrity_check: {r}" for r in rows]
        for table, rowid, parent, _ in db.execute("PRAGMA foreign_key_check"):
            problems.append(f"foreign key: {table} row {rowid} points to a missing {parent} row")
        for table in ("watchlists", "persons", "templates", "events", "audit", "tokens", "cameras"):
            counts[table] = int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
        for tid, wl, pid, model, dim, blob in db.execute(
                "SELECT id, watchlist, person_id, model, dim, embedding FROM templates ORDER BY id"):
            why = template_problem(blob, int(dim))
            if why:
                problems.append(f"template {tid} of {wl}/{pid} ({model}): {why}; re-enrol this person")
    except sqlite3.DatabaseError as exc:
        problems.append(f"unreadable: {exc}")
    finally:
        db.close()
    return problems, counts


def cmd_store_check(args: argparse.Namespace) -> int:
    from engine.store import redact, sqlite_path

    target = load_config(args).store.target()
    path = sqlite_path(target)
    if path is None:
        print(f"store check inspects SQLite files; {redact(target)} is not one (for PostgreSQL use its own tools: "
              "amcheck, pg_dump)", file=sys.stderr)
        return 2
    problems, counts = check_store(path)
    if args.json:
        jprint({"path": path, "ok": not problems, "problems": problems, "counts": counts})
        return 0 if not problems else 1
    for p in problems:
        print(f"  {p}")
    if not problems:
        summary = ", ".join(f"{n} {t}" for t, n in counts.items())
        print(f"store check: OK: {path} ({summary})")
        return 0
    print(f"store check: DAMAGED: {path}: {len(problems)} problem(s) above. Restore the file (and its -wal) from a "
          "backup; damaged templates alone can be fixed by re-enrolling the persons named.")
    return 1
