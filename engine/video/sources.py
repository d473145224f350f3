"""Pull sources: the engine reads RTSP/HTTP streams and video files itself, with reconnection.

Each source runs its own reader thread (decode happens there, off the inference workers). A
broken or ended stream is reopened with exponential backoff (1 s doubling to 30 s); the error
and the reconnect count show in the camera's status. A file source loops by default (a
simulated camera); a file that ends before its stated frame count is reported as truncated.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import cv2

from engine.video.pipeline import CameraState, Engine, FrameJob

log = logging.getLogger(__name__)


def _is_file(uri: str) -> bool:
    return uri.startswith("file://") or "://" not in uri


def _path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


class PullSource:
    def __init__(self, engine: Engine, cam: CameraState, backoff_max_s: float = 30.0) -> None:
        self.engine = engine
        self.cam = cam
        self.backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        opts = cam.options
        self.loop = opts.get("loop", "true").lower() in ("1", "true", "yes")
        self.realtime = opts.get("realtime", "true").lower() in ("1", "true", "yes")
        self.max_fps = float(opts.get("fps", "0") or 0)
        self.backoff_s = float(opts.get("backoff_s", "1.0"))
        self._thread = threading.Thread(target=self._run, name=f"source-{cam.camera_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _open(self) -> cv2.VideoCapture:
        uri = self.cam.uri
        if _is_file(uri):
            path = _path(uri)
            if not Path(path).is_file():
                raise OSError(f"cannot open {path}: no such file")
            if os.path.getsize(path) == 0:
                raise OSError(f"cannot open {path}: file is empty")
            cap = cv2.VideoCapture(path)
        else:
            # bounded waits: an unreachable or stalled camera must not hang its reader thread
            timeout_ms = int(float(self.cam.options.get("timeout_s", "10")) * 1000)
            cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                                         cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        if not cap.isOpened():
            cap.release()
            raise OSError(f"cannot open {uri}: not a readable video stream")
        return cap

    def _run(self) -> None:
        seq = 0
        delay = self.backoff_s
        cam = self.cam
        first, looped = True, False
        while not self._stop.is_set():
            if not first and not looped:
                cam.reconnects += 1
            first, looped = False, False
            cam.state = "connecting"
            try:
                cap = self._open()
            except OSError as exc:
                self._fail(str(exc), True)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            cam.state = "running"
            expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if _is_file(cam.uri) else 0
            fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            start_wall = time.time()
            start_mono = time.monotonic()
            read = 0
            min_gap = 1.0 / self.max_fps if self.max_fps > 0 else 0.0
            last_emit = 0.0
            try:
                while not self._stop.is_set():
                    ok, frame = cap.read()
                    if not ok or frame is None:
                        break
                    read += 1
                    video_t = read / fps
                    if self.realtime:  # pace to the source rate, like a live camera
                        ahead = video_t - (time.monotonic() - start_mono)
                        if ahead > 0:
                            self._stop.wait(ahead)
                    now = time.monotonic()
                    if min_gap and now - last_emit < min_gap:
                        continue
                    last_emit = now
                    seq += 1
                    self.engine.submit(FrameJob(cam.camera_id, seq, start_wall + video_t, frame))
                    delay = self.backoff_s
                    if cam.last_error and read > 1:
                        cam.last_error = ""
            except Exception as exc:  # decoder errors on broken streams
                self._fail(f"read error: {exc}", True)
            finally:
                cap.release()
            if self._stop.is_set():
                break
            if _is_file(cam.uri):
                if expected and read < expected - 1:
                    self._fail(f"{_path(cam.uri)}: stream ended at frame {read} of {expected} "
                               "(file truncated or corrupt)", True)
                elif not self.loop:
                    cam.state = "ended"
                    return
                elif read == 0:
                    self._fail(f"{_path(cam.uri)}: no frames could be decoded", True)
                else:
                    looped = True  # normal end of a looping file: reopen at once
                    continue
            else:
                self._fail(f"{cam.uri}: stream ended or broke after {read} frames", True)
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff_max_s)
        cam.state = "stopped"

    def _fail(self, message: str, retrying: bool) -> None:
        cam = self.cam
        cam.last_error = message
        cam.state = "retrying"
        log.warning("camera %s: %s%s", cam.camera_id, message, "; retrying" if retrying else "")
