"""Persistence behind role interfaces (`engine.store.base`); `open_store` picks the backend from a URL."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from engine.errors import ConfigError
from engine.store.base import Store

if TYPE_CHECKING:
    from engine.config import StoreConfig


_SECRET_ARG = re.compile(r"(?i)\b(password|passwd|pwd|passfile|sslpassword|sslkey)=('[^']*'|[^\s&]*)")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for logs and error messages: the user-info password,
    `password=` (and similar) query values, and multi-host URLs (`postgresql://u:p@h1:5432,h2:5432/db`),
    which urllib cannot parse. Never raises."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_ARG.sub(lambda m: f"{m.group(1)}=***", url)
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = f"{user}:***{rest[at:]}" if colon else rest
    return f"{scheme}://{_SECRET_ARG.sub(lambda m: f'{m.group(1)}=***', rest)}"


def redact_text(text: str, secret: str = "") -> str:
    """A message (e.g. a driver's error) with `secret` (a raw URL) and the passwords of any URL or
    `password=...` pair in it masked."""
    if secret:
        text = text.replace(secret, redact(secret))
    text = _URL.sub(lambda m: redact(m.group(0)), text)
    return _SECRET_ARG.sub(lambda m: f"{m.group(1)}=***", text)


def sqlite_path(url_or_path: str) -> str | None:
    """The SQLite file a store target names (a plain path, sqlite:///FILE, file://FILE), else None."""
    target = str(url_or_path)
    scheme = urlsplit(target).scheme.lower() if "://" in target else ""
    if scheme == "":
        return target
    if scheme not in ("sqlite", "file"):
        return None
    path = target.split("://", 1)[1]
    if scheme == "sqlite" and path.startswith("/") and not path.startswith("//"):
        path = path[1:] or ":memory:"  # sqlite:///relative.db, sqlite:////abs/path.db (SQLAlchemy style)
    return path


def open_store(url_or_path: str, cfg: StoreConfig | None = None) -> Store:
    """Open (and migrate) the store at a plain file path or `sqlite:///path` (SQLite, the embedded
    default) or `postgresql://user:pass@host:port/db` (PostgreSQL, shared by several machines);
    `cfg` carries the PostgreSQL pool's waits (defaults when None)."""
    target = str(url_or_path)
    scheme = urlsplit(target).scheme.lower() if "://" in target else ""
    if scheme in ("postgresql", "postgres"):
        try:
            from engine.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(f"store {redact(target)} needs psycopg 3: pip install 'faceengine[postgres]'") from exc
        if cfg is None:
            return PostgresStore(target)
        return PostgresStore(target, wait_s=cfg.pg_wait_s, reconnect_s=cfg.pg_reconnect_s)
    path = sqlite_path(target)
    if path is not None:
        from engine.store.sqlite import SQLiteStore

        return SQLiteStore(path)
    raise ConfigError(f"store {redact(target)}: unknown scheme {scheme!r} (use a file path, sqlite:///FILE or "
                      "postgresql://USER@HOST/DB)")
