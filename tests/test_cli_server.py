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
    assert lines[-1]["summary"]["frames_processed"] == 12, lines[-1]
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


def test_cli_says_what_it_did_and_ends_cleanly(tmp_path: Path, model_dir: Path) -> None:
    """A server on all addresses says so; `cameras add/remove` print what they did; `stream` of a missing file
    is one line of error (no traceback, no camera registered); `matches` into a closed pipe (`| head -1`)
    ends quietly with exit 0."""
    import subprocess
    import sys

    from tests.procs import ROOT

    db = tmp_path / "srv.db"
    env = cli_env(model_dir, FACEENGINE_AUTH_ENABLED="true", FACEENGINE_STORE_PATH=str(db))
    out = cli("token", "create", "--name", "admin", "--role", "admin", env=env)
    assert out.returncode == 0, out.stderr
    env["FACEENGINE_TOKEN"] = out.stdout.strip()
    with serve(tmp_path, env, db, extra=("--host", "0.0.0.0")) as srv:
        port = srv.address.rsplit(":", 1)[1]
        said = (tmp_path / "srv.log").read_text()
        assert f"listening on all addresses (0.0.0.0), port {port}" in said, said
        assert f"serving on 127.0.0.1:{port}" not in said

        out = cli("cameras", "add", "door-2", "push", "--server", srv.address, env=env)
        assert out.returncode == 0 and out.stdout.strip() == "added camera door-2 (push, idle)", out
        out = cli("cameras", "remove", "door-2", "--server", srv.address, env=env)
        assert out.returncode == 0 and out.stdout.strip() == "removed camera door-2", out

        out = cli("stream", "--server", srv.address, "--camera", "door-9", str(tmp_path / "missing.mp4"), env=env)
        assert out.returncode == 1 and out.stderr.strip().splitlines() == [
            f"faceengine: error: {tmp_path / 'missing.mp4'}: no such file"], out.stderr
        out = cli("cameras", "list", "--json", "--server", srv.address, env=env)
        assert out.returncode == 0 and "door-9" not in out.stdout

        out = cli("enroll", "--server", srv.address, "--watchlist", "vip", "--create", "--person", "obama",
                  str(IMAGES / "obama.jpg"), env=env)
        assert out.returncode == 0, out.stderr
        video = tmp_path / "clip.avi"
        img = cv2.resize(cv2.imread(str(IMAGES / "obama_and_biden.jpg")), (640, 456))
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 456))
        for dx in range(6):
            writer.write(cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, 0]]), (640, 456)))
        writer.release()
        out = cli("stream", "--server", srv.address, "--camera", "door-1", "--fast", str(video), env=env)
        assert out.returncode == 0, out.stderr
        # the reader is gone before anything is written, as `| head -1` is once it has its line
        proc = subprocess.Popen([sys.executable, "-m", "engine", "matches", "--server", srv.address],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.close()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and err == "", err
        out = cli("matches", "--server", srv.address, env=env)
        assert out.returncode == 0 and "obama" in out.stdout, out  # there was a line to write


def test_stream_sends_a_still_image_again_with_loop() -> None:
    """A photo as a stand-in camera (the README's walkthrough): with --loop it is sent until --max-frames, each
    frame the photo; without --loop once."""
    from engine.client import video_frames

    photo = str(IMAGES / "obama_and_biden.jpg")
    frames = list(video_frames(photo, "door-1", realtime=False, loop=True, max_frames=5))
    assert [f.sequence for f in frames] == [1, 2, 3, 4, 5]
    assert len({f.encoded for f in frames}) == 1
    assert len(list(video_frames(photo, "door-1", realtime=False))) == 1
