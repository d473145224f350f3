"""Gateway tokens bound to their cameras: the documented gateway flow (token, `faceengine stream`) as
written, a token whose scope forbids the camera (one line of advice, exit 1, no line per frame), one
gateway streaming into another's camera, and identities withheld from gateways unless their scope allows."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from engine.client import Client
from engine.config import Config
from engine.service.auth import create_token
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.store.base import EventQuery
from tests.procs import ServeProcess, cli, cli_env, serve, wait_for
from tests.shared_data import IMAGES, ROOT

OBAMA = (IMAGES / "obama.jpg").read_bytes()
OBAMA2 = (IMAGES / "obama2.jpg").read_bytes()


def _documented_flow() -> tuple[list[str], list[str]]:
    """The gateway flow's two commands as docs/security.md writes them."""
    text = (ROOT / "docs" / "security.md").read_text()
    create = re.search(r"^faceengine token create .*--role gateway.*$", text, re.M)
    stream = re.search(r"^faceengine stream .*$", text, re.M)
    assert create and stream, "docs/security.md must show the gateway flow"
    args = shlex.split(create.group(0))[1:]
    if ">" in args:  # the doc saves the printed token to a file: the test reads stdout instead
        args = args[:args.index(">")]
    return args, shlex.split(stream.group(0))[1:]


def _clip(path: Path, frames: int = 6) -> Path:
    img = cv2.resize(cv2.imread(str(IMAGES / "obama_and_biden.jpg")), (640, 456))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 456))
    for dx in range(frames):
        writer.write(cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, 0]]), (640, 456)))
    writer.release()
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[tuple[ServeProcess, dict, Path]]:
    """An auth-on `faceengine serve` process; CLI commands reach its store through the environment."""
    tmp = tmp_path_factory.mktemp("gateway")
    db = tmp / "srv.db"
    env = cli_env(model_dir, FACEENGINE_AUTH_ENABLED="true", FACEENGINE_STORE_PATH=str(db))
    with serve(tmp, env, db) as srv:
        yield srv, env, _clip(tmp / "video.avi")


def _run(args: list[str], srv: ServeProcess, env: dict, video: Path, token: str = "") -> list[str]:
    subst = {"ADDR": srv.address, "TOKEN": token, "video.mp4": str(video)}
    out = [token if a.startswith("$(cat ") else str(video) if a.endswith(".mp4") else subst.get(a, a) for a in args]
    return out if "--server" in out else [*out, "--server", srv.address]


def test_documented_gateway_flow_registers_its_camera_and_streams(served) -> None:  # noqa: ANN001
    srv, env, video = served
    create, stream = _documented_flow()
    out = cli(*create, env=env)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    out = cli(*_run(stream, srv, env, video, token), "--json", env=env)
    assert out.returncode == 0, out.stderr
    summary = [ln for ln in out.stdout.splitlines() if '"summary"' in ln]
    assert summary and '"frames_processed":6' in summary[0] and '"frame_errors":0' in summary[0], out.stdout


def test_gateway_outside_its_scope_gets_one_line_of_advice_and_exits_1(served) -> None:  # noqa: ANN001
    srv, env, video = served
    out = cli("token", "create", "--name", "gate-8", "--role", "gateway", "--camera", "door-8", env=env)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    t0 = time.monotonic()
    out = cli("stream", "--server", srv.address, "--token", token, "--camera", "lobby", "--loop", str(video),
              env=env, timeout=60)
    assert out.returncode == 1 and time.monotonic() - t0 < 30  # --loop does not keep it going
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "PERMISSION_DENIED" in lines[0] and "faceengine token create --name gate-8 --role gateway --camera lobby" \
        in lines[0]
    # a gateway token without cameras is refused at creation, saying how to scope it
    out = cli("token", "create", "--name", "gate-9", "--role", "gateway", env=env)
    assert out.returncode == 2 and "--camera" in out.stderr and "Traceback" not in out.stderr


def test_a_gateway_cannot_feed_another_gateways_camera_nor_learn_identities(cfg: Config, analyzer) -> None:  # noqa: ANN001
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.pipeline.tracking = False  # every matched frame is an event
    cfg.pipeline.motion_gating, cfg.pipeline.detect_interval = False, 1  # single photos: each detected whole
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        admin = Client(srv.address, token=create_token(srv.store, "admin", "admin")[0])
        admin.ensure_watchlist("vip")
        admin.enroll("vip", "obama", [OBAMA], "Barack Obama")
        gw_a = Client(srv.address, token=create_token(srv.store, "gate-a", "gateway", ["door-a"])[0])
        gw_b = Client(srv.address, token=create_token(srv.store, "gate-b", "gateway", ["door-b"])[0])
        gw_id = Client(srv.address, token=create_token(srv.store, "gate-c", "gateway", ["door-*"], True)[0])
        gw_a.ensure_push_camera("door-a")

        def frame(cam: str, seq: int) -> pb.Frame:
            return pb.Frame(camera_id=cam, sequence=seq, capture_time=time.time(), encoded=OBAMA2)

        with pytest.raises(grpc.RpcError) as err:
            list(gw_b.stream(iter([frame("door-a", i) for i in range(1, 6)])))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "door-a" in err.value.details()
        assert srv.store.query_events(EventQuery(camera_id="door-a"))[0] == []
        denials = [r for r in srv.store.query_audit(0, 1000, 0, "StreamFrames") if r["actor"] == "gate-b"]
        assert [r["result"] for r in denials] == ["PERMISSION_DENIED"]

        plain = list(gw_a.stream(iter([frame("door-a", 1)])))
        assert plain[0].faces and not plain[0].faces[0].HasField("match")  # matched, but not told to the gateway
        named = list(gw_id.stream(iter([frame("door-a", 2)])))
        assert named[0].faces and named[0].faces[0].match.person_id == "obama", named  # its scope grants identities
        assert len(srv.store.query_events(EventQuery(camera_id="door-a"))[0]) == 2
    finally:
        srv.stop(grace=1)


def test_a_camera_removed_while_streaming_stops_the_gateway_with_one_line(served) -> None:  # noqa: ANN001
    srv, env, video = served
    admin = cli("token", "create", "--name", "ops-admin", "--role", "admin", env=env).stdout.strip()
    gate = cli("token", "create", "--name", "gate-10", "--role", "gateway", "--camera", "door-10", env=env)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "stream", "--server", srv.address, "--token",
                             gate.stdout.strip(), "--camera", "door-10", "--loop", str(video)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c = Client(srv.address, token=admin)
        assert wait_for(lambda: any(x.camera_id == "door-10" and x.frames_processed > 0 for x in
                                    c.cameras.ListCameras(pb.Empty(), metadata=c.metadata).cameras), 30)
        c.cameras.RemoveCamera(pb.CameraRequest(camera_id="door-10"), metadata=c.metadata)
        _, err = proc.communicate(timeout=30)  # --loop would stream for ever: it stops at the first NOT_FOUND
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "NOT_FOUND" in lines[0] and "stopped" in lines[0], err
