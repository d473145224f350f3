"""The console commands against a real `faceengine serve` process: enroll, stream, matches, search."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.procs import cli, cli_env, serve
from tests.shared_data import IMAGES


@pytest.fixture()
def served(tmp_path: Path, model_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A `faceengine serve` process (stopped with SIGTERM afterwards, which must exit 0)."""
    env = cli_env(model_dir)
    with serve(tmp_path, env, tmp_path / "srv.db") as srv:
        yield srv.address, env


def test_gateway_and_operator_commands(served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    addr, env = served
    out = cli("enroll", "--server", addr, "--watchlist", "vip", "--create", "--person", "obama", "--name",
              "Barack Obama", "--json", str(IMAGES / "obama.jpg"), env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["templates"] == 1
    # a short clip built from a real photo in which he appears
    video = tmp_path / "clip.avi"
    img = cv2.resize(cv2.imread(str(IMAGES / "obama_and_biden.jpg")), (960, 686))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (960, 686))
    for dx in range(12):
        writer.write(cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, 0]]), (960, 686)))  # slight pan
    writer.release()
    out = cli("stream", "--server", addr, "--camera", "door-1", "--json", str(video), env=env)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines[-1]["summary"]["frames_processed"] == 12
    assert [x["person_id"] for x in lines[:-1]] == ["obama"]
    out = cli("matches", "--server", addr, "--json", "--since", "10m", env=env)
    assert out.returncode == 0, out.stderr
    events = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(events) == 1 and events[0]["person_id"] == "obama" and events[0]["camera_id"] == "door-1"
    out = cli("search", "--server", addr, "--json", str(IMAGES / "obama2.jpg"), env=env)
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[0])["person_id"] == "obama"
    out = cli("cameras", "list", "--server", addr, "--json", env=env)
    assert json.loads(out.stdout)["frames_processed"] == 12
    out = cli("enroll", "--server", addr, "--watchlist", "nope", "--person", "x", str(IMAGES / "obama.jpg"), env=env)
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr and "Traceback" not in out.stderr
