"""Camera health: a push camera whose gateway stops is reported `offline` (ListCameras, metrics) within
seconds and `running` again when its frames resume. Real gRPC push stream of real photos."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from engine.client import Client
from engine.config import Config
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from tests.shared_data import IMAGES


def _frames(camera: str, start: int, n: int, jpg: bytes):  # noqa: ANN202
    for i in range(start, start + n):
        yield pb.Frame(camera_id=camera, sequence=i, capture_time=time.time(), encoded=jpg)
        time.sleep(0.05)


def _state(c: Client, camera: str) -> pb.Camera:
    return next(x for x in c.cameras.ListCameras(pb.ListCamerasRequest()).cameras if x.camera_id == camera)


def _metric(srv: FaceEngineServer, line_start: str) -> float | None:
    for line in generate_latest(srv.metrics.registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return None


def test_push_camera_goes_offline_when_its_gateway_stops_and_back_when_frames_resume(cfg: Config,
                                                                                      analyzer) -> None:  # noqa: ANN001
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.auth.enabled = False
    cfg.cameras.offline_after_s = 2.0
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        c = Client(srv.address)
        c.ensure_push_camera("door-1")
        jpg = (IMAGES / "obama.jpg").read_bytes()
        results = list(c.stream(_frames("door-1", 1, 4, jpg)))
        assert len(results) == 4 and all(not r.HasField("error") for r in results)
        assert _state(c, "door-1").state == "running"
        assert _metric(srv, 'faceengine_camera_up{camera="door-1"}') == 1.0
        stopped = time.monotonic()  # the gateway went away
        while _state(c, "door-1").state != "offline":
            assert time.monotonic() - stopped < 10, "still not offline 10 s after the last frame"
            time.sleep(0.2)
        cam = _state(c, "door-1")
        assert "no frames" in cam.last_error
        assert _metric(srv, 'faceengine_camera_up{camera="door-1"}') == 0.0
        age = _metric(srv, 'faceengine_camera_last_frame_age_seconds{camera="door-1"}')
        assert age is not None and age >= 2.0
        results = list(c.stream(_frames("door-1", 5, 2, jpg)))  # the gateway is back
        assert all(not r.HasField("error") for r in results)
        cam = _state(c, "door-1")
        assert cam.state == "running" and cam.last_error == ""
        assert _metric(srv, 'faceengine_camera_up{camera="door-1"}') == 1.0
    finally:
        srv.stop(grace=1)
