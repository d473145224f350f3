"""Persistence behind role interfaces (`engine.store.base`); `open_store` picks the backend from a URL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from engine.errors import ConfigError
from engine.store.base import Store


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


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


def open_store(url_or_path: str) -> Store:
    """Open (and migrate) the store at a plain file path or `sqlite:///path` (SQLite, the embedded
    default) or `postgresql://user:pass@host:port/db` (PostgreSQL, shared by several machines)."""
    target = str(url_or_path)
    scheme = urlsplit(target).scheme.lower() if "://" in target else ""
    if scheme in ("postgresql", "postgres"):
        try:
            from engine.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(f"store {redact(target)} needs psycopg 3: pip install 'faceengine[postgres]'") from exc
        return PostgresStore(target)
    path = sqlite_path(target)
    if path is not None:
        from engine.store.sqlite import SQLiteStore

        return SQLiteStore(path)
    raise ConfigError(f"store {redact(target)}: unknown scheme {scheme!r} (use a file path, sqlite:///FILE or "
                      "postgresql://USER@HOST/DB)")
