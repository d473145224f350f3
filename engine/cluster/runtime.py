"""Joining or starting the Ray cluster that runs camera workers, failing fast with a clear message."""

from __future__ import annotations

import logging
import socket
from typing import Any

from engine.errors import ConfigError

log = logging.getLogger(__name__)


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a 'HOST:PORT' or 'ray://HOST:PORT' address; None for 'local'/'auto'."""
    if address in ("local", "auto"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"cluster.address {address!r} is not 'local', 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
    return host.strip("[]"), int(port)


def connect(address: str, connect_timeout_s: float = 5.0, num_cpus: float | None = None) -> Any:
    """Initialise Ray for this process (idempotent) and return the `ray` module.

    'local' starts a private single-node Ray on loopback; 'auto' joins the cluster started on this
    machine with `ray start --head` (or starts a local one when there is none); anything else is a
    remote address, which is probed first so a wrong one fails in seconds, naming the address."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("cluster mode needs Ray: pip install 'faceengine[cluster]'") from exc
    if ray.is_initialized():
        return ray
    target = _host_port(address)
    if target is not None:
        try:
            socket.create_connection(target, timeout=connect_timeout_s).close()
        except OSError as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc}); start it with "
                              "`ray start --head` there, or fix cluster.address") from None
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True,
                          "configure_logging": False}
    if target is None:
        if address == "auto":
            try:
                ray.init(address="auto", **kw)
                log.info("cluster: joined the local Ray cluster")
                return ray
            except (ConnectionError, RuntimeError, ValueError):
                log.info("cluster: no running Ray cluster on this machine; starting a local one")
        # address="local": always a new private instance, never another process's cluster on this machine
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kw)
        log.info("cluster: started a local Ray (%s CPUs)", ray.cluster_resources().get("CPU"))
        return ray
    try:
        ray.init(address=address, **kw)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types for a bad address
        raise ConfigError(f"cannot join the Ray cluster at {address!r}: {exc}") from None
    log.info("cluster: joined %s (%s CPUs, %s GPUs)", address, ray.cluster_resources().get("CPU"),
             ray.cluster_resources().get("GPU", 0))
    return ray
