"""The console commands against a real `faceengine serve` process: enroll, stream, matches, search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import IMAGES, ROOT


@pytest.fixture()
def served(tmp_path: Path, model_dir: Path):  # noqa: ANN201
    ready = tmp_path / "addr"
    env = {**os.environ, "FACEENGINE_MODEL_DIR": str(model_dir), "FACEENGINE_AUTH_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--metrics-port", "0", "--db", str(tmp_path / "srv.db"), "--ready-file", str(ready)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            pytest.fail(f"server did not start: {proc.communicate()[1]}")
        time.sleep(0.1)
    yield ready.read_text(), env
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # graceful shutdown on SIGTERM


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


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
