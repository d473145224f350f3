"""TLS for the gRPC server from PEM files in the config; a client CA turns on mutual TLS."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from engine.config import TLSConfig
from engine.errors import ConfigError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls.{what} {path!r} cannot be read: {exc.strerror or exc}") from exc


def server_credentials(cfg: TLSConfig) -> grpc.ServerCredentials | None:
    """Credentials for `add_secure_port`, or None when TLS is not configured (plaintext).

    With `client_ca_file` set, clients must present a certificate signed by that CA."""
    if not cfg.cert_file and not cfg.key_file:
        if cfg.client_ca_file:
            raise ConfigError("tls.client_ca_file needs tls.cert_file and tls.key_file (mutual TLS is over TLS)")
        return None
    if not (cfg.cert_file and cfg.key_file):
        raise ConfigError("TLS needs both tls.cert_file and tls.key_file")
    pair = [(_read(cfg.key_file, "key_file"), _read(cfg.cert_file, "cert_file"))]
    ca = _read(cfg.client_ca_file, "client_ca_file") if cfg.client_ca_file else None
    return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=ca is not None)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
