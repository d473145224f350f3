"""Pull cameras that work: an RTSP camera served by a real RTSP server on 127.0.0.1 and an HTTP MJPEG
camera, each read by the engine itself, detected and recognised with the real models."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import pytest

from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from tests.procs import LineReader, wait_for
from tests.shared_data import VIDEOS, read_frames
from tests.test_service import make_cfg

CLIP = VIDEOS / "stage_360p.mp4"
ENROL_FRAME = 100
"""A frame of the clip's third shot (frames 82-210: a singer, close up), whose largest face is enrolled."""

GST_CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import GstRtspServer")
GST_MISSING = ("GStreamer's RTSP server is not installed (Debian: apt-get install python3-gi "
               "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good; .ci/run installs them)")


@pytest.fixture()
def server(cfg: Config, analyzer) -> Iterator[FaceEngineServer]:  # noqa: ANN001
    srv = FaceEngineServer(make_cfg(cfg), analyzer=analyzer).start()
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def clip_frames() -> list:
    frames = read_frames(cv2.VideoCapture(str(CLIP)))
    assert len(frames) == 275
    return frames


def _enrol_singer(c: Client, analyzer, clip_frames: list) -> None:  # noqa: ANN001
    """Enrol the largest face of ENROL_FRAME, cut out with a margin (what `faceengine demo` does)."""
    frame = clip_frames[ENROL_FRAME]
    dets = analyzer.detector.detect(frame)
    assert len(dets) >= 1
    x1, y1, x2, y2 = dets.boxes[int(dets.sizes.argmax())]
    w, h = x2 - x1, y2 - y1
    crop = frame[max(0, int(y1 - h)): int(y2 + h), max(0, int(x1 - w)): int(x2 + w)]
    c.ensure_watchlist("cams")
    c.enroll("cams", "singer", [encode_jpeg(crop)], "Singer")


def _camera(c: Client, camera_id: str) -> pb.Camera:
    return c.cameras.GetCamera(pb.CameraRequest(camera_id=camera_id))


def _matches(c: Client, camera_id: str) -> list[pb.MatchEvent]:
    return list(c.matches.QueryMatches(pb.QueryMatchesRequest(camera_id=camera_id)).events)


# ---- RTSP -------------------------------------------------------------------------------------------


def _gst_python() -> str | None:
    """A Python that has GStreamer's RTSP server bindings: this one, or a system python3 on PATH."""
    candidates = [sys.executable] + [os.path.join(d, "python3") for d in os.environ.get("PATH", "").split(os.pathsep)]
    for cand in dict.fromkeys(candidates):
        if os.access(cand, os.X_OK) and subprocess.run([cand, "-c", GST_CHECK], capture_output=True,
                                                       timeout=60).returncode == 0:
            return cand
    return None


@pytest.fixture()
def rtsp_url() -> Iterator[str]:
    """rtsp://127.0.0.1:PORT/live served by GStreamer's RTSP server (a process started here)."""
    python = _gst_python()
    if python is None:
        pytest.skip(GST_MISSING)
    proc = subprocess.Popen([python, str(Path(__file__).with_name("rtsp_server.py")), str(CLIP)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = LineReader(proc).next(timeout=30)
        if not port:
            proc.kill()
            pytest.fail(f"the RTSP server did not start: {proc.communicate()[1]}")
        yield f"rtsp://127.0.0.1:{int(port)}/live"
    finally:
        proc.kill()
        proc.wait(10)


def test_rtsp_camera_from_a_local_server_is_recognised(server: FaceEngineServer, analyzer, rtsp_url: str,  # noqa: ANN001
                                                       clip_frames: list) -> None:
    c = Client(server.address)
    _enrol_singer(c, analyzer, clip_frames)
    c.cameras.AddCamera(pb.AddCameraRequest(camera_id="rtsp-cam", uri=rtsp_url,
                                            options={"timeout_s": "10", "backoff_s": "0.5"}))
    # The server streams the clip once at its frame rate (9 s); the singer is on screen from 2.7 s to 7 s.
    assert wait_for(lambda: any(e.person_id == "singer" for e in _matches(c, "rtsp-cam")), 60), _camera(c, "rtsp-cam")
    cam = _camera(c, "rtsp-cam")
    assert cam.kind == "pull" and cam.uri == rtsp_url
    # the singer first appears in frame 82, so the clip came over RTSP in order up to there at least
    assert cam.frames_in >= 82 and cam.frames_processed >= 1, cam
    event = next(e for e in _matches(c, "rtsp-cam") if e.person_id == "singer")
    assert event.score >= server.settings.match_threshold
    c.cameras.RemoveCamera(pb.CameraRequest(camera_id="rtsp-cam"))
    c.close()


# ---- HTTP (MJPEG) -----------------------------------------------------------------------------------


class _MjpegCamera(BaseHTTPRequestHandler):
    """An HTTP camera: /cam.mjpg is a multipart/x-mixed-replace stream of JPEG frames at 30 fps, looping."""

    frames: list[bytes] = []
    fps = 30.0
    stop = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path != "/cam.mjpg":
            self.send_error(404, "no such stream")
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        t0, i = time.monotonic(), 0
        try:
            while not self.stop.is_set():
                jpg = self.frames[i % len(self.frames)]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                 % (len(jpg), jpg))
                i += 1
                time.sleep(max(0.0, t0 + i / self.fps - time.monotonic()))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the reader went away

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def mjpeg_base(clip_frames: list) -> Iterator[str]:
    """http://127.0.0.1:PORT serving the clip's third shot as an MJPEG stream at /cam.mjpg."""
    handler = type("Handler", (_MjpegCamera,), {"frames": [encode_jpeg(f) for f in clip_frames[82:211]],
                                                 "stop": threading.Event()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    handler.stop.set()
    httpd.shutdown()
    httpd.server_close()


def test_http_mjpeg_camera_is_recognised_and_a_missing_stream_reported(server: FaceEngineServer, analyzer,  # noqa: ANN001
                                                                        mjpeg_base: str, clip_frames: list) -> None:
    c = Client(server.address)
    _enrol_singer(c, analyzer, clip_frames)
    c.cameras.AddCamera(pb.AddCameraRequest(camera_id="http-cam", uri=f"{mjpeg_base}/cam.mjpg",
                                            options={"timeout_s": "10", "backoff_s": "0.5"}))
    c.cameras.AddCamera(pb.AddCameraRequest(camera_id="http-404", uri=f"{mjpeg_base}/nope.mjpg",
                                            options={"timeout_s": "5", "backoff_s": "0.5"}))
    assert wait_for(lambda: any(e.person_id == "singer" for e in _matches(c, "http-cam")), 60), _camera(c, "http-cam")
    cam = _camera(c, "http-cam")
    assert cam.kind == "pull" and cam.state == "running" and cam.frames_processed >= 1 and not cam.last_error, cam
    # a stream that is not there: the camera reports it and keeps retrying, the other camera is unaffected
    assert wait_for(lambda: _camera(c, "http-404").reconnects >= 1, 30), _camera(c, "http-404")
    bad = _camera(c, "http-404")
    assert "cannot open" in bad.last_error and bad.frames_processed == 0, bad
    before = _camera(c, "http-cam").frames_processed
    assert wait_for(lambda: _camera(c, "http-cam").frames_processed > before + 10, 20)
    c.close()
