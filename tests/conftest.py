"""Shared fixtures: real models fetched (hash-checked) from the shared model mirror, real media from the shared
testdata (both found by tests/shared_data.py)."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from engine.config import Config
from engine.models.registry import ModelRegistry
from tests.shared_data import IMAGES, LFW, MIRROR, ROOT, SHARED, TESTDATA, VIDEOS, missing_shared_data

__all__ = ["IMAGES", "LFW", "MIRROR", "ROOT", "SHARED", "TESTDATA", "VIDEOS"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying what is missing and how to fix it, when the shared models/media are absent
    (an error, not a skip: a run that tested nothing must not look green)."""
    problem = missing_shared_data()
    if problem:
        pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder filled the way users fill theirs: `fetch --mirror`, hashes verified."""
    d = tmp_path_factory.mktemp("models")
    ModelRegistry(d).fetch(mirror=MIRROR)
    return d


@pytest.fixture()
def cfg(model_dir: Path, tmp_path: Path) -> Config:
    c = Config.load(env={})
    c.models.dir = str(model_dir)
    c.store.path = str(tmp_path / "engine.db")
    c.server.metrics_port = 0
    return c


@pytest.fixture(scope="session")
def analyzer(model_dir: Path):  # noqa: ANN201
    from engine.vision.analyzer import FaceAnalyzer

    c = Config.load(env={})
    c.models.dir = str(model_dir)
    return FaceAnalyzer.from_config(c)


@pytest.fixture(scope="session")
def scrfd_analyzer(model_dir: Path):  # noqa: ANN201
    from engine.vision.analyzer import FaceAnalyzer

    c = Config.load(env={})
    c.models.dir = str(model_dir)
    c.models.detector = "scrfd_2.5g"
    c.detector.score_threshold = 0.5
    return FaceAnalyzer.from_config(c)


@pytest.fixture(scope="session")
def pg_server():  # noqa: ANN201
    """A real PostgreSQL for the whole session (skips, with the reason, where it cannot start)."""
    from tests.pg import start_server

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg not installed: pip install -e '.[postgres]'")
    try:
        server = start_server()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot start PostgreSQL: {exc}")
    yield server
    server.cleanup()


_pg_dbs = itertools.count()


@pytest.fixture()
def pg_url(pg_server) -> str:  # noqa: ANN001
    """URL of a fresh, empty database on the session's PostgreSQL server."""
    import psycopg

    name = f"fe_test_{next(_pg_dbs)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return pg_server.url(name)
