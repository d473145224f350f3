"""Helpers for tests that run the engine the way users do: `faceengine serve` as its own OS process, CLI
commands as subprocesses, and Prometheus metrics scraped over HTTP."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.shared_data import ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for servers that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(model_dir: Path, **extra: str) -> dict[str, str]:
    """The environment CLI subprocesses run in: the verified test models, no API tokens (loopback only)."""
    return {**os.environ, "FACEENGINE_MODEL_DIR": str(model_dir), "FACEENGINE_AUTH_ENABLED": "false", **extra}


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `faceengine ARGS...` to completion."""
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class ServeProcess:
    """A running `faceengine serve`: its gRPC address and, when asked for, its metrics port."""

    proc: subprocess.Popen
    address: str
    metrics_port: int


@contextmanager
def serve(tmp_path: Path, env: dict[str, str], db: Path, name: str = "srv", metrics: bool = False,
          extra: tuple[str, ...] = ()) -> Iterator[ServeProcess]:
    """Start `faceengine serve` on a free loopback port, wait until it writes its ready file, and on exit
    stop it with SIGTERM and check that it shut down cleanly (exit 0)."""
    ready = tmp_path / f"{name}.addr"
    port = free_port() if metrics else 0
    log = (tmp_path / f"{name}.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--metrics-port", str(port), "--db", str(db), "--ready-file", str(ready), *extra],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 90
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > end:
                log.seek(0)
                pytest.fail(f"faceengine serve ({name}) did not start: {log.read()}")
            time.sleep(0.1)
        yield ServeProcess(proc, ready.read_text(), port)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
    assert code == 0, f"faceengine serve ({name}) exited {code} on SIGTERM: {output}"


class LineReader:
    """Lines of a subprocess's stdout, read in a thread so a test can wait for one with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next(self, timeout: float) -> str | None:
        """The next line, or None if none came within `timeout` seconds."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics over HTTP and parse it: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """One sample's value from `scrape` output (0 when the series does not exist yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(pred: Callable[[], bool], timeout: float = 20.0, every: float = 0.1) -> bool:
    """Poll `pred` until it is true or `timeout` seconds pass; returns its last answer."""
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(every)


def default_sigint() -> None:
    """`preexec_fn` for a child the test will Ctrl-C: SIGINT back to its default action before exec, so Python
    turns it into KeyboardInterrupt even when the test run itself was started with SIGINT ignored (a background
    job of a non-interactive shell inherits SIG_IGN, and Python keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
