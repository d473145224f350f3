"""Pull sources: the engine reads RTSP/HTTP streams and video files itself, with reconnection.

Each source runs its own reader thread (decode happens there, off the inference workers). A
broken or ended stream is reopened with exponential backoff (`backoff_s`, at least 0.5 s,
doubling to 30 s); the error and the reconnect count show in the camera's status, and a
repeated error is logged at most once a minute. A file source loops by default (a simulated
camera); a file that ends before its stated frame count is reported as truncated.

This module also owns what a pull camera may be: its URI policy (`check_uri`: allowed schemes,
video files only under configured folders), its typed options (`parse_options`) and how its URI
is shown outside the server (`redact_uri`: credentials never leave it).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from engine.errors import InvalidArgumentError
from engine.video.cameras import CameraPhase, CameraStatus
from engine.video.decode import CpuVideo, VideoOpener, VideoReader
from engine.video.scheduler import FrameJob

if TYPE_CHECKING:
    from engine.video.engine_api import VideoEngine

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.5  # floor of the reconnect delay: a failing camera never spins
LOG_EVERY_S = 60.0  # the same error of one camera is logged at most this often (the status always has it)
PUSH_URIS = ("", "push", "push://")


# ---- credentials -------------------------------------------------------------------------------
_SECRET_KEYS = re.compile(r"(?i)^(user(name)?|login|u|p|pw|sid|sig)$|pass|pwd|secret|token|key|auth|signature|"
                          r"session|sess_?id|cookie|ticket|cred|nonce|hash")
"""Query keys whose values are masked: exact short names, or any key containing a secret-looking word
(password, api_key, access_token, sessionid, JSESSIONID, X-Amz-Signature, credentials, ...)."""


def redact_uri(uri: str) -> str:
    """`uri` as it may be shown outside the server: user info and secret-looking query values masked.

    rtsp://admin:s3cret@cam:554/live -> rtsp://***@cam:554/live; ?user=a&password=b -> ?user=***&password=***.
    Every reply, log line and error that names a camera URI goes through here."""
    if uri.startswith(("/", "./", "../")) or uri in PUSH_URIS:
        return uri  # a file path or a push camera: no credentials
    scheme, sep, rest = uri.partition("://")
    if not sep:  # not a URL (refused anyway): hide anything before an '@'
        return "***@" + uri.rsplit("@", 1)[1] if "@" in uri else uri
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    elif "@" in tail:  # a password holding '/', '?' or '#' unescaped: mask everything before the '@'
        authority, tail = "***@" + tail.rsplit("@", 1)[1], ""
    head, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        items = []
        for item in query.split("&"):
            key, eq, _ = item.partition("=")
            items.append(f"{key}=***" if eq and _SECRET_KEYS.search(key) else item)
        tail = head + "?" + "&".join(items) + hash_ + fragment
    return f"{scheme}://{authority}{tail}"


# ---- URIs --------------------------------------------------------------------------------------
def is_push(uri: str) -> bool:
    return uri in PUSH_URIS


def _is_file(uri: str) -> bool:
    return uri.startswith("file://") or "://" not in uri


def _path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _inside(path: str, roots: Iterable[str]) -> bool:
    return any(path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def check_uri(uri: str, allowed_schemes: Iterable[str], file_roots: Iterable[str],
              denied_files: Iterable[str] = ()) -> str:
    """Check a camera URI against the policy; returns 'push', 'file' or 'network'.

    Network cameras: a scheme in `allowed_schemes` (cameras.allowed_schemes) and a host. Files: an
    absolute path (or file:///path) that, with symlinks and '..' resolved, lies under one of
    `file_roots` (cameras.file_roots) and is none of `denied_files` (the database). Everything else
    (other schemes, ffmpeg pseudo-protocols such as concat: or data:, relative paths) raises
    InvalidArgumentError. The answer never depends on whether a file exists."""
    if is_push(uri):
        return "push"
    shown = redact_uri(uri)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in uri):
        raise InvalidArgumentError("camera uri contains control characters")
    schemes = sorted({s.lower() for s in allowed_schemes})
    scheme, sep, _ = uri.partition("://")
    if sep and scheme.lower() != "file":
        if scheme.lower() not in schemes:
            raise InvalidArgumentError(f"camera uri {shown!r}: scheme {scheme.lower()!r} is not allowed; "
                                       f"cameras.allowed_schemes = {', '.join(schemes) or '(none)'}")
        try:
            host = urlsplit(uri).hostname
        except ValueError as exc:
            raise InvalidArgumentError(f"camera uri {shown!r} is not a valid URL: {exc}") from None
        if not host:
            raise InvalidArgumentError(f"camera uri {shown!r} names no host")
        return "network"
    path = _path(uri)
    if not path.startswith("/"):
        m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", path)
        if m:
            raise InvalidArgumentError(f"camera uri {shown!r}: scheme {m.group(1).lower()!r} is not allowed; "
                                       f"cameras.allowed_schemes = {', '.join(schemes) or '(none)'}")
        raise InvalidArgumentError(f"camera uri {shown!r}: a file camera needs an absolute path")
    roots = [os.path.realpath(r) for r in file_roots if r]
    real = os.path.realpath(path)
    denied = {os.path.realpath(d) for d in denied_files if d}
    if not _inside(real, roots) or real in denied:
        raise InvalidArgumentError(f"camera uri {path!r} refused: a file camera must be a video file under "
                                   f"cameras.file_roots ({', '.join(roots) or 'none configured'})")
    return "file"


# ---- options -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceOptions:
    """A pull camera's options (AddCamera `options`), typed and range-checked by `parse_options`."""

    loop: bool = True  # a file starts again at its end (a simulated camera)
    realtime: bool = True  # pace reading to the source's frame rate
    fps: float = 0.0  # most frames a second passed on (0 = every frame)
    backoff_s: float = 1.0  # first reconnect delay, doubling to 30 s
    timeout_s: float = 10.0  # open and read timeout of a network camera


# name -> (kind, low, high, what it means): the schema AddCamera checks and docs/operations.md lists
OPTIONS: dict[str, tuple[str, float, float, str]] = {
    "loop": ("bool", 0, 1, "restart a file at its end (default true)"),
    "realtime": ("bool", 0, 1, "pace reading to the source frame rate (default true)"),
    "fps": ("float", 0, 240, "most frames a second passed on, 0 = all (default 0)"),
    "backoff_s": ("float", MIN_BACKOFF_S, 300, "first reconnect delay in seconds, doubling to 30 (default 1)"),
    "timeout_s": ("float", 0.5, 300, "open/read timeout of a network camera in seconds (default 10)"),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_options(options: dict[str, str]) -> SourceOptions:
    """Typed options from AddCamera's string map; InvalidArgumentError names the first bad option."""
    values: dict[str, bool | float] = {}
    for name, raw in options.items():
        spec = OPTIONS.get(name)
        if spec is None:
            raise InvalidArgumentError(f"camera option {name[:64]!r} is unknown; known options: "
                                       f"{', '.join(sorted(OPTIONS))}")
        kind, low, high, doc = spec
        text = str(raw).strip().lower()
        if kind == "bool":
            if text not in _TRUE + _FALSE:
                raise InvalidArgumentError(f"camera option {name!r} = {str(raw)[:64]!r}: use true or false ({doc})")
            values[name] = text in _TRUE
            continue
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and low <= number <= high):
            raise InvalidArgumentError(f"camera option {name!r} = {str(raw)[:64]!r}: must be a number from "
                                       f"{low:g} to {high:g} ({doc})")
        values[name] = number
    return SourceOptions(**values)  # type: ignore[arg-type]


class PullSource:
    def __init__(self, engine: VideoEngine, cam: CameraStatus, backoff_max_s: float = 30.0,
                 file_roots: Iterable[str] | None = None, video: VideoOpener | None = None) -> None:
        """`file_roots`, when given, are checked again at every open (a file swapped for a symlink);
        `video` opens the stream (the engine's `Decoders.video`; OpenCV's FFmpeg when None)."""
        self.engine = engine
        self.cam = cam
        self.video: VideoOpener = video or CpuVideo()
        self.backoff_max_s = backoff_max_s
        self.file_roots = None if file_roots is None else list(file_roots)
        self._stop = threading.Event()
        opts = parse_options(cam.options)
        self.loop = opts.loop
        self.realtime = opts.realtime
        self.max_fps = opts.fps
        self.backoff_s = max(MIN_BACKOFF_S, opts.backoff_s)
        self.timeout_s = opts.timeout_s
        self.shown_uri = redact_uri(cam.uri)
        self._log_key = ""
        self._log_at = -math.inf
        self._suppressed = 0
        self._thread = threading.Thread(target=self._run, name=f"source-{cam.camera_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _open(self) -> VideoReader:
        uri = self.cam.uri
        if _is_file(uri):
            path = _path(uri)
            if self.file_roots is not None and not _inside(os.path.realpath(path), map(os.path.realpath,
                                                                                       self.file_roots)):
                raise OSError(f"cannot open {path}: not under cameras.file_roots")
            if not Path(path).is_file():
                raise OSError(f"cannot open {path}: no such file")
            if os.path.getsize(path) == 0:
                raise OSError(f"cannot open {path}: file is empty")
            # the resolved path: no image-sequence patterns or other backends' syntax
            cap = self.video.open(os.path.realpath(path), network=False, timeout_s=self.timeout_s,
                                  shown=self.shown_uri)
        else:
            cap = self.video.open(uri, network=True, timeout_s=self.timeout_s, shown=self.shown_uri)
        if cap is None:
            raise OSError(f"cannot open {self.shown_uri}: not a readable video stream")
        return cap

    def _run(self) -> None:
        """The reader loop; an unexpected error is reported in the camera's status and retried, never
        a silently dead thread."""
        delay = self.backoff_s
        while not self._stop.is_set():
            try:
                self._read_loop()
                return
            except Exception as exc:  # noqa: BLE001 - a bug or a decoder failure: report, back off, retry
                log.debug("camera %s: reader failed", self.cam.camera_id, exc_info=True)
                self._fail(f"reader error: {type(exc).__name__}: {exc}", True)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)
        self.cam.set_state(CameraPhase.STOPPED)

    def _read_loop(self) -> None:
        seq = 0
        delay = self.backoff_s
        cam = self.cam
        first, looped = True, False
        while not self._stop.is_set():
            if not first and not looped:
                cam.reconnects += 1
            first, looped = False, False
            cam.set_state(CameraPhase.CONNECTING)
            try:
                cap = self._open()
            except OSError as exc:
                self._fail(str(exc), True)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            cam.set_state(CameraPhase.RUNNING)
            expected = cap.frame_count if _is_file(cam.uri) else 0
            fps = cap.fps or 25.0
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
                        cam.set_state(CameraPhase.RUNNING, "")
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
                    cam.set_state(CameraPhase.ENDED)
                    return
                elif read == 0:
                    self._fail(f"{_path(cam.uri)}: no frames could be decoded", True)
                else:
                    looped = True  # normal end of a looping file: reopen at once
                    continue
            else:
                self._fail(f"{self.shown_uri}: stream ended or broke after {read} frames", True)
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff_max_s)
        cam.set_state(CameraPhase.STOPPED)

    def _fail(self, message: str, retrying: bool) -> None:
        """Record an error in the camera's status; log it unless the same error was logged in the
        last LOG_EVERY_S seconds (then count it and report the count with the next line)."""
        cam = self.cam
        if cam.uri not in PUSH_URIS:
            message = message.replace(cam.uri, self.shown_uri)
        cam.set_state(CameraPhase.RETRYING, message)
        key = re.sub(r"\d+", "#", message)
        now = time.monotonic()
        if key == self._log_key and now - self._log_at < LOG_EVERY_S:
            self._suppressed += 1
            return
        repeats = f" ({self._suppressed} more errors since the last report)" if self._suppressed else ""
        log.warning("camera %s: %s%s%s", cam.camera_id, message, "; retrying" if retrying else "", repeats)
        self._log_key, self._log_at, self._suppressed = key, now, 0
