"""Shared fixtures: real models fetched (hash-checked) from ../shared/models, real media from ../shared/testdata."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest

from engine.config import Config
from engine.models.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEENGINE_SHARED", ROOT.parent / "shared"))
MIRROR = SHARED / "models"
TESTDATA = SHARED / "testdata"
IMAGES = TESTDATA / "images"
VIDEOS = TESTDATA / "videos"

if not MIRROR.is_dir():  # pragma: no cover
    raise RuntimeError(f"test models not found at {MIRROR}; set FACEENGINE_SHARED to the shared folder")


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
