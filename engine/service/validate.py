"""Request validation for the servicers: lengths, counts and characters of names, ids and metadata
(`[limits]`), and camera definitions (URI policy and typed options from `engine.video.sources`).

Every check raises InvalidArgumentError naming the field and the limit, before anything is stored
or any model runs."""

from __future__ import annotations

from collections.abc import Mapping

from engine.config import Config, LimitsConfig
from engine.errors import InvalidArgumentError
from engine.video.sources import SourceOptions, check_uri, parse_options


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _text(value: str, what: str, limit: int, limit_name: str, *, required: bool, one_line: bool) -> None:
    if required and not value:
        raise InvalidArgumentError(f"{what} is empty")
    if len(value) > limit:
        raise InvalidArgumentError(f"{what} is {len(value)} characters: more than {limit_name} ({limit})")
    if one_line and _has_control(value):
        raise InvalidArgumentError(f"{what} {value[:64]!r} contains control characters")


def ident(value: str, what: str, limits: LimitsConfig) -> None:
    """A person id, watchlist name or camera id: 1..limits.max_id_chars characters, no control characters."""
    _text(value, what, limits.max_id_chars, "limits.max_id_chars", required=True, one_line=True)


def display_name(value: str, limits: LimitsConfig) -> None:
    _text(value, "display name", limits.max_name_chars, "limits.max_name_chars", required=False, one_line=True)


def metadata(values: Mapping[str, str], limits: LimitsConfig) -> None:
    """At most limits.max_metadata_keys entries; keys and values within their lengths."""
    if len(values) > limits.max_metadata_keys:
        raise InvalidArgumentError(f"metadata has {len(values)} entries: more than limits.max_metadata_keys "
                                   f"({limits.max_metadata_keys})")
    for key, value in values.items():
        _text(key, "metadata key", limits.max_metadata_key_chars, "limits.max_metadata_key_chars",
              required=True, one_line=True)
        _text(value, f"metadata value of {key!r}", limits.max_metadata_value_chars,
              "limits.max_metadata_value_chars", required=False, one_line=False)


def watchlist(name: str, description: str, limits: LimitsConfig) -> None:
    ident(name, "watchlist name", limits)
    _text(description, "watchlist description", limits.max_text_chars, "limits.max_text_chars",
          required=False, one_line=False)


def person(person_id: str, name: str, meta: Mapping[str, str], limits: LimitsConfig) -> None:
    ident(person_id, "person id", limits)
    display_name(name, limits)
    metadata(meta, limits)


def camera(camera_id: str, uri: str, options: Mapping[str, str], cfg: Config) -> SourceOptions | None:
    """Check a camera definition; returns the pull camera's typed options (None for a push camera)."""
    problem = getattr(options, "problem", "")  # a saved row whose options could not be read (DamagedOptions)
    if problem:
        raise InvalidArgumentError(f"camera {camera_id[:128]!r}: {problem}")
    ident(camera_id, "camera id", cfg.limits)
    if len(uri) > cfg.limits.max_uri_chars:
        raise InvalidArgumentError(f"camera uri is {len(uri)} characters: more than limits.max_uri_chars "
                                   f"({cfg.limits.max_uri_chars})")
    from engine.store import sqlite_path

    store = sqlite_path(cfg.store.target()) or cfg.store.path  # the database file a camera may not read
    kind = check_uri(uri, cfg.cameras.allowed_schemes, cfg.cameras.file_roots,
                     (store, f"{store}-wal", f"{store}-shm", f"{store}-journal"))
    if kind == "push":
        if options:
            raise InvalidArgumentError(f"camera option {sorted(options)[0][:64]!r}: a push camera takes no options")
        return None
    return parse_options(dict(options))
